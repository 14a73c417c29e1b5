//! What the admission webhook adds to a pod for GCP, from the annotation GKE's own workload
//! identity reads (`iam.gke.io/gcp-service-account`) and the webhook's pool provider: the
//! `external_account` credential configuration (docs/gcp.md, "external_account file"), carried
//! in a pod annotation and projected as a file by the downward API, and the projected token.

use serde_json::json;

use crate::inject::part::{
    EnvValue, InjectedFile, PodPart, ProjectedToken, Refusal, ServiceAccount,
};

pub const SERVICE_ACCOUNT: &str = "iam.gke.io/gcp-service-account";
/// credbroker's own (GKE names one service account): more, impersonated with the same
/// federated token, comma-separated emails.
const SERVICE_ACCOUNTS: &str = "credbroker.io/gcp-service-accounts";
/// The pod annotation that carries the credential configuration to its file.
const CONFIGURATION_ANNOTATION: &str = "credbroker.io/gcp-credential-configuration";

/// Google STS caps a directly federated token at the subject token's own expiry; kubelet
/// rotates at 80 %, so a day-long token always has hours left.
const EXPIRATION: i64 = 86_400;

/// Cloud-wide settings the webhook gives every GCP sidecar.
#[derive(clap::Args, Debug, Clone, Default)]
#[group(id = "gcp_inject_flags")]
pub struct InjectFlags {
    /// The workload identity pool provider (its full resource name,
    /// //iam.googleapis.com/projects/NUMBER/locations/global/workloadIdentityPools/POOL/providers/PROVIDER):
    /// the projected token's audience and STS's.
    #[arg(
        long,
        env = "CREDBROKER_GCP_WORKLOAD_IDENTITY_PROVIDER",
        value_name = "NAME"
    )]
    pub gcp_workload_identity_provider: Option<String>,

    /// GOOGLE_CLOUD_PROJECT for the sidecar (the project id the metadata server reports).
    #[arg(long, env = "CREDBROKER_GCP_PROJECT_ID", value_name = "PROJECT")]
    pub gcp_project_id: Option<String>,

    /// Google STS's token endpoint.
    #[arg(
        long,
        env = "CREDBROKER_GCP_STS_URL",
        value_name = "URL",
        default_value = "https://sts.googleapis.com/v1/token"
    )]
    pub gcp_sts_url: String,

    /// IAM Credentials' base URL (generateAccessToken and generateIdToken are under it).
    #[arg(
        long,
        env = "CREDBROKER_GCP_IAM_CREDENTIALS_URL",
        value_name = "URL",
        default_value = "https://iamcredentials.googleapis.com"
    )]
    pub gcp_iam_credentials_url: String,
}

pub fn part(sa: &ServiceAccount, flags: &InjectFlags) -> Result<Option<PodPart>, Refusal> {
    let Some(email) = sa.annotation(SERVICE_ACCOUNT) else {
        return Ok(None);
    };
    if !email.contains('@') || email.contains('/') {
        return Err(Refusal(format!(
            "ServiceAccount {}: annotation {SERVICE_ACCOUNT}: {email:?} is not a service account email",
            sa.id()
        )));
    }
    let provider = flags.gcp_workload_identity_provider.as_deref().ok_or_else(|| {
        Refusal(format!(
            "ServiceAccount {} names a Google service account ({SERVICE_ACCOUNT}) but the webhook has no workload identity provider: start it with --gcp-workload-identity-provider",
            sa.id()
        ))
    })?;
    let token = ProjectedToken {
        volume: "credbroker-gcp-token",
        audience: Some(provider.to_string()),
        expiration_seconds: EXPIRATION,
        dir: "/var/run/secrets/sts.googleapis.com/serviceaccount",
        file: "token",
        with_cluster_ca: false,
    };
    let base = flags.gcp_iam_credentials_url.trim_end_matches('/');
    let configuration = json!({
        "type": "external_account",
        "audience": provider,
        "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
        "token_url": flags.gcp_sts_url,
        "service_account_impersonation_url":
            format!("{base}/v1/projects/-/serviceAccounts/{email}:generateAccessToken"),
        "credential_source": {"file": token.path(), "format": {"type": "text"}},
    });
    let file = InjectedFile {
        volume: "credbroker-gcp-configuration",
        annotation: CONFIGURATION_ANNOTATION,
        dir: "/etc/credbroker/gcp",
        file: "credential-configuration.json",
        content: configuration.to_string(),
    };
    let mut part = PodPart::default().var(
        "GOOGLE_APPLICATION_CREDENTIALS",
        EnvValue::text(file.path()),
    );
    if let Some(project) = &flags.gcp_project_id {
        part = part.var("GOOGLE_CLOUD_PROJECT", EnvValue::text(project));
    }
    if let Some(others) = sa.annotation(SERVICE_ACCOUNTS) {
        part = part.var("CREDBROKER_GCP_SERVICE_ACCOUNT", EnvValue::text(others));
    }
    Ok(Some(part.token(token).file(file)))
}

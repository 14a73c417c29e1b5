//! What the admission webhook adds to a pod for Azure, from the ServiceAccount annotations the
//! Azure Workload Identity webhook reads (docs/azure.md, "Workload identity webhook"): the
//! client id, optionally the tenant, and the token's lifetime.

use crate::inject::part::{EnvValue, PodPart, ProjectedToken, Refusal, ServiceAccount};
use crate::inject::token_expiration;

pub const CLIENT_ID: &str = "azure.workload.identity/client-id";
const TENANT_ID: &str = "azure.workload.identity/tenant-id";
const EXPIRATION: &str = "azure.workload.identity/service-account-token-expiration";
/// credbroker's own (azwi names one identity per ServiceAccount): more managed identities
/// federated with the same token, the value of `--azure-identity` (comma-separated), e.g.
/// `CLIENT_ID:object-id=OID`.
const IDENTITIES: &str = "credbroker.io/azure-identities";

/// Entra's audience for federated credentials, and the azwi webhook's token lifetime.
const AUDIENCE: &str = "api://AzureADTokenExchange";
const DEFAULT_EXPIRATION: i64 = 3600;

/// Cloud-wide settings the webhook gives every Azure sidecar.
#[derive(clap::Args, Debug, Clone, Default)]
#[group(id = "azure_inject_flags")]
pub struct InjectFlags {
    /// The Entra tenant, unless the ServiceAccount names one (azure.workload.identity/tenant-id).
    #[arg(long, env = "CREDBROKER_AZURE_TENANT_ID", value_name = "TENANT")]
    pub azure_tenant_id: Option<String>,

    /// AZURE_AUTHORITY_HOST for the sidecar (sovereign clouds; default: the public cloud's).
    #[arg(long, env = "CREDBROKER_AZURE_AUTHORITY_HOST", value_name = "URL")]
    pub azure_authority_host: Option<String>,
}

pub fn part(sa: &ServiceAccount, flags: &InjectFlags) -> Result<Option<PodPart>, Refusal> {
    let Some(client_id) = sa.annotation(CLIENT_ID) else {
        return Ok(None);
    };
    let tenant = sa
        .annotation(TENANT_ID)
        .or(flags.azure_tenant_id.as_deref())
        .ok_or_else(|| {
            Refusal(format!(
                "ServiceAccount {} names an Azure identity ({CLIENT_ID}) but no tenant: annotate it with {TENANT_ID}, or start the webhook with --azure-tenant-id",
                sa.id()
            ))
        })?;
    let token = ProjectedToken {
        volume: "credbroker-azure-token",
        audience: Some(AUDIENCE.to_string()),
        expiration_seconds: token_expiration(sa, EXPIRATION, DEFAULT_EXPIRATION)?,
        dir: "/var/run/secrets/azure/tokens",
        file: "azure-identity-token",
        with_cluster_ca: false,
    };
    let mut part = PodPart::default()
        .var("AZURE_CLIENT_ID", EnvValue::text(client_id))
        .var("AZURE_TENANT_ID", EnvValue::text(tenant))
        .var("AZURE_FEDERATED_TOKEN_FILE", EnvValue::text(token.path()));
    if let Some(host) = &flags.azure_authority_host {
        part = part.var("AZURE_AUTHORITY_HOST", EnvValue::text(host));
    }
    if let Some(others) = sa.annotation(IDENTITIES) {
        part = part.var("CREDBROKER_AZURE_IDENTITY", EnvValue::text(others));
    }
    // The App Service endpoint's shared header: the pod's UID in both containers.
    Ok(Some(
        part.var(
            "CREDBROKER_AZURE_IDENTITY_HEADER",
            EnvValue::PodField("metadata.uid"),
        )
        .token(token),
    ))
}

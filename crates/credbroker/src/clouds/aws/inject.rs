//! What the admission webhook adds to a pod for AWS, from the ServiceAccount annotations the EKS
//! pod-identity webhook reads (IRSA; docs/aws.md, "IRSA webhook"): the role, the token's
//! audience and lifetime, and the STS endpoint mode.

use super::config::RoleArn;
use crate::inject::part::{EnvValue, PodPart, ProjectedToken, Refusal, SHARED_DIR, ServiceAccount};
use crate::inject::token_expiration;

pub const ROLE_ARN: &str = "eks.amazonaws.com/role-arn";
const AUDIENCE: &str = "eks.amazonaws.com/audience";
const EXPIRATION: &str = "eks.amazonaws.com/token-expiration";
const REGIONAL: &str = "eks.amazonaws.com/sts-regional-endpoints";
/// credbroker's own, for what IRSA has no annotation for: more roles, chained roles and their
/// options, each the value of the sidecar flag (comma-separated), e.g.
/// `reader=arn:aws:iam::111122223333:role/reader`, `audit=arn:…:role/audit@reader`,
/// `audit:external-id=X`.
const ROLES: &str = "credbroker.io/aws-roles";
const CHAINED_ROLES: &str = "credbroker.io/aws-chained-roles";
const ROLE_OPTIONS: &str = "credbroker.io/aws-role-options";

/// The IRSA webhook's defaults: audience `sts.amazonaws.com`, a day-long token.
const DEFAULT_AUDIENCE: &str = "sts.amazonaws.com";
const DEFAULT_EXPIRATION: i64 = 86_400;

/// Cloud-wide settings the webhook gives every AWS sidecar.
#[derive(clap::Args, Debug, Clone, Default)]
#[group(id = "aws_inject_flags")]
pub struct InjectFlags {
    /// AWS_REGION for the sidecar and the application (the IRSA webhook's --aws-default-region);
    /// regional STS endpoints need it.
    #[arg(long, env = "CREDBROKER_AWS_REGION", value_name = "REGION")]
    pub aws_region: Option<String>,

    /// AWS_ENDPOINT_URL_STS for the sidecar (a VPC endpoint, a sovereign partition, a test).
    #[arg(long, env = "CREDBROKER_AWS_STS_ENDPOINT", value_name = "URL")]
    pub aws_sts_endpoint: Option<String>,
}

pub fn part(sa: &ServiceAccount, flags: &InjectFlags) -> Result<Option<PodPart>, Refusal> {
    let Some(role) = sa.annotation(ROLE_ARN) else {
        return Ok(None);
    };
    RoleArn::parse(role).map_err(|e| {
        Refusal(format!(
            "ServiceAccount {}: annotation {ROLE_ARN}: {}",
            sa.id(),
            e.problem
        ))
    })?;
    let regional = match sa.annotation(REGIONAL) {
        None | Some("true") => "regional",
        Some("false") => "legacy",
        Some(other) => {
            return Err(Refusal(format!(
                "ServiceAccount {}: annotation {REGIONAL}: {other:?} must be \"true\" or \"false\"",
                sa.id()
            )));
        }
    };
    let token = ProjectedToken {
        volume: "credbroker-aws-token",
        audience: Some(
            sa.annotation(AUDIENCE)
                .unwrap_or(DEFAULT_AUDIENCE)
                .to_string(),
        ),
        expiration_seconds: token_expiration(sa, EXPIRATION, DEFAULT_EXPIRATION)?,
        dir: "/var/run/secrets/eks.amazonaws.com/serviceaccount",
        file: "token",
        with_cluster_ca: false,
    };
    let mut part = PodPart::default()
        .var("AWS_ROLE_ARN", EnvValue::text(role))
        .var("AWS_WEB_IDENTITY_TOKEN_FILE", EnvValue::text(token.path()))
        .var("AWS_STS_REGIONAL_ENDPOINTS", EnvValue::text(regional))
        // The pod's name in CloudTrail (assumed-role/ROLE/POD).
        .var("AWS_ROLE_SESSION_NAME", EnvValue::PodField("metadata.name"));
    if let Some(region) = &flags.aws_region {
        part = part.var("AWS_REGION", EnvValue::text(region));
    }
    if let Some(endpoint) = &flags.aws_sts_endpoint {
        part = part.var("AWS_ENDPOINT_URL_STS", EnvValue::text(endpoint));
    }
    for (annotation, setting) in [
        (ROLES, "CREDBROKER_AWS_ROLE"),
        (CHAINED_ROLES, "CREDBROKER_AWS_CHAINED_ROLE"),
        (ROLE_OPTIONS, "CREDBROKER_AWS_ROLE_OPTION"),
    ] {
        if let Some(value) = sa.annotation(annotation) {
            part = part.var(setting, EnvValue::text(value));
        }
    }
    // The application authenticates to /v1/credentials with the pod's UID: both containers get
    // it from the downward API, as the literal value (SDKs that read only that) and the file.
    Ok(Some(
        part.var(
            "CREDBROKER_AWS_AUTH_TOKEN_FILE",
            EnvValue::text(format!("{SHARED_DIR}/aws-auth-token")),
        )
        .var(
            "CREDBROKER_AWS_AUTH_TOKEN",
            EnvValue::PodField("metadata.uid"),
        )
        .token(token),
    ))
}

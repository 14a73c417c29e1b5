//! What the admission webhook adds to a pod for OCI when its ServiceAccount opts in
//! (`credbroker.io/oci: "true"`): OKE workload identity needs no identity annotation (the
//! policy names the namespace and ServiceAccount), only the region and the API server's token.

use crate::inject::part::{EnvValue, PodPart, ProjectedToken, Refusal, SHARED_DIR, ServiceAccount};

pub const ENABLED: &str = "credbroker.io/oci";

/// Cloud-wide settings the webhook gives every OCI sidecar.
#[derive(clap::Args, Debug, Clone, Default)]
#[group(id = "oci_inject_flags")]
pub struct InjectFlags {
    /// OCI_RESOURCE_PRINCIPAL_REGION for the sidecar and the application (the cluster's region).
    #[arg(long, env = "CREDBROKER_OCI_REGION", value_name = "REGION")]
    pub oci_region: Option<String>,
}

pub fn part(sa: &ServiceAccount, flags: &InjectFlags) -> Result<Option<PodPart>, Refusal> {
    match sa.annotation(ENABLED) {
        None | Some("false") => return Ok(None),
        Some("true") => {}
        Some(other) => {
            return Err(Refusal(format!(
                "ServiceAccount {}: annotation {ENABLED}: {other:?} must be \"true\" or \"false\"",
                sa.id()
            )));
        }
    }
    let region = flags.oci_region.as_deref().ok_or_else(|| {
        Refusal(format!(
            "ServiceAccount {} asks for OCI ({ENABLED}) but the webhook has no region: start it with --oci-region",
            sa.id()
        ))
    })?;
    // What automountServiceAccountToken would mount, but into the sidecar only: a token for the
    // API server's audience (proxymux reviews it), the cluster CA and the namespace.
    let token = ProjectedToken {
        volume: "credbroker-oci-token",
        audience: None,
        expiration_seconds: 3600,
        dir: "/var/run/secrets/kubernetes.io/serviceaccount",
        file: "token",
        with_cluster_ca: true,
    };
    Ok(Some(
        PodPart::default()
            .var("OCI_RESOURCE_PRINCIPAL_REGION", EnvValue::text(region))
            .var(
                "CREDBROKER_OCI_OUTPUT_DIR",
                EnvValue::text(format!("{SHARED_DIR}/oci")),
            )
            .token(token),
    ))
}

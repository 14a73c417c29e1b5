//! The sidecar's side of a pod using the emulated clouds: the environment the clouds' own
//! webhooks would inject (pointed at these emulators) plus the `CREDBROKER_*` settings, for any
//! set of clouds, in one call. The demo, credbroker's integration tests, the benchmarks and the
//! Python conformance suite (through `fakecloud run`'s ready file) all build their brokers from
//! this, so a new emulated cloud is wired here once.

use std::path::Path;

use crate::Cloudscape;
use crate::{aws, azure, gcp, oci};

/// Every cloud the emulators serve, by the names credbroker's registry gives them.
pub const CLOUDS: [&str; 4] = ["aws", "gcp", "azure", "oci"];

/// The `X-IDENTITY-HEADER` value the Azure sidecar is given (tests send it to `/msi/token`).
pub const AZURE_IDENTITY_HEADER: &str = "fakecloud-identity-header-0123456789abcdef";

/// Second identities the emulated clouds also trust for the pod's ServiceAccount (several
/// identities per pod: `--aws-role`, `--azure-identity`, `--gcp-service-account`).
pub const AWS_READER_ROLE_ARN: &str = "arn:aws:iam::123456789012:role/credbroker-demo-reader";
/// A role in another account that the demo role may assume (role chaining, `--aws-chained-role`),
/// when it presents [`AWS_CHAINED_EXTERNAL_ID`].
pub const AWS_CHAINED_ROLE_ARN: &str =
    "arn:aws:iam::210987654321:role/credbroker-demo-cross-account";
pub const AWS_CHAINED_EXTERNAL_ID: &str = "credbroker-demo-external-id";
pub const AZURE_SECOND_CLIENT_ID: &str = "6c2d8e4f-1a3b-4c5d-9e8f-7a6b5c4d3e2f";
pub const GCP_SECOND_SERVICE_ACCOUNT: &str =
    "credbroker-reports@credbroker-demo.iam.gserviceaccount.com";

/// A cloud name the emulators do not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("fakecloud emulates no cloud named {0:?} (it knows {CLOUDS:?})")]
pub struct UnknownCloud(pub String);

impl Cloudscape {
    /// The sidecar's environment for `clouds` against these emulators. Files the sidecar writes
    /// (the AWS `Authorization` value, OCI's resource-principal files) go under `files`.
    pub fn sidecar(
        &self,
        clouds: &[&str],
        files: &Path,
    ) -> Result<Vec<(String, String)>, UnknownCloud> {
        let files = files.display().to_string();
        let mut env = Vec::new();
        for cloud in clouds {
            env.extend(self.sidecar_for(cloud, &files)?);
        }
        Ok(env)
    }

    /// One cloud's share of [`Cloudscape::sidecar`]; `files` is the directory as text (the
    /// ready file writes the placeholder `{files}` there).
    pub fn sidecar_for(
        &self,
        cloud: &str,
        files: &str,
    ) -> Result<Vec<(String, String)>, UnknownCloud> {
        let pairs: Vec<(&str, String)> = match cloud {
            "aws" => vec![
                ("AWS_ROLE_ARN", aws::DEMO_ROLE_ARN.into()),
                ("AWS_WEB_IDENTITY_TOKEN_FILE", path(&self.aws_token.path())),
                ("AWS_ENDPOINT_URL_STS", self.sts.url()),
                ("AWS_REGION", aws::DEFAULT_REGION.into()),
                ("AWS_ROLE_SESSION_NAME", "credbroker-demo".into()),
                (
                    "CREDBROKER_AWS_AUTH_TOKEN_FILE",
                    format!("{files}/aws-auth-token"),
                ),
            ],
            "gcp" => vec![
                (
                    "GOOGLE_APPLICATION_CREDENTIALS",
                    path(&self.gcp_credentials),
                ),
                ("GOOGLE_CLOUD_PROJECT", gcp::DEMO_PROJECT_ID.into()),
            ],
            "azure" => vec![
                ("AZURE_CLIENT_ID", azure::DEMO_CLIENT_ID.into()),
                ("AZURE_TENANT_ID", azure::DEMO_TENANT_ID.into()),
                ("AZURE_FEDERATED_TOKEN_FILE", path(&self.azure_token.path())),
                ("AZURE_AUTHORITY_HOST", format!("{}/", self.entra.url())),
                (
                    "CREDBROKER_AZURE_IDENTITY_HEADER",
                    AZURE_IDENTITY_HEADER.into(),
                ),
            ],
            // What an OKE pod has: kubelet's service variables pointing at proxymux, the
            // cluster CA, the projected token.
            "oci" => vec![
                ("OCI_RESOURCE_PRINCIPAL_REGION", oci::DEFAULT_REGION.into()),
                ("KUBERNETES_SERVICE_HOST", self.proxymux.host().to_string()),
                (
                    "KUBERNETES_SERVICE_PORT_PROXYMUX",
                    self.proxymux.port().to_string(),
                ),
                (
                    "OCI_KUBERNETES_SERVICE_ACCOUNT_CERT_PATH",
                    path(&self.oci_ca_path),
                ),
                ("CREDBROKER_OCI_TOKEN_FILE", path(&self.oci_token.path())),
                ("CREDBROKER_OCI_OUTPUT_DIR", format!("{files}/oci")),
            ],
            other => return Err(UnknownCloud(other.to_string())),
        };
        Ok(pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
    }
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

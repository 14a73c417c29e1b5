//! OCI: OKE workload identity (proxymux) → resource principal v2.2 files.
//!
//! No OCI SDK discovers credentials over HTTP on its own; what they all read is resource
//! principal 2.2 (docs/oci.md, "Resource principal 2.2 files"): an RPST file and a private key file
//! named by `OCI_RESOURCE_PRINCIPAL_RPST` and `..._PRIVATE_PEM`. So this cloud has no HTTP surface:
//! the cache's one pinned slot (keyed by the pod key) is mirrored into those files.

pub mod config;
pub mod inject;
pub mod key;
pub mod proxymux;
pub mod writer;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub use config::{Flags, OciConfig};
use key::{KeyOrigin, PodKey};
use proxymux::{ProxymuxClient, Rpst};
use writer::{FileWriter, OciFiles};

use super::runtime::seconds_left;
use super::{AppEnv, Cloud, CloudConfig, Pinned, Runtime, Shared};
use crate::clock::from_unix;
use crate::config::{ConfigError, Env};
use crate::exchange::{Exchange, ExchangeError, Fresh};
use crate::http::client::{ClientOptions, build_client, load_pem_certs, tls_config};
use crate::inject::part::{PodPart, Refusal, ServiceAccount};
use crate::refresh::{NotReady, Slot};
use crate::timefmt::format_rfc3339;

/// OCI, as the registry declares it.
pub struct Oci;

impl Cloud for Oci {
    const NAME: &'static str = "oci";
    const TITLE: &'static str = "OCI";
    const ENABLED_BY: &'static str = "OCI_RESOURCE_PRINCIPAL_REGION and --oci-output-dir";
    /// Go re-reads the files, and refreshes its own RPSTs, once less than 5 minutes remain
    /// (`bufferTimeBeforeTokenExpiration`; docs/oci.md, "Refresh windows"); the refresher keeps the
    /// file clear of that window, and otherwise rewrites it at half-life with jitter as Go and Java
    /// do.
    const SDK_WINDOW: Duration = Duration::from_secs(5 * 60);
    type Flags = Flags;
    type Config = OciConfig;

    fn detect(env: &Env, flags: &Flags) -> Result<Option<OciConfig>, ConfigError> {
        OciConfig::from_env(env, flags)
    }

    const IDENTITY_ANNOTATION: &'static str = inject::ENABLED;
    type InjectFlags = inject::InjectFlags;

    fn inject(
        sa: &ServiceAccount,
        flags: &inject::InjectFlags,
    ) -> Result<Option<PodPart>, Refusal> {
        inject::part(sa, flags)
    }
}

const CA_SUBJECT: &str = "OCI_KUBERNETES_SERVICE_ACCOUNT_CERT_PATH";

/// The OCI exchanger: one proxymux call. The cache key is the pod key's fingerprint.
struct OciExchange {
    client: ProxymuxClient,
}

impl Exchange<String> for OciExchange {
    type Credential = Rpst;

    async fn exchange(&self, _key: &String) -> Result<Fresh<Rpst>, ExchangeError> {
        let rpst = self.client.exchange().await?;
        let expires_at = from_unix(rpst.claims.exp);
        Ok(Fresh {
            value: rpst,
            expires_at,
        })
    }
}

/// OCI started: the generic [`Runtime`], and the parts tests look into.
pub struct OciRuntime {
    runtime: Runtime,
    slot: Arc<Slot<Rpst>>,
    writer: Arc<FileWriter>,
    key: Arc<PodKey>,
}

impl OciRuntime {
    pub fn writer(&self) -> &Arc<FileWriter> {
        &self.writer
    }

    pub fn slot(&self) -> &Arc<Slot<Rpst>> {
        &self.slot
    }

    pub fn key(&self) -> &Arc<PodKey> {
        &self.key
    }

    pub fn readiness(&self) -> Result<(), NotReady> {
        self.runtime.readiness()
    }

    pub fn summary(&self) -> Result<String, NotReady> {
        self.runtime.summary()
    }
}

impl OciConfig {
    fn files(&self, shared: &Shared) -> OciFiles {
        OciFiles::new(&self.output_dir, shared.file_mode)
    }

    /// Starts OCI, returning its parts (what [`CloudConfig::start`] keeps the runtime of).
    pub fn start_runtime(self, shared: &Shared) -> Result<OciRuntime, ConfigError> {
        let files = self.files(shared);
        files.prepare().map_err(|e| {
            ConfigError::new(
                "--oci-output-dir",
                format!("cannot create {}: {e}", self.output_dir.display()),
            )
        })?;
        let certs = load_pem_certs(&shared.env, CA_SUBJECT, &self.ca_path)?;
        let tls = tls_config(None, &certs).map_err(|e| ConfigError::new(CA_SUBJECT, e.problem))?;
        let http = build_client(tls, &ClientOptions::default())?;
        let token = shared.tokens.get("--oci-token-file", &self.token_file)?;

        let (key, origin) =
            PodKey::load_or_generate(shared.env.fs(), &files.key_path()).map_err(|e| {
                ConfigError::new(
                    "--oci-output-dir",
                    format!("cannot read {}: {}", files.key_path().display(), e.kind()),
                )
            })?;
        match &origin {
            KeyOrigin::Reused => {
                tracing::info!(key = key.fingerprint(), "oci: reusing the pod key on disk")
            }
            KeyOrigin::Generated => {
                tracing::info!(key = key.fingerprint(), "oci: generated a pod key")
            }
            KeyOrigin::Replaced(why) => tracing::warn!(
                key = key.fingerprint(),
                reason = %why,
                "oci: the key file was not usable; generated a new pod key"
            ),
        }
        files.write_key(&key).map_err(|e| {
            ConfigError::new(
                "--oci-output-dir",
                format!("cannot write {}: {e}", files.key_path().display()),
            )
        })?;
        let key = Arc::new(key);

        let exchange = OciExchange {
            client: ProxymuxClient {
                http,
                url: self.proxymux_url.clone(),
                token: token.clone(),
                key: key.clone(),
                clock: shared.clock.clone(),
            },
        };
        let cache = Oci::cache(shared, exchange, Some(&token)).build();
        let pinned = Pinned::new(
            key.fingerprint(),
            &cache,
            key.fingerprint().to_string(),
            |cred| {
                let c = &cred.value.claims;
                format!(
                    "rpst for {} (tenancy {}), expires {} (in {} s)",
                    c.sub.as_deref().unwrap_or("?"),
                    c.res_tenant.as_deref().unwrap_or("?"),
                    format_rfc3339(cred.expires_wall),
                    seconds_left(cred)
                )
            },
        );
        let slot = pinned.slot().clone();
        let writer = Arc::new(FileWriter::new(files, key.clone()));
        let task = tokio::spawn(writer.clone().run(slot.clone())).abort_handle();
        tracing::info!(
            proxymux = %self.proxymux_url,
            region = %self.region,
            output_dir = %self.output_dir.display(),
            "oci enabled"
        );
        let runtime = Runtime::new(Oci::NAME)
            .hold(pinned)
            .hold(writer.clone())
            .task(task);
        Ok(OciRuntime {
            runtime,
            slot,
            writer,
            key,
        })
    }
}

impl CloudConfig for OciConfig {
    fn name(&self) -> &'static str {
        Oci::NAME
    }

    fn app_env(&self, _listen: SocketAddr) -> AppEnv {
        let files = OciFiles::new(&self.output_dir, crate::fs::FileMode::new(false));
        AppEnv {
            cloud: Oci::NAME,
            exports: vec![
                ("OCI_RESOURCE_PRINCIPAL_VERSION".into(), "2.2".into()),
                (
                    "OCI_RESOURCE_PRINCIPAL_RPST".into(),
                    files.rpst_path().display().to_string(),
                ),
                (
                    "OCI_RESOURCE_PRINCIPAL_PRIVATE_PEM".into(),
                    files.key_path().display().to_string(),
                ),
                ("OCI_RESOURCE_PRINCIPAL_REGION".into(), self.region.clone()),
            ],
            // Go errors when one of key and passphrase is a path and the other is not, and Py
            // opens a passphrase file in an invalid mode
            // (docs/oci.md, "Resource principal 2.2 files").
            forbidden: vec!["OCI_RESOURCE_PRINCIPAL_PRIVATE_PEM_PASSPHRASE"],
            identities: Vec::new(),
            notes: vec![
                format!(
                    "mount {} into the application container at the same path; the files must exist before the application starts (run credbroker as a native sidecar with a startup probe on /readyz/oci)",
                    self.output_dir.display()
                ),
                "OCI SDKs use these files only when the application selects the resource principal signer (Python: oci.auth.signers.get_resource_principals_signer(); Go: auth.ResourcePrincipalConfigurationProvider(); Java/TS: ResourcePrincipalAuthenticationDetailsProvider)".into(),
            ],
        }
    }

    fn try_it(&self, _listen: SocketAddr) -> Vec<String> {
        let files = OciFiles::new(&self.output_dir, crate::fs::FileMode::new(false));
        vec![
            format!("ls -l {}", self.output_dir.display()),
            format!(
                "# with the oci SDK installed: env -i PATH=\"$PATH\" OCI_API_ENDPOINT=\"$OCI_API_ENDPOINT\" OCI_RESOURCE_PRINCIPAL_VERSION=2.2 \
                 OCI_RESOURCE_PRINCIPAL_RPST={} OCI_RESOURCE_PRINCIPAL_PRIVATE_PEM={} OCI_RESOURCE_PRINCIPAL_REGION={} python3 -c 'import oci, os; \
                 s = oci.auth.signers.get_resource_principals_signer(); \
                 print(oci.object_storage.ObjectStorageClient({{}}, signer=s, service_endpoint=os.environ[\"OCI_API_ENDPOINT\"]).get_namespace().data)'",
                files.rpst_path().display(),
                files.key_path().display(),
                self.region
            ),
        ]
    }

    fn start(self: Box<Self>, shared: &Shared) -> Result<Runtime, ConfigError> {
        Ok(self.start_runtime(shared)?.runtime)
    }
}

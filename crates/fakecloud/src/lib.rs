//! Emulated clouds for credbroker's demo and tests.
//!
//! - [`issuer`]: a local OIDC issuer minting kubelet-shaped service-account tokens.
//! - [`kubelet`]: a projected token volume with kubelet's `..data` symlink swap.
//! - [`faults`] and [`http`]: fault injection and the server every fake runs on.
//! - [`aws`]: a faithful fake of STS: `AssumeRoleWithWebIdentity`, and SigV4-signed `AssumeRole`
//!   (role chaining) and `GetCallerIdentity`, the signature verified by hand.
//! - [`gcp`]: a faithful fake of Google STS and IAM Credentials.
//! - [`azure`]: a faithful fake of the Entra ID token endpoint (client-assertion grant).
//! - [`oci`]: OKE proxymux (HTTPS, generated CA) and a signature-verifying OCI API.
//! - [`kube`]: a Kubernetes API server for ServiceAccounts (HTTPS, bearer tokens, discovery),
//!   for real kubectl and the `kube` crate; [`pki`]: the generated cluster CA it and proxymux use.
//! - [`Cloudscape`]: all of the above started together, and ([`sidecar`]) the environment a
//!   credbroker sidecar gets to use any set of them.

pub mod aws;
pub mod azure;
pub mod faults;
pub mod gcp;
pub mod http;
pub mod issuer;
pub mod kube;
pub mod kubelet;
pub mod oci;
pub mod oidc;
pub mod pki;
pub mod sidecar;
mod timefmt;

use serde_json::json;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub use faults::{Fault, Faults};
pub use issuer::{Issuer, ServiceAccount, VerifiedToken, VerifyError};
pub use kubelet::ProjectedToken;

use aws::{DEFAULT_REGION, DEMO_ACCOUNT, DEMO_ROLE_ARN, FakeSts, FakeStsHandle, STS_AUDIENCE};
use azure::{DEMO_CLIENT_ID, DEMO_TENANT_ID, ENTRA_AUDIENCE, FakeEntra, FakeEntraHandle};
use gcp::{DEMO_PROJECT_ID, DEMO_PROJECT_NUMBER, DEMO_SERVICE_ACCOUNT, FakeGcp, FakeGcpHandle};
use http::{ServeOptions, ServerHandle, serve_listener};
use kube::{FakeKube, FakeKubeHandle};
use oci::{FakeOciApi, FakeOciApiHandle, FakeProxymux, FakeProxymuxHandle};
use oidc::IssuerServer;
use pki::Pki;

/// Options for [`Cloudscape::start`].
#[derive(Debug, Clone)]
pub struct CloudscapeOptions {
    /// Token volumes go under `state_dir/tokens/<cloud>/`.
    pub state_dir: PathBuf,
    /// Lifetime of minted tokens (kubelet's default `expirationSeconds` is 3600).
    pub token_lifetime: Duration,
    /// Rotate every token on this period; `None` rotates only on request.
    pub rotate_every: Option<Duration>,
    pub service_account: ServiceAccount,
    /// Lifetime of the RPSTs the OCI proxymux mints.
    pub oci_rpst_lifetime: Duration,
}

impl CloudscapeOptions {
    pub fn new(state_dir: impl Into<PathBuf>) -> CloudscapeOptions {
        CloudscapeOptions {
            state_dir: state_dir.into(),
            ..CloudscapeOptions::default()
        }
    }
}

impl Default for CloudscapeOptions {
    fn default() -> Self {
        CloudscapeOptions {
            state_dir: std::env::temp_dir().join(format!("fakecloud-{}", std::process::id())),
            token_lifetime: Duration::from_secs(3600),
            rotate_every: None,
            service_account: ServiceAccount::default(),
            oci_rpst_lifetime: oci::proxymux::DEFAULT_RPST_LIFETIME,
        }
    }
}

/// An issuer, its projected tokens and every fake cloud, on loopback ephemeral ports.
/// Dropping it stops the servers and rotation.
#[derive(Debug)]
pub struct Cloudscape {
    pub issuer: Arc<Issuer>,
    pub issuer_server: Arc<IssuerServer>,
    pub aws_token: Arc<ProjectedToken>,
    pub sts: FakeStsHandle,
    pub gcp_token: Arc<ProjectedToken>,
    pub gcp: FakeGcpHandle,
    /// `external_account` files: impersonating [`gcp::DEMO_SERVICE_ACCOUNT`], and direct federation.
    pub gcp_credentials: PathBuf,
    pub gcp_credentials_direct: PathBuf,
    pub azure_token: Arc<ProjectedToken>,
    pub entra: FakeEntraHandle,
    pub oci_token: Arc<ProjectedToken>,
    pub proxymux: FakeProxymuxHandle,
    pub oci_api: FakeOciApiHandle,
    /// The cluster CA that signed proxymux's certificate (`ca.crt`), PEM.
    pub oci_ca_path: PathBuf,
    /// The API server (same cluster CA as proxymux), holding the demo ServiceAccount.
    pub kube: FakeKubeHandle,
    /// A kubeconfig for [`Cloudscape::kube`] (bearer token, embedded CA).
    pub kubeconfig: PathBuf,
    /// The cluster CA again, under `kube/` (what a webhook's in-cluster `ca.crt` would be).
    pub kube_ca_path: PathBuf,
    issuer_handle: ServerHandle,
    rotation: AbortOnDrop,
}

/// Background tasks aborted when the owner goes away.
#[derive(Debug, Default)]
struct AbortOnDrop(Vec<JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

impl Cloudscape {
    pub async fn start(opts: CloudscapeOptions) -> io::Result<Cloudscape> {
        let state_dir = std::path::absolute(&opts.state_dir)?;
        std::fs::create_dir_all(&state_dir)?;
        let loopback = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));

        // The issuer URL embeds the port, so bind before building the issuer.
        let listener = TcpListener::bind(loopback).await?;
        let issuer = Arc::new(Issuer::new(format!("http://{}", listener.local_addr()?)));
        let issuer_server = Arc::new(IssuerServer::new(issuer.clone()));

        let aws_token = Arc::new(ProjectedToken::create(
            &token_dir(&state_dir, "aws"),
            issuer.clone(),
            opts.service_account.clone(),
            STS_AUDIENCE,
            opts.token_lifetime,
        )?);
        issuer_server.register(aws_token.clone());
        let gcp_token = Arc::new(ProjectedToken::create(
            &token_dir(&state_dir, "gcp"),
            issuer.clone(),
            opts.service_account.clone(),
            &gcp::token_audience(),
            opts.token_lifetime,
        )?);
        issuer_server.register(gcp_token.clone());
        let azure_token = Arc::new(ProjectedToken::create(
            &token_dir(&state_dir, "azure"),
            issuer.clone(),
            opts.service_account.clone(),
            ENTRA_AUDIENCE,
            opts.token_lifetime,
        )?);
        issuer_server.register(azure_token.clone());
        let oci_token = Arc::new(ProjectedToken::create(
            &token_dir(&state_dir, "oci"),
            issuer.clone(),
            opts.service_account.clone(),
            oci::SA_AUDIENCE,
            opts.token_lifetime,
        )?);
        issuer_server.register(oci_token.clone());
        let issuer_handle =
            serve_listener(issuer_server.clone(), listener, ServeOptions::default())?;

        let sts = FakeSts::start(issuer.clone(), loopback).await?;
        sts.trust(DEMO_ROLE_ARN, &opts.service_account.subject());
        sts.trust(
            sidecar::AWS_READER_ROLE_ARN,
            &opts.service_account.subject(),
        );
        sts.trust_role(
            sidecar::AWS_CHAINED_ROLE_ARN,
            DEMO_ROLE_ARN,
            Some(sidecar::AWS_CHAINED_EXTERNAL_ID),
        );
        let entra =
            FakeEntra::start(issuer.clone(), &opts.service_account.subject(), loopback).await?;
        entra.add_federated_credential(
            sidecar::AZURE_SECOND_CLIENT_ID,
            azure::FederatedCredential {
                issuer: issuer.url().to_string(),
                subject: opts.service_account.subject(),
                audience: ENTRA_AUDIENCE.to_string(),
            },
        );

        let gcp = FakeGcp::start(issuer.clone(), loopback).await?;
        gcp.trust(DEMO_SERVICE_ACCOUNT, &opts.service_account.subject());
        gcp.add_service_account(sidecar::GCP_SECOND_SERVICE_ACCOUNT);
        gcp.trust(
            sidecar::GCP_SECOND_SERVICE_ACCOUNT,
            &opts.service_account.subject(),
        );
        let gcp_dir = state_dir.join("gcp");
        std::fs::create_dir_all(&gcp_dir)?;
        let token_file = gcp_token.path().display().to_string();
        let gcp_credentials = gcp_dir.join("external_account.json");
        let impersonation = gcp.impersonation_url(DEMO_SERVICE_ACCOUNT);
        let doc = gcp::external_account_json(&gcp.token_url(), Some(&impersonation), &token_file);
        std::fs::write(&gcp_credentials, serde_json::to_vec_pretty(&doc)?)?;
        let gcp_credentials_direct = gcp_dir.join("external_account_direct.json");
        let doc = gcp::external_account_json(&gcp.token_url(), None, &token_file);
        std::fs::write(&gcp_credentials_direct, serde_json::to_vec_pretty(&doc)?)?;

        // Proxymux is verified by IP, as pods reach it through KUBERNETES_SERVICE_HOST.
        let pki = Pki::generate(
            "fakecloud cluster CA",
            &[loopback.ip()],
            &["localhost", "kubernetes.default.svc"],
        )?;
        let oci_ca_path = state_dir.join("oci").join("ca.crt");
        std::fs::create_dir_all(state_dir.join("oci"))?;
        std::fs::write(&oci_ca_path, pki.ca_pem())?;
        let rpst_signer = Arc::new(Issuer::new(oci::RPST_ISSUER));
        let proxymux = FakeProxymux::start(
            issuer.clone(),
            rpst_signer.clone(),
            oci::SA_AUDIENCE,
            &pki,
            loopback,
        )
        .await?;
        proxymux.set_rpst_lifetime(opts.oci_rpst_lifetime);
        let oci_api = FakeOciApi::start(rpst_signer, loopback).await?;

        // The API server shares the cluster CA with proxymux (both are the cluster endpoint).
        let kube = FakeKube::start(&pki, loopback).await?;
        kube.seed(demo_service_account(&opts.service_account))
            .map_err(|e| io::Error::other(e.to_string()))?;
        let kube_dir = state_dir.join("kube");
        std::fs::create_dir_all(&kube_dir)?;
        let kubeconfig = kube_dir.join("kubeconfig");
        kube.write_kubeconfig(&kubeconfig, &opts.service_account.namespace)?;
        let kube_ca_path = kube_dir.join("ca.crt");
        std::fs::write(&kube_ca_path, pki.ca_pem())?;

        let mut rotation = AbortOnDrop::default();
        if let Some(every) = opts.rotate_every {
            rotation.0.push(aws_token.spawn_rotation(every));
            rotation.0.push(gcp_token.spawn_rotation(every));
            rotation.0.push(azure_token.spawn_rotation(every));
            rotation.0.push(oci_token.spawn_rotation(every));
        }
        Ok(Cloudscape {
            issuer,
            issuer_server,
            aws_token,
            sts,
            gcp_token,
            gcp,
            gcp_credentials,
            gcp_credentials_direct,
            azure_token,
            entra,
            oci_token,
            proxymux,
            oci_api,
            oci_ca_path,
            kube,
            kubeconfig,
            kube_ca_path,
            issuer_handle,
            rotation,
        })
    }

    /// The issuer URL, `http://127.0.0.1:PORT`.
    pub fn issuer_url(&self) -> &str {
        self.issuer.url()
    }

    /// The issuer server (discovery, JWKS, `/_fake/rotate`).
    pub fn issuer_handle(&self) -> &ServerHandle {
        &self.issuer_handle
    }

    /// Rotates every projected token now; returns how many.
    pub fn rotate_tokens(&self) -> io::Result<usize> {
        self.issuer_server.rotate_all()
    }

    /// Endpoints and paths, as written to the ready file of `fakecloud run`.
    pub fn describe(&self) -> serde_json::Value {
        json!({
            "issuer": self.issuer.url(),
            "tokens": {
                "aws": self.aws_token.path(),
                "gcp": self.gcp_token.path(),
                "azure": self.azure_token.path(),
                "oci": self.oci_token.path(),
            },
            "aws": {
                "sts_endpoint": self.sts.url(),
                "admin": self.sts.admin_url(),
                "role_arn": DEMO_ROLE_ARN,
                "reader_role_arn": sidecar::AWS_READER_ROLE_ARN,
                "chained_role_arn": sidecar::AWS_CHAINED_ROLE_ARN,
                "chained_external_id": sidecar::AWS_CHAINED_EXTERNAL_ID,
                "region": DEFAULT_REGION,
                "account": DEMO_ACCOUNT,
            },
            "gcp": {
                "sts_endpoint": self.gcp.token_url(),
                "iam_endpoint": self.gcp.url(),
                "admin": self.gcp.admin_url(),
                "credentials_file": self.gcp_credentials,
                "credentials_file_direct": self.gcp_credentials_direct,
                "service_account": DEMO_SERVICE_ACCOUNT,
                "second_service_account": sidecar::GCP_SECOND_SERVICE_ACCOUNT,
                "project_id": DEMO_PROJECT_ID,
                "project_number": DEMO_PROJECT_NUMBER,
                "audience": gcp::provider_name(DEMO_PROJECT_NUMBER, gcp::DEMO_POOL, gcp::DEMO_PROVIDER),
                "pool": gcp::DEMO_POOL,
                "provider": gcp::DEMO_PROVIDER,
            },
            "azure": {
                "authority_host": format!("{}/", self.entra.url()),
                "token_url": self.entra.token_url(),
                "tenant_id": DEMO_TENANT_ID,
                "client_id": DEMO_CLIENT_ID,
                "second_client_id": sidecar::AZURE_SECOND_CLIENT_ID,
                "audience": ENTRA_AUDIENCE,
                "admin": self.entra.admin_url(),
            },
            "oci": {
                "proxymux_host": self.proxymux.host().to_string(),
                "proxymux_port": self.proxymux.port(),
                "proxymux_url": self.proxymux.url(),
                "ca_path": self.oci_ca_path,
                "api_endpoint": self.oci_api.url(),
                "admin": self.proxymux.admin_url(),
                "api_admin": self.oci_api.admin_url(),
                "region": oci::DEFAULT_REGION,
                "tenancy": oci::DEMO_TENANCY,
                "compartment": oci::DEMO_COMPARTMENT,
            },
            // The OCI API on its own, so generic helpers (`log`, `fault`) reach it by name.
            "oci_api": {
                "endpoint": self.oci_api.url(),
                "admin": self.oci_api.admin_url(),
            },
            // Per cloud, the sidecar's environment (`Cloudscape::sidecar`); `{files}` stands
            // for the directory the sidecar writes its files in.
            "sidecar": sidecar::CLOUDS
                .iter()
                .map(|c| {
                    let env: serde_json::Map<String, serde_json::Value> = self
                        .sidecar_for(c, "{files}")
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(k, v)| (k, serde_json::Value::String(v)))
                        .collect();
                    (c.to_string(), serde_json::Value::Object(env))
                })
                .collect::<serde_json::Map<_, _>>(),
            "kube": {
                "server": self.kube.url(),
                "kubeconfig": self.kubeconfig,
                "ca_path": self.kube_ca_path,
                "token": self.kube.token(),
                "admin": self.kube.admin_url(),
            },
        })
    }

    /// Stops rotation and every server.
    pub async fn shutdown(self) {
        let Cloudscape {
            sts,
            gcp,
            entra,
            proxymux,
            oci_api,
            kube,
            issuer_handle,
            rotation,
            ..
        } = self;
        drop(rotation);
        sts.shutdown().await;
        gcp.shutdown().await;
        entra.shutdown().await;
        proxymux.shutdown().await;
        oci_api.shutdown().await;
        kube.shutdown().await;
        issuer_handle.shutdown().await;
    }
}

/// The demo workload's ServiceAccount as `credbroker inject` reads it: annotated for every
/// cloud the way each cloud documents (spec/interface.md, "Injection").
pub fn demo_service_account(sa: &ServiceAccount) -> kube::ServiceAccount {
    let annotations = [
        ("eks.amazonaws.com/role-arn", DEMO_ROLE_ARN),
        ("azure.workload.identity/client-id", DEMO_CLIENT_ID),
        ("azure.workload.identity/tenant-id", DEMO_TENANT_ID),
        ("iam.gke.io/gcp-service-account", DEMO_SERVICE_ACCOUNT),
        ("credbroker.io/oci", "true"),
    ];
    kube::ServiceAccount {
        metadata: kube::object::ObjectMeta {
            name: sa.name.clone(),
            namespace: sa.namespace.clone(),
            annotations: annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// Lower-case hex SHA-256, how the fakes' request logs name tokens (never the token itself).
pub fn sha256_hex(bytes: impl AsRef<[u8]>) -> String {
    use std::fmt::Write as _;
    let hash = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes.as_ref());
    hash.as_ref()
        .iter()
        .fold(String::with_capacity(64), |mut out, b| {
            let _ = write!(out, "{b:02x}");
            out
        })
}

fn token_dir(state_dir: &Path, cloud: &str) -> PathBuf {
    state_dir.join("tokens").join(cloud)
}

//! OCI end to end against the emulated cluster: proxymux over HTTPS with the cluster CA, the
//! resource principal files, their refresh and restart behaviour, and the exchange's errors.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use credbroker::clock::{Clock, SystemClock};
use credbroker::clouds::oci::{Flags, OciConfig, OciRuntime};
use credbroker::clouds::{Shared, TokenSources};
use credbroker::config::Env;
use credbroker::exchange::{ExchangeError, Retry};
use credbroker::fs::FileMode;
use credbroker::http::client::{ClientOptions, build_client, tls_config};
use credbroker::metrics::Metrics;
use fakecloud::oci::signing::RequestSigner;
use fakecloud::oci::{Pki, sha256_hex};
use fakecloud::{Cloudscape, CloudscapeOptions, Fault};

struct World {
    _tmp: tempfile::TempDir,
    scape: Cloudscape,
    out: PathBuf,
}

async fn world() -> World {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let tmp = tempfile::tempdir().unwrap();
    let scape = Cloudscape::start(CloudscapeOptions::new(tmp.path().join("state")))
        .await
        .unwrap();
    let out = tmp.path().join("oci-files");
    World {
        _tmp: tmp,
        scape,
        out,
    }
}

impl World {
    /// What an OKE pod's sidecar sees.
    fn env(&self) -> Env {
        Env::from_pairs([
            ("OCI_RESOURCE_PRINCIPAL_REGION", "us-ashburn-1".to_string()),
            (
                "KUBERNETES_SERVICE_HOST",
                self.scape.proxymux.host().to_string(),
            ),
            (
                "KUBERNETES_SERVICE_PORT_PROXYMUX",
                self.scape.proxymux.port().to_string(),
            ),
            (
                "OCI_KUBERNETES_SERVICE_ACCOUNT_CERT_PATH",
                self.scape.oci_ca_path.display().to_string(),
            ),
        ])
    }

    fn start_with(&self, env: &Env, mode: FileMode) -> OciRuntime {
        let flags = Flags {
            oci_output_dir: Some(self.out.clone()),
            oci_token_file: self.scape.oci_token.path(),
        };
        let config = OciConfig::from_env(env, &flags).unwrap().unwrap();
        config.start_runtime(&shared(mode)).unwrap()
    }

    fn start(&self) -> OciRuntime {
        self.start_with(&self.env(), FileMode::new(false))
    }

    fn rpst(&self) -> String {
        std::fs::read_to_string(self.out.join("rpst")).unwrap()
    }

    fn pem(&self) -> String {
        std::fs::read_to_string(self.out.join("private.pem")).unwrap()
    }
}

fn shared(mode: FileMode) -> Shared {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let metrics = Arc::new(Metrics::new());
    Shared {
        http: build_client(tls_config(None, &[]).unwrap(), &ClientOptions::default()).unwrap(),
        metrics: metrics.clone(),
        clock: clock.clone(),
        tokens: TokenSources::new(clock, metrics),
        file_mode: mode,
        env: Env::default(),
    }
}

async fn wait_until(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The first exchange's failure.
async fn first_error(rt: &OciRuntime) -> ExchangeError {
    let mut err = None;
    wait_until("the first exchange to fail", 20, || {
        err = rt.slot().with_state(|s| s.error.clone());
        err.is_some()
    })
    .await;
    err.unwrap()
}

fn mode_of(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// Signs `GET /n/` with the files' contents, as an SDK would, and returns the API's status.
async fn call_api_with_files(w: &World) -> u16 {
    let signer = RequestSigner::new(&w.rpst(), w.pem().as_bytes()).unwrap();
    let host = w.scape.oci_api.addr().to_string();
    let headers = signer
        .sign(
            "GET",
            &host,
            "/n/",
            b"",
            "application/json",
            SystemTime::now(),
        )
        .unwrap();
    let mut req = reqwest::Client::new().get(format!("{}/n/", w.scape.oci_api.url()));
    for (k, v) in headers.iter().filter(|(k, _)| k != "host") {
        req = req.header(k.as_str(), v.as_str());
    }
    req.send().await.unwrap().status().as_u16()
}

#[tokio::test]
async fn writes_files_the_oci_api_accepts() {
    let w = world().await;
    let rt = w.start();
    assert!(rt.readiness().is_err());
    wait_until("readiness", 20, || rt.readiness().is_ok()).await;

    let rpst = w.rpst();
    let pem = w.pem();
    assert!(!rpst.ends_with('\n') && !rpst.starts_with("ST$"));
    assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----") && !pem.ends_with('\n'));
    assert_eq!(mode_of(&w.out.join("rpst")), 0o600);
    assert_eq!(mode_of(&w.out.join("private.pem")), 0o600);

    // The RPST on disk is the one proxymux issued, for the key on disk.
    let log = w.scape.proxymux.log();
    let issued = log.iter().rfind(|r| r.outcome == "issued").unwrap();
    assert_eq!(
        issued.rpst_sha256.as_deref(),
        Some(sha256_hex(rpst.as_bytes()).as_str())
    );
    assert_eq!(
        issued.pod_key_sha256.as_deref(),
        Some(sha256_hex(rt.key().spki_der()).as_str())
    );
    assert_eq!(issued.pod_key_form.as_deref(), Some("spki"));
    let rid = issued.opc_request_id.as_deref().unwrap();
    assert_eq!(rid.split('/').count(), 3);

    assert_eq!(call_api_with_files(&w).await, 200);
    let summary = rt.summary().unwrap();
    assert!(summary.contains("tenancy ocid1.tenancy"), "{summary}");
    assert!(!summary.contains(&rpst));

    // A deleted file makes the cloud not ready (the writer's 30 s backstop restores it).
    std::fs::remove_file(w.out.join("rpst")).unwrap();
    let why = rt.readiness().unwrap_err().to_string();
    assert!(why.contains("rpst"), "{why}");
}

#[tokio::test]
async fn group_readable_files_on_request() {
    let w = world().await;
    let rt = w.start_with(&w.env(), FileMode::new(true));
    wait_until("readiness", 20, || rt.readiness().is_ok()).await;
    assert_eq!(mode_of(&w.out.join("rpst")), 0o640);
    assert_eq!(mode_of(&w.out.join("private.pem")), 0o640);
}

#[tokio::test]
async fn rpst_rotates_at_half_life_with_a_stable_key_reused_after_restart() {
    let w = world().await;
    // A 12 s RPST is shorter than the SDK window, so it is refreshed at about half-life.
    w.scape.proxymux.set_rpst_lifetime(Duration::from_secs(12));
    let rt = w.start();
    wait_until("readiness", 20, || rt.readiness().is_ok()).await;
    let (first_rpst, pem) = (w.rpst(), w.pem());
    wait_until("a rotation", 15, || rt.writer().writes() >= 2).await;
    let second_rpst = w.rpst();
    assert_ne!(first_rpst, second_rpst);
    assert_eq!(
        w.pem(),
        pem,
        "the key file must not change across refreshes"
    );
    let issued: Vec<_> = w
        .scape
        .proxymux
        .log()
        .into_iter()
        .filter(|r| r.outcome == "issued")
        .collect();
    assert!(issued.len() >= 2);
    let key_sha = sha256_hex(rt.key().spki_der());
    assert!(
        issued
            .iter()
            .all(|r| r.pod_key_sha256.as_deref() == Some(key_sha.as_str()))
    );
    // Refreshed around half-life (6 s ± 10 %), not in a loop.
    let gap = issued[1].at - issued[0].at;
    assert!((4.5..=8.0).contains(&gap), "refresh after {gap} s");
    assert_eq!(call_api_with_files(&w).await, 200);

    // A restart reuses the key file and keeps the old RPST usable meanwhile.
    drop(rt);
    w.scape
        .proxymux
        .set_rpst_lifetime(Duration::from_secs(3600));
    let before = w.scape.proxymux.issued_count();
    let rt = w.start();
    assert_eq!(w.pem(), pem);
    assert_eq!(rt.key().spki_der(), sha_source(&pem));
    wait_until("a new exchange", 20, || {
        w.scape.proxymux.issued_count() > before && rt.readiness().is_ok()
    })
    .await;
    let last = w.scape.proxymux.log().pop().unwrap();
    assert_eq!(last.pod_key_sha256.as_deref(), Some(key_sha.as_str()));
    assert_eq!(call_api_with_files(&w).await, 200);
}

/// The SPKI of the key in a PEM (through the broker's own parser).
fn sha_source(pem: &str) -> Vec<u8> {
    credbroker::clouds::oci::key::PodKey::from_pem(pem.as_bytes())
        .unwrap()
        .spki_der()
        .to_vec()
}

#[tokio::test]
async fn proxymux_403_says_the_cluster_must_be_enhanced() {
    let w = world().await;
    w.scape.proxymux.faults().set(Fault::Status {
        status: 403,
        count: None,
        retry_after: None,
    });
    let rt = w.start();
    let err = first_error(&rt).await;
    assert_eq!(err.retry, Retry::Permanent);
    assert_eq!(err.status, Some(403));
    assert!(
        err.message.contains("cluster must be an enhanced cluster"),
        "{err}"
    );
    assert!(err.message.contains("type must be enhanced"), "{err}");
    let why = rt.readiness().unwrap_err().to_string();
    assert!(why.contains("enhanced cluster"), "{why}");
    assert!(!w.out.join("rpst").exists());
}

#[tokio::test]
async fn tls_with_the_wrong_ca_fails_transiently() {
    let w = world().await;
    let other = Pki::generate("not the cluster CA", &["127.0.0.1".parse().unwrap()], &[]).unwrap();
    let wrong_ca = w.out.with_file_name("wrong-ca.crt");
    std::fs::write(&wrong_ca, other.ca_pem()).unwrap();
    let mut env = w.env();
    env.set(
        "OCI_KUBERNETES_SERVICE_ACCOUNT_CERT_PATH",
        wrong_ca.display().to_string(),
    );
    let rt = w.start_with(&env, FileMode::new(false));
    let err = first_error(&rt).await;
    assert_eq!(err.retry, Retry::Transient);
    assert!(
        err.message.to_ascii_lowercase().contains("certificate"),
        "{err}"
    );
    // The handshake failed, so proxymux never saw a request (nor the token).
    assert_eq!(w.scape.proxymux.log().len(), 0);
    assert!(rt.readiness().is_err());
}

#[tokio::test]
async fn a_certificate_without_the_ip_san_is_refused() {
    let w = world().await;
    // A proxymux whose certificate names only `localhost`: reached by IP, as pods reach it,
    // the IP SAN check must fail even though the CA is trusted.
    let pki = Pki::generate("dns-only CA", &[], &["localhost"]).unwrap();
    let proxymux = fakecloud::oci::FakeProxymux::start(
        w.scape.issuer.clone(),
        Arc::new(fakecloud::Issuer::new(fakecloud::oci::RPST_ISSUER)),
        fakecloud::oci::SA_AUDIENCE,
        &pki,
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let ca = w.out.with_file_name("dns-only-ca.crt");
    std::fs::write(&ca, pki.ca_pem()).unwrap();
    let mut env = w.env();
    env.set(
        "KUBERNETES_SERVICE_PORT_PROXYMUX",
        proxymux.port().to_string(),
    );
    env.set(
        "OCI_KUBERNETES_SERVICE_ACCOUNT_CERT_PATH",
        ca.display().to_string(),
    );
    let rt = w.start_with(&env, FileMode::new(false));
    let err = first_error(&rt).await;
    assert_eq!(err.retry, Retry::Transient);
    assert!(
        err.message.to_ascii_lowercase().contains("certificate"),
        "{err}"
    );
    assert!(proxymux.log().is_empty());
}

#[tokio::test]
async fn a_malformed_body_is_a_clear_transient_error() {
    let w = world().await;
    w.scape
        .proxymux
        .faults()
        .set(Fault::Garbage { count: Some(1) });
    let rt = w.start();
    let err = first_error(&rt).await;
    assert_eq!(err.code, "MalformedResponse");
    assert_eq!(err.retry, Retry::Transient);
    // The retry (after ~1 s of backoff) succeeds.
    wait_until("recovery", 20, || rt.readiness().is_ok()).await;
}

#[tokio::test]
async fn an_rpst_for_another_key_is_refused_and_not_written() {
    let w = world().await;
    w.scape.proxymux.set_foreign_jwk(1);
    let rt = w.start();
    let err = first_error(&rt).await;
    assert_eq!(err.code, "RpstKeyMismatch");
    assert_eq!(err.retry, Retry::Permanent);
    assert!(err.message.contains(rt.key().fingerprint()));
    assert!(!w.out.join("rpst").exists());
    assert!(w.out.join("private.pem").exists());
    let why = rt.readiness().unwrap_err().to_string();
    assert!(why.contains("RpstKeyMismatch"), "{why}");
}

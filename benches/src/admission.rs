//! `credbroker inject`'s admission latency and memory (issue 12's figures):
//!
//! - **ServiceAccount read excluded**: `Webhook::review` in process, ServiceAccounts held in
//!   memory: parsing the AdmissionReview, every cloud's part, the application environment from
//!   the sidecar's own configuration code, the JSON Patch, the answer.
//! - **ServiceAccount read included**: the real binary over HTTPS (`POST /mutate`, one keep-alive
//!   connection, requests one after another as the API server sends a pod's review), reading the
//!   ServiceAccount from fakecloud's emulated API server for every review; twice, as an A/A pair.
//! - **the read alone**: the same ServiceAccount GET against the emulated API server from the
//!   same client, so the included figure can be split into read and review.
//! - **wrk** (one connection, the same POST) as the generator no one here wrote.
//! - the webhook's RSS: idle after start, after the runs, and its peak (`VmHWM`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use credbroker::clouds::InjectFlags;
use credbroker::http::client::{ClientOptions, build_client, tls_config};
use credbroker::inject::accounts::{Accounts, LookupError};
use credbroker::inject::metrics::InjectMetrics;
use credbroker::inject::mutate::Sidecar;
use credbroker::inject::part::ServiceAccount;
use credbroker::inject::review::Webhook;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use serde::Serialize;
use serde_json::{Value, json};

use crate::procs::{Proc, addr_of};
use crate::procstat::status_kib;
use crate::stats::quantile;
use crate::targets::WireSpec;
use crate::wrk;

/// The cloud-wide settings every measurement uses (all four clouds' parts are built).
const FLAGS: [&str; 8] = [
    "--aws-region",
    "us-east-1",
    "--azure-tenant-id",
    "72f988bf-86f1-41af-91ab-2d7cd011db47",
    "--gcp-workload-identity-provider",
    "//iam.googleapis.com/projects/314159/locations/global/workloadIdentityPools/pool/providers/k8s",
    "--oci-region",
    "us-ashburn-1",
];

#[derive(Debug, Clone)]
pub struct AdmissionConfig {
    pub broker: PathBuf,
    /// Reviews per measured series.
    pub requests: usize,
    /// Reviews sent before each series (connection, caches, allocator warm).
    pub warmup: usize,
    /// Seconds of the wrk run; 0 skips it.
    pub wrk_seconds: u64,
}

/// Latency quantiles, microseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Quantiles {
    pub p50_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
    pub n: usize,
}

impl Quantiles {
    fn of(v: &[f64]) -> Quantiles {
        Quantiles {
            p50_us: quantile(v, 0.5).unwrap_or(f64::NAN),
            p99_us: quantile(v, 0.99).unwrap_or(f64::NAN),
            max_us: v.iter().copied().fold(f64::NAN, f64::max),
            n: v.len(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct WrkFigures {
    pub requests: u64,
    pub errors: u64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub requests_per_s: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct AdmissionReport {
    /// `Webhook::review` in process, ServiceAccounts in memory (read excluded).
    pub in_process: Quantiles,
    /// The binary over HTTPS, ServiceAccount read from the emulated API server (read included).
    pub https: Quantiles,
    /// The same series again: the A/A control (how far two identical runs differ).
    pub https_again: Quantiles,
    /// The ServiceAccount GET alone against the emulated API server, same client.
    pub api_read: Quantiles,
    pub wrk: Option<WrkFigures>,
    pub rss_idle_kib: u64,
    pub rss_after_kib: u64,
    pub rss_peak_kib: u64,
    /// All-four-clouds pod: the patch's operations (a sanity figure: the review did the work).
    pub patch_operations: usize,
}

/// The demo ServiceAccount's annotations (every cloud), as fakecloud seeds them.
struct InMemory(ServiceAccount);

impl Accounts for InMemory {
    async fn get(&self, _namespace: &str, _name: &str) -> Result<ServiceAccount, LookupError> {
        Ok(self.0.clone())
    }
}

/// An AdmissionReview of a labelled two-container pod using `sa`.
fn review_body(namespace: &str, sa: &str) -> String {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "0f6b2c1e-5a4d-4e3b-9c2a-7d8e9f0a1b2c",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": namespace,
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "generateName": "orders-6d9f7c8b5-",
                    "namespace": namespace,
                    "labels": {"app": "orders", "credbroker.io/inject": "true"}
                },
                "spec": {
                    "serviceAccountName": sa,
                    "containers": [
                        {"name": "app", "image": "registry.example.com/orders:1.4.2",
                         "env": [{"name": "LOG_LEVEL", "value": "info"}]},
                        {"name": "worker", "image": "registry.example.com/orders-worker:1.4.2"}
                    ]
                }
            },
            "oldObject": null,
            "dryRun": false,
            "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"}
        }
    })
    .to_string()
}

/// Checks one answer: allowed, with a patch. Returns the patch's operation count.
fn check_answer(answer: &Value) -> Result<usize, String> {
    let r = &answer["response"];
    if r["allowed"] != true {
        return Err(format!("the review was refused: {answer}"));
    }
    let patch = r["patch"].as_str().ok_or("no patch in the answer")?;
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(patch)
        .map_err(|e| e.to_string())?;
    let ops: Vec<Value> = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
    Ok(ops.len())
}

fn flags() -> InjectFlags {
    InjectFlags::parse_from(FLAGS).expect("the bench's inject flags parse")
}

async fn in_process(
    cfg: &AdmissionConfig,
    sa: ServiceAccount,
    body: &str,
) -> Result<(Quantiles, usize), String> {
    let webhook = Webhook {
        accounts: InMemory(sa),
        sidecar: Sidecar {
            image: "credbroker:bench".into(),
        },
        flags: flags(),
        metrics: Arc::new(InjectMetrics::default()),
    };
    let body = Bytes::from(body.to_string());
    let ops = check_answer(&webhook.review(Ok(body.clone())).await)?;
    for _ in 0..cfg.warmup {
        webhook.review(Ok(body.clone())).await;
    }
    let mut us = Vec::with_capacity(cfg.requests);
    for _ in 0..cfg.requests {
        let t = Instant::now();
        let answer = webhook.review(Ok(body.clone())).await;
        us.push(t.elapsed().as_secs_f64() * 1e6);
        std::hint::black_box(answer);
    }
    Ok((Quantiles::of(&us), ops))
}

fn client_trusting(ca_pem: &str) -> Result<reqwest::Client, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(ca_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("CA PEM: {e}"))?;
    let tls = tls_config(None, &certs).map_err(|e| e.to_string())?;
    build_client(tls, &ClientOptions::default()).map_err(|e| e.to_string())
}

/// `requests` sequential requests after `warmup`; microseconds each.
async fn series(
    warmup: usize,
    requests: usize,
    mut send: impl AsyncFnMut() -> Result<(), String>,
) -> Result<Quantiles, String> {
    for _ in 0..warmup {
        send().await?;
    }
    let mut us = Vec::with_capacity(requests);
    for _ in 0..requests {
        let t = Instant::now();
        send().await?;
        us.push(t.elapsed().as_secs_f64() * 1e6);
    }
    Ok(Quantiles::of(&us))
}

pub async fn run(cfg: &AdmissionConfig) -> Result<AdmissionReport, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let scape =
        fakecloud::Cloudscape::start(fakecloud::CloudscapeOptions::new(dir.path().join("cloud")))
            .await
            .map_err(|e| format!("fakecloud: {e}"))?;
    let who = fakecloud::issuer::ServiceAccount::default();
    let seeded = scape
        .kube
        .service_account(&who.namespace, &who.name)
        .ok_or("fakecloud seeded no demo ServiceAccount")?;
    let sa = ServiceAccount {
        namespace: who.namespace.clone(),
        name: who.name.clone(),
        annotations: seeded.metadata.annotations.clone(),
    };
    let body = review_body(&who.namespace, &who.name);

    let (in_process, patch_operations) = in_process(cfg, sa, &body).await?;

    // The binary, with a certificate of its own, reading from the emulated API server.
    let pki = fakecloud::pki::Pki::generate(
        "credbroker bench webhook CA",
        &["127.0.0.1".parse().unwrap()],
        &["localhost"],
    )
    .map_err(|e| e.to_string())?;
    let cert = dir.path().join("tls.crt");
    let key = dir.path().join("tls.key");
    std::fs::write(&cert, pki.server_cert_pem()).map_err(|e| e.to_string())?;
    std::fs::write(&key, pki.server_key_pem()).map_err(|e| e.to_string())?;
    let kubeconfig = dir.path().join("kubeconfig");
    scape
        .kube
        .write_kubeconfig(&kubeconfig, &who.namespace)
        .map_err(|e| e.to_string())?;
    let addr_file = dir.path().join("addrs");
    let mut cmd = Command::new(&cfg.broker);
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("KUBECONFIG", &kubeconfig)
        .args([
            "--log-level",
            "warn",
            "inject",
            "--listen",
            "127.0.0.1:0",
            "--ops-listen",
            "127.0.0.1:0",
        ])
        .arg("--tls-cert-file")
        .arg(&cert)
        .arg("--tls-key-file")
        .arg(&key)
        .args(["--image", "credbroker:bench"])
        .arg("--addr-file")
        .arg(&addr_file)
        .args(FLAGS);
    let mut proc_ = Proc::spawn("credbroker inject", cmd, &dir.path().join("inject.log"))?;
    let addrs = proc_.wait_for_file(&addr_file, Duration::from_secs(30))?;
    let webhook = addr_of(&addrs, "webhook").ok_or("no webhook= in --addr-file")?;
    let url = format!("https://localhost:{}/mutate", webhook.port());
    let client = client_trusting(pki.ca_pem())?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_idle_kib = status_kib(proc_.pid(), "VmRSS").map_err(|e| e.to_string())?;

    let post = async || -> Result<(), String> {
        let resp = client
            .post(&url)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status();
        let answer: Value = resp.json().await.map_err(|e| e.to_string())?;
        if status != 200 {
            return Err(format!("webhook answered {status}: {answer}"));
        }
        check_answer(&answer).map(|_| ())
    };
    let https = series(cfg.warmup, cfg.requests, post).await?;

    let api_client = client_trusting(scape.kube.ca_pem())?;
    let api_url = format!(
        "{}/api/v1/namespaces/{}/serviceaccounts/{}",
        scape.kube.url(),
        who.namespace,
        who.name
    );
    let bearer = format!("Bearer {}", scape.kube.token());
    let read = async || -> Result<(), String> {
        let resp = api_client
            .get(&api_url)
            .header("authorization", &bearer)
            .header("accept", "application/json")
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if resp.status() != 200 {
            return Err(format!("API server answered {}", resp.status()));
        }
        resp.bytes().await.map_err(|e| e.to_string())?;
        Ok(())
    };
    let api_read = series(cfg.warmup, cfg.requests, read).await?;
    let https_again = series(cfg.warmup, cfg.requests, post).await?;

    let wrk = if cfg.wrk_seconds > 0 {
        Some(run_wrk(dir.path(), &body, webhook.port(), cfg.wrk_seconds)?)
    } else {
        None
    };
    proc_.alive()?;
    let rss_after_kib = status_kib(proc_.pid(), "VmRSS").map_err(|e| e.to_string())?;
    let rss_peak_kib = status_kib(proc_.pid(), "VmHWM").map_err(|e| e.to_string())?;
    drop(proc_);
    scape.shutdown().await;
    Ok(AdmissionReport {
        in_process,
        https,
        https_again,
        api_read,
        wrk,
        rss_idle_kib,
        rss_after_kib,
        rss_peak_kib,
        patch_operations,
    })
}

fn run_wrk(dir: &Path, body: &str, port: u16, seconds: u64) -> Result<WrkFigures, String> {
    let spec = WireSpec {
        method: "POST".into(),
        path_and_query: "/mutate".into(),
        headers: vec![("content-type".into(), "application/json".into())],
    };
    let script = dir.join("admission.lua");
    std::fs::write(&script, wrk::script_with_body(&spec, Some(body))).map_err(|e| e.to_string())?;
    let url = format!("https://127.0.0.1:{port}/mutate");
    let out = Command::new("wrk")
        .args(wrk::args(1, seconds, &script.display().to_string(), &url))
        .output()
        .map_err(|e| format!("wrk: {e} (apt-get install wrk)"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let w = wrk::parse(&stdout)?;
    if w.errors > 0 {
        return Err(format!(
            "wrk counted {} errors against the webhook:\n{stdout}",
            w.errors
        ));
    }
    Ok(WrkFigures {
        requests: w.requests,
        errors: w.errors,
        p50_us: w.p50_us,
        p99_us: w.p99_us,
        requests_per_s: w.requests as f64 / (w.duration_us as f64 / 1e6),
    })
}

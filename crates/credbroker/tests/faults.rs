//! Fault injection under load: the binary with AWS, GCP, Azure and OCI enabled, steady client
//! load on every credential surface (AWS container, IMDSv2, GCE token, Azure IMDS, and OCI's
//! `rpst` file, read as an SDK reads it), while each cloud's upstream misbehaves or its token
//! file is broken, independently per cloud.
//!
//! Credentials are cut to [`LIFETIME`] by the fakes so the first refresh (at half-life, ±10 %)
//! comes within ~20 s. Each fault is injected right after start; once a cloud's refresh has
//! failed, the fault is held for [`HOLD`] more, then cleared. Every upstream goes through a
//! front that the TLS scenarios switch to an untrusted certificate or to plain HTTP: a
//! TLS-terminating one (trusted through `--upstream-ca-file`) for AWS, GCP and Azure, a TCP
//! relay to proxymux's own TLS (trusted through the cluster CA) for OCI.
//!
//! Per fault and cloud the suite reports, and asserts:
//! - failed client requests while a credential with more than 5 s left had been served: 0;
//! - expired credentials served (every served expiry against the clock): 0, and none inside the
//!   5 s floor either;
//! - upstream calls made, against the bound the backoff allows;
//! - time from clearing the fault to the next successful exchange, against one backoff period
//!   (the one in effect at that point) plus an attempt that was already in flight.
//!
//! The table is printed and written to `$CARGO_TARGET_TMPDIR/fault-injection.md`.
//! `CREDBROKER_FAULT_PARALLEL` sets how many scenarios run at once (default 7).

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use credbroker::http::client::{ClientOptions, build_client, tls_config};
use fakecloud::faults::{Fault, Faults};
use fakecloud::{Cloudscape, ProjectedToken};
use parking_lot::Mutex;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::AbortHandle;

/// Lifetime the fakes give every credential: refresh at ~20 s, unservable after 35 s.
const LIFETIME: Duration = Duration::from_secs(40);
/// How long a fault stays on after a cloud's first failed exchange.
const HOLD: Duration = Duration::from_secs(3);
/// The broker's upstream read timeout (`ClientOptions::default`): how long a request held by a
/// `timeout` fault can keep an exchange in flight past the moment the fault clears.
const UPSTREAM_READ_TIMEOUT: f64 = 10.0;
/// Time the recovering exchange itself may take (connection, TLS, one or two round trips on a
/// loaded 2-core machine) on top of the backoff delay, plus the 0.1 s metrics polling.
const EXCHANGE_ALLOWANCE: f64 = 2.0;
/// One load request per surface this often.
const LOAD_PERIOD: Duration = Duration::from_millis(200);
/// Expiry values carry whole seconds; requests take time. Tolerance on the 5 s floor.
const SLACK: f64 = 1.5;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cloud {
    Aws,
    Gcp,
    Azure,
    Oci,
}

const CLOUDS: [Cloud; 4] = [Cloud::Aws, Cloud::Gcp, Cloud::Azure, Cloud::Oci];

impl Cloud {
    fn label(self) -> &'static str {
        match self {
            Cloud::Aws => "aws",
            Cloud::Gcp => "gcp",
            Cloud::Azure => "azure",
            Cloud::Oci => "oci",
        }
    }

    /// Upstream calls per exchange: GCP impersonation is STS then IAM Credentials.
    fn calls_per_exchange(self) -> u64 {
        match self {
            Cloud::Gcp => 2,
            _ => 1,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TokenFault {
    Deleted,
    Emptied,
    Garbage,
    PartiallyWritten,
}

#[derive(Debug, Clone)]
enum Kind {
    /// A persistent upstream fault, on every request until cleared.
    Upstream(Fault),
    /// Every upstream answer delayed (slow responses; nothing fails).
    Slow(Duration),
    /// The TLS front presents a certificate nobody trusts.
    UntrustedCert,
    /// The TLS front answers plain HTTP on the https port.
    PlainHttp,
    Token(TokenFault),
    /// The token rotated every 300 ms while every exchange takes 1 s (nothing fails).
    RotatedMidExchange,
}

impl Kind {
    /// Whether the fault makes exchanges fail (the others only slow them down).
    fn fails(&self) -> bool {
        !matches!(self, Kind::Slow(_) | Kind::RotatedMidExchange)
    }

    /// `Retry-After` the fault sends, which the backoff must honour.
    fn retry_after(&self) -> f64 {
        match self {
            Kind::Upstream(Fault::Status {
                retry_after: Some(s),
                ..
            }) => *s as f64,
            _ => 0.0,
        }
    }

    /// How long an attempt started before the fault cleared may still take.
    fn in_flight(&self) -> f64 {
        match self {
            Kind::Upstream(Fault::Timeout { .. }) => UPSTREAM_READ_TIMEOUT,
            _ => 0.0,
        }
    }
}

fn scenarios() -> Vec<(&'static str, Kind)> {
    vec![
        (
            "upstream 5xx burst",
            Kind::Upstream(Fault::Status {
                status: 500,
                count: None,
                retry_after: None,
            }),
        ),
        (
            "upstream 429, Retry-After: 3",
            Kind::Upstream(Fault::Status {
                status: 429,
                count: None,
                retry_after: Some(3),
            }),
        ),
        (
            "upstream timeout",
            Kind::Upstream(Fault::Timeout { count: None }),
        ),
        ("slow upstream (3 s)", Kind::Slow(Duration::from_secs(3))),
        (
            "malformed body (garbage)",
            Kind::Upstream(Fault::Garbage { count: None }),
        ),
        (
            "oversized body (8 MiB)",
            Kind::Upstream(Fault::Oversized { count: None }),
        ),
        (
            "connection reset",
            Kind::Upstream(Fault::Reset { count: None }),
        ),
        ("TLS: untrusted certificate", Kind::UntrustedCert),
        ("TLS: plain HTTP on https", Kind::PlainHttp),
        ("token file deleted", Kind::Token(TokenFault::Deleted)),
        ("token file emptied", Kind::Token(TokenFault::Emptied)),
        ("token file garbage", Kind::Token(TokenFault::Garbage)),
        (
            "token file partially written",
            Kind::Token(TokenFault::PartiallyWritten),
        ),
        ("token rotated mid-exchange", Kind::RotatedMidExchange),
    ]
}

// === the TLS front ===

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FrontMode {
    Pass,
    UntrustedCert,
    PlainHttp,
}

/// A TLS-terminating TCP relay in front of one fake. Switching away from `Pass` also cuts every
/// relayed connection, so pooled connections cannot hide the fault.
struct Front {
    addr: SocketAddr,
    mode: Arc<Mutex<FrontMode>>,
    relayed: Arc<Mutex<Vec<AbortHandle>>>,
    /// Connections refused by a TLS fault: upstream calls the fake never sees.
    refused: Arc<AtomicU64>,
    task: AbortHandle,
}

struct Certs {
    good: Arc<rustls::ServerConfig>,
    rogue: Arc<rustls::ServerConfig>,
    ca_file: std::path::PathBuf,
}

impl Front {
    /// `terminate`: decrypt and relay plain bytes to a plain-HTTP fake; otherwise relay the
    /// TCP stream as it is (to a fake that speaks TLS itself).
    async fn start(backend: SocketAddr, certs: &Certs, terminate: bool) -> Front {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mode = Arc::new(Mutex::new(FrontMode::Pass));
        let relayed: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let refused = Arc::new(AtomicU64::new(0));
        let good = tokio_rustls::TlsAcceptor::from(certs.good.clone());
        let rogue = tokio_rustls::TlsAcceptor::from(certs.rogue.clone());
        let (m, r, f) = (mode.clone(), relayed.clone(), refused.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let current = *m.lock();
                match current {
                    FrontMode::Pass => {
                        let good = good.clone();
                        let handle = tokio::spawn(async move {
                            let Ok(mut up) = TcpStream::connect(backend).await else {
                                return;
                            };
                            if terminate {
                                let Ok(mut tls) = good.accept(stream).await else {
                                    return;
                                };
                                let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
                            } else {
                                let mut stream = stream;
                                let _ = tokio::io::copy_bidirectional(&mut stream, &mut up).await;
                            }
                        });
                        let mut list = r.lock();
                        list.retain(|h| !h.is_finished());
                        list.push(handle.abort_handle());
                    }
                    FrontMode::UntrustedCert => {
                        f.fetch_add(1, Ordering::SeqCst);
                        let rogue = rogue.clone();
                        tokio::spawn(async move {
                            let _ = rogue.accept(stream).await;
                        });
                    }
                    FrontMode::PlainHttp => {
                        f.fetch_add(1, Ordering::SeqCst);
                        tokio::spawn(async move {
                            let mut stream = stream;
                            let mut buf = [0u8; 1024];
                            let _ = stream.read(&mut buf).await;
                            let _ = stream
                                .write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                                .await;
                        });
                    }
                }
            }
        })
        .abort_handle();
        Front {
            addr,
            mode,
            relayed,
            refused,
            task,
        }
    }

    fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    fn set_mode(&self, mode: FrontMode) {
        *self.mode.lock() = mode;
        if mode != FrontMode::Pass {
            for h in self.relayed.lock().drain(..) {
                h.abort();
            }
        }
    }
}

impl Drop for Front {
    fn drop(&mut self) {
        self.task.abort();
        for h in self.relayed.lock().drain(..) {
            h.abort();
        }
    }
}

/// A self-signed certificate for 127.0.0.1 that the broker trusts, and another that it does not.
fn make_certs(dir: &Path) -> Certs {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut configs = Vec::new();
    for name in ["good", "rogue"] {
        let (cert, key) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
        );
        let out = std::process::Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            ])
            .args([
                "-subj",
                "/CN=127.0.0.1",
                "-addext",
                "subjectAltName=IP:127.0.0.1",
            ])
            // webpki refuses a CA certificate as the server's own certificate.
            .args(["-addext", "basicConstraints=critical,CA:FALSE"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .expect("openssl is needed to make test certificates");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut config = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from_pem_file(&cert).unwrap()],
                PrivateKeyDer::from_pem_file(&key).unwrap(),
            )
            .unwrap();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        configs.push(Arc::new(config));
    }
    Certs {
        rogue: configs.pop().unwrap(),
        good: configs.pop().unwrap(),
        ca_file: dir.join("good.pem"),
    }
}

// === load ===

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Surf {
    AwsContainer,
    AwsImds,
    Gcp,
    Azure,
    /// The `rpst` file in `--oci-output-dir`, read and decoded as an SDK does.
    OciFile,
}

impl Surf {
    fn cloud(self) -> Cloud {
        match self {
            Surf::AwsContainer | Surf::AwsImds => Cloud::Aws,
            Surf::Gcp => Cloud::Gcp,
            Surf::Azure => Cloud::Azure,
            Surf::OciFile => Cloud::Oci,
        }
    }
}

/// One client request: when it was sent and answered (Unix seconds), the status (0 when the
/// connection failed) and the expiry the answer carried.
#[derive(Debug, Clone, Copy)]
struct Sample {
    sent: f64,
    answered: f64,
    status: u16,
    expiry: Option<f64>,
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

async fn one_request(
    client: &reqwest::Client,
    surf: Surf,
    base: &str,
    auth: &str,
    imds: &str,
) -> Sample {
    let sent = unix_now();
    if surf == Surf::OciFile {
        // `base` is the output directory. A missing, partial or undecodable file is a failure.
        let rpst = std::fs::read_to_string(Path::new(base).join("rpst")).ok();
        let key = std::fs::metadata(Path::new(base).join("private.pem")).map_or(0, |m| m.len());
        let expiry = rpst
            .filter(|_| key > 0)
            .and_then(|t| credbroker::token::jwt::decode_claims(t.trim()).ok())
            .and_then(|c| c.exp)
            .map(|e| e as f64);
        return Sample {
            sent,
            answered: unix_now(),
            status: if expiry.is_some() { 200 } else { 0 },
            expiry,
        };
    }
    let req = match surf {
        Surf::AwsContainer => client
            .get(format!("{base}/v1/credentials"))
            .header("Authorization", auth),
        Surf::AwsImds => client
            .get(format!(
                "{base}/latest/meta-data/iam/security-credentials/credbroker-demo"
            ))
            .header("X-aws-ec2-metadata-token", imds),
        Surf::Gcp => client
            .get(format!(
                "{base}/computeMetadata/v1/instance/service-accounts/default/token"
            ))
            .header("Metadata-Flavor", "Google"),
        Surf::Azure => client
            .get(format!("{base}/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://management.azure.com/"))
            .header("Metadata", "true"),
        Surf::OciFile => unreachable!("read above"),
    };
    let (status, body) = match req.send().await {
        Ok(resp) => {
            let status = resp.status().as_u16();
            (status, resp.bytes().await.unwrap_or_default())
        }
        Err(_) => (0, Default::default()),
    };
    let answered = unix_now();
    let expiry = if status == 200 {
        let doc: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        match surf {
            Surf::AwsContainer | Surf::AwsImds => doc["Expiration"]
                .as_str()
                .and_then(credbroker::timefmt::parse_rfc3339)
                .map(|t| t.duration_since(UNIX_EPOCH).unwrap().as_secs_f64()),
            Surf::Gcp => doc["expires_in"].as_u64().map(|s| answered + s as f64),
            Surf::Azure => doc["expires_on"]
                .as_str()
                .and_then(|s| s.parse::<f64>().ok()),
            Surf::OciFile => None,
        }
    } else {
        None
    };
    Sample {
        sent,
        answered,
        status,
        expiry,
    }
}

async fn load(
    surf: Surf,
    base: String,
    auth: String,
    imds: String,
    mut stop: watch::Receiver<bool>,
) -> Vec<Sample> {
    let client = build_client(
        tls_config(None, &[]).unwrap(),
        &ClientOptions {
            connect_timeout: Duration::from_secs(2),
            read_timeout: Duration::from_secs(6),
            total_timeout: Duration::from_secs(8),
        },
    )
    .unwrap();
    let mut samples = Vec::new();
    let mut tick = tokio::time::interval(LOAD_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return samples,
        }
        samples.push(one_request(&client, surf, &base, &auth, &imds).await);
    }
}

/// What the samples of one cloud show.
#[derive(Debug, Default)]
struct Verdict {
    requests: usize,
    failed_while_valid: usize,
    expired_served: usize,
    inside_floor: usize,
    /// Non-200 answers while nothing servable was held (reported, allowed).
    failed_without_credential: usize,
}

fn judge(samples: &[Sample]) -> Verdict {
    let mut v = Verdict::default();
    let mut best: Option<f64> = None;
    for s in samples {
        v.requests += 1;
        if s.status == 200 {
            let Some(exp) = s.expiry else {
                v.expired_served += 1; // a 200 without a readable expiry counts against us
                continue;
            };
            if exp <= s.answered {
                v.expired_served += 1;
            } else if exp - s.answered < 5.0 - SLACK {
                v.inside_floor += 1;
            }
            best = Some(best.map_or(exp, |b: f64| b.max(exp)));
        } else if best.is_some_and(|b| b - s.sent > 5.0 + SLACK) {
            v.failed_while_valid += 1;
        } else {
            v.failed_without_credential += 1;
        }
    }
    v
}

// === the broker's exchange counters ===

#[derive(Debug, Clone, Copy, Default)]
struct Counters {
    success: u64,
    failed: u64,
}

async fn counters(ops: SocketAddr, cloud: Cloud) -> Counters {
    let text = get(ops, "/metrics", &[]).await.body;
    let read = |outcome: &str| -> u64 {
        let prefix = format!(
            "credbroker_exchanges_total{{cloud=\"{}\",outcome=\"{outcome}\"}} ",
            cloud.label()
        );
        text.lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map_or(0, |v| v as u64)
    };
    Counters {
        success: read("success"),
        failed: read("transient_error") + read("permanent_error"),
    }
}

async fn wait_for(
    ops: SocketAddr,
    cloud: Cloud,
    within: Duration,
    done: impl Fn(Counters) -> bool,
) -> Option<(f64, Counters)> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let c = counters(ops, cloud).await;
        if done(c) {
            return Some((unix_now(), c));
        }
        if tokio::time::Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// === one scenario ===

/// One cloud's environment in a scenario: its fake's fault switch, token volume and front.
struct Target<'a> {
    cloud: Cloud,
    faults: &'a Faults,
    token: &'a Arc<ProjectedToken>,
    front: &'a Front,
}

impl Target<'_> {
    fn upstream_calls(&self, scape: &Cloudscape) -> u64 {
        let logged = match self.cloud {
            Cloud::Aws => scape.sts.log().len(),
            Cloud::Gcp => scape.gcp.log().len(),
            Cloud::Azure => scape.entra.log().len(),
            Cloud::Oci => scape.proxymux.log().len(),
        };
        logged as u64 + self.front.refused.load(Ordering::SeqCst)
    }

    fn inject(&self, kind: &Kind) -> Option<tokio::task::JoinHandle<()>> {
        match kind {
            Kind::Upstream(f) => self.faults.set(f.clone()),
            Kind::Slow(d) => self.faults.set_latency(*d),
            Kind::UntrustedCert => self.front.set_mode(FrontMode::UntrustedCert),
            Kind::PlainHttp => self.front.set_mode(FrontMode::PlainHttp),
            Kind::Token(t) => {
                let path = self.token.dir().join("..data").join("token");
                match t {
                    TokenFault::Deleted => std::fs::remove_file(path).unwrap(),
                    TokenFault::Emptied => self.token.write_raw(b"").unwrap(),
                    TokenFault::Garbage => self
                        .token
                        .write_raw(b"\x00\xffthis is not a service-account token")
                        .unwrap(),
                    TokenFault::PartiallyWritten => {
                        let current = self.token.current();
                        let half = &current.as_bytes()[..current.len() / 2];
                        self.token.write_in_place(half).unwrap();
                    }
                }
            }
            Kind::RotatedMidExchange => {
                self.faults.set_latency(Duration::from_secs(1));
                let token = self.token.clone();
                return Some(tokio::spawn(async move {
                    loop {
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        let _ = token.rotate();
                    }
                }));
            }
        }
        None
    }

    fn clear(&self, kind: &Kind) {
        match kind {
            Kind::Upstream(_) | Kind::Slow(_) | Kind::RotatedMidExchange => self.faults.clear(),
            Kind::UntrustedCert | Kind::PlainHttp => self.front.set_mode(FrontMode::Pass),
            Kind::Token(_) => {
                self.token.rotate().unwrap();
            }
        }
    }
}

/// What happened to one cloud during a scenario.
#[derive(Debug, Default)]
struct Window {
    /// The first failed exchange (failing faults) or the first exchange under the fault.
    first_hit: f64,
    cleared: f64,
    recovered: Option<f64>,
    failed_exchanges: u64,
    /// Failures counted when the next success came.
    failures_at_recovery: u64,
}

/// Injects `kind` on one cloud at once, clears it [`HOLD`] after the first exchange it hit,
/// and waits for the next successful exchange.
async fn drive(ops: SocketAddr, target: &Target<'_>, kind: &Kind) -> Window {
    let cloud = target.cloud;
    let base = counters(ops, cloud).await;
    let rotation = target.inject(kind);
    let within = Duration::from_secs(40);
    let mut w = Window::default();
    let hit = if kind.fails() {
        wait_for(ops, cloud, within, |c| c.failed > base.failed).await
    } else {
        wait_for(ops, cloud, within, |c| c.success > base.success).await
    };
    let (first_hit, _) = hit.unwrap_or_else(|| panic!("{cloud:?}: the fault {kind:?} never hit"));
    w.first_hit = first_hit;
    tokio::time::sleep(HOLD).await;
    // Count before clearing: a retry that succeeds just after the clear must count as the
    // recovery, not be mistaken for history (then the "next" success is a whole refresh later).
    let at_clear = counters(ops, cloud).await;
    target.clear(kind);
    if let Some(task) = rotation {
        task.abort();
    }
    w.cleared = unix_now();
    if kind.fails() {
        let next = wait_for(ops, cloud, Duration::from_secs(75), |c| {
            c.success > at_clear.success
        })
        .await;
        if let Some((t, c)) = next {
            w.recovered = Some(t);
            w.failures_at_recovery = c.failed - base.failed;
        }
    }
    w.failed_exchanges = counters(ops, cloud).await.failed - base.failed;
    w
}

/// Longest backoff delay after the `n`-th consecutive failure: 1 s doubling to 60 s.
fn full_backoff(n: u64) -> f64 {
    2f64.powi(n.saturating_sub(1).min(6) as i32).min(60.0)
}

/// Most failed attempts the backoff allows within `window` seconds: attempts are at least half
/// a full delay apart (equal jitter), or `Retry-After` apart.
fn attempts_bound(window: f64, retry_after: f64) -> u64 {
    let (mut t, mut n) = (0.0, 1u64);
    loop {
        t += (full_backoff(n) / 2.0).max(retry_after);
        if t > window {
            return n;
        }
        n += 1;
    }
}

struct Row {
    fault: &'static str,
    fails: bool,
    cloud: Cloud,
    verdict: Verdict,
    calls: u64,
    calls_bound: u64,
    failed_exchanges: u64,
    failures_bound: u64,
    recovery: Option<f64>,
    recovery_bound: Option<f64>,
}

async fn run_scenario(name: &'static str, kind: Kind, certs: Arc<Certs>, root: &Path) -> Vec<Row> {
    let dir = root.join(name.replace([' ', ':', ',', '(', ')', '-'], "_"));
    let scape = cloudscape(&dir).await;
    scape.sts.set_issued_lifetime(Some(LIFETIME));
    scape.gcp.set_issued_lifetime(Some(LIFETIME));
    scape.entra.set_token_lifetime(LIFETIME.as_secs());
    scape.proxymux.set_rpst_lifetime(LIFETIME);
    let sts_front = Front::start(scape.sts.addr(), &certs, true).await;
    let gcp_front = Front::start(scape.gcp.addr(), &certs, true).await;
    let entra_front = Front::start(scape.entra.addr(), &certs, true).await;
    let proxymux_front = Front::start(scape.proxymux.addr(), &certs, false).await;

    // Every upstream through its front, over TLS.
    let mut env = all_clouds(&scape);
    let set = |env: &mut Vec<(String, String)>, k: &str, v: String| {
        env.retain(|(name, _)| name != k);
        env.push((k.to_string(), v));
    };
    set(&mut env, "AWS_ENDPOINT_URL_STS", sts_front.url());
    set(
        &mut env,
        "AZURE_AUTHORITY_HOST",
        format!("{}/", entra_front.url()),
    );
    set(
        &mut env,
        "KUBERNETES_SERVICE_PORT_PROXYMUX",
        proxymux_front.addr.port().to_string(),
    );
    let rebase = |url: String| url.replacen(&scape.gcp.url(), &gcp_front.url(), 1);
    let doc = fakecloud::gcp::external_account_json(
        &rebase(scape.gcp.token_url()),
        Some(&rebase(
            scape
                .gcp
                .impersonation_url(fakecloud::gcp::DEMO_SERVICE_ACCOUNT),
        )),
        &scape.gcp_token.path().display().to_string(),
    );
    let account_file = dir.join("external_account_tls.json");
    std::fs::write(&account_file, doc.to_string()).unwrap();
    set(
        &mut env,
        "GOOGLE_APPLICATION_CREDENTIALS",
        account_file.display().to_string(),
    );
    let ca = certs.ca_file.display().to_string();
    let broker = Broker::start(&dir.join("b"), &env, &["--upstream-ca-file", &ca]).await;
    broker.wait_ready().await;
    let started = unix_now();
    let targets = [
        Target {
            cloud: Cloud::Aws,
            faults: scape.sts.faults(),
            token: &scape.aws_token,
            front: &sts_front,
        },
        Target {
            cloud: Cloud::Gcp,
            faults: scape.gcp.faults(),
            token: &scape.gcp_token,
            front: &gcp_front,
        },
        Target {
            cloud: Cloud::Azure,
            faults: scape.entra.faults(),
            token: &scape.azure_token,
            front: &entra_front,
        },
        Target {
            cloud: Cloud::Oci,
            faults: scape.proxymux.faults(),
            token: &scape.oci_token,
            front: &proxymux_front,
        },
    ];

    let (stop_tx, stop_rx) = watch::channel(false);
    let base = format!("http://{}", broker.creds);
    let auth = broker.auth_token();
    let imds = broker.imds_session().await;
    let oci_dir = broker.dir.join("oci").display().to_string();
    let loads: Vec<_> = [
        Surf::AwsContainer,
        Surf::AwsImds,
        Surf::Gcp,
        Surf::Azure,
        Surf::OciFile,
    ]
    .into_iter()
    .map(|s| {
        let task = tokio::spawn(load(
            s,
            if s == Surf::OciFile {
                oci_dir.clone()
            } else {
                base.clone()
            },
            auth.clone(),
            imds.clone(),
            stop_rx.clone(),
        ));
        (s, task)
    })
    .collect();

    let windows = tokio::join!(
        drive(broker.ops, &targets[0], &kind),
        drive(broker.ops, &targets[1], &kind),
        drive(broker.ops, &targets[2], &kind),
        drive(broker.ops, &targets[3], &kind),
    );
    let windows = [windows.0, windows.1, windows.2, windows.3];
    // Watch the recovered service a little longer.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _ = stop_tx.send(true);
    let mut samples: Vec<(Surf, Vec<Sample>)> = Vec::new();
    for (s, task) in loads {
        samples.push((s, task.await.unwrap()));
    }
    let elapsed = unix_now() - started;
    // Every cloud has had a success since the clear, but readiness needs every pinned key
    // servable, and a key other than the one that succeeded may still sit in its backoff (up to
    // the longest delay, 60 s). Ready within that, not at one instant.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(75);
    loop {
        let ready = get(broker.ops, "/readyz", &[]).await;
        if ready.status == 200 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name}: not ready within 75 s of the fault clearing: {} {}",
            ready.status,
            ready.body
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let mut rows = Vec::new();
    for (target, w) in targets.iter().zip(windows) {
        let cloud = target.cloud;
        let mut all: Vec<Sample> = samples
            .iter()
            .filter(|(s, _)| s.cloud() == cloud)
            .flat_map(|(_, v)| v.iter().copied())
            .collect();
        all.sort_by(|a, b| a.sent.total_cmp(&b.sent));
        let verdict = judge(&all);
        // Successful exchanges: the refreshes a LIFETIME allows (no sooner than 0.45 of it)
        // plus the first and the recovery; failures: what the backoff allows in the window.
        let refreshes = (elapsed / (0.45 * LIFETIME.as_secs_f64())).ceil() as u64 + 2;
        let failures = if kind.fails() {
            let window = w.cleared - w.first_hit + kind.in_flight();
            attempts_bound(window, kind.retry_after()) + 1
        } else {
            0
        };
        let calls = target.upstream_calls(&scape);
        let recovery_bound = w.recovered.map(|_| {
            kind.in_flight()
                + full_backoff(w.failures_at_recovery).max(kind.retry_after())
                + EXCHANGE_ALLOWANCE
        });
        rows.push(Row {
            fault: name,
            fails: kind.fails(),
            cloud,
            verdict,
            calls,
            calls_bound: (refreshes + failures) * cloud.calls_per_exchange(),
            failed_exchanges: w.failed_exchanges,
            // Token faults also retry at once on each token write (the fault and its fix).
            failures_bound: failures + 2,
            recovery: w.recovered.map(|t| t - w.cleared),
            recovery_bound,
        });
        if kind.fails() {
            assert!(
                w.recovered.is_some(),
                "{name}: {cloud:?} did not recover: {}",
                broker.logs()
            );
        }
    }
    assert!(
        !broker.logs().contains("panicked"),
        "{name}: {}",
        broker.logs()
    );
    rows
}

fn render(rows: &[Row]) -> String {
    let mut out = String::from(
        "| fault | cloud | client requests | failed while a valid credential existed | expired served | served inside the 5 s floor | failed exchanges (bound) | upstream calls (bound) | recovery after clear, s (bound) |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let recovery = match (r.recovery, r.recovery_bound) {
            (Some(t), Some(b)) => format!("{t:.1} ({b:.0})"),
            _ => "– (nothing failed)".into(),
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} ({}) | {} ({}) | {} |\n",
            r.fault,
            r.cloud.label(),
            r.verdict.requests,
            r.verdict.failed_while_valid,
            r.verdict.expired_served,
            r.verdict.inside_floor,
            r.failed_exchanges,
            r.failures_bound,
            r.calls,
            r.calls_bound,
            recovery
        ));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_under_load_never_fail_a_client_that_had_a_valid_credential() {
    let root = tempfile::tempdir().unwrap();
    let certs = Arc::new(make_certs(root.path()));
    let parallel: usize = std::env::var("CREDBROKER_FAULT_PARALLEL")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(7);
    let gate = Arc::new(Semaphore::new(parallel.max(1)));
    let started = std::time::Instant::now();
    let mut tasks = Vec::new();
    for (name, kind) in scenarios() {
        let (gate, certs, dir) = (gate.clone(), certs.clone(), root.path().to_path_buf());
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await.unwrap();
            run_scenario(name, kind, certs, &dir).await
        }));
    }
    let mut rows = Vec::new();
    for t in tasks {
        rows.extend(t.await.unwrap());
    }
    let table = render(&rows);
    let report = format!(
        "Fault injection under load: {} scenarios × {} clouds in {:.0} s, credential lifetime {} s, fault held {} s past the first failed exchange.\n\n{table}",
        scenarios().len(),
        CLOUDS.len(),
        started.elapsed().as_secs_f64(),
        LIFETIME.as_secs(),
        HOLD.as_secs(),
    );
    println!("{report}");
    let _ = std::fs::write(
        Path::new(env!("CARGO_TARGET_TMPDIR")).join("fault-injection.md"),
        &report,
    );

    let mut problems = Vec::new();
    for r in &rows {
        let who = format!("{} / {}", r.fault, r.cloud.label());
        if r.verdict.failed_while_valid > 0 {
            problems.push(format!(
                "{who}: {} failed requests while a valid credential existed",
                r.verdict.failed_while_valid
            ));
        }
        if r.verdict.expired_served > 0 || r.verdict.inside_floor > 0 {
            problems.push(format!(
                "{who}: {} expired and {} inside-floor credentials served",
                r.verdict.expired_served, r.verdict.inside_floor
            ));
        }
        if r.calls > r.calls_bound {
            problems.push(format!(
                "{who}: {} upstream calls, more than the backoff allows ({})",
                r.calls, r.calls_bound
            ));
        }
        if let (Some(t), Some(b)) = (r.recovery, r.recovery_bound)
            && t > b
        {
            problems.push(format!(
                "{who}: recovered {t:.1} s after the fault cleared (bound {b:.0} s)"
            ));
        }
        if r.failed_exchanges > r.failures_bound {
            problems.push(format!(
                "{who}: {} failed exchanges, more than the backoff allows ({})",
                r.failed_exchanges, r.failures_bound
            ));
        }
        if !r.fails && r.failed_exchanges > 0 {
            problems.push(format!(
                "{who}: {} exchanges failed under a fault that only slows them",
                r.failed_exchanges
            ));
        }
        if r.verdict.requests < 50 {
            problems.push(format!(
                "{who}: only {} client requests",
                r.verdict.requests
            ));
        }
    }
    assert!(problems.is_empty(), "{}\n{table}", problems.join("\n"));
}

//! Refresh-path timings, in-process against the local fakes (over loopback HTTP):
//!
//! - the cost of one exchange per cloud, with 0 and 50 ms injected upstream latency;
//! - kubelet-style token rotation → the next exchange, which carries the new token;
//! - 1000 clients asking at once on a cold cache → how many upstream exchanges (must be 1).

use std::sync::Arc;
use std::time::Duration;

use credbroker::clock::SystemClock;
use credbroker::clouds::aws::sts::StsClient;
use credbroker::http::client::{ClientOptions, build_client, tls_config};
use credbroker::http::server::{Handler, Resp, ServerLimits, serve};
use credbroker::metrics::Metrics;
use credbroker::surface::Router;
use credbroker::token::TokenSource;
use fakecloud::Fault;
use http::request::Parts;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::inproc::{HOST, InProcess, body_of};
use crate::load::Conn;
use crate::setup::Clouds;
use crate::stats::Spread;
use crate::targets::{RequestSpec, Target, encode};

#[derive(Debug, Clone, Serialize)]
pub struct ExchangeCost {
    pub cloud: &'static str,
    /// Upstream HTTP round trips in one exchange.
    pub round_trips: usize,
    pub injected_latency_ms: u64,
    /// Milliseconds per exchange.
    pub ms: Spread,
    pub how: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub struct Rotation {
    /// Milliseconds from the kubelet-style `..data` swap to a servable credential obtained
    /// with the new token.
    pub ms: Spread,
    /// Every measured exchange presented the rotated token to STS.
    pub used_new_token: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Herd {
    pub target: &'static str,
    pub clients: usize,
    pub ok_responses: usize,
    /// Exchanges the fake upstream saw for the cold key.
    pub upstream_exchanges: usize,
    pub injected_latency_ms: u64,
    /// Milliseconds until the last client had its answer.
    pub all_answered_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct RefreshReport {
    pub exchange: Vec<ExchangeCost>,
    pub rotation: Rotation,
    pub cold_cache: Vec<Herd>,
}

/// Runs every refresh-path measurement; `samples` exchanges per figure.
pub async fn run(samples: usize, clients: usize) -> Result<RefreshReport, String> {
    let exchange = exchange_costs(samples).await?;
    let rotation = rotation(samples.clamp(2, 10)).await?;
    let mut cold_cache = Vec::new();
    for target in [Target::AwsContainer, Target::GceToken, Target::AzureImds] {
        cold_cache.push(herd(target, clients).await?);
    }
    Ok(RefreshReport {
        exchange,
        rotation,
        cold_cache,
    })
}

fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

async fn exchange_costs(samples: usize) -> Result<Vec<ExchangeCost>, String> {
    let broker = InProcess::start(Clouds::ALL).await?;
    broker.wait_ready(Duration::from_secs(20)).await?;
    let http = build_client(
        tls_config(None, &[]).map_err(|e| e.to_string())?,
        &ClientOptions::default(),
    )
    .map_err(|e| e.to_string())?;
    let token = TokenSource::open(
        broker.scape.aws_token.path(),
        Arc::new(SystemClock),
        Arc::new(Metrics::new()),
    )
    .map_err(|e| e.to_string())?;
    let sts = StsClient {
        http,
        endpoint: broker.scape.sts.url().parse().map_err(|e| format!("{e}"))?,
        signing_region: "us-east-1".into(),
        token,
        clock: Arc::new(SystemClock),
    };
    let role = credbroker::clouds::aws::sts::RoleRequest {
        role_arn: fakecloud::aws::DEMO_ROLE_ARN,
        session_name: "bench",
        duration_secs: 3600,
    };
    let mut out = Vec::new();
    let mut key = 0usize;
    for latency_ms in [0u64, 50] {
        let latency = Duration::from_millis(latency_ms);
        broker.scape.sts.faults().set_latency(latency);
        broker.scape.gcp.faults().set_latency(latency);
        broker.scape.entra.faults().set_latency(latency);

        // AWS: the exchanger's STS call itself (the role is a pinned key, never cold).
        let _ = sts.assume_role_with_web_identity(role).await; // opens the pooled connection
        let mut aws = Vec::new();
        for _ in 0..samples {
            let t = Instant::now();
            sts.assume_role_with_web_identity(role)
                .await
                .map_err(|e| e.to_string())?;
            aws.push(ms_since(t));
        }
        out.push(ExchangeCost {
            cloud: "aws",
            round_trips: 1,
            injected_latency_ms: latency_ms,
            ms: Spread::of(&aws).unwrap_or_else(zero),
            how: "StsClient::assume_role (AssumeRoleWithWebIdentity), pooled connection",
        });

        // GCP and Azure: a request for a key nobody asked for yet is one exchange plus serving.
        let mut gcp = Vec::new();
        let mut azure = Vec::new();
        for _ in 0..samples {
            key += 1;
            let spec = gce_spec(&format!("bench-exchange-{key}"));
            let t = Instant::now();
            let (status, _) = body_of(broker.call(&spec).await).await;
            gcp.push(ms_since(t));
            check(status, "GCE token for a new scope set")?;
            let spec = azure_spec(&format!("https://bench-exchange-{key}.example.com"));
            let t = Instant::now();
            let (status, _) = body_of(broker.call(&spec).await).await;
            azure.push(ms_since(t));
            check(status, "Azure token for a new resource")?;
        }
        out.push(ExchangeCost {
            cloud: "gcp",
            round_trips: 2,
            injected_latency_ms: latency_ms,
            ms: Spread::of(&gcp).unwrap_or_else(zero),
            how: "GCE token request for a new scope set: STS token exchange + IAM generateAccessToken",
        });
        out.push(ExchangeCost {
            cloud: "azure",
            round_trips: 1,
            injected_latency_ms: latency_ms,
            ms: Spread::of(&azure).unwrap_or_else(zero),
            how: "Azure IMDS request for a new resource: Entra client-assertion grant",
        });
    }
    Ok(out)
}

fn zero() -> Spread {
    Spread {
        median: f64::NAN,
        min: f64::NAN,
        max: f64::NAN,
        n: 0,
    }
}

fn check(status: u16, what: &str) -> Result<(), String> {
    if status == 200 {
        Ok(())
    } else {
        Err(format!("{what}: HTTP {status}"))
    }
}

fn gce_spec(extra_scope: &str) -> RequestSpec {
    let scopes = format!(
        "https://www.googleapis.com/auth/cloud-platform,https://www.googleapis.com/auth/{extra_scope}"
    );
    RequestSpec::get(
        HOST,
        format!(
            "/computeMetadata/v1/instance/service-accounts/default/token?scopes={}",
            encode(&scopes)
        ),
    )
    .with_header("metadata-flavor", "Google")
}

fn azure_spec(resource: &str) -> RequestSpec {
    RequestSpec::get(
        HOST,
        format!(
            "/metadata/identity/oauth2/token?api-version=2018-02-01&resource={}",
            encode(resource)
        ),
    )
    .with_header("metadata", "true")
}

/// The broker held nothing valid because STS denied its token; kubelet rotates the token; how
/// long until a credential from the new token is served? The token source waits 20 ms after
/// the first directory event for kubelet's multi-step swap to finish, then re-reads. (While a credential is valid, a
/// rotation costs nothing: the next scheduled refresh reads the new file.)
async fn rotation(samples: usize) -> Result<Rotation, String> {
    let mut broker = InProcess::start_with(Clouds::AWS, |scape| {
        scape.sts.faults().set(Fault::Error {
            code: "AccessDenied".into(),
            count: None,
        });
    })
    .await?;
    let mut ms = Vec::new();
    let mut used_new_token = true;
    for i in 0..samples {
        if i > 0 {
            broker.scape.sts.faults().set(Fault::Error {
                code: "AccessDenied".into(),
                count: None,
            });
            broker.restart_broker()?;
        }
        // Wait for the denial: the slot now backs off for ~5 minutes (a permanent error).
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match broker.readiness() {
                Err(why) if why.contains("last exchange failed") => break,
                Ok(()) => return Err("the denied exchange succeeded".into()),
                Err(_) if Instant::now() > deadline => {
                    return Err("no denied exchange within 10 s".into());
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(2)).await,
            }
        }
        broker.scape.sts.faults().clear();
        // Mint first, so the clock starts at the `..data` swap itself.
        let vol = &broker.scape.aws_token;
        let new_token = broker.scape.issuer.mint(
            vol.service_account(),
            vol.audience(),
            Duration::from_secs(3600),
        );
        let t = Instant::now();
        vol.write_raw(new_token.as_bytes())
            .map_err(|e| format!("rotate: {e}"))?;
        broker.wait_ready(Duration::from_secs(10)).await?;
        ms.push(ms_since(t));
        let want = fakecloud::aws::sha256_hex(&new_token);
        let last = broker
            .scape
            .sts
            .log()
            .into_iter()
            .rev()
            .find(|r| r.outcome == "issued");
        used_new_token &= last.and_then(|r| r.token_sha256).as_deref() == Some(want.as_str());
    }
    Ok(Rotation {
        ms: Spread::of(&ms).unwrap_or_else(zero),
        used_new_token,
    })
}

/// Counts the upstream exchanges made for the herd's key.
type UpstreamCount = Box<dyn Fn(&InProcess) -> usize + Send>;

/// Serves whatever router is published, waiting for the first one: lets clients connect
/// before the broker (and its cold cache) exists.
struct Deferred(watch::Receiver<Option<Arc<Router>>>);

impl Handler for Deferred {
    async fn call(&self, req: Parts) -> Resp {
        let mut rx = self.0.clone();
        let router = match rx.wait_for(Option::is_some).await {
            Ok(r) => r.clone(),
            Err(_) => None,
        };
        match router {
            Some(router) => router.call(req).await,
            None => credbroker::http::server::text(503, "no broker\n"),
        }
    }
}

/// `clients` connections, opened first; then one request each, all at once, for a key the
/// broker does not hold yet (AWS: the role, at start-up; GCP: a new scope set; Azure: a new
/// resource). The upstream answers after 300 ms, so every request arrives while the one
/// exchange is in flight.
async fn herd(target: Target, clients: usize) -> Result<Herd, String> {
    const LATENCY_MS: u64 = 300;
    let clouds = match target {
        Target::AwsContainer | Target::AwsImds => Clouds::AWS,
        Target::GceToken => Clouds::GCP,
        Target::AzureImds | Target::AzureAppService => Clouds::AZURE,
    };
    let mut broker = InProcess::start(clouds).await?;
    broker.wait_ready(Duration::from_secs(20)).await?;
    let latency = Duration::from_millis(LATENCY_MS);
    broker.scape.sts.faults().set_latency(latency);
    broker.scape.gcp.faults().set_latency(latency);
    broker.scape.entra.faults().set_latency(latency);

    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let host = addr.to_string();
    let (router_tx, router_rx) = watch::channel(None);
    let (stop_tx, stop_rx) = watch::channel(false);
    let limits = ServerLimits {
        max_connections: clients + 16,
        ..ServerLimits::default()
    };
    let server = tokio::spawn(serve(
        listener,
        Arc::new(Deferred(router_rx)),
        limits,
        stop_rx,
    ));
    let mut conns = Vec::with_capacity(clients);
    for _ in 0..clients {
        conns.push(Conn::open(addr).await?);
    }

    let (spec, count): (RequestSpec, UpstreamCount) = match target {
        Target::GceToken => {
            let scope = "bench-cold-herd";
            let mut spec = gce_spec(scope);
            spec.headers[0].1 = host.parse().map_err(|_| "host")?;
            let full = format!("https://www.googleapis.com/auth/{scope}");
            (
                spec,
                Box::new(move |b: &InProcess| {
                    b.scape
                        .gcp
                        .log()
                        .iter()
                        .filter(|r| r.api == "generateAccessToken" && r.scopes.contains(&full))
                        .count()
                }),
            )
        }
        Target::AzureImds => {
            let resource = "https://bench-cold-herd.example.com";
            let mut spec = azure_spec(resource);
            spec.headers[0].1 = host.parse().map_err(|_| "host")?;
            let scope = format!("{resource}/.default");
            (
                spec,
                Box::new(move |b: &InProcess| {
                    b.scape
                        .entra
                        .log()
                        .iter()
                        .filter(|r| r.scope.as_deref() == Some(scope.as_str()))
                        .count()
                }),
            )
        }
        _ => {
            // A fresh broker: its first exchange for the role starts now, with clients waiting.
            let before = broker.scape.sts.log().len();
            broker.restart_broker()?;
            let creds = broker.credentials().await?;
            let spec = RequestSpec::for_target(Target::AwsContainer, &host, &creds);
            (
                spec,
                Box::new(move |b: &InProcess| b.scape.sts.log().len() - before),
            )
        }
    };
    let _ = router_tx.send(Some(broker.router.clone()));
    let t = Instant::now();
    let spec = Arc::new(spec);
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|mut c| {
            let spec = spec.clone();
            tokio::spawn(async move { c.send(&spec).await.map(|(s, _, _)| s) })
        })
        .collect();
    let mut ok = 0;
    for task in tasks {
        if matches!(task.await, Ok(Ok(200))) {
            ok += 1;
        }
    }
    let all_answered_ms = ms_since(t);
    let upstream_exchanges = count(&broker);
    let _ = stop_tx.send(true);
    let _ = server.await;
    Ok(Herd {
        target: target.name(),
        clients,
        ok_responses: ok,
        upstream_exchanges,
        injected_latency_ms: LATENCY_MS,
        all_answered_ms,
    })
}

//! The load generator: N HTTP/1.1 keep-alive connections (hyper's client), each sending its
//! next request as soon as the previous answer is read (closed loop, like wrk and oha), for a
//! fixed time after a warm-up. Every latency of the measured window is kept (no sampling), so
//! the quantiles are exact. While measuring, it samples the server process's CPU time.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep_until};

use crate::procstat;
use crate::stats::quantile_sorted;
use crate::targets::RequestSpec;

/// One load run.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    pub addr: SocketAddr,
    pub spec: RequestSpec,
    pub connections: usize,
    pub warmup: Duration,
    pub duration: Duration,
    /// A response counts as an error unless it has this status and body length.
    pub expect_status: u16,
    pub expect_len: usize,
    /// The server process, for CPU time over the measured window.
    pub server_pid: Option<u32>,
}

/// What one run measured (latencies in microseconds).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoadStats {
    pub connections: usize,
    pub seconds: f64,
    pub requests: u64,
    pub errors: u64,
    pub rps: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    /// The server's user+system CPU seconds over the measured window.
    pub server_cpu_s: Option<f64>,
    /// Server CPU microseconds per request.
    pub server_cpu_us_per_req: Option<f64>,
    /// This process's (the generator's) user+system CPU seconds over the measured window.
    #[serde(default)]
    pub client_cpu_s: Option<f64>,
}

/// An open client connection.
pub struct Conn {
    sender: hyper::client::conn::http1::SendRequest<http_body_util::Empty<Bytes>>,
}

impl Conn {
    pub async fn open(addr: SocketAddr) -> Result<Conn, String> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake {addr}: {e}"))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Conn { sender })
    }

    /// Sends `spec`, reads the whole answer.
    pub async fn send(&mut self, spec: &RequestSpec) -> Result<(u16, HeaderMap, Bytes), String> {
        self.sender
            .ready()
            .await
            .map_err(|e| format!("connection closed: {e}"))?;
        let resp = self
            .sender
            .send_request(spec.request())
            .await
            .map_err(|e| format!("request failed: {e}"))?;
        let (parts, body) = resp.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?
            .to_bytes();
        Ok((parts.status.as_u16(), parts.headers, body))
    }
}

/// One request on a fresh connection.
pub async fn one_request(
    addr: SocketAddr,
    spec: &RequestSpec,
) -> Result<(u16, HeaderMap, Bytes), String> {
    Conn::open(addr).await?.send(spec).await
}

/// Runs the load; fails only if no connection can be opened.
pub async fn run(cfg: &LoadConfig) -> Result<LoadStats, String> {
    let mut conns = Vec::with_capacity(cfg.connections);
    for _ in 0..cfg.connections {
        conns.push(Conn::open(cfg.addr).await?);
    }
    let start = Instant::now() + Duration::from_millis(20);
    let measure_from = start + cfg.warmup;
    let end = measure_from + cfg.duration;
    let spec = Arc::new(cfg.spec.clone());
    let mut tasks = Vec::with_capacity(conns.len());
    for mut conn in conns {
        let spec = spec.clone();
        let (status, len) = (cfg.expect_status, cfg.expect_len);
        tasks.push(tokio::spawn(async move {
            let mut latencies: Vec<u32> = Vec::with_capacity(4096);
            let mut errors = 0u64;
            sleep_until(start).await;
            loop {
                let t0 = Instant::now();
                if t0 >= end {
                    break;
                }
                let outcome = conn.send(&spec).await;
                let ns = t0.elapsed().as_nanos().min(u128::from(u32::MAX)) as u32;
                let ok = matches!(&outcome, Ok((s, _, b)) if *s == status && b.len() == len);
                if t0 >= measure_from {
                    latencies.push(ns);
                    if !ok {
                        errors += 1;
                    }
                }
                if outcome.is_err() {
                    // The connection is gone; the error is counted.
                    if t0 < measure_from {
                        errors += 1;
                    }
                    break;
                }
            }
            (latencies, errors)
        }));
    }
    let pid = cfg.server_pid;
    let me = std::process::id();
    let cpu = tokio::spawn(async move {
        sleep_until(measure_from).await;
        let s0 = pid.and_then(|p| procstat::cpu_seconds(p).ok());
        let m0 = procstat::cpu_seconds(me).ok();
        sleep_until(end).await;
        let s1 = pid.and_then(|p| procstat::cpu_seconds(p).ok());
        let m1 = procstat::cpu_seconds(me).ok();
        (
            s0.zip(s1).map(|(a, b)| b - a),
            m0.zip(m1).map(|(a, b)| b - a),
        )
    });
    let mut all: Vec<f64> = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (lat, e) = t.await.map_err(|e| format!("load task: {e}"))?;
        errors += e;
        all.extend(lat.into_iter().map(|ns| f64::from(ns) / 1000.0));
    }
    let (server_cpu_s, client_cpu_s) = cpu.await.unwrap_or((None, None));
    let requests = all.len() as u64;
    let seconds = cfg.duration.as_secs_f64();
    all.sort_by(f64::total_cmp);
    let q = |p: f64| quantile_sorted(&all, p).unwrap_or(f64::NAN);
    Ok(LoadStats {
        connections: cfg.connections,
        seconds,
        requests,
        errors,
        rps: requests as f64 / seconds,
        p50_us: q(0.50),
        p90_us: q(0.90),
        p99_us: q(0.99),
        p999_us: q(0.999),
        max_us: q(1.0),
        server_cpu_s,
        server_cpu_us_per_req: server_cpu_s
            .filter(|_| requests > 0)
            .map(|c| c * 1e6 / requests as f64),
        client_cpu_s,
    })
}

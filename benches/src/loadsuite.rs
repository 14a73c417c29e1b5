//! The load benchmark: the real `credbroker` binary (AWS, GCP and Azure enabled against
//! `fakecloud run`) and, in the same run, the bare-hyper floor serving a response of the same
//! shape, each driven at every connection count on every surface. Broker and floor runs
//! alternate, so machine noise hits both alike; the ratio is taken pairwise.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde::Serialize;

use crate::floor::Shape;
use crate::load::{self, LoadConfig, LoadStats, one_request};
use crate::procs::{Proc, addr_of};
use crate::procstat;
use crate::setup::{Clouds, sidecar_env};
use crate::stats::Spread;
use crate::targets::{Credentials, RequestSpec, Target};

#[derive(Debug, Clone)]
pub struct LoadSuite {
    pub broker_bin: PathBuf,
    pub fakecloud_bin: PathBuf,
    /// This executable (it serves the floor with `credbroker-bench floor`).
    pub self_bin: PathBuf,
    pub targets: Vec<Target>,
    pub connections: Vec<usize>,
    pub warmup: Duration,
    pub duration: Duration,
    pub repeat: usize,
    /// How long the broker idles after readiness before its idle RSS is read.
    pub idle: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct Cell {
    pub target: &'static str,
    pub connections: usize,
    pub body_bytes: usize,
    pub broker: Vec<LoadStats>,
    pub floor: Vec<LoadStats>,
    pub broker_rps: Spread,
    pub floor_rps: Spread,
    pub broker_p99_us: Spread,
    pub floor_p99_us: Spread,
    /// Pairwise broker/floor ratios of consecutive runs.
    pub rps_ratio: Spread,
    pub p99_ratio: Spread,
    pub errors: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    pub broker_bin: String,
    pub duration_s: f64,
    pub warmup_s: f64,
    pub repeat: usize,
    /// Broker RSS after start-up and `idle` seconds without requests (all three clouds held).
    pub idle_rss_kib: u64,
    /// Broker peak RSS (VmHWM) over the whole run.
    pub peak_rss_kib: u64,
    pub floor_peak_rss_kib: u64,
    pub cells: Vec<Cell>,
}

fn spread(v: impl Iterator<Item = f64>) -> Spread {
    let v: Vec<f64> = v.filter(|x| x.is_finite()).collect();
    Spread::of(&v).unwrap_or(Spread {
        median: f64::NAN,
        min: f64::NAN,
        max: f64::NAN,
        n: 0,
    })
}

/// Polls `GET path` until it answers 200.
pub async fn wait_http_ok(addr: SocketAddr, path: &str, proc_: &mut Proc) -> Result<(), String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let spec = RequestSpec::get(&addr.to_string(), path);
    loop {
        if let Ok((200, _, _)) = one_request(addr, &spec).await {
            return Ok(());
        }
        proc_.alive()?;
        if std::time::Instant::now() > deadline {
            return Err(format!("{path} on {addr} not 200 within 30 s"));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// `fakecloud run` in `dir`; returns it with its description.
pub fn start_fakecloud(bin: &Path, dir: &Path) -> Result<(Proc, serde_json::Value), String> {
    let ready = dir.join("fakecloud-ready.json");
    let mut cmd = Command::new(bin);
    cmd.arg("run")
        .arg("--state-dir")
        .arg(dir.join("cloud"))
        .arg("--ready-file")
        .arg(&ready);
    let mut fake = Proc::spawn("fakecloud", cmd, &dir.join("fakecloud.log"))?;
    let text = fake.wait_for_file(&ready, Duration::from_secs(30))?;
    let desc = serde_json::from_str(&text).map_err(|e| format!("fakecloud ready file: {e}"))?;
    Ok((fake, desc))
}

/// A running broker process.
pub struct Broker {
    pub proc_: Proc,
    pub creds: SocketAddr,
    pub ops: SocketAddr,
    pub aws_auth_file: PathBuf,
}

/// `credbroker serve` with only the sidecar's environment; returns once `/readyz` is 200.
pub async fn start_broker(
    bin: &Path,
    dir: &Path,
    desc: &serde_json::Value,
    clouds: Clouds,
) -> Result<Broker, String> {
    start_broker_placed(bin, dir, desc, clouds, &[], &[]).await
}

/// [`start_broker`] behind a command `prefix` (`taskset -c 1`, a cgroup entry) and with `extra`
/// global flags (`--worker-threads 1`). `dir` is the instance's own: its files go there.
pub async fn start_broker_placed(
    bin: &Path,
    dir: &Path,
    desc: &serde_json::Value,
    clouds: Clouds,
    prefix: &[String],
    extra: &[String],
) -> Result<Broker, String> {
    let addr_file = dir.join("broker-addrs");
    let _ = std::fs::remove_file(&addr_file);
    let aws_auth_file = dir.join("aws-auth-token");
    let mut cmd = crate::procs::command(prefix, bin);
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(sidecar_env(desc, clouds, dir))
        .args(["--log-level", "warn"])
        .args(extra)
        .arg("serve")
        .args(["--listen", "127.0.0.1:0", "--ops-listen", "127.0.0.1:0"])
        .arg("--addr-file")
        .arg(&addr_file);
    let mut proc_ = Proc::spawn("credbroker", cmd, &dir.join("broker.log"))?;
    let addrs = proc_.wait_for_file(&addr_file, Duration::from_secs(30))?;
    let creds = addr_of(&addrs, "credentials").ok_or("no credentials= in --addr-file")?;
    let ops = addr_of(&addrs, "ops").ok_or("no ops= in --addr-file")?;
    wait_http_ok(ops, "/readyz", &mut proc_).await?;
    Ok(Broker {
        proc_,
        creds,
        ops,
        aws_auth_file,
    })
}

impl Broker {
    /// The AWS `Authorization` value and an IMDSv2 session token.
    pub async fn credentials(&self) -> Result<Credentials, String> {
        let aws_auth = std::fs::read_to_string(&self.aws_auth_file)
            .map_err(|e| format!("{}: {e}", self.aws_auth_file.display()))?;
        let (status, _, body) = one_request(
            self.creds,
            &RequestSpec::imds_session(&self.creds.to_string()),
        )
        .await?;
        if status != 200 {
            return Err(format!("IMDSv2 session token: HTTP {status}"));
        }
        Ok(Credentials {
            aws_auth,
            imds_session: String::from_utf8_lossy(&body).into_owned(),
        })
    }
}

async fn start_floor(
    self_bin: &Path,
    dir: &Path,
    shape: &Shape,
    tag: &str,
) -> Result<(Proc, SocketAddr), String> {
    let addr_file = dir.join(format!("floor-{tag}-addr"));
    let _ = std::fs::remove_file(&addr_file);
    let mut cmd = Command::new(self_bin);
    cmd.arg("floor")
        .arg("--shape")
        .arg(serde_json::to_string(shape).map_err(|e| e.to_string())?)
        .arg("--addr-file")
        .arg(&addr_file);
    let mut floor = Proc::spawn("floor", cmd, &dir.join(format!("floor-{tag}.log")))?;
    let text = floor.wait_for_file(&addr_file, Duration::from_secs(10))?;
    let addr = text
        .trim()
        .parse()
        .map_err(|e| format!("floor address: {e}"))?;
    Ok((floor, addr))
}

impl LoadSuite {
    pub async fn run(&self) -> Result<LoadReport, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let (_fake, desc) = start_fakecloud(&self.fakecloud_bin, dir.path())?;
        let broker = start_broker(&self.broker_bin, dir.path(), &desc, Clouds::ALL).await?;
        let creds = broker.credentials().await?;
        tokio::time::sleep(self.idle).await;
        let bpid = broker.proc_.pid();
        let idle_rss_kib = procstat::status_kib(bpid, "VmRSS").map_err(|e| e.to_string())?;
        let host = broker.creds.to_string();
        let mut cells = Vec::new();
        let mut floor_peak_rss_kib = 0;
        for &target in &self.targets {
            let spec = RequestSpec::for_target(target, &host, &creds);
            let (status, headers, body) = one_request(broker.creds, &spec).await?;
            if status != 200 {
                return Err(format!("{}: broker answered HTTP {status}", target.name()));
            }
            let shape = Shape::of(status, &headers, body.len());
            let (mut floor, faddr) =
                start_floor(&self.self_bin, dir.path(), &shape, target.name()).await?;
            let fspec = RequestSpec::for_target(target, &faddr.to_string(), &creds);
            let (fstatus, _, fbody) = one_request(faddr, &fspec).await?;
            if fstatus != 200 || fbody.len() != body.len() {
                return Err("the floor does not answer with the broker's shape".into());
            }
            for &connections in &self.connections {
                let mut b_runs = Vec::new();
                let mut f_runs = Vec::new();
                for _ in 0..self.repeat {
                    for (runs, addr, spec, pid) in [
                        (&mut b_runs, broker.creds, &spec, bpid),
                        (&mut f_runs, faddr, &fspec, floor.pid()),
                    ] {
                        let stats = load::run(&LoadConfig {
                            addr,
                            spec: spec.clone(),
                            connections,
                            warmup: self.warmup,
                            duration: self.duration,
                            expect_status: 200,
                            expect_len: body.len(),
                            server_pid: Some(pid),
                        })
                        .await?;
                        runs.push(stats);
                    }
                }
                floor.alive()?;
                let pairs = b_runs.iter().zip(&f_runs);
                cells.push(Cell {
                    target: target.name(),
                    connections,
                    body_bytes: body.len(),
                    broker_rps: spread(b_runs.iter().map(|s| s.rps)),
                    floor_rps: spread(f_runs.iter().map(|s| s.rps)),
                    broker_p99_us: spread(b_runs.iter().map(|s| s.p99_us)),
                    floor_p99_us: spread(f_runs.iter().map(|s| s.p99_us)),
                    rps_ratio: spread(pairs.clone().map(|(b, f)| b.rps / f.rps)),
                    p99_ratio: spread(pairs.map(|(b, f)| b.p99_us / f.p99_us)),
                    errors: b_runs.iter().chain(&f_runs).map(|s| s.errors).sum(),
                    broker: b_runs,
                    floor: f_runs,
                });
            }
            floor_peak_rss_kib =
                floor_peak_rss_kib.max(procstat::status_kib(floor.pid(), "VmHWM").unwrap_or(0));
        }
        let peak_rss_kib = procstat::status_kib(bpid, "VmHWM").map_err(|e| e.to_string())?;
        Ok(LoadReport {
            broker_bin: self.broker_bin.display().to_string(),
            duration_s: self.duration.as_secs_f64(),
            warmup_s: self.warmup.as_secs_f64(),
            repeat: self.repeat,
            idle_rss_kib,
            peak_rss_kib,
            floor_peak_rss_kib,
            cells,
        })
    }
}

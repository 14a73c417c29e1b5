//! The load matrix: every surface × connection count × load generator (wrk, ours) × CPU
//! placement, against the broker, the bare-hyper floor, a second floor instance (the A/A
//! control), and optionally the baseline broker binary, the Go net/http floor and broker
//! variants (runtime settings) — all in one run.
//!
//! Method:
//! - **Rounds in rotating order.** Each cell is measured in `rounds` rounds; within a round every
//!   server is loaded once, and the order rotates by one each round, so no server is always
//!   first (or always right after another). Rounds are the outer loop: a cell's rounds are spread
//!   over the whole run, its servers' runs within a round are close together.
//! - **Ratios per round.** A server's ratio is taken to the floor's run of the same round.
//! - **A/A control.** The second floor instance is measured like any server, and its ratio to
//!   the floor is summarised like the broker's: the median over the cell's rounds. A cell counts
//!   only if that median is within ±`aa.rps` in throughput and ±`aa.p99` in p99 latency: the
//!   method, applied to two identical servers, then resolves a ratio to that precision. A cell
//!   outside the bounds gets up to `extra_rounds` more rounds; if it is still outside, it is
//!   void (reported, flagged). The rule judges the figure that is published (a median over
//!   rounds), not each round: on a shared VM single 2-5 s rounds of two identical servers
//!   differ by ±10 % in throughput and by 0.3-4× in p99, so a per-round rule voids every cell
//!   and decides nothing (docs/benchmarks.md, "The A/A rule").

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use crate::floor::Shape;
use crate::load::one_request;
use crate::loadsuite::{start_broker_placed, start_fakecloud};
use crate::placement::{Cgroup, Layout, Placement};
use crate::procs::{Proc, command};
use crate::procstat;
use crate::setup::Clouds;
use crate::stats::Spread;
use crate::targets::{RequestSpec, Target};
use crate::tool::{self, RunStats, Tool, ToolRun};

/// Labels with a fixed role.
pub const FLOOR: &str = "floor";
pub const CONTROL: &str = "floor-b";
pub const BROKER: &str = "broker";
pub const BASELINE: &str = "baseline";
pub const GO_FLOOR: &str = "go-floor";

/// When a cell counts: the A/A pair's median ratios within these relative bounds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct AaRule {
    pub rps: f64,
    pub p99: f64,
}

impl AaRule {
    /// Whether a cell with these floor-b / floor ratios (one per round) counts.
    pub fn holds(&self, aa: &AaSpread) -> bool {
        (aa.rps.median - 1.0).abs() <= self.rps && (aa.p99.median - 1.0).abs() <= self.p99
    }
}

/// floor-b / floor over a cell's rounds: throughput and p99.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct AaSpread {
    pub rps: Spread,
    pub p99: Spread,
}

impl AaSpread {
    /// `None` when the rounds have no A/A pair.
    fn of(rounds: &[Round]) -> Option<AaSpread> {
        let pairs: Vec<(f64, f64)> = rounds
            .iter()
            .filter(|r| r.aa_rps.is_finite() && r.aa_p99.is_finite())
            .map(|r| (r.aa_rps, r.aa_p99))
            .collect();
        Some(AaSpread {
            rps: Spread::of(&pairs.iter().map(|p| p.0).collect::<Vec<_>>())?,
            p99: Spread::of(&pairs.iter().map(|p| p.1).collect::<Vec<_>>())?,
        })
    }
}

#[derive(Debug, Clone)]
pub struct MatrixConfig {
    pub broker_bin: PathBuf,
    /// Flags for the main broker (e.g. `--worker-threads 1`).
    pub broker_args: Vec<String>,
    pub baseline_bin: Option<PathBuf>,
    pub go_floor_bin: Option<PathBuf>,
    pub fakecloud_bin: PathBuf,
    /// This executable: the floor (`floor`) and our generator (`gen`).
    pub self_bin: PathBuf,
    pub wrk_bin: String,
    /// More instances of `broker_bin`: label and flags.
    pub variants: Vec<(String, Vec<String>)>,
    /// Flags for the floor (its runtime: `--worker-threads`, `--runtime-flavor`).
    pub floor_args: Vec<String>,
    pub targets: Vec<Target>,
    pub connections: Vec<usize>,
    pub tools: Vec<Tool>,
    pub placements: Vec<Placement>,
    pub layout: Layout,
    /// Servers our generator measures (wrk measures all); the floor pair always.
    pub own_servers: Vec<String>,
    pub rounds: usize,
    /// More rounds for a cell whose A/A medians are out of bounds.
    pub extra_rounds: usize,
    /// Measured seconds per run.
    pub duration: f64,
    /// Our generator's warm-up per run.
    pub own_warmup: f64,
    pub own_threads: usize,
    /// Seconds of wrk on each server and surface before the first round (0: none).
    pub warmup: f64,
    pub aa: AaRule,
    /// Seconds the brokers idle after start before their idle RSS is read.
    pub idle: f64,
    /// `perf stat` each server over each run (context switches, syscalls, task-clock).
    pub perf: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServerInfo {
    pub label: String,
    pub kind: &'static str,
    /// The command line (without the placement prefix).
    pub command: String,
    /// OS threads at the end of the placement's runs (first process, for per-surface floors).
    pub threads: Option<u64>,
    pub idle_rss_kib: Option<u64>,
    pub peak_rss_kib: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Round {
    pub index: usize,
    pub order: Vec<String>,
    pub runs: BTreeMap<String, RunStats>,
    /// floor-b / floor throughput and p99 (NaN without the pair).
    pub aa_rps: f64,
    pub aa_p99: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServerSummary {
    pub label: String,
    pub rps: Spread,
    pub p50_us: Spread,
    pub p99_us: Spread,
    pub p999_us: Spread,
    /// This server / the floor, per round.
    pub rps_ratio: Spread,
    pub p99_ratio: Spread,
    pub server_busy: Spread,
    pub server_us_per_req: Spread,
    pub client_busy: Spread,
    pub client_us_per_req: Spread,
    /// perf stat on the server, per request (with `--perf-stat`).
    pub context_switches_per_req: Spread,
    pub syscalls_per_req: Spread,
    pub task_clock_us_per_req: Spread,
    pub bytes_per_response: Option<f64>,
    pub errors: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct CellResult {
    pub surface: &'static str,
    pub connections: usize,
    pub tool: Tool,
    pub body_bytes: usize,
    pub rounds: Vec<Round>,
    /// floor-b / floor over the rounds (`None` without the pair).
    pub aa: Option<AaSpread>,
    /// The A/A medians out of bounds: the cell's ratios are not resolved to the rule's precision.
    pub void: bool,
    pub summary: Vec<ServerSummary>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PlacementResult {
    pub placement: Placement,
    /// Why this placement did not run (e.g. no writable cgroup), with the evidence.
    pub skipped: Option<String>,
    pub cgroup: Option<String>,
    /// CFS periods throttled and seconds throttled over the placement's runs (quota only).
    pub throttled: Option<(u64, f64)>,
    pub servers: Vec<ServerInfo>,
    pub cells: Vec<CellResult>,
}

#[derive(Debug, Clone, Serialize)]
pub struct MatrixReport {
    pub rounds: usize,
    pub extra_rounds: usize,
    pub duration_s: f64,
    pub own_warmup_s: f64,
    pub own_threads: usize,
    pub aa: AaRule,
    pub layout: Layout,
    pub wrk_version: String,
    pub placements: Vec<PlacementResult>,
}

/// A cell being measured: which servers, and the rounds so far.
struct Pending {
    target: Target,
    connections: usize,
    tool: Tool,
    servers: Vec<String>,
    rounds: Vec<Round>,
}

/// One server's address and request for one surface.
struct Endpoint {
    pid: u32,
    addr: SocketAddr,
    spec: RequestSpec,
    body_len: usize,
}

/// The processes of one placement.
struct Fleet {
    /// Label → surface → endpoint.
    endpoints: BTreeMap<String, BTreeMap<Target, Endpoint>>,
    servers: Vec<ServerInfo>,
    /// Label → its processes (kept alive; killed on drop).
    procs: Vec<(String, Proc)>,
    shapes: BTreeMap<Target, Shape>,
}

fn spread(v: impl Iterator<Item = Option<f64>>) -> Spread {
    let v: Vec<f64> = v.flatten().filter(|x| x.is_finite()).collect();
    Spread::of(&v).unwrap_or(Spread {
        median: f64::NAN,
        min: f64::NAN,
        max: f64::NAN,
        n: 0,
    })
}

fn threads_of(pid: u32) -> Option<u64> {
    procstat::status_kib(pid, "Threads").ok()
}

fn wrk_version(wrk: &str) -> String {
    std::process::Command::new(wrk)
        .arg("--version")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or_default()
                .to_string()
        })
        .unwrap_or_else(|e| format!("wrk not runnable: {e}"))
}

impl MatrixConfig {
    pub async fn run(&self) -> Result<MatrixReport, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let (_fake, desc) = start_fakecloud(&self.fakecloud_bin, dir.path())?;
        let mut placements = Vec::new();
        for &placement in &self.placements {
            let pdir = dir.path().join(placement.name());
            std::fs::create_dir_all(&pdir).map_err(|e| e.to_string())?;
            placements.push(self.run_placement(placement, &pdir, &desc).await?);
        }
        Ok(MatrixReport {
            rounds: self.rounds,
            extra_rounds: self.extra_rounds,
            duration_s: self.duration,
            own_warmup_s: self.own_warmup,
            own_threads: self.own_threads,
            aa: self.aa,
            layout: self.layout.clone(),
            wrk_version: wrk_version(&self.wrk_bin),
            placements,
        })
    }

    async fn run_placement(
        &self,
        placement: Placement,
        dir: &Path,
        desc: &serde_json::Value,
    ) -> Result<PlacementResult, String> {
        let cgroup = match placement {
            Placement::Quota => match Cgroup::create(self.layout.quota) {
                Ok(c) => Some(c),
                Err(why) => {
                    eprintln!("{}: skipped: {why}", placement.name());
                    return Ok(PlacementResult {
                        placement,
                        skipped: Some(why),
                        cgroup: None,
                        throttled: None,
                        servers: Vec::new(),
                        cells: Vec::new(),
                    });
                }
            },
            _ => None,
        };
        let prefix = self.layout.server_prefix(placement, cgroup.as_ref());
        let client_prefix = self.layout.client_prefix(placement);
        let mut fleet = self.start_fleet(placement, &prefix, dir, desc).await?;
        let throttled0 = cgroup.as_ref().and_then(Cgroup::throttling);

        if self.warmup > 0.0 {
            for (label, eps) in &fleet.endpoints {
                for ep in eps.values() {
                    self.measure(Tool::Wrk, ep, 64, self.warmup, &client_prefix, dir)
                        .map_err(|e| format!("warm-up of {label}: {e}"))?;
                }
            }
        }

        // Cells and their server lists.
        let mut cells: Vec<Pending> = Vec::new();
        for &tool in &self.tools {
            for &target in &self.targets {
                for &conns in &self.connections {
                    let servers: Vec<String> = fleet
                        .endpoints
                        .keys()
                        .filter(|l| {
                            tool == Tool::Wrk
                                || *l == FLOOR
                                || *l == CONTROL
                                || self.own_servers.iter().any(|o| o == *l)
                        })
                        .cloned()
                        .collect();
                    cells.push(Pending {
                        target,
                        connections: conns,
                        tool,
                        servers,
                        rounds: Vec::new(),
                    });
                }
            }
        }
        for round in 0..self.rounds {
            for cell in cells.iter_mut() {
                let r = self.round(&fleet, placement, cell, round, &client_prefix, dir)?;
                cell.rounds.push(r);
            }
        }
        // More rounds for cells whose A/A medians are out of bounds.
        for cell in cells.iter_mut() {
            let mut extra = 0;
            while AaSpread::of(&cell.rounds).is_some_and(|aa| !self.aa.holds(&aa))
                && extra < self.extra_rounds
            {
                let index = cell.rounds.len();
                let r = self.round(&fleet, placement, cell, index, &client_prefix, dir)?;
                cell.rounds.push(r);
                extra += 1;
            }
        }
        let throttled = cgroup
            .as_ref()
            .and_then(Cgroup::throttling)
            .zip(throttled0)
            .map(|((p1, s1), (p0, s0))| (p1 - p0, s1 - s0));

        for info in fleet.servers.iter_mut() {
            if let Some((_, p)) = fleet.procs.iter_mut().find(|(l, _)| *l == info.label) {
                p.alive()?;
                info.threads = threads_of(p.pid());
                info.peak_rss_kib = procstat::status_kib(p.pid(), "VmHWM").ok();
            }
        }
        let results = cells
            .into_iter()
            .map(|c| {
                let body_bytes = fleet.shapes.get(&c.target).map_or(0, |s| s.body_len);
                summarise(
                    c.target,
                    c.connections,
                    c.tool,
                    body_bytes,
                    c.rounds,
                    &self.aa,
                )
            })
            .collect();
        let servers = std::mem::take(&mut fleet.servers);
        drop(fleet);
        Ok(PlacementResult {
            placement,
            skipped: None,
            cgroup: cgroup.as_ref().map(|c| {
                format!(
                    "{} ({:?}, quota {} CPU)",
                    c.dir.display(),
                    c.version,
                    c.quota
                )
            }),
            throttled,
            servers,
            cells: results,
        })
    }

    fn round(
        &self,
        fleet: &Fleet,
        placement: Placement,
        cell: &Pending,
        index: usize,
        client_prefix: &[String],
        dir: &Path,
    ) -> Result<Round, String> {
        let (target, conns, tool) = (&cell.target, &cell.connections, &cell.tool);
        let mut order = cell.servers.clone();
        if !order.is_empty() {
            let k = index % order.len();
            order.rotate_left(k);
        }
        let mut runs = BTreeMap::new();
        for label in &order {
            let ep = &fleet.endpoints[label][target];
            let stats = self
                .measure(*tool, ep, *conns, self.duration, client_prefix, dir)
                .map_err(|e| format!("{label} {} @{conns} {}: {e}", target.name(), tool.name()))?;
            eprintln!(
                "{} r{index} {} c{conns} {} {label}: {:.0} req/s, p99 {:.0} µs, server busy {:.0} %",
                placement.name(),
                target.name(),
                tool.name(),
                stats.rps,
                stats.p99_us,
                stats.server_busy().unwrap_or(f64::NAN) * 100.0
            );
            runs.insert(label.clone(), stats);
        }
        let (aa_rps, aa_p99) = match (runs.get(FLOOR), runs.get(CONTROL)) {
            (Some(f), Some(c)) => (c.rps / f.rps, c.p99_us / f.p99_us),
            _ => (f64::NAN, f64::NAN),
        };
        Ok(Round {
            index,
            order,
            runs,
            aa_rps,
            aa_p99,
        })
    }

    fn measure(
        &self,
        tool: Tool,
        ep: &Endpoint,
        connections: usize,
        seconds: f64,
        client_prefix: &[String],
        dir: &Path,
    ) -> Result<RunStats, String> {
        tool::run(&ToolRun {
            tool,
            addr: ep.addr,
            spec: &ep.spec,
            connections,
            seconds,
            warmup: self.own_warmup,
            client_prefix,
            server_pid: ep.pid,
            expect_len: ep.body_len,
            self_bin: &self.self_bin,
            wrk_bin: &self.wrk_bin,
            own_threads: self.own_threads,
            scratch: dir,
            perf: self.perf,
        })
    }

    async fn start_fleet(
        &self,
        placement: Placement,
        prefix: &[String],
        dir: &Path,
        desc: &serde_json::Value,
    ) -> Result<Fleet, String> {
        let mut fleet = Fleet {
            endpoints: BTreeMap::new(),
            servers: Vec::new(),
            procs: Vec::new(),
            shapes: BTreeMap::new(),
        };
        let mut brokers: Vec<(String, PathBuf, Vec<String>)> = vec![(
            BROKER.into(),
            self.broker_bin.clone(),
            self.broker_args.clone(),
        )];
        if let Some(b) = &self.baseline_bin {
            brokers.push((BASELINE.into(), b.clone(), Vec::new()));
        }
        for (label, args) in &self.variants {
            brokers.push((label.clone(), self.broker_bin.clone(), args.clone()));
        }
        for (label, bin, args) in brokers {
            let bdir = dir.join(&label);
            std::fs::create_dir_all(&bdir).map_err(|e| e.to_string())?;
            let broker = start_broker_placed(&bin, &bdir, desc, Clouds::ALL, prefix, &args).await?;
            let creds = broker.credentials().await?;
            let host = broker.creds.to_string();
            let pid = broker.proc_.pid();
            let mut eps = BTreeMap::new();
            for &target in &self.targets {
                let spec = RequestSpec::for_target(target, &host, &creds);
                let (status, headers, body) = one_request(broker.creds, &spec).await?;
                if status != 200 {
                    return Err(format!("{label} {}: HTTP {status}", target.name()));
                }
                if label == BROKER {
                    fleet
                        .shapes
                        .insert(target, Shape::of(status, &headers, body.len()));
                }
                eps.insert(
                    target,
                    Endpoint {
                        pid,
                        addr: broker.creds,
                        spec,
                        body_len: body.len(),
                    },
                );
            }
            fleet.endpoints.insert(label.clone(), eps);
            fleet.servers.push(ServerInfo {
                label: label.clone(),
                kind: "broker",
                command: std::iter::once(bin.display().to_string())
                    .chain(args.iter().cloned())
                    .chain(["serve".to_string()])
                    .collect::<Vec<_>>()
                    .join(" "),
                threads: None,
                idle_rss_kib: None,
                peak_rss_kib: None,
            });
            fleet.procs.push((label, broker.proc_));
        }
        tokio::time::sleep(Duration::from_secs_f64(self.idle)).await;
        for info in fleet.servers.iter_mut() {
            if let Some((_, p)) = fleet.procs.iter().find(|(l, _)| *l == info.label) {
                info.idle_rss_kib = procstat::status_kib(p.pid(), "VmRSS").ok();
            }
        }

        let cpus = self.layout.server_cpus(placement);
        let mut floors: Vec<(String, &'static str)> =
            vec![(FLOOR.into(), "floor"), (CONTROL.into(), "floor")];
        if self.go_floor_bin.is_some() {
            floors.push((GO_FLOOR.into(), "go-floor"));
        }
        let broker_eps = &fleet.endpoints[BROKER];
        let mut new_eps = Vec::new();
        for (label, kind) in floors {
            let mut eps = BTreeMap::new();
            let mut first_pid = None;
            let mut command_line = String::new();
            for &target in &self.targets {
                let shape = &fleet.shapes[&target];
                let shape_json = serde_json::to_string(shape).map_err(|e| e.to_string())?;
                let tag = format!("{label}-{}", target.name());
                let addr_file = dir.join(format!("{tag}.addr"));
                let (program, args): (PathBuf, Vec<String>) = if kind == "go-floor" {
                    (
                        self.go_floor_bin.clone().unwrap_or_default(),
                        vec!["-shape".into(), shape_json, "-addr-file".into()],
                    )
                } else {
                    let mut a = vec!["floor".into()];
                    a.extend(self.floor_args.iter().cloned());
                    a.extend(["--shape".into(), shape_json, "--addr-file".into()]);
                    (self.self_bin.clone(), a)
                };
                command_line = format!(
                    "{} {}",
                    program.display(),
                    args.iter()
                        .filter(|a| !a.starts_with('{'))
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(" ")
                );
                let mut cmd = command(prefix, &program);
                cmd.args(&args).arg(&addr_file);
                if kind == "go-floor" {
                    cmd.env("GOMAXPROCS", cpus.to_string());
                    command_line = format!("GOMAXPROCS={cpus} {command_line}");
                }
                let mut p = Proc::spawn(&tag, cmd, &dir.join(format!("{tag}.log")))?;
                let text = p.wait_for_file(&addr_file, Duration::from_secs(10))?;
                let addr: SocketAddr = text
                    .trim()
                    .parse()
                    .map_err(|e| format!("{tag} address: {e}"))?;
                let spec = retarget(&broker_eps[&target].spec, addr);
                let (status, _, body) = one_request(addr, &spec).await?;
                if status != shape.status || body.len() != shape.body_len {
                    return Err(format!("{tag} does not answer with the broker's shape"));
                }
                first_pid.get_or_insert(p.pid());
                eps.insert(
                    target,
                    Endpoint {
                        pid: p.pid(),
                        addr,
                        spec,
                        body_len: body.len(),
                    },
                );
                fleet.procs.push((label.clone(), p));
            }
            new_eps.push((label.clone(), eps));
            fleet.servers.push(ServerInfo {
                label,
                kind,
                command: command_line,
                threads: None,
                idle_rss_kib: None,
                peak_rss_kib: None,
            });
        }
        fleet.endpoints.extend(new_eps);
        Ok(fleet)
    }
}

/// `spec` addressed to `addr` (its `Host` header).
fn retarget(spec: &RequestSpec, addr: SocketAddr) -> RequestSpec {
    let mut s = spec.clone();
    for (k, v) in s.headers.iter_mut() {
        if *k == http::header::HOST
            && let Ok(h) = http::HeaderValue::from_str(&addr.to_string())
        {
            *v = h;
        }
    }
    s
}

fn summarise(
    target: Target,
    connections: usize,
    tool: Tool,
    body_bytes: usize,
    rounds: Vec<Round>,
    rule: &AaRule,
) -> CellResult {
    let aa = AaSpread::of(&rounds);
    // A void cell is summarised like any other, and flagged.
    let void = aa.is_some_and(|aa| !rule.holds(&aa));
    let labels: Vec<String> = rounds
        .first()
        .map(|r| r.runs.keys().cloned().collect())
        .unwrap_or_default();
    let summary = labels
        .into_iter()
        .map(|label| {
            let runs: Vec<(&RunStats, Option<&RunStats>)> = rounds
                .iter()
                .filter_map(|r| r.runs.get(&label).map(|s| (s, r.runs.get(FLOOR))))
                .collect();
            let of = |f: &dyn Fn(&RunStats) -> Option<f64>| spread(runs.iter().map(|(s, _)| f(s)));
            ServerSummary {
                rps: of(&|s| Some(s.rps)),
                p50_us: of(&|s| Some(s.p50_us)),
                p99_us: of(&|s| Some(s.p99_us)),
                p999_us: of(&|s| Some(s.p999_us)),
                rps_ratio: spread(runs.iter().map(|(s, f)| f.map(|f| s.rps / f.rps))),
                p99_ratio: spread(runs.iter().map(|(s, f)| f.map(|f| s.p99_us / f.p99_us))),
                server_busy: of(&|s| s.server_busy()),
                server_us_per_req: of(&|s| s.server_us_per_req()),
                client_busy: of(&|s| s.client_busy()),
                client_us_per_req: of(&|s| s.client_us_per_req()),
                context_switches_per_req: of(&|s| s.perf_per_req().map(|p| p.0)),
                syscalls_per_req: of(&|s| s.perf_per_req().map(|p| p.1)),
                task_clock_us_per_req: of(&|s| s.perf_per_req().map(|p| p.2)),
                bytes_per_response: runs.first().and_then(|(s, _)| s.bytes_per_response),
                errors: runs.iter().map(|(s, _)| s.errors).sum(),
                label,
            }
        })
        .collect();
    CellResult {
        surface: target.name(),
        connections,
        tool,
        body_bytes,
        rounds,
        aa,
        void,
        summary,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(rps: f64, p99: f64) -> RunStats {
        RunStats {
            requests: rps as u64,
            seconds: 1.0,
            rps,
            p50_us: p99 / 2.0,
            p90_us: p99 / 1.5,
            p99_us: p99,
            p999_us: p99 * 2.0,
            max_us: p99 * 3.0,
            errors: 0,
            bytes_per_response: None,
            client_cpu_s: Some(0.5),
            server_cpu_s: Some(1.0),
            perf: None,
        }
    }

    #[test]
    fn aa_rule_and_summaries() {
        let rule = AaRule {
            rps: 0.05,
            p99: 0.10,
        };
        let round = |i: usize, broker: f64, control: f64, control_p99: f64| {
            let mut runs = BTreeMap::new();
            runs.insert(FLOOR.to_string(), stats(100.0, 10.0));
            runs.insert(CONTROL.to_string(), stats(control, control_p99));
            runs.insert(BROKER.to_string(), stats(broker, 12.0));
            Round {
                index: i,
                order: vec![],
                runs,
                aa_rps: control / 100.0,
                aa_p99: control_p99 / 10.0,
            }
        };
        // One wild round (A/A off by 20 %) does not void the cell: the rule judges medians.
        let cell = summarise(
            Target::AwsContainer,
            64,
            Tool::Wrk,
            1000,
            vec![
                round(0, 90.0, 101.0, 10.5),
                round(1, 50.0, 80.0, 40.0),
                round(2, 96.0, 99.0, 9.8),
            ],
            &rule,
        );
        let aa = cell.aa.unwrap();
        assert_eq!((aa.rps.median, aa.rps.min, aa.rps.n), (0.99, 0.8, 3));
        assert!((aa.p99.median - 1.05).abs() < 1e-9);
        assert!(!cell.void);
        let b = cell.summary.iter().find(|s| s.label == BROKER).unwrap();
        assert_eq!(b.rps_ratio.n, 3);
        assert!((b.rps_ratio.median - 0.90).abs() < 1e-9);
        assert!((b.p99_ratio.median - 1.2).abs() < 1e-9);
        assert_eq!(b.server_busy.median, 1.0);
        // The median out of bounds, in throughput or in p99, voids it.
        for rounds in [
            vec![
                round(0, 90.0, 94.0, 10.0),
                round(1, 90.0, 106.0, 10.0),
                round(2, 90.0, 93.0, 10.0),
            ],
            vec![
                round(0, 90.0, 100.0, 11.5),
                round(1, 90.0, 100.0, 8.0),
                round(2, 90.0, 100.0, 11.2),
            ],
        ] {
            let void = summarise(Target::AwsContainer, 1, Tool::Own, 1000, rounds, &rule);
            assert!(void.void);
            assert_eq!(void.summary.len(), 3);
        }
        // Without the pair there is nothing to judge.
        let mut lone = round(0, 90.0, 100.0, 10.0);
        lone.runs.remove(CONTROL);
        (lone.aa_rps, lone.aa_p99) = (f64::NAN, f64::NAN);
        let cell = summarise(Target::AwsContainer, 1, Tool::Own, 1000, vec![lone], &rule);
        assert!(cell.aa.is_none() && !cell.void);
    }
}

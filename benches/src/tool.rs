//! One measured run of a load generator against one server: wrk, or our own generator
//! (`credbroker-bench gen`, [`crate::load`]) — both as child processes, started the same way
//! (same CPU placement, same connection count), so the two can be compared run for run.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::load::LoadStats;
use crate::procs::command;
use crate::procstat;
use crate::targets::RequestSpec;
use crate::wrk;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Tool {
    /// wrk 4.1 (Debian), one thread.
    Wrk,
    /// `credbroker-bench gen`: hyper's client, one task per connection.
    Own,
}

impl Tool {
    pub fn name(self) -> &'static str {
        match self {
            Tool::Wrk => "wrk",
            Tool::Own => "own",
        }
    }
}

/// What one run measured (latencies in microseconds).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunStats {
    pub requests: u64,
    pub seconds: f64,
    pub rps: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    pub errors: u64,
    /// Response bytes (head and body) per request, where the tool reports it (wrk).
    pub bytes_per_response: Option<f64>,
    /// The load generator's user+system CPU seconds (the whole child process).
    pub client_cpu_s: Option<f64>,
    /// The server's user+system CPU seconds over the run.
    pub server_cpu_s: Option<f64>,
    /// `perf stat` on the server over the run, when asked for.
    #[serde(default)]
    pub perf: Option<PerfCounts>,
}

/// Software counters and the syscall tracepoint, from `perf stat -p SERVER` around the run
/// (a tool no one here wrote; counts, so they hold on a busy machine where times do not).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct PerfCounts {
    pub task_clock_ms: f64,
    pub context_switches: f64,
    pub cpu_migrations: f64,
    pub syscalls: f64,
}

const PERF_EVENTS: &str = "task-clock,context-switches,cpu-migrations,raw_syscalls:sys_enter";

impl PerfCounts {
    /// `perf stat -x,` output: `value,unit,event,…` per line.
    pub fn parse(text: &str) -> Option<PerfCounts> {
        let mut c = PerfCounts::default();
        let mut seen = 0;
        for line in text.lines() {
            let f: Vec<&str> = line.split(',').collect();
            let (Some(v), Some(event)) = (f.first(), f.get(2)) else {
                continue;
            };
            let Ok(v) = v.parse::<f64>() else {
                continue;
            };
            let slot = match *event {
                "task-clock" => &mut c.task_clock_ms,
                "context-switches" => &mut c.context_switches,
                "cpu-migrations" => &mut c.cpu_migrations,
                "raw_syscalls:sys_enter" => &mut c.syscalls,
                _ => continue,
            };
            *slot = v;
            seen += 1;
        }
        (seen > 0).then_some(c)
    }
}

/// `perf stat` attached to a process until stopped.
struct PerfStat(std::process::Child);

impl PerfStat {
    fn start(pid: u32) -> Option<PerfStat> {
        std::process::Command::new("perf")
            .args(["stat", "-x,", "-e", PERF_EVENTS, "-p", &pid.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .ok()
            .map(PerfStat)
    }

    fn stop(self) -> Option<PerfCounts> {
        let PerfStat(child) = self;
        // SIGINT makes perf stat print and exit (kill(1), so no unsafe code here).
        let _ = std::process::Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status();
        let out = child.wait_with_output().ok()?;
        PerfCounts::parse(&String::from_utf8_lossy(&out.stderr))
    }
}

impl RunStats {
    /// Server CPU per request, microseconds.
    pub fn server_us_per_req(&self) -> Option<f64> {
        self.server_cpu_s
            .filter(|_| self.requests > 0)
            .map(|c| c * 1e6 / self.requests as f64)
    }

    pub fn client_us_per_req(&self) -> Option<f64> {
        self.client_cpu_s
            .filter(|_| self.requests > 0)
            .map(|c| c * 1e6 / self.requests as f64)
    }

    /// Share of one CPU the server used over the run.
    pub fn server_busy(&self) -> Option<f64> {
        self.server_cpu_s.map(|c| c / self.seconds.max(1e-9))
    }

    /// perf counts per request: (context switches, syscalls, task-clock µs).
    pub fn perf_per_req(&self) -> Option<(f64, f64, f64)> {
        let p = self.perf.as_ref().filter(|_| self.requests > 0)?;
        let n = self.requests as f64;
        Some((
            p.context_switches / n,
            p.syscalls / n,
            p.task_clock_ms * 1e3 / n,
        ))
    }

    pub fn client_busy(&self) -> Option<f64> {
        self.client_cpu_s.map(|c| c / self.seconds.max(1e-9))
    }
}

/// Where and how to run one load.
pub struct ToolRun<'a> {
    pub tool: Tool,
    pub addr: SocketAddr,
    pub spec: &'a RequestSpec,
    pub connections: usize,
    /// Measured seconds (wrk: whole seconds).
    pub seconds: f64,
    /// Our generator's unmeasured warm-up; wrk has none (servers are warmed before round 1).
    pub warmup: f64,
    /// Command prefix placing the generator (`taskset -c 0`), or empty.
    pub client_prefix: &'a [String],
    pub server_pid: u32,
    pub expect_len: usize,
    /// `credbroker-bench` (our generator is its `gen` subcommand).
    pub self_bin: &'a Path,
    pub wrk_bin: &'a str,
    /// Runtime threads of our generator (1 = current-thread, like `wrk -t1`).
    pub own_threads: usize,
    /// A directory for the wrk script.
    pub scratch: &'a Path,
    /// Attach `perf stat` to the server for the run.
    pub perf: bool,
}

/// Runs the load; blocks until the generator exits.
pub fn run(r: &ToolRun) -> Result<RunStats, String> {
    let mut cmd = match r.tool {
        Tool::Wrk => {
            let script_path = r.scratch.join(format!("wrk-{}.lua", std::process::id()));
            std::fs::write(&script_path, wrk::script(&r.spec.to_wire()))
                .map_err(|e| format!("{}: {e}", script_path.display()))?;
            let url = format!("http://{}{}", r.addr, r.spec.path_and_query);
            let mut c = command(r.client_prefix, r.wrk_bin);
            c.args(wrk::args(
                r.connections,
                r.seconds.round() as u64,
                &script_path.display().to_string(),
                &url,
            ));
            c
        }
        Tool::Own => {
            let wire = serde_json::to_string(&r.spec.to_wire()).map_err(|e| e.to_string())?;
            let mut c = command(r.client_prefix, r.self_bin);
            c.args(["--threads", &r.own_threads.to_string(), "gen"])
                .args(["--addr", &r.addr.to_string(), "--request", &wire])
                .args(["--connections", &r.connections.to_string()])
                .args(["--duration", &r.seconds.to_string()])
                .args(["--warmup", &r.warmup.to_string()])
                .args(["--expect-len", &r.expect_len.to_string()])
                .args(["--server-pid", &r.server_pid.to_string()]);
            c
        }
    };
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let perf = if r.perf {
        let p = PerfStat::start(r.server_pid);
        // perf attaches asynchronously; give it a moment before the load starts.
        std::thread::sleep(std::time::Duration::from_millis(50));
        p
    } else {
        None
    };
    let child_cpu0 = procstat::children_cpu_seconds();
    let server_cpu0 = procstat::cpu_seconds(r.server_pid).ok();
    let t0 = Instant::now();
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {}: {e}", r.tool.name()))?;
    let wall = t0.elapsed().as_secs_f64();
    let server_cpu1 = procstat::cpu_seconds(r.server_pid).ok();
    let client_cpu_s = procstat::children_cpu_seconds() - child_cpu0;
    let perf = perf.and_then(PerfStat::stop);
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "{} exited {}: {}{}",
            r.tool.name(),
            out.status,
            stdout,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    match r.tool {
        Tool::Wrk => {
            let w = wrk::parse(&stdout)?;
            let seconds = w.duration_us as f64 / 1e6;
            Ok(RunStats {
                requests: w.requests,
                seconds,
                rps: w.requests as f64 / seconds.max(1e-9),
                p50_us: w.p50_us,
                p90_us: w.p90_us,
                p99_us: w.p99_us,
                p999_us: w.p999_us,
                max_us: w.max_us,
                errors: w.errors,
                bytes_per_response: (w.requests > 0).then(|| w.bytes as f64 / w.requests as f64),
                // wrk's process lives for its duration plus connection set-up (~ms): scale
                // its CPU to the measured window.
                client_cpu_s: Some(client_cpu_s * seconds / wall.max(seconds)),
                server_cpu_s: server_cpu0
                    .zip(server_cpu1)
                    .map(|(a, b)| (b - a) * seconds / wall.max(seconds)),
                perf,
            })
        }
        Tool::Own => {
            let l: LoadStats =
                serde_json::from_str(&stdout).map_err(|e| format!("gen output: {e}: {stdout}"))?;
            Ok(RunStats {
                requests: l.requests,
                seconds: l.seconds,
                rps: l.rps,
                p50_us: l.p50_us,
                p90_us: l.p90_us,
                p99_us: l.p99_us,
                p999_us: l.p999_us,
                max_us: l.max_us,
                errors: l.errors,
                bytes_per_response: None,
                // Both measured by the generator over its measured window (no warm-up).
                client_cpu_s: l.client_cpu_s,
                server_cpu_s: l.server_cpu_s,
                perf,
            })
        }
    }
}

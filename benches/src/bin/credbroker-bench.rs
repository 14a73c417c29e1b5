//! `credbroker-bench`: the benchmark parts that are not criterion micro-benchmarks.
//!
//! - `matrix`: the real binary vs the bare-hyper floor, an A/A floor pair, the Go floor and the
//!   baseline binary, with wrk and our generator, pinned and unpinned, in rotating rounds.
//! - `load`: the real binary vs the bare-hyper floor, every surface, 1/16/64/256 connections.
//! - `floor`: the floor server itself (started by `load` and `matrix`).
//! - `gen`: our load generator, one run (started by `matrix`).
//! - `refresh`: exchange cost, rotation → next exchange, cold-cache single flight.
//! - `fleet`: 10,000 pods' refresh schedules over 24 h with the real refresh policy.
//!
//! Each prints (and with `--out` writes) one JSON document; `scripts/bench` turns them into
//! `target/bench-report.md`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use credbroker::cpus::{Flavor, WorkerThreads};
use credbroker_benches::floor::{self, Shape};
use credbroker_benches::load::{self, LoadConfig};
use credbroker_benches::loadsuite::LoadSuite;
use credbroker_benches::matrix::{AaRule, MatrixConfig};
use credbroker_benches::placement::{Layout, Placement};
use credbroker_benches::refresh;
use credbroker_benches::targets::{RequestSpec, Target, WireSpec};
use credbroker_benches::tool::Tool;
use credbroker_benches::{admission, fleet, identities};

#[derive(Parser)]
#[command(
    name = "credbroker-bench",
    about = "credbroker's load, refresh-path and fleet benchmarks"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
    /// Worker threads of this process's runtime (the load generator's).
    #[arg(long, global = true, default_value_t = 2)]
    threads: usize,
}

#[derive(Subcommand)]
enum Cmd {
    /// Load: the broker binary and the floor, same run, every surface and connection count.
    Load {
        #[arg(long, default_value = "target/release/credbroker")]
        broker: PathBuf,
        #[arg(long, default_value = "target/release/fakecloud")]
        fakecloud: PathBuf,
        #[arg(long, value_delimiter = ',', default_value = "1,16,64,256")]
        connections: Vec<usize>,
        #[arg(long, value_enum, value_delimiter = ',')]
        targets: Vec<Target>,
        /// Measured seconds per run.
        #[arg(long, default_value_t = 3.0)]
        duration: f64,
        #[arg(long, default_value_t = 0.5)]
        warmup: f64,
        /// Broker/floor run pairs per cell.
        #[arg(long, default_value_t = 3)]
        repeat: usize,
        #[arg(long, default_value_t = 2.0)]
        idle: f64,
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Serve a fixed response (the floor); writes its address to `--addr-file`.
    Floor {
        /// The response shape, as JSON (`{"status":200,"headers":[["content-type","…"]],"body_len":N}`).
        #[arg(long)]
        shape: String,
        #[arg(long)]
        addr_file: PathBuf,
        /// Runtime sizing, as the broker's (`credbroker::cpus`): auto, 0 or a thread count.
        #[arg(long, default_value = "auto")]
        worker_threads: WorkerThreads,
        #[arg(long, value_enum, default_value_t)]
        runtime_flavor: Flavor,
        /// hyper's header-read timeout in ms, as the broker's listener; 0 = none (no timer is
        /// armed per request: what the timer costs).
        #[arg(long, default_value_t = 10_000)]
        header_read_timeout_ms: u64,
    },
    /// The load matrix (see `credbroker_benches::matrix`); prints and writes one JSON document.
    Matrix(Box<MatrixArgs>),
    /// One run of our load generator against `--addr`; prints its figures as JSON.
    Gen {
        #[arg(long)]
        addr: std::net::SocketAddr,
        /// The request, as JSON (`{"method":"GET","path_and_query":"/…","headers":[["k","v"]]}`).
        #[arg(long)]
        request: String,
        #[arg(long, default_value_t = 64)]
        connections: usize,
        #[arg(long, default_value_t = 2.0)]
        duration: f64,
        #[arg(long, default_value_t = 0.3)]
        warmup: f64,
        #[arg(long, default_value_t = 200)]
        expect_status: u16,
        /// Body length of a correct answer (others count as errors).
        #[arg(long)]
        expect_len: usize,
        /// The server process, for its CPU time over the measured window.
        #[arg(long)]
        server_pid: Option<u32>,
    },
    /// Refresh path: exchange cost (0 and 50 ms injected), rotation, cold-cache single flight.
    Refresh {
        #[arg(long, default_value_t = 20)]
        samples: usize,
        #[arg(long, default_value_t = 1000)]
        clients: usize,
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// `credbroker inject`: admission latency (ServiceAccount read excluded and included), wrk,
    /// and the webhook's RSS.
    Admission {
        #[arg(long, default_value = "target/release/credbroker")]
        broker: PathBuf,
        #[arg(long, default_value_t = 2000)]
        requests: usize,
        #[arg(long, default_value_t = 200)]
        warmup: usize,
        /// Seconds of the wrk run (0: none).
        #[arg(long, default_value_t = 5)]
        wrk_seconds: u64,
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Several identities per pod over refresh cycles: exchanges per identity, chain
    /// re-derivation.
    Identities {
        #[arg(long, default_value = "target/release/credbroker")]
        broker: PathBuf,
        /// Lifetime of every issued credential, seconds.
        #[arg(long, default_value_t = 30)]
        lifetime: u64,
        #[arg(long, default_value_t = 150)]
        seconds: u64,
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Fleet simulation over 24 h.
    Fleet {
        #[arg(long, default_value_t = 10_000)]
        pods: usize,
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match &cli.command {
        // The floor sizes its runtime as the broker does.
        Cmd::Floor {
            worker_threads,
            runtime_flavor,
            ..
        } => credbroker::cpus::runtime(*worker_threads, *runtime_flavor),
        // One generator thread: the current-thread scheduler, like `wrk -t1`'s one event loop.
        _ if cli.threads <= 1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        _ => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cli.threads)
            .enable_all()
            .build(),
    };
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("credbroker-bench: runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("credbroker-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

#[derive(clap::Args)]
struct MatrixArgs {
    #[arg(long, default_value = "target/release/credbroker")]
    broker: PathBuf,
    /// Extra global flags for the broker (whitespace-separated).
    #[arg(long, default_value = "", allow_hyphen_values = true)]
    broker_args: String,
    /// The baseline binary (same surfaces, measured in the same rounds).
    #[arg(long)]
    baseline: Option<PathBuf>,
    /// The Go net/http floor (benches/floor-go), built by scripts/bench.
    #[arg(long)]
    go_floor: Option<PathBuf>,
    #[arg(long, default_value = "target/release/fakecloud")]
    fakecloud: PathBuf,
    #[arg(long, default_value = "wrk")]
    wrk: String,
    /// More broker instances: `LABEL=FLAGS` (e.g. `mt1=--worker-threads 1 --runtime-flavor multi-thread`).
    #[arg(long = "variant", allow_hyphen_values = true)]
    variants: Vec<String>,
    /// Flags for the floor (`--worker-threads 2`, `--header-read-timeout-ms 0`).
    #[arg(long, default_value = "", allow_hyphen_values = true)]
    floor_args: String,
    #[arg(long, value_enum, value_delimiter = ',')]
    targets: Vec<Target>,
    #[arg(long, value_delimiter = ',', default_value = "1,64,256")]
    connections: Vec<usize>,
    #[arg(long, value_enum, value_delimiter = ',', default_value = "wrk,own")]
    tools: Vec<Tool>,
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "pinned,unpinned"
    )]
    placements: Vec<Placement>,
    #[arg(long, default_value_t = 1)]
    server_cpu: usize,
    #[arg(long, default_value_t = 0)]
    client_cpu: usize,
    /// CPUs of the quota placement.
    #[arg(long, default_value_t = 0.5)]
    quota: f64,
    /// Servers our generator measures besides the floor pair (wrk measures every server).
    #[arg(long, value_delimiter = ',', default_value = "broker")]
    own_servers: Vec<String>,
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// More rounds (at most) for a cell whose A/A medians are out of bounds; then it is void.
    #[arg(long, default_value_t = 2)]
    extra_rounds: usize,
    /// Measured seconds per run (wrk: rounded to whole seconds).
    #[arg(long, default_value_t = 2.0)]
    duration: f64,
    #[arg(long, default_value_t = 0.3)]
    own_warmup: f64,
    #[arg(long, default_value_t = 1)]
    own_threads: usize,
    /// Seconds of wrk on every server and surface before the first round.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// A/A rule: a cell counts when floor-b / floor (median over its rounds) is within ± this
    /// share in throughput…
    #[arg(long, default_value_t = 0.05)]
    aa_rps: f64,
    /// …and of its p99 latency.
    #[arg(long, default_value_t = 0.10)]
    aa_p99: f64,
    #[arg(long, default_value_t = 2.0)]
    idle: f64,
    /// Attach `perf stat` to the server for every run (context switches, syscalls, task-clock).
    #[arg(long)]
    perf_stat: bool,
    #[arg(long)]
    out: Option<PathBuf>,
}

fn words(s: &str) -> Vec<String> {
    s.split_whitespace().map(str::to_string).collect()
}

impl MatrixArgs {
    fn config(&self) -> Result<MatrixConfig, String> {
        let variants = self
            .variants
            .iter()
            .map(|v| {
                let (label, flags) = v
                    .split_once('=')
                    .ok_or_else(|| format!("--variant {v:?}: expected LABEL=FLAGS"))?;
                Ok((label.trim().to_string(), words(flags)))
            })
            .collect::<Result<_, String>>()?;
        Ok(MatrixConfig {
            broker_bin: self.broker.clone(),
            broker_args: words(&self.broker_args),
            baseline_bin: self.baseline.clone(),
            go_floor_bin: self.go_floor.clone(),
            fakecloud_bin: self.fakecloud.clone(),
            self_bin: std::env::current_exe().map_err(|e| e.to_string())?,
            wrk_bin: self.wrk.clone(),
            variants,
            floor_args: words(&self.floor_args),
            targets: if self.targets.is_empty() {
                Target::ALL.to_vec()
            } else {
                self.targets.clone()
            },
            connections: self.connections.clone(),
            tools: self.tools.clone(),
            placements: self.placements.clone(),
            layout: Layout {
                server_cpu: self.server_cpu,
                client_cpu: self.client_cpu,
                quota: self.quota,
            },
            own_servers: self.own_servers.clone(),
            rounds: self.rounds.max(1),
            extra_rounds: self.extra_rounds,
            duration: self.duration,
            own_warmup: self.own_warmup,
            own_threads: self.own_threads.max(1),
            warmup: self.warmup,
            aa: AaRule {
                rps: self.aa_rps,
                p99: self.aa_p99,
            },
            idle: self.idle,
            perf: self.perf_stat,
        })
    }
}

fn emit(value: &impl serde::Serialize, out: Option<PathBuf>) -> Result<(), String> {
    let text = serde_json::to_string_pretty(value).map_err(|e| e.to_string())?;
    if let Some(path) = out {
        std::fs::write(&path, &text).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    println!("{text}");
    Ok(())
}

async fn run(cmd: Cmd) -> Result<(), String> {
    match cmd {
        Cmd::Load {
            broker,
            fakecloud,
            connections,
            targets,
            duration,
            warmup,
            repeat,
            idle,
            out,
        } => {
            let suite = LoadSuite {
                broker_bin: broker,
                fakecloud_bin: fakecloud,
                self_bin: std::env::current_exe().map_err(|e| e.to_string())?,
                targets: if targets.is_empty() {
                    Target::ALL.to_vec()
                } else {
                    targets
                },
                connections,
                warmup: Duration::from_secs_f64(warmup),
                duration: Duration::from_secs_f64(duration),
                repeat: repeat.max(1),
                idle: Duration::from_secs_f64(idle),
            };
            let report = suite.run().await?;
            emit(&report, out)
        }
        Cmd::Floor {
            shape,
            addr_file,
            header_read_timeout_ms,
            ..
        } => {
            let shape: Shape = serde_json::from_str(&shape).map_err(|e| format!("--shape: {e}"))?;
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .map_err(|e| e.to_string())?;
            let addr = listener.local_addr().map_err(|e| e.to_string())?;
            std::fs::write(&addr_file, addr.to_string())
                .map_err(|e| format!("{}: {e}", addr_file.display()))?;
            let timeout =
                (header_read_timeout_ms > 0).then(|| Duration::from_millis(header_read_timeout_ms));
            floor::serve(listener, &shape, timeout).await
        }
        Cmd::Matrix(args) => {
            let out = args.out.clone();
            let report = args.config()?.run().await?;
            emit(&report, out)
        }
        Cmd::Gen {
            addr,
            request,
            connections,
            duration,
            warmup,
            expect_status,
            expect_len,
            server_pid,
        } => {
            let wire: WireSpec =
                serde_json::from_str(&request).map_err(|e| format!("--request: {e}"))?;
            let stats = load::run(&LoadConfig {
                addr,
                spec: RequestSpec::from_wire(&wire)?,
                connections: connections.max(1),
                warmup: Duration::from_secs_f64(warmup),
                duration: Duration::from_secs_f64(duration),
                expect_status,
                expect_len,
                server_pid,
            })
            .await?;
            println!(
                "{}",
                serde_json::to_string(&stats).map_err(|e| e.to_string())?
            );
            Ok(())
        }
        Cmd::Refresh {
            samples,
            clients,
            out,
        } => {
            let report = refresh::run(samples.max(1), clients.max(1)).await?;
            emit(&report, out)
        }
        Cmd::Admission {
            broker,
            requests,
            warmup,
            wrk_seconds,
            out,
        } => {
            let cfg = admission::AdmissionConfig {
                broker,
                requests: requests.max(1),
                warmup,
                wrk_seconds,
            };
            emit(&admission::run(&cfg).await?, out)
        }
        Cmd::Identities {
            broker,
            lifetime,
            seconds,
            out,
        } => {
            let cfg = identities::IdentitiesConfig {
                broker,
                lifetime: lifetime.max(1),
                seconds: seconds.max(1),
            };
            emit(&identities::run(&cfg).await?, out)
        }
        Cmd::Fleet { pods, out } => {
            let results: Vec<_> = fleet::scenarios(pods.max(1))
                .iter()
                .map(fleet::simulate)
                .collect();
            emit(&results, out)
        }
    }
}

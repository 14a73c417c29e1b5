//! `credbroker-bench`: the benchmark parts that are not criterion micro-benchmarks.
//!
//! - `load`: the real binary vs the bare-hyper floor, every surface, 1/16/64/256 connections.
//! - `floor`: the floor server itself (started by `load`).
//! - `refresh`: exchange cost, rotation → next exchange, cold-cache single flight.
//! - `fleet`: 10,000 pods' refresh schedules over 24 h with the real refresh policy.
//!
//! Each prints (and with `--out` writes) one JSON document; `scripts/bench` turns them into
//! `target/bench-report.md`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use credbroker_benches::fleet;
use credbroker_benches::floor::{self, Shape};
use credbroker_benches::loadsuite::LoadSuite;
use credbroker_benches::refresh;
use credbroker_benches::targets::Target;

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
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cli.threads.max(1))
        .enable_all()
        .build()
    {
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
        Cmd::Floor { shape, addr_file } => {
            let shape: Shape = serde_json::from_str(&shape).map_err(|e| format!("--shape: {e}"))?;
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .map_err(|e| e.to_string())?;
            let addr = listener.local_addr().map_err(|e| e.to_string())?;
            std::fs::write(&addr_file, addr.to_string())
                .map_err(|e| format!("{}: {e}", addr_file.display()))?;
            floor::serve(listener, &shape).await
        }
        Cmd::Refresh {
            samples,
            clients,
            out,
        } => {
            let report = refresh::run(samples.max(1), clients.max(1)).await?;
            emit(&report, out)
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

//! `fakecloud run`: start a Cloudscape on loopback ports, write its description to a
//! ready file, and serve until SIGTERM or SIGINT.

use clap::{Parser, Subcommand};
use fakecloud::{Cloudscape, CloudscapeOptions, ServiceAccount};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "fakecloud",
    version,
    about = "Emulated clouds for credbroker tests and demos"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the issuer, projected tokens and fake clouds; write the ready file; serve until signalled.
    Run {
        /// Directory for projected token volumes (created if missing).
        #[arg(long)]
        state_dir: PathBuf,
        /// Where to write the `describe()` JSON once everything listens (written atomically).
        #[arg(long)]
        ready_file: PathBuf,
        /// Rotate projected tokens every SECS seconds.
        #[arg(long, value_name = "SECS")]
        rotate_every: Option<u64>,
        /// Lifetime of minted tokens in seconds.
        #[arg(long, value_name = "SECS", default_value_t = 3600)]
        token_lifetime: u64,
        /// Service account namespace the tokens are minted for.
        #[arg(long, default_value = "default")]
        namespace: String,
        /// Service account name the tokens are minted for.
        #[arg(long, default_value = "app")]
        service_account: String,
        /// Lifetime of the RPSTs the OCI proxymux mints, in seconds.
        #[arg(long, value_name = "SECS", default_value_t = 3600)]
        oci_rpst_lifetime: u64,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FAKECLOUD_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("fakecloud: cannot start runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("fakecloud: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> std::io::Result<()> {
    let Command::Run {
        state_dir,
        ready_file,
        rotate_every,
        token_lifetime,
        namespace,
        service_account,
        oci_rpst_lifetime,
    } = command;
    let opts = CloudscapeOptions {
        state_dir,
        token_lifetime: Duration::from_secs(token_lifetime),
        rotate_every: rotate_every.filter(|s| *s > 0).map(Duration::from_secs),
        service_account: ServiceAccount::new(namespace, service_account),
        oci_rpst_lifetime: Duration::from_secs(oci_rpst_lifetime.max(1)),
    };
    let cloud = Cloudscape::start(opts).await?;
    let description = cloud.describe();
    write_atomically(&ready_file, &serde_json::to_vec_pretty(&description)?)?;
    tracing::info!(ready_file = %ready_file.display(), %description, "fakecloud ready");

    wait_for_signal().await?;
    tracing::info!("shutting down");
    cloud.shutdown().await;
    Ok(())
}

/// Writes `path.tmp.<pid>` next to `path` and renames it over `path`, so readers never see
/// a partial file.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(format!(".tmp.{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.write_all(b"\n")?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

async fn wait_for_signal() -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

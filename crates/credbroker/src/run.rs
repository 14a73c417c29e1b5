//! Entry point behind `main`: logging, the runtime, signals, and the subcommand.

use std::process::ExitCode;

use tokio::sync::watch;
use tracing_subscriber::EnvFilter;

use crate::app::{self, AppError};
use crate::cli::{Cli, Command, LogFormat};
use crate::config::Env;

pub fn run(cli: Cli) -> ExitCode {
    init_logging(cli.log_format, &cli.log_level);
    let runtime = match crate::cpus::runtime(cli.worker_threads, cli.runtime_flavor) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("credbroker: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let env = Env::from_process();
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => app::serve(args, env, shutdown_signal())
                .await
                .map(|()| true),
            Command::Demo(args) => demo(args).await.map(|()| true),
            Command::Env(args) => {
                let lines = app::env_lines(&args, &env)?;
                print!("{lines}");
                Ok(true)
            }
            Command::Check(args) => app::check(args, env, &mut std::io::stdout()).await,
            Command::Inject(args) => crate::inject::run(args, shutdown_signal())
                .await
                .map(|()| true),
        }
    });
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("credbroker: {e}");
            ExitCode::from(e.exit_code() as u8)
        }
    }
}

#[cfg(feature = "demo")]
async fn demo(args: crate::cli::DemoArgs) -> Result<(), AppError> {
    crate::demo::run(args, shutdown_signal()).await
}

/// Without the emulators (the image, the release artefact), the demo says where it lives.
#[cfg(not(feature = "demo"))]
async fn demo(_args: crate::cli::DemoArgs) -> Result<(), AppError> {
    Err(AppError::Config(crate::config::ConfigError::new(
        "demo",
        "this build has no emulated clouds (built without the `demo` feature, as the image is); \
         from a checkout, run `cargo run -p credbroker -- demo`",
    )))
}

/// The tracing filter for `--log-level`. Our crates get the level asked for; libraries never log
/// below `info`, because HTTP and TLS libraries at debug/trace can dump raw request bytes, and
/// our requests carry service-account tokens. No secret is logged at any level.
pub(crate) fn log_filter(level: &str) -> EnvFilter {
    const LIBRARY_CAPS: &str =
        "hyper=info,hyper_util=info,reqwest=info,rustls=info,h2=info,notify=info";
    let level = level.trim();
    let directives = match level.to_ascii_lowercase().as_str() {
        l @ ("error" | "warn" | "info") => l.to_string(),
        l @ ("debug" | "trace") => format!("info,credbroker={l},fakecloud={l}"),
        _ => level.to_string(),
    };
    EnvFilter::try_new(format!("{directives},{LIBRARY_CAPS}"))
        .unwrap_or_else(|_| EnvFilter::new("info"))
}

fn init_logging(format: LogFormat, level: &str) {
    let filter = log_filter(level);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.with_ansi(false).init(),
    }
}

/// Turns true on SIGTERM or SIGINT.
pub(crate) fn shutdown_signal() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        let term = async {
            match term.as_mut() {
                Some(t) => {
                    t.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = term => tracing::info!("SIGTERM: draining"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: draining"),
        }
        let _ = tx.send(true);
    });
    rx
}

impl From<AppError> for ExitCode {
    fn from(e: AppError) -> Self {
        ExitCode::from(e.exit_code() as u8)
    }
}

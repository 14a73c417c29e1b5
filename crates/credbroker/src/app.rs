//! Wiring: configuration → clouds → listeners, for `serve`, `env` and `check`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::cli::ServeArgs;
use crate::clock::{Clock, SystemClock};
use crate::clouds::{self, AppEnv, CloudConfig, Runtime, Shared, TokenSources};
use crate::config::{ConfigError, Env};
use crate::fs::FileMode;
use crate::http::client::{ClientOptions, build_client, load_pem_certs, tls_config};
use crate::http::server::{ServerLimits, serve as serve_http};
use crate::metrics::Metrics;
use crate::ops::Ops;
use crate::surface::Router;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("configuration error: {0}")]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Runtime(String),
}

impl AppError {
    pub fn exit_code(&self) -> i32 {
        match self {
            AppError::Config(_) => 2,
            AppError::Runtime(_) => 1,
        }
    }
}

/// Validates everything that can be validated before anything runs or binds.
pub fn configure(args: &ServeArgs, env: &Env) -> Result<Vec<Box<dyn CloudConfig>>, ConfigError> {
    let c = &args.common;
    if !c.listen.ip().is_loopback() && !c.allow_non_loopback {
        return Err(ConfigError::new(
            "--listen",
            format!(
                "{} is not a loopback address; anyone who can reach it gets credentials (use --allow-non-loopback to insist)",
                c.listen
            ),
        ));
    }
    let clouds = clouds::detect(env, &args.clouds)?;
    if clouds.is_empty() {
        return Err(clouds::none_enabled());
    }
    Ok(clouds)
}

/// The clouds, started: refreshers running, no listener bound.
pub struct Started {
    pub clouds: Arc<[Runtime]>,
    pub metrics: Arc<Metrics>,
}

pub fn start(
    args: &ServeArgs,
    env: &Env,
    configs: Vec<Box<dyn CloudConfig>>,
) -> Result<Started, ConfigError> {
    let extra = match &args.common.upstream_ca_file {
        Some(path) => load_pem_certs(env, "--upstream-ca-file", path)?,
        None => Vec::new(),
    };
    let http = build_client(tls_config(Some(env), &extra)?, &ClientOptions::default())?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let metrics = Arc::new(Metrics::new());
    let shared = Shared {
        http,
        metrics: metrics.clone(),
        clock: clock.clone(),
        tokens: TokenSources::new(clock, metrics.clone()),
        file_mode: FileMode::new(args.common.group_readable_files),
        env: env.clone(),
    };
    let clouds = configs
        .into_iter()
        .map(|c| c.start(&shared))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Started {
        clouds: clouds.into(),
        metrics,
    })
}

/// Started clouds with both listeners bound; [`Bound::run`] serves them.
pub struct Bound {
    args: ServeArgs,
    started: Started,
    creds: TcpListener,
    ops: TcpListener,
    pub creds_addr: SocketAddr,
    pub ops_addr: SocketAddr,
}

/// Configures, starts the clouds and binds both listeners (writing `--addr-file` if asked).
pub async fn bind(args: ServeArgs, env: &Env) -> Result<Bound, AppError> {
    let configs = configure(&args, env)?;
    let started = start(&args, env, configs)?;
    let listen = |addr: SocketAddr, what: &'static str| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|e| AppError::Runtime(format!("cannot listen on {addr} ({what}): {e}")))
    };
    let creds = listen(args.common.listen, "--listen").await?;
    let ops = listen(args.common.ops_listen, "--ops-listen").await?;
    let creds_addr = creds
        .local_addr()
        .map_err(|e| AppError::Runtime(e.to_string()))?;
    let ops_addr = ops
        .local_addr()
        .map_err(|e| AppError::Runtime(e.to_string()))?;
    if let Some(path) = &args.common.addr_file {
        let body = format!("credentials={creds_addr}\nops={ops_addr}\n");
        crate::fs::write_atomic(path, body.as_bytes(), FileMode(0o644)).map_err(|e| {
            AppError::Runtime(format!("cannot write --addr-file {}: {e}", path.display()))
        })?;
    }
    Ok(Bound {
        args,
        started,
        creds,
        ops,
        creds_addr,
        ops_addr,
    })
}

impl Bound {
    /// Serves until `shutdown` turns true, then drains in-flight requests and returns.
    pub async fn run(self, shutdown: watch::Receiver<bool>) -> Result<(), AppError> {
        let clouds: Vec<&str> = self.started.clouds.iter().map(|c| c.name()).collect();
        let router = Arc::new(router(&self.started)?);
        tracing::info!(credentials = %self.creds_addr, ops = %self.ops_addr, clouds = ?clouds, "listening");
        let ops = Arc::new(Ops {
            clouds: self.started.clouds.clone(),
            metrics: self.started.metrics.clone(),
        });
        let limits = ServerLimits {
            max_connections: self.args.common.max_connections.max(256),
            header_read_timeout: Duration::from_millis(
                self.args.common.header_read_timeout_ms.max(100),
            ),
            ..ServerLimits::default()
        };
        let ops_limits = ServerLimits {
            max_connections: 64,
            ..limits.clone()
        };
        let creds = tokio::spawn(serve_http(self.creds, router, limits, shutdown.clone()));
        let ops = tokio::spawn(serve_http(self.ops, ops, ops_limits, shutdown));
        let _ = tokio::join!(creds, ops);
        tracing::info!("stopped");
        Ok(())
    }
}

/// The credential listener's router over every started cloud's surfaces.
pub fn router(started: &Started) -> Result<Router, AppError> {
    let surfaces = started
        .clouds
        .iter()
        .flat_map(|c| c.surfaces().iter().cloned())
        .collect();
    Router::new(surfaces, started.metrics.clone()).map_err(|e| AppError::Runtime(e.to_string()))
}

/// Runs the sidecar until `shutdown` turns true; drains in-flight requests, then returns.
pub async fn serve(
    args: ServeArgs,
    env: Env,
    shutdown: watch::Receiver<bool>,
) -> Result<(), AppError> {
    bind(args, &env).await?.run(shutdown).await
}

/// `credbroker env`: the application container's environment, as shell `export` lines.
pub fn env_lines(args: &ServeArgs, env: &Env) -> Result<String, ConfigError> {
    let configs = configure(args, env)?;
    Ok(render_env(&app_envs(&configs, args.common.listen)))
}

/// Each enabled cloud's application environment for a broker listening on `listen`.
pub fn app_envs(configs: &[Box<dyn CloudConfig>], listen: SocketAddr) -> Vec<AppEnv> {
    configs.iter().map(|c| c.app_env(listen)).collect()
}

pub fn render_env(envs: &[AppEnv]) -> String {
    let mut out = String::from("# Environment for the application container (credbroker env)\n");
    for e in envs {
        out.push_str(&format!("# {}\n", e.cloud));
        for (k, v) in &e.exports {
            out.push_str(&format!("export {k}={}\n", shell_quote(v)));
        }
        if !e.forbidden.is_empty() {
            out.push_str(&format!(
                "# {}: must NOT be set in the application container (SDKs would bypass the sidecar): {}\n",
                e.cloud,
                e.forbidden.join(" ")
            ));
        }
        for note in &e.notes {
            out.push_str(&format!("# {}: note: {note}\n", e.cloud));
        }
        for id in &e.identities {
            out.push_str(&format!("# {} identity {}: {}\n", e.cloud, id.name, id.how));
            for (k, v) in &id.exports {
                out.push_str(&format!("#   export {k}={}\n", shell_quote(v)));
            }
        }
    }
    out
}

fn shell_quote(v: &str) -> String {
    let plain = !v.is_empty()
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/:._-=@,+%".contains(&b));
    if plain {
        v.to_string()
    } else {
        format!("'{}'", v.replace('\'', r"'\''"))
    }
}

/// `credbroker check`: one exchange per cloud, a redacted summary each. `Ok(true)` if all worked.
pub async fn check(
    args: ServeArgs,
    env: Env,
    out: &mut impl std::io::Write,
) -> Result<bool, AppError> {
    let configs = configure(&args, &env)?;
    let started = start(&args, &env, configs)?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    let mut all_ok = true;
    for cloud in started.clouds.iter() {
        // Wait for the first exchange to finish, one way or the other.
        let summary = loop {
            match cloud.summary() {
                Ok(s) => break Ok(s),
                Err(why) if why.is_pending() && tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(why) => break Err(why),
            }
        };
        match summary {
            Ok(s) => {
                let _ = writeln!(out, "{}: ok: {s}", cloud.name());
            }
            Err(why) => {
                all_ok = false;
                let _ = writeln!(out, "{}: FAILED: {why}", cloud.name());
            }
        }
    }
    Ok(all_ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(
            shell_quote("http://127.0.0.1:8189/v1/credentials"),
            "http://127.0.0.1:8189/v1/credentials"
        );
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }
}

//! `credbroker inject`: the mutating admission webhook that wires the sidecar into every pod
//! labelled `credbroker.io/inject: "true"`, configured from the identities its ServiceAccount's
//! annotations name (each cloud declares how, in its `inject.rs`).
//!
//! - [`review`]: one AdmissionReview in, one out.
//! - [`accounts`]: the ServiceAccount, read from the API server at admission time.
//! - [`mutate`]: the JSON Patch, with the applications' environment from the sidecar's own
//!   configuration code (what `credbroker env` prints).
//! - [`tls`]: the serving certificate, re-read when its files change.

pub mod accounts;
pub mod metrics;
pub mod mutate;
pub mod part;
pub mod review;
pub mod tls;

use std::sync::Arc;
use std::time::Duration;

use http::Method;
use http::request::Parts;
use tokio::net::TcpListener;
use tokio::sync::watch;

use accounts::{Accounts, ApiServer};
use metrics::InjectMetrics;
use mutate::Sidecar;
use part::{Refusal, ServiceAccount};
use review::Webhook;
use tls::Certificate;

use crate::app::AppError;
use crate::cli::InjectArgs;
use crate::http::server::{Handler, Resp, ServerLimits, respond, serve, serve_tls, text};

/// A projected token's lifetime from a ServiceAccount annotation (seconds), or `default`.
/// kubelet refuses less than 10 minutes; more than a day is not a rotation any more.
pub(crate) fn token_expiration(
    sa: &ServiceAccount,
    key: &str,
    default: i64,
) -> Result<i64, Refusal> {
    let Some(value) = sa.annotation(key) else {
        return Ok(default);
    };
    match value.parse::<i64>() {
        Ok(secs) if (600..=86_400 * 2).contains(&secs) => Ok(secs),
        _ => Err(Refusal(format!(
            "ServiceAccount {}: annotation {key}: {value:?} must be a number of seconds from 600 to 172800",
            sa.id()
        ))),
    }
}

/// Runs the webhook until `shutdown` turns true.
pub async fn run(args: InjectArgs, shutdown: watch::Receiver<bool>) -> Result<(), AppError> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let certificate = Certificate::load(&args.tls_cert_file, &args.tls_key_file)?;
    certificate.follow();
    let timeout = Duration::from_millis(args.api_timeout_ms.max(100));
    let accounts = ApiServer::infer(timeout).await.map_err(|e| {
        AppError::Config(crate::config::ConfigError::new(
            "KUBECONFIG",
            format!("no API server to read ServiceAccounts from: {e}"),
        ))
    })?;
    serve_webhook(args, certificate, accounts, shutdown).await
}

/// Binds both listeners and serves; `accounts` is where ServiceAccounts come from.
pub async fn serve_webhook<A: Accounts>(
    args: InjectArgs,
    certificate: Arc<Certificate>,
    accounts: A,
    shutdown: watch::Receiver<bool>,
) -> Result<(), AppError> {
    let listen = |addr: std::net::SocketAddr, what: &'static str| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|e| AppError::Runtime(format!("cannot listen on {addr} ({what}): {e}")))
    };
    let webhook_listener = listen(args.listen, "--listen").await?;
    let ops_listener = listen(args.ops_listen, "--ops-listen").await?;
    let (webhook_addr, ops_addr) = (
        webhook_listener
            .local_addr()
            .map_err(|e| AppError::Runtime(e.to_string()))?,
        ops_listener
            .local_addr()
            .map_err(|e| AppError::Runtime(e.to_string()))?,
    );
    if let Some(path) = &args.addr_file {
        let body = format!("webhook={webhook_addr}\nops={ops_addr}\n");
        crate::fs::write_atomic(path, body.as_bytes(), crate::fs::FileMode(0o644)).map_err(
            |e| AppError::Runtime(format!("cannot write --addr-file {}: {e}", path.display())),
        )?;
    }
    let metrics = Arc::new(InjectMetrics::default());
    let webhook = Arc::new(Webhook {
        accounts,
        sidecar: Sidecar {
            image: args.image.clone(),
        },
        flags: args.clouds.clone(),
        metrics: metrics.clone(),
    });
    tracing::info!(webhook = %webhook_addr, ops = %ops_addr, image = %args.image, "admission webhook listening");
    let limits = ServerLimits {
        max_connections: 256,
        ..ServerLimits::default()
    };
    let hooks = tokio::spawn(serve_tls(
        webhook_listener,
        certificate.acceptor(),
        webhook,
        limits.clone(),
        shutdown.clone(),
    ));
    let ops = tokio::spawn(serve(
        ops_listener,
        Arc::new(InjectOps { metrics }),
        ServerLimits {
            max_connections: 64,
            ..limits
        },
        shutdown,
    ));
    let _ = tokio::join!(hooks, ops);
    tracing::info!("stopped");
    Ok(())
}

/// The webhook's ops listener: `/healthz`, `/readyz` (ready once serving: the certificate
/// loaded at start), `/metrics`.
struct InjectOps {
    metrics: Arc<InjectMetrics>,
}

impl Handler for InjectOps {
    async fn call(&self, req: Parts) -> Resp {
        if req.method != Method::GET && req.method != Method::HEAD {
            return text(405, "method not allowed\n");
        }
        match req.uri.path() {
            "/healthz" | "/livez" | "/readyz" => text(200, "ok\n"),
            "/metrics" => respond(
                200,
                "text/plain; version=0.0.4; charset=utf-8",
                self.metrics.render(),
            ),
            _ => text(404, "not found\n"),
        }
    }
}

#[cfg(test)]
mod tests;

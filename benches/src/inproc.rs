//! The broker in-process: the emulated clouds (`fakecloud::Cloudscape`), the clouds started
//! exactly as `credbroker serve` starts them (`app::configure` + `app::start`), and the
//! credential [`Router`] — but no listener, so a request can be served without a socket.
//!
//! Used by the criterion benches (hot path without a socket) and the refresh-path timings.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use credbroker::app::{self, Started};
use credbroker::cli::ServeArgs;
use credbroker::config::Env;
use credbroker::http::server::{Handler, Resp};
use credbroker::surface::Router;
use fakecloud::{Cloudscape, CloudscapeOptions};
use http_body_util::BodyExt;

use crate::setup::{Clouds, sidecar_env};
use crate::targets::{Credentials, RequestSpec, Target};

/// `Host` of in-process requests (any loopback address passes the broker's guard).
pub const HOST: &str = "127.0.0.1:8189";

pub struct InProcess {
    pub scape: Cloudscape,
    pub started: Started,
    pub router: Arc<Router>,
    pub clouds: Clouds,
    dir: tempfile::TempDir,
}

impl InProcess {
    /// Fakes, then the broker's clouds. Does not wait for the first exchanges.
    pub async fn start(clouds: Clouds) -> Result<InProcess, String> {
        Self::start_with(clouds, |_| {}).await
    }

    /// Like [`start`](Self::start); `before` runs once the fakes are up and before the broker
    /// starts (to inject faults or latency into the first exchanges).
    pub async fn start_with(
        clouds: Clouds,
        before: impl FnOnce(&Cloudscape),
    ) -> Result<InProcess, String> {
        let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
        let scape = Cloudscape::start(CloudscapeOptions::new(dir.path().join("cloud")))
            .await
            .map_err(|e| format!("cannot start the fakes: {e}"))?;
        before(&scape);
        let started = start_broker(&scape, clouds, &dir)?;
        let router = Arc::new(app::router(&started).map_err(|e| e.to_string())?);
        Ok(InProcess {
            scape,
            started,
            router,
            clouds,
            dir,
        })
    }

    /// Starts another broker (fresh caches, fresh HTTP client) against the same fakes.
    pub fn restart_broker(&mut self) -> Result<(), String> {
        self.started = start_broker(&self.scape, self.clouds, &self.dir)?;
        self.router = Arc::new(app::router(&self.started).map_err(|e| e.to_string())?);
        Ok(())
    }

    /// `Ok` once every enabled cloud holds a credential it would serve.
    pub fn readiness(&self) -> Result<(), String> {
        for c in self.started.clouds.iter() {
            c.readiness()
                .map_err(|why| format!("{}: {why}", c.name()))?;
        }
        Ok(())
    }

    /// Polls readiness every millisecond for up to `timeout`.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match self.readiness() {
                Ok(()) => return Ok(()),
                Err(why) if tokio::time::Instant::now() >= deadline => {
                    return Err(format!("not ready after {timeout:?}: {why}"));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(1)).await,
            }
        }
    }

    /// One request through the router and the request metrics, as the server would serve it.
    pub async fn call(&self, spec: &RequestSpec) -> Resp {
        self.router.call(spec.parts()).await
    }

    /// The per-broker request secrets: the AWS `Authorization` value and an IMDSv2 session.
    pub async fn credentials(&self) -> Result<Credentials, String> {
        let aws_auth = std::fs::read_to_string(self.aws_auth_file())
            .map_err(|e| format!("aws auth token file: {e}"))?;
        let resp = self.call(&RequestSpec::imds_session(HOST)).await;
        let (status, body) = body_of(resp).await;
        if status != 200 {
            return Err(format!("IMDSv2 session token: HTTP {status}"));
        }
        Ok(Credentials {
            aws_auth,
            imds_session: String::from_utf8_lossy(&body).into_owned(),
        })
    }

    /// The request specs of every surface, addressed to [`HOST`].
    pub async fn specs(&self) -> Result<Vec<(Target, RequestSpec)>, String> {
        let creds = self.credentials().await?;
        Ok(Target::ALL
            .iter()
            .map(|t| (*t, RequestSpec::for_target(*t, HOST, &creds)))
            .collect())
    }

    fn aws_auth_file(&self) -> std::path::PathBuf {
        self.dir.path().join("aws-auth-token")
    }
}

fn start_broker(
    scape: &Cloudscape,
    clouds: Clouds,
    dir: &tempfile::TempDir,
) -> Result<Started, String> {
    let desc = scape.describe();
    let (args, env) = ServeArgs::from_settings(
        sidecar_env(&desc, clouds, dir.path()),
        &["--listen".to_string(), HOST.to_string()],
    )
    .map_err(|e| format!("serve flags: {e}"))?;
    let env = Env::from_pairs(env);
    let configs = app::configure(&args, &env).map_err(|e| e.to_string())?;
    app::start(&args, &env, configs).map_err(|e| e.to_string())
}

/// Status and body bytes of a response.
pub async fn body_of(resp: Resp) -> (u16, Bytes) {
    let status = resp.status().as_u16();
    let body = match resp.into_body().collect().await {
        Ok(c) => c.to_bytes(),
        Err(never) => match never {},
    };
    (status, body)
}

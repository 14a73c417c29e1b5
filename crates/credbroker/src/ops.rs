//! The operations listener: `/healthz`, `/readyz`, `/readyz/<cloud>`, `/metrics`.
//! Never serves credentials, so it may listen on the pod IP for kubelet's probes.

use std::sync::Arc;

use http::Method;
use http::request::Parts;

use crate::clouds::Runtime;
use crate::http::server::{Handler, Resp, respond, text};
use crate::metrics::Metrics;

pub struct Ops {
    pub clouds: Arc<[Runtime]>,
    pub metrics: Arc<Metrics>,
}

impl Ops {
    /// `Ok(body)` when every enabled cloud (or the named one) holds a servable credential.
    pub fn readiness(&self, only: Option<&str>) -> Result<String, String> {
        let mut ready = Vec::new();
        let mut not_ready = Vec::new();
        for cloud in self
            .clouds
            .iter()
            .filter(|c| only.is_none_or(|n| n == c.name()))
        {
            match cloud.readiness() {
                Ok(()) => ready.push(format!("{}: ready", cloud.name())),
                Err(why) => not_ready.push(format!("{}: not ready: {why}", cloud.name())),
            }
        }
        if not_ready.is_empty() {
            Ok(ready.join("\n") + "\n")
        } else {
            ready.extend(not_ready);
            Err(ready.join("\n") + "\n")
        }
    }
}

impl Handler for Ops {
    async fn call(&self, req: Parts) -> Resp {
        if req.method != Method::GET && req.method != Method::HEAD {
            return text(405, "method not allowed\n");
        }
        match req.uri.path() {
            "/healthz" | "/livez" => text(200, "ok\n"),
            "/readyz" => match self.readiness(None) {
                Ok(body) => text(200, body),
                Err(body) => text(503, body),
            },
            "/metrics" => respond(
                200,
                "text/plain; version=0.0.4; charset=utf-8",
                self.metrics.render(),
            ),
            path => match path.strip_prefix("/readyz/") {
                Some(name) if self.clouds.iter().any(|c| c.name() == name) => {
                    match self.readiness(Some(name)) {
                        Ok(body) => text(200, body),
                        Err(body) => text(503, body),
                    }
                }
                Some(name) => text(404, format!("{name}: not enabled\n")),
                None => text(404, "not found\n"),
            },
        }
    }
}

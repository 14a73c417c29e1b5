//! The credential listener: routes each request to the cloud surface that claims its path.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use http::request::Parts;

use crate::http::server::{Handler, Resp, text};
use crate::metrics::Metrics;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One cloud metadata surface: a set of paths and the cloud's exact response shapes.
pub trait Surface: Send + Sync + 'static {
    /// Label for metrics and logs (`aws-container`, `aws-imds`, …).
    fn name(&self) -> &'static str;
    /// Whether this surface owns `path`.
    fn claims(&self, path: &str) -> bool;
    fn handle<'a>(&'a self, req: &'a Parts) -> BoxFuture<'a, Resp>;
}

pub struct Router {
    surfaces: Vec<Arc<dyn Surface>>,
    metrics: Arc<Metrics>,
}

impl Router {
    pub fn new(surfaces: Vec<Arc<dyn Surface>>, metrics: Arc<Metrics>) -> Self {
        Router { surfaces, metrics }
    }

    pub async fn route(&self, req: &Parts) -> (&'static str, Resp) {
        let path = req.uri.path();
        match self.surfaces.iter().find(|s| s.claims(path)) {
            Some(surface) => (surface.name(), surface.handle(req).await),
            None => ("none", text(404, "Not Found\n")),
        }
    }
}

impl Handler for Router {
    async fn call(&self, req: Parts) -> Resp {
        let (name, resp) = self.route(&req).await;
        let status = resp.status().as_u16();
        self.metrics.request(name, status);
        // The path only: headers carry the shared secrets, and queries are not needed here.
        tracing::trace!(method = %req.method, path = req.uri.path(), surface = name, status, "request");
        resp
    }
}

//! The credential listener: routes each request to the cloud surface that claims its path.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};

use http::request::Parts;
use prometheus_client::metrics::counter::Counter;

use crate::http::server::{Handler, Resp, text};
use crate::metrics::{Metrics, RequestLabels};

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
    /// Each surface's `status="200"` request counter, looked up on its first 200: the common
    /// case then costs one atomic add instead of hashing a label set under the family's lock.
    ok_counters: Vec<OnceLock<Counter>>,
    metrics: Arc<Metrics>,
}

impl Router {
    pub fn new(surfaces: Vec<Arc<dyn Surface>>, metrics: Arc<Metrics>) -> Self {
        let ok_counters = surfaces.iter().map(|_| OnceLock::new()).collect();
        Router {
            surfaces,
            ok_counters,
            metrics,
        }
    }

    pub async fn route(&self, req: &Parts) -> (&'static str, Resp) {
        let (_, name, resp) = self.dispatch(req).await;
        (name, resp)
    }

    async fn dispatch(&self, req: &Parts) -> (Option<usize>, &'static str, Resp) {
        let path = req.uri.path();
        match self.surfaces.iter().position(|s| s.claims(path)) {
            Some(i) => {
                let surface = &self.surfaces[i];
                (Some(i), surface.name(), surface.handle(req).await)
            }
            None => (None, "none", text(404, "Not Found\n")),
        }
    }
}

impl Handler for Router {
    async fn call(&self, req: Parts) -> Resp {
        let (index, name, resp) = self.dispatch(&req).await;
        let status = resp.status().as_u16();
        match index {
            Some(i) if status == 200 => {
                self.ok_counters[i]
                    .get_or_init(|| {
                        self.metrics.requests.get_or_create_owned(&RequestLabels {
                            surface: name,
                            status,
                        })
                    })
                    .inc();
            }
            _ => self.metrics.request(name, status),
        }
        // The path only: headers carry the shared secrets, and queries are not needed here.
        tracing::trace!(method = %req.method, path = req.uri.path(), surface = name, status, "request");
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed;

    impl Surface for Fixed {
        fn name(&self) -> &'static str {
            "fixed"
        }

        fn claims(&self, path: &str) -> bool {
            path.starts_with("/ok") || path == "/teapot"
        }

        fn handle<'a>(&'a self, req: &'a Parts) -> BoxFuture<'a, Resp> {
            let status = if req.uri.path() == "/teapot" {
                418
            } else {
                200
            };
            Box::pin(async move { text(status, "x") })
        }
    }

    fn parts(path: &str) -> Parts {
        http::Request::builder()
            .uri(path)
            .body(())
            .unwrap()
            .into_parts()
            .0
    }

    #[tokio::test]
    async fn counts_requests_per_surface_and_status() {
        let metrics = Arc::new(Metrics::new());
        let router = Router::new(vec![Arc::new(Fixed)], metrics.clone());
        for _ in 0..3 {
            assert_eq!(router.call(parts("/ok")).await.status(), 200);
        }
        assert_eq!(router.call(parts("/teapot")).await.status(), 418);
        assert_eq!(router.call(parts("/nope")).await.status(), 404);
        let text = metrics.render();
        for line in [
            r#"credbroker_requests_total{surface="fixed",status="200"} 3"#,
            r#"credbroker_requests_total{surface="fixed",status="418"} 1"#,
            r#"credbroker_requests_total{surface="none",status="404"} 1"#,
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
    }
}

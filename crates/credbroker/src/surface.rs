//! The credential listener: routes each request to the cloud surface that claims its path, after
//! the checks every credential surface needs (the SSRF / DNS-rebinding guard), so no surface can
//! skip them. Surfaces declare their paths as data; overlapping claims are refused when the
//! router is built, so two clouds can never both answer a path.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};

use http::request::Parts;
use prometheus_client::metrics::counter::Counter;

use crate::http::guard::{self, Refusal};
use crate::http::server::{Handler, Resp, text};
use crate::metrics::{Metrics, RequestLabels};
use crate::refresh::Unavailable;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A path, or a tree of paths, that a surface answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// Exactly this path.
    Exact(&'static str),
    /// This path and every path under it (`/latest` claims `/latest` and `/latest/…`). The root
    /// is written without a trailing `/` ([`Router::new`] refuses one), so matching a request
    /// compares bytes only.
    Tree(&'static str),
    /// As [`Claim::Tree`], comparing ASCII letters case-insensitively (Azure's `/metadata`).
    TreeIgnoreCase(&'static str),
}

impl Claim {
    pub fn matches(&self, path: &str) -> bool {
        match *self {
            Claim::Exact(p) => path == p,
            Claim::Tree(root) => under(path, root, false),
            Claim::TreeIgnoreCase(root) => under(path, root, true),
        }
    }

    /// Whether some path is claimed by both.
    pub fn overlaps(&self, other: &Claim) -> bool {
        let root = |c: &Claim| match *c {
            Claim::Exact(p) | Claim::Tree(p) | Claim::TreeIgnoreCase(p) => p,
        };
        match (self, other) {
            (Claim::Exact(a), Claim::Exact(b)) => a == b,
            (Claim::Exact(a), tree) | (tree, Claim::Exact(a)) => tree.matches(a),
            (a, b) => a.matches(root(b)) || b.matches(root(a)),
        }
    }
}

/// `path` is `root` or below it, with a `/` at the boundary (`root` has no trailing `/`).
fn under(path: &str, root: &str, ignore_case: bool) -> bool {
    let (p, r) = (path.as_bytes(), root.as_bytes());
    if p.len() < r.len() {
        return false;
    }
    let head = &p[..r.len()];
    let same = if ignore_case {
        head.eq_ignore_ascii_case(r)
    } else {
        head == r
    };
    same && (p.len() == r.len() || p[r.len()] == b'/')
}

/// One cloud metadata surface: the paths it claims and the cloud's exact response shapes.
pub trait Surface: Send + Sync + 'static {
    /// Label for metrics and logs (`aws-container`, `aws-imds`, …).
    fn name(&self) -> &'static str;
    /// The paths this surface answers.
    fn claims(&self) -> &'static [Claim];
    /// The guard's refusal (a proxied request, a foreign `Host`) in this cloud's error shape.
    fn refuse(&self, refusal: Refusal) -> Resp;
    /// A request the guard let through, answered without waiting when it can be: a refusal, or
    /// a credential already held. `None` sends it to [`Surface::handle`]. Nearly every request
    /// is answered here, which spares it the boxed future `handle` returns (an allocation and
    /// a free per request: ~0.2k instructions, callgrind). A surface answers here exactly as
    /// `handle` would; both go through the same routing code.
    fn answer_now(&self, req: &Parts) -> Option<Resp> {
        let _ = req;
        None
    }
    /// A request the guard let through, whatever it has to wait for.
    fn handle<'a>(&'a self, req: &'a Parts) -> BoxFuture<'a, Resp>;
}

/// How a cloud answers when no credential can be served. The status follows the one rule every
/// cloud shares ([`Unavailable::http_status`]: 503 while pending or after a transient failure,
/// the upstream's 4xx after a permanent denial, else [`ErrorShape::DENIED`]); the body is the
/// cloud's own error shape.
pub trait ErrorShape {
    /// The status of a permanent denial that came without an upstream 4xx.
    const DENIED: u16;
    /// The body (and headers) for `why`, with the status the rule chose.
    fn no_credential(status: u16, why: &Unavailable) -> Resp;
}

/// The answer to a credential request for which `why` says none can be served.
pub fn no_credential<S: ErrorShape>(why: &Unavailable) -> Resp {
    S::no_credential(why.http_status(S::DENIED), why)
}

/// Two surfaces claim a common path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("surfaces {first} ({first_claim:?}) and {second} ({second_claim:?}) claim the same paths")]
pub struct ClaimConflict {
    pub first: &'static str,
    pub first_claim: Claim,
    pub second: &'static str,
    pub second_claim: Claim,
}

/// Where [`Router::admit`] sends a request.
enum Admitted {
    /// To the surface at this index: claimed, and let through by the guard.
    To(usize),
    /// Answered already (404, or the guard's refusal), by the surface at the index if any.
    Decided(Option<usize>, Resp),
}

pub struct Router {
    surfaces: Vec<Arc<dyn Surface>>,
    /// Every surface's claims with the surface's index, built once: asking each surface for its
    /// claims on every request was ~0.6k instructions (callgrind, azure-imds). Claims never
    /// overlap, so the order is only speed.
    routes: Vec<(Claim, usize)>,
    /// Each surface's [`Surface::name`], read without a virtual call.
    names: Vec<&'static str>,
    /// Each surface's `status="200"` request counter, looked up on its first 200: the common
    /// case then costs one atomic add instead of hashing a label set under the family's lock.
    ok_counters: Vec<OnceLock<Counter>>,
    metrics: Arc<Metrics>,
}

impl Router {
    /// A router over `surfaces`; refused when two of them claim a common path.
    pub fn new(
        surfaces: Vec<Arc<dyn Surface>>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, ClaimConflict> {
        for (i, a) in surfaces.iter().enumerate() {
            for b in &surfaces[i + 1..] {
                for ca in a.claims() {
                    if let Some(cb) = b.claims().iter().find(|cb| ca.overlaps(cb)) {
                        return Err(ClaimConflict {
                            first: a.name(),
                            first_claim: *ca,
                            second: b.name(),
                            second_claim: *cb,
                        });
                    }
                }
            }
        }
        for s in &surfaces {
            metrics.declare_surface(s.name());
        }
        let ok_counters = surfaces.iter().map(|_| OnceLock::new()).collect();
        let routes: Vec<(Claim, usize)> = surfaces
            .iter()
            .enumerate()
            .flat_map(|(i, s)| s.claims().iter().map(move |c| (*c, i)))
            .collect();
        // Static data of our own surfaces: a trailing `/` on a tree root is a programming error.
        for (claim, _) in &routes {
            if let Claim::Tree(root) | Claim::TreeIgnoreCase(root) = claim {
                assert!(
                    !root.ends_with('/'),
                    "{claim:?}: a tree root is written without a trailing '/'"
                );
            }
        }
        Ok(Router {
            names: surfaces.iter().map(|s| s.name()).collect(),
            surfaces,
            routes,
            ok_counters,
            metrics,
        })
    }

    pub async fn route(&self, req: &Parts) -> (&'static str, Resp) {
        let (index, resp) = self.dispatch(req).await;
        (self.name(index), resp)
    }

    /// The index of the surface that claims `path`.
    fn find(&self, path: &str) -> Option<usize> {
        self.routes
            .iter()
            .find(|(claim, _)| claim.matches(path))
            .map(|(_, i)| *i)
    }

    fn name(&self, index: Option<usize>) -> &'static str {
        index.map_or("none", |i| self.names[i])
    }

    /// The surface that is to answer `req` (claimed, and let through by the guard), or the
    /// answer already decided: 404 for an unclaimed path, the guard's refusal in the claiming
    /// surface's shape.
    fn admit(&self, req: &Parts) -> Admitted {
        let Some(i) = self.find(req.uri.path()) else {
            return Admitted::Decided(None, text(404, "Not Found\n"));
        };
        match guard::check(req) {
            Ok(()) => Admitted::To(i),
            Err(refusal) => Admitted::Decided(Some(i), self.surfaces[i].refuse(refusal)),
        }
    }

    async fn dispatch(&self, req: &Parts) -> (Option<usize>, Resp) {
        match self.admit(req) {
            Admitted::To(i) => (Some(i), self.surfaces[i].handle(req).await),
            Admitted::Decided(index, resp) => (index, resp),
        }
    }

    /// Counts the answer and traces the request.
    fn record(&self, req: &Parts, index: Option<usize>, resp: &Resp) {
        let status = resp.status().as_u16();
        match index {
            Some(i) if status == 200 => {
                self.ok_counters[i]
                    .get_or_init(|| {
                        self.metrics.requests.get_or_create_owned(&RequestLabels {
                            surface: self.names[i],
                            status,
                        })
                    })
                    .inc();
            }
            _ => self.metrics.request(self.name(index), status),
        }
        // The path only: headers carry the shared secrets, and queries are not needed here.
        tracing::trace!(method = %req.method, path = req.uri.path(), surface = self.name(index), status, "request");
    }
}

impl Handler for Router {
    fn call_now(&self, req: &Parts) -> Option<Resp> {
        let (index, resp) = match self.admit(req) {
            Admitted::To(i) => (Some(i), self.surfaces[i].answer_now(req)?),
            Admitted::Decided(index, resp) => (index, resp),
        };
        self.record(req, index, &resp);
        Some(resp)
    }

    async fn call(&self, req: Parts) -> Resp {
        let (index, resp) = self.dispatch(&req).await;
        self.record(&req, index, &resp);
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::parts;

    struct Fixed(&'static [Claim]);

    impl Surface for Fixed {
        fn name(&self) -> &'static str {
            "fixed"
        }

        fn claims(&self) -> &'static [Claim] {
            self.0
        }

        fn refuse(&self, refusal: Refusal) -> Resp {
            text(451, refusal.message())
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

    const OK: &[Claim] = &[Claim::Tree("/ok"), Claim::Exact("/teapot")];

    /// Answers `/ok/now` without waiting; everything else only through `handle`.
    struct Ready;

    impl Surface for Ready {
        fn name(&self) -> &'static str {
            "ready"
        }

        fn claims(&self) -> &'static [Claim] {
            OK
        }

        fn refuse(&self, refusal: Refusal) -> Resp {
            text(451, refusal.message())
        }

        fn answer_now(&self, req: &Parts) -> Option<Resp> {
            (req.uri.path() == "/ok/now").then(|| text(200, "now"))
        }

        fn handle<'a>(&'a self, _req: &'a Parts) -> BoxFuture<'a, Resp> {
            Box::pin(async { text(200, "later") })
        }
    }

    #[tokio::test]
    async fn what_needs_no_waiting_is_answered_before_any_future_and_counted_once() {
        let metrics = Arc::new(Metrics::new());
        let router = Router::new(vec![Arc::new(Ready)], metrics.clone()).unwrap();
        let body = |resp: Resp| async move {
            let b = http_body_util::BodyExt::collect(resp.into_body())
                .await
                .unwrap();
            String::from_utf8(b.to_bytes().to_vec()).unwrap()
        };
        let now = router
            .call_now(&parts("GET", "/ok/now", &[]))
            .expect("answered now");
        assert_eq!(body(now).await, "now");
        // Unclaimed paths and guard refusals need no waiting either.
        assert_eq!(
            router
                .call_now(&parts("GET", "/nope", &[]))
                .unwrap()
                .status(),
            404
        );
        let proxied = parts("GET", "/ok/x", &[("x-forwarded-for", "10.0.0.1")]);
        assert_eq!(router.call_now(&proxied).unwrap().status(), 451);
        // A request the surface must wait for is left to `call`, and not counted twice.
        let later = parts("GET", "/ok/later", &[]);
        assert!(router.call_now(&later).is_none());
        assert_eq!(body(router.call(later).await).await, "later");
        let text = metrics.render();
        assert!(
            text.contains(r#"credbroker_requests_total{surface="ready",status="200"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"credbroker_requests_total{surface="ready",status="451"} 1"#),
            "{text}"
        );
    }

    #[tokio::test]
    async fn counts_requests_per_surface_and_status() {
        let metrics = Arc::new(Metrics::new());
        let router = Router::new(vec![Arc::new(Fixed(OK))], metrics.clone()).unwrap();
        for _ in 0..3 {
            assert_eq!(router.call(parts("GET", "/ok", &[])).await.status(), 200);
        }
        assert_eq!(
            router.call(parts("GET", "/teapot", &[])).await.status(),
            418
        );
        assert_eq!(router.call(parts("GET", "/nope", &[])).await.status(), 404);
        let text = metrics.render();
        for line in [
            r#"credbroker_requests_total{surface="fixed",status="200"} 3"#,
            r#"credbroker_requests_total{surface="fixed",status="418"} 1"#,
            r#"credbroker_requests_total{surface="none",status="404"} 1"#,
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
    }

    #[tokio::test]
    async fn the_guard_runs_for_every_surface_before_it_is_called() {
        let router = Router::new(vec![Arc::new(Fixed(OK))], Arc::new(Metrics::new())).unwrap();
        for headers in [
            &[("x-forwarded-for", "10.0.0.1")][..],
            &[("host", "evil.example.com")][..],
        ] {
            let resp = router.call(parts("GET", "/ok/x", headers)).await;
            assert_eq!(resp.status(), 451, "{headers:?}");
        }
        assert_eq!(router.call(parts("GET", "/ok/x", &[])).await.status(), 200);
    }

    #[test]
    fn claims_match_whole_segments() {
        let tree = Claim::Tree("/latest");
        assert!(tree.matches("/latest") && tree.matches("/latest/") && tree.matches("/latest/a"));
        assert!(!tree.matches("/latestx") && !tree.matches("/LATEST/a"));
        let icase = Claim::TreeIgnoreCase("/metadata");
        assert!(icase.matches("/METADATA/identity") && icase.matches("/metadata"));
        assert!(!icase.matches("/metadatax"));
        assert!(Claim::Exact("/").matches("/") && !Claim::Exact("/").matches("/x"));
    }

    #[test]
    #[should_panic(expected = "without a trailing '/'")]
    fn a_tree_root_with_a_trailing_slash_is_refused_when_the_router_is_built() {
        const SLASHED: &[Claim] = &[Claim::Tree("/latest/")];
        let _ = Router::new(vec![Arc::new(Fixed(SLASHED))], Arc::new(Metrics::new()));
    }

    #[test]
    fn overlapping_claims_are_refused_when_the_router_is_built() {
        let cases: &[(&'static [Claim], &'static [Claim], bool)] = &[
            (&[Claim::Exact("/a")], &[Claim::Exact("/a")], true),
            (&[Claim::Exact("/a")], &[Claim::Exact("/b")], false),
            (&[Claim::Tree("/a")], &[Claim::Exact("/a/b")], true),
            (&[Claim::Tree("/a")], &[Claim::Tree("/a/b")], true),
            (&[Claim::Tree("/a")], &[Claim::Tree("/ab")], false),
            (
                &[Claim::TreeIgnoreCase("/Meta")],
                &[Claim::Tree("/meta/x")],
                true,
            ),
            (
                &[Claim::Exact("/")],
                &[Claim::Tree("/computeMetadata")],
                false,
            ),
        ];
        for (a, b, conflict) in cases {
            let built = Router::new(
                vec![Arc::new(Fixed(a)), Arc::new(Fixed(b))],
                Arc::new(Metrics::new()),
            );
            assert_eq!(built.is_err(), *conflict, "{a:?} vs {b:?}");
        }
    }
}

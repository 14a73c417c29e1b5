//! What the unit tests share: request heads, a fixed clock, fixture certificates, and a router
//! over one surface (tests drive surfaces as the listener does, guard included, with no socket).

use std::sync::Arc;
use std::time::SystemTime;

use http::request::Parts;

use crate::clock::Clock;
use crate::http::server::{Handler, Resp};
use crate::metrics::Metrics;
use crate::surface::{Router, Surface};

/// A request head.
pub(crate) fn parts(method: &str, uri: &str, headers: &[(&str, &str)]) -> Parts {
    let mut b = http::Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(()).expect("a valid request head").into_parts().0
}

/// `req` answered as the credential listener would: routed, guarded, handled.
pub(crate) async fn route(surface: Arc<dyn Surface>, req: Parts) -> Resp {
    Router::new(vec![surface], Arc::new(Metrics::new()))
        .expect("one surface cannot conflict")
        .call(req)
        .await
}

/// Whether `surface` claims `path`.
pub(crate) fn claims(surface: &dyn Surface, path: &str) -> bool {
    surface.claims().iter().any(|c| c.matches(path))
}

/// A wall clock stopped at one instant.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FixedClock(pub SystemTime);

impl Clock for FixedClock {
    fn wall(&self) -> SystemTime {
        self.0
    }
}

/// A self-signed CA certificate (PEM), for parsing tests that need no file.
pub(crate) const TEST_CA_PEM: &str = include_str!("../tests/data/test-ca.pem");

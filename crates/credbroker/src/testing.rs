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

/// Whether `surface` answers `req` without waiting ([`Surface::answer_now`]); when it does,
/// asserts the answer is `handle`'s: the same status, headers and body (`volatile_body`: a body
/// that differs on every call by design, such as a fresh IMDSv2 session token, is not compared).
pub(crate) async fn answers_now_as_handle(
    surface: &dyn Surface,
    req: &Parts,
    volatile_body: bool,
) -> bool {
    use http_body_util::BodyExt;
    let Some(now) = surface.answer_now(req) else {
        return false;
    };
    let later = surface.handle(req).await;
    let what = format!("{} {} on {}", req.method, req.uri, surface.name());
    assert_eq!(now.status(), later.status(), "{what}");
    assert_eq!(now.headers(), later.headers(), "{what}");
    let now = now.into_body().collect().await.unwrap().to_bytes();
    let later = later.into_body().collect().await.unwrap().to_bytes();
    if !volatile_body {
        assert_eq!(now, later, "{what}");
    }
    true
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

/// An upstream that follows a script: each exchange is logged (key, time) and counted, takes
/// `delay`, then fails with the next scripted error, else with `fail_with` when set, else issues
/// a credential living `life`. Tests wrap it in an `Exchange` impl for their credential type.
pub(crate) struct Scripted {
    pub clock: crate::clock::TokioClock,
    pub calls: std::sync::atomic::AtomicUsize,
    pub script: parking_lot::Mutex<std::collections::VecDeque<crate::exchange::ExchangeError>>,
    pub life: parking_lot::Mutex<std::time::Duration>,
    pub fail_with: parking_lot::Mutex<Option<crate::exchange::ExchangeError>>,
    pub delay: std::time::Duration,
    pub log: parking_lot::Mutex<Vec<(String, tokio::time::Instant)>>,
}

impl Scripted {
    pub(crate) fn new(life: std::time::Duration) -> Arc<Self> {
        Arc::new(Scripted {
            clock: crate::clock::TokioClock::now_wall(),
            calls: Default::default(),
            script: Default::default(),
            life: parking_lot::Mutex::new(life),
            fail_with: Default::default(),
            delay: std::time::Duration::from_millis(100),
            log: Default::default(),
        })
    }

    /// The next exchange fails with `err` (queued after earlier ones).
    pub(crate) fn then_fail(&self, err: crate::exchange::ExchangeError) {
        self.script.lock().push_back(err);
    }

    pub(crate) fn calls(&self) -> usize {
        self.calls.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// When each exchange for `key` started.
    pub(crate) fn times(&self, key: &str) -> Vec<tokio::time::Instant> {
        let log = self.log.lock();
        log.iter()
            .filter(|(k, _)| k == key)
            .map(|(_, t)| *t)
            .collect()
    }

    /// One exchange for `key`: its number (from 1) and the credential's expiry, or the error.
    pub(crate) async fn issue(
        &self,
        key: &str,
    ) -> Result<(usize, SystemTime), crate::exchange::ExchangeError> {
        let n = self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        self.log
            .lock()
            .push((key.to_string(), tokio::time::Instant::now()));
        tokio::time::sleep(self.delay).await;
        let scripted = self.script.lock().pop_front();
        if let Some(e) = scripted.or_else(|| self.fail_with.lock().clone()) {
            return Err(e);
        }
        let life = *self.life.lock();
        Ok((n, self.clock.wall() + life))
    }
}

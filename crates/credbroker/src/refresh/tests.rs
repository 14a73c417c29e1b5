//! Refresher behaviour under tokio's paused clock: no sleeps, no network.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::{Instant, sleep};

use super::*;
use crate::clock::TokioClock;
use crate::exchange::{Exchange, ExchangeError, Fresh};
use crate::testing::Scripted;

/// The scripted upstream, issuing its call count as the credential.
#[derive(Clone)]
struct Shared(Arc<Scripted>);

impl Exchange<String> for Shared {
    type Credential = usize;

    async fn exchange(&self, key: &String) -> Result<Fresh<usize>, ExchangeError> {
        let (n, expires_at) = self.0.issue(key).await?;
        Ok(Fresh {
            value: n,
            expires_at,
        })
    }
}

fn mins(m: u64) -> Duration {
    Duration::from_secs(m * 60)
}

fn aws_policy() -> Policy {
    Policy::for_sdk_window(mins(15))
}

fn cache_with(
    ex: &Arc<Scripted>,
    policy: Policy,
    tokens: Option<watch::Receiver<u64>>,
    limits: KeyLimits,
) -> Cache<String, Shared> {
    let builder = Cache::builder("test", Shared(ex.clone()))
        .policy(policy)
        .clock(Arc::new(ex.clock))
        .limits(limits);
    match tokens {
        Some(t) => builder.token_changes(t).build(),
        None => builder.build(),
    }
}

fn cache(ex: &Arc<Scripted>) -> Cache<String, Shared> {
    cache_with(ex, aws_policy(), None, KeyLimits::default())
}

#[tokio::test(start_paused = true)]
async fn first_request_waits_for_the_first_exchange() {
    let ex = Scripted::new(mins(60));
    let cache = cache(&ex);
    let slot = cache.pin("role".into());
    assert_eq!(
        cache.readiness().unwrap_err().to_string(),
        "role: first exchange in progress"
    );
    let cred = slot.get(Duration::from_secs(2)).await.unwrap();
    assert_eq!(cred.value, 1);
    assert!(cache.readiness().is_ok());
}

#[tokio::test(start_paused = true)]
async fn refreshes_at_half_life_within_jitter_and_serves_old_meanwhile() {
    let ex = Scripted::new(mins(60));
    let cache = cache(&ex);
    let slot = cache.pin("role".into());
    slot.get(Duration::from_secs(2)).await.unwrap();
    let t0 = Instant::now();
    sleep(mins(27) - Duration::from_secs(1)).await;
    assert_eq!(ex.calls(), 1, "refreshed before 27 min (half-life - 10 %)");
    assert_eq!(slot.current().unwrap().value, 1);
    sleep(mins(6) + Duration::from_secs(2)).await;
    assert_eq!(ex.calls(), 2, "not refreshed by 33 min (half-life + 10 %)");
    let at = ex.log.lock()[1].1 - t0;
    assert!(at >= mins(27) - Duration::from_secs(1) && at <= mins(33) + Duration::from_secs(1));
    assert_eq!(slot.current().unwrap().value, 2);
}

#[tokio::test(start_paused = true)]
async fn jitter_spreads_refreshes_of_many_keys() {
    let ex = Scripted::new(mins(60));
    let cache = cache(&ex);
    let keys: Vec<String> = (0..100).map(|i| format!("k{i}")).collect();
    for k in &keys {
        cache.pin(k.clone());
    }
    sleep(mins(45)).await;
    let log = ex.log.lock().clone();
    assert_eq!(log.len(), 200);
    let first: Instant = log.iter().map(|(_, t)| *t).min().unwrap();
    let refreshes: Vec<Duration> = log[100..].iter().map(|(_, t)| *t - first).collect();
    let lo = *refreshes.iter().min().unwrap();
    let hi = *refreshes.iter().max().unwrap();
    assert!(lo >= mins(27) - Duration::from_secs(1), "{lo:?}");
    assert!(hi <= mins(33) + Duration::from_secs(1), "{hi:?}");
    assert!(
        hi - lo > mins(3),
        "100 keys refreshed within {:?}: no spread",
        hi - lo
    );
}

#[tokio::test(start_paused = true)]
async fn never_serves_inside_the_sdk_window_when_refresh_works() {
    let ex = Scripted::new(mins(60));
    let cache = cache(&ex);
    let slot = cache.pin("role".into());
    slot.get(Duration::from_secs(2)).await.unwrap();
    for _ in 0..(6 * 60) {
        sleep(Duration::from_secs(60)).await;
        let c = slot.current().expect("always servable");
        assert!(
            c.remaining(Instant::now()) > mins(15),
            "served with {:?} left",
            c.remaining(Instant::now())
        );
    }
    assert!(
        ex.calls() >= 12 && ex.calls() <= 15,
        "{} exchanges in 6 h",
        ex.calls()
    );
}

#[tokio::test(start_paused = true)]
async fn single_flight_for_a_hundred_concurrent_misses() {
    let ex = Scripted::new(mins(60));
    let cache = cache(&ex);
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let cache = cache.clone();
        tasks.push(tokio::spawn(async move {
            cache
                .get(&"scope-a".to_string(), Duration::from_secs(2))
                .await
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap().value, 1);
    }
    assert_eq!(ex.calls(), 1);
    // A different key is a different identity: its own single exchange.
    cache
        .get(&"scope-b".to_string(), Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(ex.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn transient_errors_back_off_exponentially() {
    let ex = Scripted::new(mins(60));
    for _ in 0..4 {
        ex.then_fail(ExchangeError::transient("Throttling", "Rate exceeded"));
    }
    let cache = cache(&ex);
    let slot = cache.pin("role".into());
    // Nothing cached, backing off: callers get the error at once (a retryable 5xx for SDKs).
    sleep(Duration::from_millis(150)).await;
    match slot.get(Duration::from_secs(2)).await {
        Err(Unavailable::Failed(e)) => assert_eq!(e.code, "Throttling"),
        other => panic!("{other:?}"),
    }
    sleep(mins(2)).await;
    assert_eq!(ex.calls(), 5);
    let log = ex.log.lock().clone();
    let gaps: Vec<Duration> = log.windows(2).map(|w| w[1].1 - w[0].1).collect();
    // delay n = base·2^(n-1) with equal jitter: [0.5,1], [1,2], [2,4], [4,8] s, plus the 100 ms call.
    let bounds = [(0.5, 1.1), (1.0, 2.1), (2.0, 4.1), (4.0, 8.1)];
    for (gap, (lo, hi)) in gaps.iter().zip(bounds) {
        let g = gap.as_secs_f64();
        assert!(g >= lo && g <= hi, "gaps {gaps:?}");
    }
    assert_eq!(slot.current().unwrap().value, 5);
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_honoured() {
    let ex = Scripted::new(mins(60));
    ex.then_fail(
        ExchangeError::transient("Throttling", "x").with_retry_after(Some(Duration::from_secs(30))),
    );
    let cache = cache(&ex);
    cache.pin("role".into());
    sleep(Duration::from_secs(29)).await;
    assert_eq!(ex.calls(), 1);
    sleep(Duration::from_secs(2)).await;
    assert_eq!(ex.calls(), 2);
}

/// Issue 14, defect 3: after a token rotation, a key first asked for (a new Azure resource) whose
/// first exchange is throttled with `Retry-After: 3` waits the 3 s, not the 1 s minimum interval
/// a token change would otherwise allow; and a rotation during the wait does not cut it short.
#[tokio::test(start_paused = true)]
async fn retry_after_holds_for_a_new_key_across_token_changes() {
    let ex = Scripted::new(mins(60));
    let (tx, rx) = watch::channel(0u64);
    let cache = cache_with(&ex, aws_policy(), Some(rx), KeyLimits::default());
    cache.pin("first".into());
    sleep(Duration::from_secs(1)).await;
    tx.send(1).unwrap();
    sleep(Duration::from_secs(1)).await;
    ex.then_fail(
        ExchangeError::transient("TooManyRequests", "throttled")
            .with_retry_after(Some(Duration::from_secs(3))),
    );
    let _ = cache.slot(&"new-resource".to_string());
    sleep(Duration::from_millis(10)).await;
    let first = ex.times("new-resource");
    assert_eq!(first.len(), 1);
    for i in 2..=5u64 {
        sleep(Duration::from_millis(500)).await;
        tx.send(i).unwrap();
    }
    sleep(Duration::from_secs(2)).await;
    let times = ex.times("new-resource");
    assert_eq!(times.len(), 2, "{times:?}");
    assert!(
        times[1] - times[0] >= Duration::from_secs(3),
        "retried after {:?}",
        times[1] - times[0]
    );
}

#[tokio::test(start_paused = true)]
async fn permanent_errors_are_not_retried_quickly() {
    let ex = Scripted::new(mins(60));
    ex.then_fail(ExchangeError::permanent("AccessDenied", "Not authorized"));
    let cache = cache(&ex);
    let slot = cache.pin("role".into());
    // Many readers during the failure do not cause extra calls.
    for _ in 0..50 {
        let _ = slot.get(Duration::from_millis(10)).await;
        sleep(Duration::from_secs(5)).await;
    }
    assert_eq!(ex.calls(), 1, "a denial was retried within 250 s");
    assert!(
        cache
            .readiness()
            .unwrap_err()
            .to_string()
            .contains("AccessDenied")
    );
    sleep(mins(5)).await;
    assert_eq!(ex.calls(), 2);
    assert!(cache.readiness().is_ok());
}

#[tokio::test(start_paused = true)]
async fn stale_while_error_until_the_serve_floor_then_expiry() {
    let ex = Scripted::new(mins(60));
    let cache = cache(&ex);
    let slot = cache.pin("role".into());
    slot.get(Duration::from_secs(2)).await.unwrap();
    for _ in 0..100 {
        ex.then_fail(ExchangeError::transient("ServiceUnavailable", "down"));
    }
    // Past the refresh point the exchanges fail, but the first credential keeps being served.
    sleep(mins(50)).await;
    assert!(ex.calls() > 5);
    assert_eq!(slot.current().unwrap().value, 1);
    assert!(cache.readiness().is_ok());
    // Within 5 s of expiry it is no longer served; callers get the upstream error.
    let until_floor = slot.current().unwrap().remaining(Instant::now()) - Duration::from_secs(5);
    sleep(until_floor).await;
    assert!(slot.current().is_none());
    match slot.get(Duration::from_millis(10)).await {
        Err(Unavailable::Failed(e)) => assert_eq!(e.code, "ServiceUnavailable"),
        Err(Unavailable::Pending) => {}
        Err(other) => panic!("unexpected {other:?}"),
        Ok(c) => panic!("served credential {} inside the floor", c.value),
    }
    assert!(cache.readiness().is_err());
}

#[tokio::test(start_paused = true)]
async fn short_lived_credentials_are_not_refreshed_in_a_loop() {
    let ex = Scripted::new(Duration::from_secs(600));
    let cache = cache(&ex);
    cache.pin("role".into());
    sleep(mins(60)).await;
    // 10-minute credentials (inside botocore's window) refresh at ~half-life: ~12 an hour.
    assert!(ex.calls() >= 11 && ex.calls() <= 15, "{}", ex.calls());
}

#[tokio::test(start_paused = true)]
async fn token_change_retries_a_failing_slot_at_once() {
    let ex = Scripted::new(mins(60));
    ex.then_fail(ExchangeError::permanent(
        "ExpiredTokenException",
        "Token expired",
    ));
    let (tx, rx) = watch::channel(0u64);
    let cache = cache_with(&ex, aws_policy(), Some(rx), KeyLimits::default());
    let slot = cache.pin("role".into());
    sleep(Duration::from_secs(10)).await;
    assert_eq!(ex.calls(), 1);
    tx.send(1).unwrap();
    sleep(Duration::from_secs(1)).await;
    assert_eq!(ex.calls(), 2);
    assert_eq!(slot.current().unwrap().value, 2);
    // While healthy, a rotation does not by itself force an exchange.
    tx.send(2).unwrap();
    sleep(Duration::from_secs(10)).await;
    assert_eq!(ex.calls(), 2);
}

/// A token file that changes all the time while exchanges fail must not turn the immediate
/// retry on a token change into a loop: attempts stay `min_interval` apart.
#[tokio::test(start_paused = true)]
async fn token_churn_while_failing_is_rate_limited() {
    let ex = Scripted::new(mins(60));
    for _ in 0..1000 {
        ex.then_fail(ExchangeError::transient("TokenFile", "not a JWT"));
    }
    let (tx, rx) = watch::channel(0u64);
    let _cache = cache_with(&ex, aws_policy(), Some(rx), KeyLimits::default());
    _cache.pin("role".into());
    for i in 1..=1000u64 {
        sleep(Duration::from_millis(10)).await;
        tx.send(i).unwrap();
    }
    // 10 s of churn: at most one attempt per second (plus the first).
    assert!(ex.calls() <= 11, "{} attempts in 10 s", ex.calls());
    assert!(
        ex.calls() >= 5,
        "token changes stopped causing retries: {}",
        ex.calls()
    );
}

#[tokio::test(start_paused = true)]
async fn upstream_that_never_answers_times_out_as_transient() {
    struct Hang;
    impl Exchange<String> for Hang {
        type Credential = ();
        async fn exchange(&self, _: &String) -> Result<Fresh<()>, ExchangeError> {
            std::future::pending().await
        }
    }
    let cache = Cache::builder("test", Hang)
        .policy(aws_policy())
        .clock(Arc::new(TokioClock::now_wall()))
        .build();
    let slot = cache.pin("k".to_string());
    assert_eq!(
        slot.get(Duration::from_secs(1)).await.unwrap_err(),
        Unavailable::Pending
    );
    sleep(Duration::from_secs(31)).await;
    let code = slot.with_state(|s| s.error.as_ref().map(|e| (e.code.clone(), e.is_transient())));
    assert_eq!(code, Some(("ExchangeTimeout".to_string(), true)));
}

#[tokio::test(start_paused = true)]
async fn idle_dynamic_keys_are_dropped_and_key_count_is_bounded() {
    let ex = Scripted::new(mins(60));
    let limits = KeyLimits {
        max_keys: 3,
        idle_ttl: mins(90),
    };
    let cache = cache_with(&ex, aws_policy(), None, limits);
    cache.pin("pinned".into());
    for k in ["a", "b", "c", "d"] {
        cache
            .get(&k.to_string(), Duration::from_secs(2))
            .await
            .unwrap();
    }
    assert_eq!(cache.len(), 4, "3 dynamic + 1 pinned");
    sleep(mins(200)).await;
    assert_eq!(cache.len(), 1, "idle dynamic keys outlived their TTL");
    assert!(cache.readiness().is_ok());
}

#[tokio::test(start_paused = true)]
async fn a_dynamic_key_pinned_later_is_kept_and_refreshed_like_a_pinned_one() {
    let ex = Scripted::new(mins(60));
    let limits = KeyLimits {
        max_keys: 3,
        idle_ttl: mins(90),
    };
    let cache = cache_with(&ex, aws_policy(), None, limits);
    let key = "later".to_string();
    let dynamic = cache.slot(&key);
    dynamic.get(Duration::from_secs(2)).await.unwrap();
    // Pinned after its task started as a dynamic key's: the same slot, listed once.
    let pinned = cache.pin(key.clone());
    assert!(Arc::ptr_eq(&dynamic, &pinned));
    assert!(Arc::ptr_eq(&pinned, &cache.pin(key.clone())));
    assert!(Arc::ptr_eq(&pinned, &cache.slot(&key)));
    // Long past the idle TTL, with no reader: still held, still refreshed.
    sleep(mins(300)).await;
    assert_eq!(cache.len(), 1, "a pinned key was dropped as idle");
    assert!(Arc::ptr_eq(&pinned, &cache.slot(&key)));
    assert!(pinned.current().is_some(), "no valid credential held");
    assert!(ex.calls() >= 5, "not refreshed: {} exchanges", ex.calls());
}

#[tokio::test(start_paused = true)]
async fn metrics_count_exchanges_and_expiry() {
    let ex = Scripted::new(mins(60));
    let metrics = Arc::new(Metrics::new());
    let cache = Cache::builder("test", Shared(ex.clone()))
        .policy(aws_policy())
        .clock(Arc::new(ex.clock))
        .metrics(metrics.clone())
        .build();
    cache
        .pin("role".to_string())
        .get(Duration::from_secs(2))
        .await
        .unwrap();
    let text = metrics.render();
    assert!(
        text.contains(r#"credbroker_exchanges_total{cloud="test",outcome="success"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"credbroker_credential_expiry_seconds{cloud="test",key="role"} 3600"#),
        "{text}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_refresh_asked_during_an_exchange_is_satisfied_by_it_only_when_allowed() {
    // `fresh_base` asks for a newer base session while the base's own refresh may already be
    // running: that exchange is the newer session. `refresh_now` (a changed input) is not
    // satisfied by an exchange that started before it. (The exchange here takes 100 ms.)
    for (newer_is_enough, expected_calls) in [(true, 1), (false, 2)] {
        let ex = Scripted::new(mins(60));
        let cache = cache(&ex);
        let slot = cache.pin("base".into());
        sleep(Duration::from_millis(50)).await;
        assert!(slot.subscribe().borrow().in_flight);
        if newer_is_enough {
            slot.refresh_unless_in_flight();
        } else {
            slot.refresh_now();
        }
        sleep(mins(5)).await;
        assert_eq!(
            ex.calls(),
            expected_calls,
            "newer_is_enough={newer_is_enough}"
        );
    }
    // Asked while idle, both refresh once.
    let ex = Scripted::new(mins(60));
    let cache = cache(&ex);
    let slot = cache.pin("base".into());
    slot.get(Duration::from_secs(2)).await.unwrap();
    sleep(mins(1)).await;
    slot.refresh_unless_in_flight();
    sleep(mins(5)).await;
    assert_eq!(ex.calls(), 2);
}

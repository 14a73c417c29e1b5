//! The refresh policy: when to refresh, how long to back off. Pure functions of time and a
//! random draw, so they are tested exhaustively without a runtime.

use std::time::Duration;

use tokio::time::Instant;

use crate::exchange::{ExchangeError, Retry};

#[derive(Debug, Clone)]
pub struct Policy {
    /// How long before expiry the cloud's SDKs start refreshing on their own (botocore: 15 min,
    /// google-auth and azure-identity: 5 min). We never hand out a credential inside it when a
    /// refresh can avoid it.
    pub sdk_window: Duration,
    /// Extra room beyond the SDK window, so a failed refresh has time for retries.
    pub margin: Duration,
    /// Relative jitter on the half-life refresh point (0.1 = ±10 %). Spreads a fleet's refreshes.
    pub jitter: f64,
    /// A credential with less than this left is never served (the contract's 5 s).
    pub serve_floor: Duration,
    /// Never exchange again sooner than this after a success: no tight loops, whatever the lifetime.
    pub min_interval: Duration,
    /// Exponential backoff for transient failures: `base · 2^(n-1)`, capped, with jitter.
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// Retry interval after a permanent failure (a denial is rarely fixed within minutes).
    pub permanent_retry: Duration,
    /// Upper bound on an upstream `Retry-After` we honour.
    pub retry_after_max: Duration,
    /// Upper bound on one whole exchange (all HTTP round trips of it).
    pub exchange_timeout: Duration,
}

impl Policy {
    /// A policy for SDKs that refresh when less than `sdk_window` remains.
    pub fn for_sdk_window(sdk_window: Duration) -> Self {
        Policy {
            sdk_window,
            margin: Duration::from_secs(5 * 60),
            jitter: 0.1,
            serve_floor: Duration::from_secs(5),
            min_interval: Duration::from_secs(1),
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            permanent_retry: Duration::from_secs(5 * 60),
            retry_after_max: Duration::from_secs(5 * 60),
            exchange_timeout: Duration::from_secs(30),
        }
    }

    /// When to refresh a credential issued at `issued` that expires at `expires`.
    ///
    /// At half its lifetime (± `jitter`), but no later than `expires - sdk_window - margin`
    /// (itself jittered downward) so SDKs never see it inside their own window. A credential too
    /// short for that window is refreshed at about half its lifetime. `r` is uniform in `[0, 1)`.
    pub fn refresh_at(&self, issued: Instant, expires: Instant, r: f64) -> Instant {
        let life = expires.saturating_duration_since(issued);
        let half = life / 2;
        let spread = half.mul_f64(self.jitter);
        let mut at = issued + half - spread + spread.mul_f64(2.0 * r);
        let guard = self.sdk_window + self.margin;
        if life > guard {
            let latest = expires - guard;
            if at > latest {
                let room = latest.saturating_duration_since(issued);
                at = latest - room.mul_f64(self.jitter * r);
            }
        }
        at.max(issued + self.min_interval)
    }

    /// How long to wait after the `failures`-th consecutive failure.
    pub fn retry_delay(&self, err: &ExchangeError, failures: u32, r: f64) -> Duration {
        let delay = match err.retry {
            Retry::Transient => {
                let exp = failures.saturating_sub(1).min(16);
                let full = self
                    .backoff_base
                    .saturating_mul(1 << exp)
                    .min(self.backoff_max);
                // "Equal jitter": half fixed, half random, so the delay never collapses to zero.
                full / 2 + (full / 2).mul_f64(r)
            }
            Retry::Permanent => self.permanent_retry.mul_f64(0.9 + 0.2 * r),
        };
        match err.retry_after {
            Some(after) => delay.max(after.min(self.retry_after_max)),
            None => delay,
        }
    }

    /// Whether a credential expiring at `expires` may still be handed out at `now`.
    pub fn servable(&self, expires: Instant, now: Instant) -> bool {
        now + self.serve_floor < expires
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn aws() -> Policy {
        Policy::for_sdk_window(Duration::from_secs(15 * 60))
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn one_hour_credential_refreshes_around_half_life() {
        let p = aws();
        let t0 = Instant::now();
        let t1 = t0 + secs(3600);
        assert_eq!(p.refresh_at(t0, t1, 0.5), t0 + secs(1800));
        assert_eq!(p.refresh_at(t0, t1, 0.0), t0 + secs(1620));
        let late = p.refresh_at(t0, t1, 0.999_999);
        assert!(late <= t0 + secs(1980) && late > t0 + secs(1979));
    }

    #[test]
    fn refresh_point_keeps_sdk_window_clear() {
        let p = aws();
        let t0 = Instant::now();
        for life in [1300u64, 1800, 2400, 3600, 7200, 43_200] {
            let t1 = t0 + secs(life);
            for i in 0..=10 {
                let at = p.refresh_at(t0, t1, f64::from(i) / 10.0);
                let left = t1 - at;
                assert!(
                    left >= secs(20 * 60),
                    "life {life}: {left:?} left at refresh"
                );
                assert!(at > t0);
            }
        }
    }

    #[test]
    fn short_credentials_refresh_at_half_life_not_in_a_loop() {
        let p = aws();
        let t0 = Instant::now();
        let t1 = t0 + secs(900);
        let at = p.refresh_at(t0, t1, 0.5);
        assert_eq!(at, t0 + secs(450));
        // Even an absurd 1 s credential is not refreshed more than once a second.
        assert_eq!(p.refresh_at(t0, t0 + secs(1), 0.0), t0 + secs(1));
    }

    #[test]
    fn backoff_grows_and_caps() {
        let p = aws();
        let e = ExchangeError::transient("Throttling", "slow down");
        assert_eq!(p.retry_delay(&e, 1, 0.0), Duration::from_millis(500));
        assert_eq!(p.retry_delay(&e, 1, 1.0), secs(1));
        assert_eq!(p.retry_delay(&e, 4, 1.0), secs(8));
        assert_eq!(p.retry_delay(&e, 30, 1.0), secs(60));
        assert_eq!(p.retry_delay(&e, 30, 0.0), secs(30));
    }

    #[test]
    fn retry_after_is_honoured_and_capped() {
        let p = aws();
        let e = ExchangeError::transient("Throttling", "x").with_retry_after(Some(secs(20)));
        assert_eq!(p.retry_delay(&e, 1, 0.0), secs(20));
        let e = e.with_retry_after(Some(secs(3600)));
        assert_eq!(p.retry_delay(&e, 1, 0.0), secs(300));
    }

    #[test]
    fn permanent_errors_wait_long() {
        let p = aws();
        let e = ExchangeError::permanent("AccessDenied", "no");
        assert_eq!(p.retry_delay(&e, 1, 0.5), secs(300));
        assert!(p.retry_delay(&e, 1, 0.0) >= secs(270));
    }

    #[test]
    fn serve_floor() {
        let p = aws();
        let now = Instant::now();
        assert!(p.servable(now + secs(6), now));
        assert!(!p.servable(now + secs(5), now));
        assert!(!p.servable(now, now));
    }
}

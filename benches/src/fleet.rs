//! Fleet simulation: thousands of pods' refresh schedules against one STS, driven by the
//! broker's real refresh policy (`credbroker::refresh::Policy::{refresh_at, retry_delay}`, the
//! very functions the refresher calls), not a re-implementation. Discrete events in
//! milliseconds; exchanges are instantaneous; during an outage every exchange fails with a
//! transient error (as STS 5xx / throttling does).
//!
//! "Without jitter" feeds the policy the random draw 0.5 every time: refreshes land exactly at
//! half-life and backoffs at exactly ¾ of their cap, which is what a jitter-free refresher does.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;

use credbroker::clouds::Cloud;
use credbroker::clouds::aws::Aws;
use credbroker::exchange::ExchangeError;
use credbroker::refresh::Policy;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tokio::time::Instant;

use crate::stats::quantile_sorted;

/// GCP's published quota for STS token exchanges: 6,000 per minute per project
/// (docs/gcp.md, "STS token exchange").
pub const GCP_STS_QUOTA_PER_MIN: f64 = 6000.0;

#[derive(Debug, Clone)]
pub struct FleetConfig {
    pub name: String,
    pub pods: usize,
    pub horizon: Duration,
    /// Lifetime of each issued credential (STS `DurationSeconds`).
    pub lifetime: Duration,
    /// Pods start at uniformly random times within this window from t = 0.
    pub start_window: Duration,
    pub jitter: bool,
    /// STS answers every exchange with a transient error during `[from, to)`.
    pub outage: Option<(Duration, Duration)>,
    pub policy: Policy,
    pub seed: u64,
}

/// Upstream request rates, per second unless named otherwise.
#[derive(Debug, Clone, Serialize)]
pub struct FleetResult {
    pub name: String,
    pub pods: usize,
    pub jitter: bool,
    pub start_window_s: f64,
    pub outage: Option<(f64, f64)>,
    pub exchanges: u64,
    pub failed_exchanges: u64,
    pub mean_rps: f64,
    /// Over the whole day, start-up burst included.
    pub peak_rps: u32,
    pub p99_rps: f64,
    /// Over the day after the start-up burst (from `start_window` + 10 min): refresh traffic only.
    pub refresh_peak_rps: u32,
    pub refresh_p99_rps: f64,
    pub refresh_peak_per_min: u32,
    /// During the outage and the 10 minutes after it.
    pub outage_peak_rps: Option<u32>,
    /// Pods whose credential ran out (nothing servable) at some point.
    pub pods_ever_without_credential: usize,
}

#[derive(Clone, Copy)]
struct Pod {
    failures: u32,
    /// Millisecond at which the held credential stops being servable.
    servable_until: Option<u64>,
    ever_without: bool,
}

pub fn simulate(cfg: &FleetConfig) -> FleetResult {
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let mut draw = move || if cfg.jitter { rng.random::<f64>() } else { 0.5 };
    let base = Instant::now();
    let at_ms = |i: Instant| i.duration_since(base).as_millis() as u64;
    let horizon_ms = cfg.horizon.as_millis() as u64;
    let lifetime_ms = cfg.lifetime.as_millis() as u64;
    let floor_ms = cfg.policy.serve_floor.as_millis() as u64;
    let outage = cfg
        .outage
        .map(|(a, b)| (a.as_millis() as u64, b.as_millis() as u64));
    let transient =
        ExchangeError::transient("ServiceUnavailable", "simulated STS outage").with_status(503);

    let mut pods = vec![
        Pod {
            failures: 0,
            servable_until: None,
            ever_without: false,
        };
        cfg.pods
    ];
    let mut queue: BinaryHeap<Reverse<(u64, usize)>> = BinaryHeap::with_capacity(cfg.pods);
    let window_ms = cfg.start_window.as_millis() as u64;
    let mut start_rng = StdRng::seed_from_u64(cfg.seed ^ 0x5eed);
    for p in 0..cfg.pods {
        let t = if window_ms == 0 {
            0
        } else {
            start_rng.random_range(0..window_ms)
        };
        queue.push(Reverse((t, p)));
    }
    let mut per_sec = vec![0u32; (horizon_ms / 1000) as usize + 1];
    let (mut exchanges, mut failed) = (0u64, 0u64);
    while let Some(Reverse((t, p))) = queue.pop() {
        if t >= horizon_ms {
            break;
        }
        exchanges += 1;
        per_sec[(t / 1000) as usize] += 1;
        let pod = &mut pods[p];
        if pod.servable_until.is_some_and(|u| u <= t) {
            pod.ever_without = true;
        }
        let now = base + Duration::from_millis(t);
        let down = outage.is_some_and(|(a, b)| (a..b).contains(&t));
        let next = if down {
            failed += 1;
            pod.failures += 1;
            now + cfg.policy.retry_delay(&transient, pod.failures, draw())
        } else {
            pod.failures = 0;
            let expires = now + Duration::from_millis(lifetime_ms);
            pod.servable_until = Some(t + lifetime_ms - floor_ms);
            cfg.policy.refresh_at(now, expires, draw())
        };
        queue.push(Reverse((at_ms(next), p)));
    }

    let rates = |from_s: usize, to_s: usize| -> (u32, f64) {
        let slice = &per_sec[from_s.min(per_sec.len())..to_s.min(per_sec.len())];
        let mut v: Vec<f64> = slice.iter().map(|&c| f64::from(c)).collect();
        v.sort_by(f64::total_cmp);
        (
            slice.iter().copied().max().unwrap_or(0),
            quantile_sorted(&v, 0.99).unwrap_or(0.0),
        )
    };
    let day_s = (horizon_ms / 1000) as usize;
    let (peak, p99) = rates(0, day_s);
    let settle_s = (cfg.start_window.as_secs() + 600) as usize;
    let (refresh_peak, refresh_p99) = rates(settle_s, day_s);
    let refresh_peak_per_min = per_sec[settle_s.min(per_sec.len())..day_s.min(per_sec.len())]
        .windows(60)
        .map(|w| w.iter().sum::<u32>())
        .max()
        .unwrap_or(0);
    let outage_peak = outage.map(|(a, b)| rates((a / 1000) as usize, (b / 1000) as usize + 600).0);
    FleetResult {
        name: cfg.name.clone(),
        pods: cfg.pods,
        jitter: cfg.jitter,
        start_window_s: cfg.start_window.as_secs_f64(),
        outage: cfg.outage.map(|(a, b)| (a.as_secs_f64(), b.as_secs_f64())),
        exchanges,
        failed_exchanges: failed,
        mean_rps: exchanges as f64 / cfg.horizon.as_secs_f64(),
        peak_rps: peak,
        p99_rps: p99,
        refresh_peak_rps: refresh_peak,
        refresh_p99_rps: refresh_p99,
        refresh_peak_per_min,
        outage_peak_rps: outage_peak,
        pods_ever_without_credential: pods.iter().filter(|p| p.ever_without).count(),
    }
}

/// The report's scenarios for `pods` pods over 24 h with 1-hour AWS credentials: a mass start
/// (a cluster-wide restart: every pod within 10 s), a rollout over 10 minutes, and the mass
/// start with a 5-minute STS outage at 12:00 — each with and without jitter.
pub fn scenarios(pods: usize) -> Vec<FleetConfig> {
    let policy = Policy::for_sdk_window(<Aws as Cloud>::SDK_WINDOW);
    let day = Duration::from_secs(24 * 3600);
    let noon = Duration::from_secs(12 * 3600);
    let outage = Some((noon, noon + Duration::from_secs(300)));
    let mut out = Vec::new();
    for (name, window, outage) in [
        ("mass start (all pods within 10 s)", 10, None),
        ("rollout (pods start over 10 min)", 600, None),
        ("mass start + 5-min STS outage at 12:00", 10, outage),
    ] {
        for jitter in [false, true] {
            out.push(FleetConfig {
                name: name.to_string(),
                pods,
                horizon: day,
                lifetime: Duration::from_secs(3600),
                start_window: Duration::from_secs(window),
                jitter,
                outage,
                policy: policy.clone(),
                seed: 6,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(jitter: bool, outage: Option<(Duration, Duration)>) -> FleetConfig {
        FleetConfig {
            name: "t".into(),
            pods: 1000,
            horizon: Duration::from_secs(6 * 3600),
            lifetime: Duration::from_secs(3600),
            start_window: Duration::from_secs(1),
            jitter,
            outage,
            policy: Policy::for_sdk_window(<Aws as Cloud>::SDK_WINDOW),
            seed: 1,
        }
    }

    #[test]
    fn without_jitter_the_fleet_refreshes_in_lockstep() {
        let r = simulate(&cfg(false, None));
        // Start plus a refresh every 30 min for 6 h: 12 rounds of 1000, all within one second.
        assert_eq!(r.exchanges, 12 * 1000);
        assert_eq!(r.refresh_peak_rps, 1000);
        assert_eq!(r.pods_ever_without_credential, 0);
    }

    #[test]
    fn jitter_spreads_refreshes() {
        let plain = simulate(&cfg(false, None));
        let jittered = simulate(&cfg(true, None));
        assert!(
            jittered.refresh_peak_rps * 10 <= plain.refresh_peak_rps,
            "{} vs {}",
            jittered.refresh_peak_rps,
            plain.refresh_peak_rps
        );
        // Refreshing at 1620..1980 s of 3600 never lets a credential lapse.
        assert_eq!(jittered.pods_ever_without_credential, 0);
    }

    #[test]
    fn an_outage_costs_retries_not_credentials() {
        let at = Duration::from_secs(3 * 1800);
        let r = simulate(&cfg(
            true,
            Some((at - Duration::from_secs(60), at + Duration::from_secs(240))),
        ));
        assert!(r.failed_exchanges > 0);
        assert!(r.outage_peak_rps.is_some());
        assert_eq!(r.pods_ever_without_credential, 0);
        // A 40-minute outage outlasts 1-hour credentials refreshed at half-life.
        let long = simulate(&cfg(true, Some((at, at + Duration::from_secs(2400)))));
        assert!(long.pods_ever_without_credential > 0);
    }
}

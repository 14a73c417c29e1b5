//! Wall-clock time, injected so that refresh logic runs under tokio's paused time in tests.
//!
//! Scheduling and validity use `tokio::time::Instant` (monotonic, pausable). The wall clock is
//! only consulted to turn an upstream's absolute expiry into a duration, and to check a JWT's `exp`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

pub trait Clock: Send + Sync + 'static {
    fn wall(&self) -> SystemTime;

    fn unix_secs(&self) -> u64 {
        self.wall()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }

    /// The monotonic instant at which the wall clock will read `at`.
    fn instant_of(&self, at: SystemTime) -> Instant {
        let now = Instant::now();
        match at.duration_since(self.wall()) {
            Ok(ahead) => now + ahead,
            Err(behind) => now.checked_sub(behind.duration()).unwrap_or(now),
        }
    }
}

/// The real wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn wall(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A wall clock that advances with tokio's clock, so paused-time tests move both together.
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    base_wall: SystemTime,
    base: Instant,
}

impl TokioClock {
    pub fn starting_at(base_wall: SystemTime) -> Self {
        TokioClock {
            base_wall,
            base: Instant::now(),
        }
    }

    pub fn now_wall() -> Self {
        Self::starting_at(SystemTime::now())
    }
}

impl Clock for TokioClock {
    fn wall(&self) -> SystemTime {
        self.base_wall + Instant::now().duration_since(self.base)
    }
}

/// Seconds since the epoch as a `SystemTime`.
pub fn from_unix(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

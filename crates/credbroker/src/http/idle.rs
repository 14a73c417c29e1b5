//! The header-read and keep-alive deadline, kept per connection instead of per request.
//!
//! hyper's `header_read_timeout` arms a timer for every request head: a `Sleep` created, reset
//! in the runtime's timer wheel, polled, and dropped once per request. In callgrind that was
//! ~1.4k of the ~8.7k instructions a bare hyper server spends per request, and ~160 of the
//! ~830 code lines it touches (docs/benchmarks.md, "Per-request timers") — more than all the
//! broker's own routing, checks and cache read together. The protection does not need that
//! precision: it exists to cut off clients that send nothing, drip a head byte by byte
//! (slowloris), or hold an idle keep-alive connection.
//!
//! Here each connection has one timer that ticks every quarter of the limit, and a counter the
//! service bumps when a request starts and when its answer is ready ([`Activity`]). A tick
//! that finds the counter changed, or a request in flight, restarts the quiet period; a tick
//! that finds the connection quiet for the whole limit closes it. A connection is therefore
//! closed between `limit` and `1.25 × limit` after its last activity (a silent client, a
//! dripping one, an idle keep-alive), never earlier. A request in flight is never cut off here;
//! a client that stops reading its answers is [`super::server`]'s `WriteDeadline`'s to cut off.
//! Per request the cost is one atomic add and one read of the timer's state.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// What a connection's service has done: +1 when a request starts, +1 when its answer is
/// ready. Odd: a request is in flight.
#[derive(Debug, Default)]
pub struct Activity(AtomicU64);

impl Activity {
    /// A request answered as soon as it arrived.
    pub fn answered(&self) {
        self.0.fetch_add(2, Ordering::Relaxed);
    }

    /// A request whose answer must be waited for (see [`Activity::end`]).
    pub fn begin(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// The answer to the request [`Activity::begin`] announced is ready.
    pub fn end(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// `conn`, dropped (and its socket closed) once it has been quiet for `limit`.
pub struct IdleDeadline<C> {
    conn: C,
    activity: Arc<Activity>,
    limit: Duration,
    tick: Pin<Box<Sleep>>,
    /// The waker the timer was last polled with: it wakes that one when it fires.
    registered: Option<Waker>,
    /// The counter at the last tick.
    seen: u64,
    /// When the last tick saw activity (or the connection began).
    quiet_since: Instant,
}

/// How an [`IdleDeadline`] ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended<T> {
    /// The connection finished on its own.
    Done(T),
    /// The connection was quiet for the limit and has been dropped.
    Idle,
}

impl<C: Future + Unpin> IdleDeadline<C> {
    pub fn new(conn: C, activity: Arc<Activity>, limit: Duration) -> Self {
        let now = Instant::now();
        IdleDeadline {
            conn,
            seen: activity.get(),
            activity,
            limit,
            tick: Box::pin(tokio::time::sleep_until(now + Self::period(limit))),
            registered: None,
            quiet_since: now,
        }
    }

    fn period(limit: Duration) -> Duration {
        (limit / 4).max(Duration::from_millis(1))
    }

    /// Handles ticks until the timer is pending again (registered with the runtime), or the
    /// connection has been quiet for the limit.
    fn on_ticks(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        self.registered = Some(cx.waker().clone());
        while self.tick.as_mut().poll(cx).is_ready() {
            let now = Instant::now();
            let activity = self.activity.get();
            if activity != self.seen || activity % 2 == 1 {
                self.seen = activity;
                self.quiet_since = now;
            } else if now.duration_since(self.quiet_since) >= self.limit {
                return Poll::Ready(());
            }
            let next = (now + Self::period(self.limit)).min(self.quiet_since + self.limit);
            self.tick
                .as_mut()
                .reset(next.max(now + Duration::from_millis(1)));
        }
        Poll::Pending
    }
}

impl<C: Future + Unpin> Future for IdleDeadline<C> {
    type Output = Ended<C::Output>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        if let Poll::Ready(out) = Pin::new(&mut this.conn).poll(cx) {
            return Poll::Ready(Ended::Done(out));
        }
        // Once the timer has been polled with this task's waker (a task keeps its waker for
        // life), a wake-up for the connection's I/O reads the timer's state instead of
        // polling it: the per-request cost this module exists to avoid.
        let current = this
            .registered
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()));
        if (!current || this.tick.is_elapsed()) && this.on_ticks(cx).is_ready() {
            return Poll::Ready(Ended::Idle);
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection that never finishes on its own.
    fn forever() -> std::future::Pending<()> {
        std::future::pending()
    }

    async fn ends_after(activity: Arc<Activity>, limit: Duration) -> Duration {
        let start = Instant::now();
        let ended = IdleDeadline::new(forever(), activity, limit).await;
        assert_eq!(ended, Ended::Idle);
        start.elapsed()
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_is_closed_between_the_limit_and_a_quarter_more() {
        let took = ends_after(Arc::default(), Duration::from_secs(10)).await;
        assert!(took >= Duration::from_secs(10), "{took:?}");
        assert!(took <= Duration::from_millis(12_500), "{took:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn activity_restarts_the_quiet_period() {
        let activity = Arc::new(Activity::default());
        let a = activity.clone();
        // A request every 6 s for 30 s: never quiet for 10 s.
        tokio::spawn(async move {
            for _ in 0..5 {
                tokio::time::sleep(Duration::from_secs(6)).await;
                a.answered();
            }
        });
        let took = ends_after(activity, Duration::from_secs(10)).await;
        // The last request at 30 s; closed 10–12.5 s later (plus the tick that saw it).
        assert!(took >= Duration::from_secs(40), "{took:?}");
        assert!(took <= Duration::from_millis(45_000), "{took:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_in_flight_is_never_cut_off() {
        let activity = Arc::new(Activity::default());
        activity.begin();
        let a = activity.clone();
        tokio::spawn(async move {
            // Waits 25 s for its answer: longer than the limit.
            tokio::time::sleep(Duration::from_secs(25)).await;
            a.end();
        });
        let took = ends_after(activity, Duration::from_secs(10)).await;
        assert!(took >= Duration::from_secs(35), "{took:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_finishes_ends_as_itself() {
        let conn = Box::pin(async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            7
        });
        let ended = IdleDeadline::new(conn, Arc::default(), Duration::from_secs(10)).await;
        assert_eq!(ended, Ended::Done(7));
    }
}

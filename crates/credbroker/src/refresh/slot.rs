//! One identity's credential: the value, the last error, and the single exchange in flight.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use tokio::sync::{Notify, watch};
use tokio::time::{Instant, timeout_at};

use super::policy::Policy;
use crate::exchange::ExchangeError;

/// A credential as held by the cache.
#[derive(Debug)]
pub struct Issued<C> {
    pub value: C,
    /// When we received it (monotonic).
    pub issued_at: Instant,
    /// When it expires (monotonic; converted once from the upstream's wall-clock expiry).
    pub expires_at: Instant,
    /// The upstream's wall-clock expiry, for surfaces that print it.
    pub expires_wall: SystemTime,
}

impl<C> Issued<C> {
    /// Time left at `now`, zero once expired.
    pub fn remaining(&self, now: Instant) -> Duration {
        self.expires_at.saturating_duration_since(now)
    }
}

/// What a slot holds. Published through a `watch` channel so waiters wake on every result.
#[derive(Debug)]
pub struct SlotState<C> {
    pub cred: Option<Arc<Issued<C>>>,
    /// The last attempt's failure; cleared by the next success.
    pub error: Option<ExchangeError>,
    pub in_flight: bool,
    /// Finished attempts, successful or not.
    pub attempts: u64,
}

/// Why a credential cannot be handed out right now: the answer to a request that finds none,
/// and the reason `/readyz` gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unavailable {
    /// The exchange is still running (typically the first one, at start-up).
    Pending,
    /// The last exchange failed and nothing valid is held.
    Failed(ExchangeError),
    /// The credential held has expired (or is inside the serve floor); its refresh is pending.
    Expired,
    /// A credential is held but not where applications read it (OCI's files); says why.
    Undelivered(String),
}

impl Unavailable {
    /// The status a metadata surface answers with, the one rule every cloud follows: 503 (every
    /// SDK retries it) while an exchange is pending or after a transient failure; after a
    /// permanent denial the upstream's own 4xx (never 429, which would read as "retry"), else
    /// `denied`, the cloud's usual denial status.
    pub fn http_status(&self, denied: u16) -> u16 {
        match self {
            Unavailable::Failed(e) if !e.is_transient() => e
                .status
                .filter(|s| (400..500).contains(s) && *s != 429)
                .unwrap_or(denied),
            _ => 503,
        }
    }

    /// Whether waiting can help without anything else changing: an exchange is in flight or due.
    pub fn is_pending(&self) -> bool {
        matches!(self, Unavailable::Pending | Unavailable::Expired)
    }
}

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unavailable::Pending => f.write_str("first exchange in progress"),
            Unavailable::Failed(e) => write!(f, "last exchange failed: {e}"),
            Unavailable::Expired => f.write_str("credential expired; refresh pending"),
            Unavailable::Undelivered(why) => f.write_str(why),
        }
    }
}

pub struct Slot<C> {
    state: watch::Sender<SlotState<C>>,
    pub(super) kick: Notify,
    /// Set by [`Slot::refresh_now`]; the refresh loop takes it.
    refresh: std::sync::atomic::AtomicBool,
    policy: Arc<Policy>,
    epoch: Instant,
    last_used_ms: AtomicU64,
}

impl<C> Slot<C> {
    pub(super) fn new(policy: Arc<Policy>) -> Self {
        let (state, _) = watch::channel(SlotState {
            cred: None,
            error: None,
            in_flight: false,
            attempts: 0,
        });
        Slot {
            state,
            kick: Notify::new(),
            refresh: std::sync::atomic::AtomicBool::new(false),
            policy,
            epoch: Instant::now(),
            last_used_ms: AtomicU64::new(0),
        }
    }

    /// The held credential if it may be served now. The hot path: one uncontended read lock.
    pub fn current(&self) -> Option<Arc<Issued<C>>> {
        self.current_at(Instant::now())
    }

    fn current_at(&self, now: Instant) -> Option<Arc<Issued<C>>> {
        let state = self.state.borrow();
        state
            .cred
            .as_ref()
            .filter(|c| self.policy.servable(c.expires_at, now))
            .cloned()
    }

    /// What [`Slot::get`] answers without waiting: the held credential if it may be served
    /// now (the reader is recorded as `get` records it), else `None`.
    pub fn get_now(&self) -> Option<Arc<Issued<C>>> {
        let now = Instant::now();
        self.touch(now);
        self.current_at(now)
    }

    /// A servable credential, waiting up to `wait` for an exchange in flight. Never starts a
    /// second exchange: concurrent callers all wait on the slot's one task.
    pub async fn get(&self, wait: Duration) -> Result<Arc<Issued<C>>, Unavailable> {
        if let Some(cred) = self.get_now() {
            return Ok(cred);
        }
        let deadline = Instant::now() + wait;
        let mut rx = self.state.subscribe();
        loop {
            {
                let state = rx.borrow_and_update();
                let now = Instant::now();
                if let Some(cred) = state
                    .cred
                    .as_ref()
                    .filter(|c| self.policy.servable(c.expires_at, now))
                {
                    return Ok(cred.clone());
                }
                if !state.in_flight {
                    if let Some(err) = &state.error {
                        // Backing off: answer now rather than hammer upstream.
                        return Err(Unavailable::Failed(err.clone()));
                    }
                    // Nothing held, nothing failed, nothing running: wake the refresher.
                    self.kick.notify_one();
                }
            }
            match timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => continue,
                Ok(Err(_)) | Err(_) => return Err(Unavailable::Pending),
            }
        }
    }

    /// `Ok` when a credential would be served now, else why not.
    pub fn readiness(&self) -> Result<(), Unavailable> {
        if self.current().is_some() {
            return Ok(());
        }
        let state = self.state.borrow();
        match (&state.error, &state.cred) {
            (Some(err), _) => Err(Unavailable::Failed(err.clone())),
            (None, Some(_)) => Err(Unavailable::Expired),
            (None, None) => Err(Unavailable::Pending),
        }
    }

    /// A snapshot of the whole state (for `check`, tests and diagnostics).
    pub fn with_state<R>(&self, f: impl FnOnce(&SlotState<C>) -> R) -> R {
        f(&self.state.borrow())
    }

    pub fn subscribe(&self) -> watch::Receiver<SlotState<C>> {
        self.state.subscribe()
    }

    /// Asks for a new exchange now, even though the held credential is valid (what it was
    /// derived from changed).
    ///
    /// Any attempt that starts after this call satisfies it; one already in flight does not
    /// (it may be using what changed).
    pub fn refresh_now(&self) {
        self.refresh.store(true, Ordering::SeqCst);
        self.kick.notify_one();
    }

    /// As [`Slot::refresh_now`], except that an exchange already in flight satisfies it (the
    /// caller wants a newer credential, not a different input): asking then would run a second
    /// exchange right after the first. Decided under the state's lock, which
    /// [`Slot::start_attempt`] also takes, so no attempt can start unseen in between.
    pub fn refresh_unless_in_flight(&self) {
        self.state.send_if_modified(|s| {
            if !s.in_flight {
                self.refresh.store(true, Ordering::SeqCst);
                self.kick.notify_one();
            }
            false
        });
    }

    pub(super) fn take_refresh(&self) -> bool {
        self.refresh.swap(false, Ordering::SeqCst)
    }

    pub(super) fn has_error(&self) -> bool {
        self.state.borrow().error.is_some()
    }

    /// Marks an exchange in flight. It satisfies every refresh asked for before it, so the
    /// request is cleared in the same step.
    pub(super) fn start_attempt(&self) {
        self.state.send_modify(|s| {
            self.refresh.store(false, Ordering::SeqCst);
            s.in_flight = true
        });
    }

    pub(super) fn succeed(&self, cred: Arc<Issued<C>>) {
        self.state.send_modify(|s| {
            s.cred = Some(cred);
            s.error = None;
            s.in_flight = false;
            s.attempts += 1;
        });
    }

    pub(super) fn fail(&self, err: ExchangeError) {
        self.state.send_modify(|s| {
            s.error = Some(err);
            s.in_flight = false;
            s.attempts += 1;
        });
    }

    fn touch(&self, now: Instant) {
        let ms = now.duration_since(self.epoch).as_millis() as u64;
        // Readers on every core touch this: write only when the millisecond changed, so the
        // cache line is not bounced between cores on every request.
        if self.last_used_ms.load(Ordering::Relaxed) != ms {
            self.last_used_ms.store(ms, Ordering::Relaxed);
        }
    }

    /// How long since a reader last asked for this credential.
    pub(super) fn idle_for(&self) -> Duration {
        let used = self.epoch + Duration::from_millis(self.last_used_ms.load(Ordering::Relaxed));
        Instant::now().saturating_duration_since(used)
    }
}

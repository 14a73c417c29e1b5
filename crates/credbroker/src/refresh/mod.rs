//! The credential cache and refresher shared by every cloud.
//!
//! One [`Slot`] per identity key, each driven by one task that exchanges, publishes and sleeps
//! until the policy's refresh point. Readers never wait while a valid credential is held; readers
//! of an empty slot wait on the task's next result instead of starting exchanges of their own, so
//! a thousand concurrent misses cost one upstream call.
//!
//! Fixed keys (the AWS role, the warm Azure resources) are *pinned*: refreshed forever and counted
//! for readiness. Dynamic keys (a GCP scope set, an Azure resource asked for at run time) are
//! created on first request, refreshed ahead of expiry the same way while they are being used,
//! and dropped after `idle_ttl` without readers; at most `max_keys` are held.

pub mod policy;
mod readiness;
pub mod slot;

use std::collections::HashMap;
use std::fmt::Display;
use std::hash::Hash;
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use tokio::sync::watch;
use tokio::time::{Instant, sleep_until, timeout};

use crate::clock::{Clock, SystemClock};
use crate::exchange::{Exchange, ExchangeError, Retry};
use crate::metrics::{CloudLabels, ExchangeLabels, ExpirySource, Metrics};
pub use policy::Policy;
pub use readiness::NotReady;
pub use slot::{Issued, Slot, SlotState, Unavailable};

pub trait CacheKey: Clone + Eq + Hash + Display + Send + Sync + 'static {}
impl<T: Clone + Eq + Hash + Display + Send + Sync + 'static> CacheKey for T {}

/// Limits on the dynamic key space.
#[derive(Debug, Clone, Copy)]
pub struct KeyLimits {
    pub max_keys: usize,
    pub idle_ttl: Duration,
}

impl Default for KeyLimits {
    fn default() -> Self {
        KeyLimits {
            max_keys: 256,
            idle_ttl: Duration::from_secs(3600),
        }
    }
}

pub struct Cache<K: CacheKey, E: Exchange<K>> {
    inner: Arc<Inner<K, E>>,
}

/// A handle that does not keep the cache alive (an exchanger that reads other keys of its own
/// cache, as a chained role reads its base, holds one of these).
pub struct WeakCache<K: CacheKey, E: Exchange<K>> {
    inner: Weak<Inner<K, E>>,
}

impl<K: CacheKey, E: Exchange<K>> WeakCache<K, E> {
    pub fn upgrade(&self) -> Option<Cache<K, E>> {
        self.inner.upgrade().map(|inner| Cache { inner })
    }
}

impl<K: CacheKey, E: Exchange<K>> Clone for Cache<K, E> {
    fn clone(&self) -> Self {
        Cache {
            inner: self.inner.clone(),
        }
    }
}

struct Inner<K: CacheKey, E: Exchange<K>> {
    cloud: &'static str,
    exchanger: Arc<E>,
    policy: Arc<Policy>,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    token_changes: Option<watch::Receiver<u64>>,
    limits: KeyLimits,
    slots: Mutex<HashMap<K, Entry<E::Credential>>>,
    /// The pinned keys' slots again, in pinning order: pinned keys are what clients ask for
    /// nearly every time, and comparing a few keys costs less than hashing one with SipHash
    /// under the map's lock (~0.65k instructions per Azure token, callgrind). Written only by
    /// [`Cache::pin`]; a pinned entry is never removed from `slots`.
    pinned: RwLock<Vec<PinnedSlot<K, E::Credential>>>,
}

/// A pinned key and its slot.
type PinnedSlot<K, C> = (K, Arc<Slot<C>>);

struct Entry<C> {
    slot: Arc<Slot<C>>,
    pinned: bool,
    task: tokio::task::AbortHandle,
}

impl<K: CacheKey, E: Exchange<K>> Drop for Inner<K, E> {
    fn drop(&mut self) {
        for entry in self.slots.get_mut().values() {
            entry.task.abort();
        }
    }
}

/// Builds a [`Cache`]: the cloud's name and exchanger are required; the policy comes from the
/// cloud's SDK refresh window; the rest has defaults tests override.
pub struct CacheBuilder<K: CacheKey, E: Exchange<K>> {
    cloud: &'static str,
    exchanger: E,
    policy: Policy,
    clock: Arc<dyn Clock>,
    metrics: Option<Arc<Metrics>>,
    token_changes: Option<watch::Receiver<u64>>,
    limits: KeyLimits,
    _key: std::marker::PhantomData<fn(K)>,
}

impl<K: CacheKey, E: Exchange<K>> CacheBuilder<K, E> {
    /// The refresh policy for SDKs that refresh when less than `window` remains.
    pub fn sdk_window(mut self, window: Duration) -> Self {
        self.policy = Policy::for_sdk_window(window);
        self
    }

    /// A whole policy (tests and benchmarks shorten its intervals).
    pub fn policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
    }

    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    pub fn metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Ticks whenever the service-account token changes: a slot that is failing retries at
    /// once (an expired token was just replaced), within its backoff's `Retry-After`.
    pub fn token_changes(mut self, changes: watch::Receiver<u64>) -> Self {
        self.token_changes = Some(changes);
        self
    }

    /// Bounds on the dynamic keys (default: 256 keys, dropped after an hour unused).
    pub fn limits(mut self, limits: KeyLimits) -> Self {
        self.limits = limits;
        self
    }

    pub fn build(self) -> Cache<K, E> {
        let metrics = self.metrics.unwrap_or_default();
        metrics.declare_cloud(self.cloud);
        let inner = Arc::new(Inner {
            cloud: self.cloud,
            exchanger: Arc::new(self.exchanger),
            policy: Arc::new(self.policy),
            clock: self.clock,
            metrics: metrics.clone(),
            token_changes: self.token_changes,
            limits: self.limits,
            slots: Mutex::new(HashMap::new()),
            pinned: RwLock::new(Vec::new()),
        });
        let weak: Weak<dyn ExpirySource> = Arc::downgrade(&inner) as Weak<Inner<K, E>>;
        metrics.add_expiry_source(weak);
        Cache { inner }
    }
}

impl<K: CacheKey, E: Exchange<K>> Cache<K, E> {
    /// A cache for `cloud`'s credentials from `exchanger`, configured by the builder.
    pub fn builder(cloud: &'static str, exchanger: E) -> CacheBuilder<K, E> {
        CacheBuilder {
            cloud,
            exchanger,
            policy: Policy::for_sdk_window(Duration::ZERO),
            clock: Arc::new(SystemClock),
            metrics: None,
            token_changes: None,
            limits: KeyLimits::default(),
            _key: std::marker::PhantomData,
        }
    }

    pub fn downgrade(&self) -> WeakCache<K, E> {
        WeakCache {
            inner: Arc::downgrade(&self.inner),
        }
    }

    pub fn cloud(&self) -> &'static str {
        self.inner.cloud
    }

    pub fn policy(&self) -> &Policy {
        &self.inner.policy
    }

    pub fn exchanger(&self) -> &E {
        &self.inner.exchanger
    }

    /// A key refreshed for the life of the cache and counted for readiness.
    pub fn pin(&self, key: K) -> Arc<Slot<E::Credential>> {
        let mut slots = self.inner.slots.lock();
        let slot = match slots.get_mut(&key) {
            Some(entry) if entry.pinned => return entry.slot.clone(),
            Some(entry) => {
                entry.pinned = true;
                entry.slot.clone()
            }
            None => self.insert(&mut slots, key.clone(), true),
        };
        self.inner.pinned.write().push((key, slot.clone()));
        slot
    }

    /// The slot for `key`, created (and its first exchange started) on first use.
    pub fn slot(&self, key: &K) -> Arc<Slot<E::Credential>> {
        if let Some(slot) = self.with_pinned(key, Arc::clone) {
            return slot;
        }
        let mut slots = self.inner.slots.lock();
        if let Some(entry) = slots.get(key) {
            return entry.slot.clone();
        }
        let dynamic = slots.values().filter(|e| !e.pinned).count();
        if dynamic >= self.inner.limits.max_keys {
            let victim = slots
                .iter()
                .filter(|(_, e)| !e.pinned)
                .max_by_key(|(_, e)| e.slot.idle_for())
                .map(|(k, _)| k.clone());
            if let Some(entry) = victim.and_then(|v| slots.remove(&v)) {
                entry.task.abort();
            }
        }
        self.insert(&mut slots, key.clone(), false)
    }

    /// What [`Cache::get`] answers without waiting ([`Slot::get_now`]); the slot is created
    /// on first use, as `get` creates it.
    pub fn get_now(&self, key: &K) -> Option<Arc<Issued<E::Credential>>> {
        match self.with_pinned(key, |slot| slot.get_now()) {
            Some(got) => got,
            None => self.slot(key).get_now(),
        }
    }

    /// `f` on a pinned key's slot, found without hashing or the map's lock and without
    /// touching the slot's shared count; `None` when `key` is not pinned.
    fn with_pinned<R>(&self, key: &K, f: impl FnOnce(&Arc<Slot<E::Credential>>) -> R) -> Option<R> {
        let pinned = self.inner.pinned.read();
        pinned
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, slot)| f(slot))
    }

    /// A servable credential for `key`, waiting up to `wait` for an exchange in flight.
    pub async fn get(
        &self,
        key: &K,
        wait: Duration,
    ) -> Result<Arc<Issued<E::Credential>>, Unavailable> {
        self.slot(key).get(wait).await
    }

    /// `Ok` when every pinned key holds a credential it would serve; else the reasons.
    pub fn readiness(&self) -> Result<(), NotReady> {
        let slots = self.inner.slots.lock();
        let mut not_ready = NotReady::default();
        for (key, entry) in slots.iter().filter(|(_, e)| e.pinned) {
            if let Err(why) = entry.slot.readiness() {
                not_ready.push(key.to_string(), why);
            }
        }
        not_ready.into_result()
    }

    /// Number of keys held (pinned and dynamic).
    pub fn len(&self) -> usize {
        self.inner.slots.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn insert(
        &self,
        slots: &mut HashMap<K, Entry<E::Credential>>,
        key: K,
        pinned: bool,
    ) -> Arc<Slot<E::Credential>> {
        let slot = Arc::new(Slot::new(self.inner.policy.clone()));
        let task = tokio::spawn(drive(
            Arc::downgrade(&self.inner),
            key.clone(),
            slot.clone(),
            pinned,
        ));
        slots.insert(
            key,
            Entry {
                slot: slot.clone(),
                pinned,
                task: task.abort_handle(),
            },
        );
        slot
    }
}

impl<K: CacheKey, E: Exchange<K>> ExpirySource for Inner<K, E> {
    fn expiries(&self, out: &mut Vec<(&'static str, String, f64)>) {
        let now = Instant::now();
        for (key, entry) in self.slots.lock().iter() {
            entry.slot.with_state(|s| {
                if let Some(cred) = &s.cred {
                    out.push((
                        self.cloud,
                        key.to_string(),
                        cred.remaining(now).as_secs_f64(),
                    ));
                }
            });
        }
    }
}

/// The refresh loop of one slot. Holds the cache weakly: it ends when the cache is dropped.
async fn drive<K: CacheKey, E: Exchange<K>>(
    cache: Weak<Inner<K, E>>,
    key: K,
    slot: Arc<Slot<E::Credential>>,
    mut pinned: bool,
) {
    let mut failures: u32 = 0;
    let (mut token_changes, min_interval) = match cache.upgrade() {
        Some(inner) => (inner.token_changes.clone(), inner.policy.min_interval),
        None => return,
    };
    // A clone starts where the cache's own receiver stands, which may be rotations behind: only
    // changes from now on concern this slot (a stale one would skip a `Retry-After`).
    if let Some(rx) = token_changes.as_mut() {
        rx.borrow_and_update();
    }
    loop {
        let Some(inner) = cache.upgrade() else { return };
        let started = Instant::now();
        let Attempt { next, not_before } = attempt(&inner, &key, &slot, &mut failures).await;
        drop(inner);

        // Sleep until the refresh point. A reader finding nothing servable cuts it short (the
        // clock jumped, or a credential outlived its refresh point); while failing, a token
        // change does (the token was the problem more often than not).
        loop {
            let failing = slot.has_error();
            tokio::select! {
                _ = sleep_until(next) => break,
                _ = slot.kick.notified() => {
                    if slot.take_refresh() {
                        // Asked to re-derive (a chained role's base changed): at once, but
                        // still `min_interval` apart and within `Retry-After`.
                        sleep_until((started + min_interval).max(not_before)).await;
                        break;
                    }
                    if !failing && slot.current().is_none() {
                        break;
                    }
                }
                changed = changed(&mut token_changes), if failing && token_changes.is_some() => {
                    if changed {
                        // However often the file changes, attempts stay `min_interval` apart,
                        // and an upstream's `Retry-After` holds whatever the token does.
                        sleep_until((started + min_interval).max(not_before)).await;
                        break;
                    }
                    token_changes = None;
                }
            }
        }

        if !pinned && slot.idle_for() > idle_ttl(&cache) {
            if let Some(inner) = cache.upgrade() {
                let mut slots = inner.slots.lock();
                match slots.get(&key) {
                    // Pinned since this task started (`Cache::pin` on a dynamic key): kept
                    // and refreshed for good, like a key pinned from the start.
                    Some(e) if Arc::ptr_eq(&e.slot, &slot) && e.pinned => {
                        pinned = true;
                        continue;
                    }
                    Some(e) if Arc::ptr_eq(&e.slot, &slot) => {
                        slots.remove(&key);
                    }
                    _ => {}
                }
            }
            tracing::debug!(key = %key, "dropping idle credential key");
            return;
        }
    }
}

fn idle_ttl<K: CacheKey, E: Exchange<K>>(cache: &Weak<Inner<K, E>>) -> Duration {
    cache
        .upgrade()
        .map(|i| i.limits.idle_ttl)
        .unwrap_or(Duration::ZERO)
}

async fn changed(rx: &mut Option<watch::Receiver<u64>>) -> bool {
    match rx {
        Some(rx) => rx.changed().await.is_ok(),
        None => std::future::pending().await,
    }
}

/// When to try again after one attempt.
struct Attempt {
    /// The policy's next attempt (refresh point, or end of backoff).
    next: Instant,
    /// No attempt before this, whatever happens: the upstream's `Retry-After`.
    not_before: Instant,
}

/// One exchange: publish the outcome, return when to try next.
async fn attempt<K: CacheKey, E: Exchange<K>>(
    inner: &Inner<K, E>,
    key: &K,
    slot: &Slot<E::Credential>,
    failures: &mut u32,
) -> Attempt {
    let policy = &inner.policy;
    slot.start_attempt();
    tracing::debug!(cloud = inner.cloud, key = %key, "exchange started");
    let started = Instant::now();
    let result = match timeout(policy.exchange_timeout, inner.exchanger.exchange(key)).await {
        Ok(result) => result,
        Err(_) => Err(ExchangeError::transient(
            "ExchangeTimeout",
            format!("no answer within {} s", policy.exchange_timeout.as_secs()),
        )),
    };
    let now = Instant::now();
    inner
        .metrics
        .exchange_seconds
        .get_or_create(&CloudLabels { cloud: inner.cloud })
        .observe(now.duration_since(started).as_secs_f64());
    let result = result.and_then(|fresh| {
        let expires_at = inner.clock.instant_of(fresh.expires_at);
        if policy.servable(expires_at, now) {
            Ok(Issued {
                value: fresh.value,
                issued_at: now,
                expires_at,
                expires_wall: fresh.expires_at,
            })
        } else {
            Err(ExchangeError::transient(
                "ExpiredOnArrival",
                format!(
                    "upstream issued a credential with {} s left (clock skew?)",
                    expires_at.saturating_duration_since(now).as_secs()
                ),
            ))
        }
    });
    let outcome = match &result {
        Ok(_) => "success",
        Err(e) if e.retry == Retry::Transient => "transient_error",
        Err(_) => "permanent_error",
    };
    inner
        .metrics
        .exchanges
        .get_or_create(&ExchangeLabels {
            cloud: inner.cloud,
            outcome,
        })
        .inc();
    match result {
        Ok(issued) => {
            *failures = 0;
            let at = policy.refresh_at(now, issued.expires_at, rand::random::<f64>());
            tracing::info!(
                cloud = inner.cloud,
                key = %key,
                expires_in_s = issued.remaining(now).as_secs(),
                refresh_in_s = at.duration_since(now).as_secs(),
                "credential obtained"
            );
            slot.succeed(Arc::new(issued));
            Attempt {
                next: at,
                not_before: now,
            }
        }
        Err(err) => {
            *failures = failures.saturating_add(1);
            let delay = policy.retry_delay(&err, *failures, rand::random::<f64>());
            let held = slot.current().map(|c| c.remaining(now).as_secs());
            tracing::warn!(
                cloud = inner.cloud,
                key = %key,
                code = %err.code,
                message = %err.message,
                transient = err.is_transient(),
                failures = *failures,
                retry_in_ms = delay.as_millis() as u64,
                serving_old_credential_for_s = held,
                "exchange failed"
            );
            let not_before = now
                + err
                    .retry_after
                    .map_or(Duration::ZERO, |a| a.min(policy.retry_after_max));
            slot.fail(err);
            Attempt {
                next: now + delay,
                not_before,
            }
        }
    }
}

#[cfg(test)]
mod tests;

//! A running cloud, written once for all of them: its surfaces, and the credentials it must hold
//! (pinned identities, kept warm forever) from which its readiness and its `check` summary follow.

use std::any::Any;
use std::sync::Arc;

use tokio::task::AbortHandle;
use tokio::time::Instant;

use crate::exchange::Exchange;
use crate::refresh::{Cache, CacheKey, Issued, NotReady, Slot};
use crate::surface::Surface;

/// Something a cloud must hold to be ready: a pinned credential, or the delivery of one (OCI's
/// files).
pub trait Held: Send + Sync {
    /// `Ok` when it would be served now; else which and why not.
    fn readiness(&self) -> Result<(), NotReady>;
    /// A redacted one-line summary (identity, expiry) for `credbroker check`.
    fn summary(&self) -> Result<String, NotReady>;
}

/// How a pinned credential is described in `check`'s summary (without secrets).
type Describe<C> = Box<dyn Fn(&Issued<C>) -> String + Send + Sync>;

/// A pinned credential: a key its cache refreshes for the life of the process, a label naming
/// it in `/readyz` (a role, a resource), and how to describe it without secrets. Holds its cache,
/// whose refresh tasks end when the last handle to it goes.
pub struct Pinned<C> {
    label: String,
    slot: Arc<Slot<C>>,
    describe: Describe<C>,
    _cache: Box<dyn Any + Send + Sync>,
}

impl<C: Send + Sync + 'static> Pinned<C> {
    /// Pins `key` in `cache`.
    pub fn new<K: CacheKey, E: Exchange<K, Credential = C>>(
        label: impl Into<String>,
        cache: &Cache<K, E>,
        key: K,
        describe: impl Fn(&Issued<C>) -> String + Send + Sync + 'static,
    ) -> Arc<Self> {
        Arc::new(Pinned {
            label: label.into(),
            slot: cache.pin(key),
            describe: Box::new(describe),
            _cache: Box::new(cache.clone()),
        })
    }

    pub fn slot(&self) -> &Arc<Slot<C>> {
        &self.slot
    }
}

impl<C: Send + Sync + 'static> Held for Pinned<C> {
    fn readiness(&self) -> Result<(), NotReady> {
        self.slot
            .readiness()
            .map_err(|why| NotReady::new(self.label.clone(), why))
    }

    fn summary(&self) -> Result<String, NotReady> {
        match self.slot.current() {
            Some(cred) => Ok((self.describe)(&cred)),
            None => Err(self.readiness().err().unwrap_or_default()),
        }
    }
}

/// Seconds left on a held credential, for summaries.
pub(super) fn seconds_left<C>(cred: &Issued<C>) -> u64 {
    cred.remaining(Instant::now()).as_secs()
}

/// A running cloud.
pub struct Runtime {
    name: &'static str,
    /// Who the cloud acts as, when one line says it for every credential (Azure's client).
    who: Option<String>,
    surfaces: Vec<Arc<dyn Surface>>,
    held: Vec<Arc<dyn Held>>,
    /// Background work that lives exactly as long as the cloud (OCI's file writer).
    tasks: Vec<AbortHandle>,
}

impl Drop for Runtime {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Runtime {
    pub fn new(name: &'static str) -> Self {
        Runtime {
            name,
            who: None,
            surfaces: Vec::new(),
            held: Vec::new(),
            tasks: Vec::new(),
        }
    }

    pub fn who(mut self, who: impl Into<String>) -> Self {
        self.who = Some(who.into());
        self
    }

    pub fn surface(mut self, surface: Arc<dyn Surface>) -> Self {
        self.surfaces.push(surface);
        self
    }

    pub fn hold(mut self, held: Arc<dyn Held>) -> Self {
        self.held.push(held);
        self
    }

    pub fn task(mut self, task: AbortHandle) -> Self {
        self.tasks.push(task);
        self
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    pub fn surfaces(&self) -> &[Arc<dyn Surface>] {
        &self.surfaces
    }

    /// `Ok` once everything it must hold would be served; else which and why not.
    pub fn readiness(&self) -> Result<(), NotReady> {
        let mut not_ready = NotReady::default();
        for held in &self.held {
            if let Err(why) = held.readiness() {
                not_ready.extend(why);
            }
        }
        not_ready.into_result()
    }

    /// A redacted one-line summary (identity, expiry) for `credbroker check`.
    pub fn summary(&self) -> Result<String, NotReady> {
        let mut parts: Vec<String> = self.who.iter().cloned().collect();
        for held in &self.held {
            parts.push(held.summary()?);
        }
        if self.held.is_empty() {
            parts.push("no credential kept warm".into());
        }
        Ok(parts.join("; "))
    }
}

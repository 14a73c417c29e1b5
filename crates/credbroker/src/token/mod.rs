//! The projected service-account token: read, validated, and followed through kubelet's rotation.
//!
//! kubelet writes each new token into a fresh timestamped directory and atomically swaps the
//! `..data` symlink; a watch on the file itself goes silent after the first swap. So we watch the
//! *directory*, treat any event as "re-read and compare", and re-read on a backstop interval too.
//! Every exchange also re-reads the file ([`TokenSource::read_now`]), so an exchange always
//! uses the token on disk at that moment.

pub mod jwt;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, watch};

use crate::clock::Clock;
use crate::metrics::{Metrics, TokenLabels};
use crate::secret::Secret;
pub use jwt::Claims;

/// Projected tokens are ~1 KiB; anything past 64 KiB is not a token.
const MAX_TOKEN_BYTES: u64 = 64 * 1024;

/// How often the file is re-read even when no file event arrives.
pub const BACKSTOP_INTERVAL: Duration = Duration::from_secs(30);

/// What is wrong with the token file. Never contains the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token file {path}: cannot be read: {reason}")]
    Unreadable { path: String, reason: String },
    #[error("token file {path}: is empty")]
    Empty { path: String },
    #[error("token file {path}: is larger than 64 KiB ({size} bytes)")]
    Oversized { path: String, size: u64 },
    #[error("token file {path}: is not a JWT: {reason}")]
    NotJwt { path: String, reason: String },
    #[error("token file {path}: the token expired {ago_s} s ago (is kubelet rotating it?)")]
    Expired { path: String, ago_s: u64 },
}

/// A validated service-account token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub secret: Secret,
    pub claims: Claims,
}

/// The latest read of the file, and a counter that ticks on every change of content.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub token: Result<Token, TokenError>,
    pub generation: u64,
}

pub struct TokenSource {
    path: PathBuf,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    state: watch::Sender<Snapshot>,
    generation: watch::Sender<u64>,
    last_raw: parking_lot::Mutex<Option<Secret>>,
}

impl TokenSource {
    /// Reads the file once. A missing or unreadable file is an error here (start-up fails with
    /// a clear message); bad *content* is not, since kubelet may fix it with the next rotation.
    pub fn open(
        path: impl Into<PathBuf>,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Self>, TokenError> {
        let path = path.into();
        let raw = read_capped(&path);
        if let Err(err @ TokenError::Unreadable { .. }) = raw {
            return Err(err);
        }
        let token = validate(&path, raw.clone(), clock.as_ref());
        if let Err(err) = &token {
            tracing::warn!(error = %err, "service-account token is not usable yet");
        }
        let (state, _) = watch::channel(Snapshot {
            token,
            generation: 0,
        });
        let (generation, _) = watch::channel(0);
        Ok(Arc::new(TokenSource {
            path,
            clock,
            metrics,
            state,
            generation,
            last_raw: parking_lot::Mutex::new(raw.ok()),
        }))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Re-reads the file now, publishes a change, and returns the current token.
    pub fn read_now(&self) -> Result<Token, TokenError> {
        let raw = read_capped(&self.path);
        let raw_secret = raw.as_ref().ok().cloned();
        // A change is a change of bytes, or of the verdict below. An unreadable file that stays
        // unreadable is not a change: every change wakes failing refreshers for an immediate
        // retry, and each retry re-reads the file, so "changed on every error" was a tight loop.
        let changed = {
            let mut last = self.last_raw.lock();
            let changed = *last != raw_secret;
            *last = raw_secret;
            changed
        };
        // Expiry must be re-checked even when the bytes did not change.
        let token = validate(&self.path, raw, self.clock.as_ref());
        let differs = changed || self.state.borrow().token != token;
        if differs {
            let outcome = if token.is_ok() { "valid" } else { "invalid" };
            self.metrics
                .token_reloads
                .get_or_create(&TokenLabels { outcome })
                .inc();
            match &token {
                Ok(t) => tracing::info!(
                    path = %self.path.display(),
                    exp = t.claims.exp,
                    "service-account token loaded"
                ),
                Err(e) => tracing::warn!(error = %e, "service-account token rejected"),
            }
            let generation = self.state.borrow().generation + 1;
            self.state.send_replace(Snapshot {
                token: token.clone(),
                generation,
            });
            self.generation.send_replace(generation);
        }
        token
    }

    /// The last read, without touching the file.
    pub fn snapshot(&self) -> Snapshot {
        self.state.borrow().clone()
    }

    /// Ticks whenever the token's content changes.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Watches the token's directory (and re-reads every `backstop`) until the source is dropped.
    pub fn spawn_watch(self: &Arc<Self>, backstop: Duration) -> tokio::task::JoinHandle<()> {
        let wake = Arc::new(Notify::new());
        let watcher = crate::fs::watch_parent(&self.path, wake.clone());
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let _watcher = watcher;
            loop {
                tokio::select! {
                    _ = wake.notified() => {
                        // kubelet's swap is several events in a row; let it finish.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    _ = tokio::time::sleep(backstop) => {}
                }
                let Some(source) = weak.upgrade() else { return };
                let _ = source.read_now();
            }
        })
    }
}

fn read_capped(path: &Path) -> Result<Secret, TokenError> {
    let shown = || path.display().to_string();
    let unreadable = |e: std::io::Error| TokenError::Unreadable {
        path: shown(),
        reason: e.kind().to_string(),
    };
    let file = std::fs::File::open(path).map_err(unreadable)?;
    let mut buf = zeroize::Zeroizing::new(Vec::with_capacity(2048));
    file.take(MAX_TOKEN_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(unreadable)?;
    from_bytes(path, &buf)
}

/// Validates a token file's content as [`TokenSource::read_now`] does (size, UTF-8, JWT shape,
/// `exp`), without touching the file system. `path` only names the file in errors.
pub fn parse_token_bytes(
    path: &Path,
    bytes: &[u8],
    clock: &dyn Clock,
) -> Result<Token, TokenError> {
    validate(path, from_bytes(path, bytes), clock)
}

fn from_bytes(path: &Path, buf: &[u8]) -> Result<Secret, TokenError> {
    let shown = || path.display().to_string();
    if buf.len() as u64 > MAX_TOKEN_BYTES {
        let size = std::fs::metadata(path)
            .map(|m| m.len())
            .unwrap_or(buf.len() as u64)
            .max(buf.len() as u64);
        return Err(TokenError::Oversized {
            path: shown(),
            size,
        });
    }
    match std::str::from_utf8(buf) {
        Ok(s) => Ok(Secret::new(s)),
        Err(_) => Err(TokenError::NotJwt {
            path: shown(),
            reason: "not UTF-8 text".into(),
        }),
    }
}

fn validate(
    path: &Path,
    raw: Result<Secret, TokenError>,
    clock: &dyn Clock,
) -> Result<Token, TokenError> {
    let raw = raw?;
    let shown = || path.display().to_string();
    let text = raw.expose().trim_matches(|c: char| c.is_ascii_whitespace());
    if text.is_empty() {
        return Err(TokenError::Empty { path: shown() });
    }
    let claims = jwt::decode_claims(text).map_err(|e| TokenError::NotJwt {
        path: shown(),
        reason: e.to_string(),
    })?;
    if let Some(exp) = claims.exp {
        let now = clock.unix_secs();
        if exp <= now {
            return Err(TokenError::Expired {
                path: shown(),
                ago_s: now - exp,
            });
        }
    }
    let secret = if text.len() == raw.len() {
        raw
    } else {
        Secret::new(text)
    };
    Ok(Token { secret, claims })
}

#[cfg(test)]
mod tests;

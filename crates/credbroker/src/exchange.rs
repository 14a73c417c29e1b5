//! The seam between a token and a cloud credential: one `Exchange` implementation per cloud.
//!
//! An exchanger is pure protocol: build the request, send it, parse the answer or the error.
//! Timing policy (when to call, how often to retry) belongs to the refresher.

use std::future::Future;
use std::time::{Duration, SystemTime};

/// Whether retrying soon can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Throttling, 5xx, network trouble, an unreadable or stale token file: back off and retry.
    Transient,
    /// A denial (trust policy, unknown role, invalid scope): retry only on a long interval.
    Permanent,
}

/// A failed exchange. Carries the upstream's code and message, never a secret.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("{code}: {message}")]
pub struct ExchangeError {
    pub retry: Retry,
    /// The upstream error code (`AccessDenied`, `invalid_scope`, …) or one of ours
    /// (`UpstreamTimeout`, `MalformedResponse`, `TokenFile`, …).
    pub code: String,
    pub message: String,
    /// The upstream HTTP status, when there was one.
    pub status: Option<u16>,
    /// The upstream's `Retry-After`, honoured by the refresher's backoff.
    pub retry_after: Option<Duration>,
}

/// Upstream messages are echoed to clients and logs; keep them short.
const MAX_MESSAGE_CHARS: usize = 512;

impl ExchangeError {
    pub fn new(retry: Retry, code: impl Into<String>, message: impl Into<String>) -> Self {
        let mut message: String = message.into();
        if message.chars().count() > MAX_MESSAGE_CHARS {
            message = message.chars().take(MAX_MESSAGE_CHARS).collect::<String>() + "…";
        }
        ExchangeError {
            retry,
            code: code.into(),
            message,
            status: None,
            retry_after: None,
        }
    }

    pub fn transient(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(Retry::Transient, code, message)
    }

    pub fn permanent(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(Retry::Permanent, code, message)
    }

    pub fn with_status(mut self, status: u16) -> Self {
        self.status = Some(status);
        self
    }

    pub fn with_retry_after(mut self, after: Option<Duration>) -> Self {
        self.retry_after = after;
        self
    }

    pub fn is_transient(&self) -> bool {
        self.retry == Retry::Transient
    }
}

/// A credential fresh from upstream, with the absolute expiry the upstream stated.
#[derive(Debug)]
pub struct Fresh<C> {
    pub value: C,
    pub expires_at: SystemTime,
}

/// One cloud's token → credential exchange, for one identity key.
pub trait Exchange<K>: Send + Sync + 'static {
    type Credential: Send + Sync + 'static;

    fn exchange(
        &self,
        key: &K,
    ) -> impl Future<Output = Result<Fresh<Self::Credential>, ExchangeError>> + Send;
}

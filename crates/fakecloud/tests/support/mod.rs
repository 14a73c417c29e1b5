//! What fakecloud's integration tests share: an HTTP client (rustls, aws-lc-rs) and the clock.

#![allow(dead_code)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A reqwest client with a 10 s timeout (installs the crypto provider once per process).
pub(crate) fn client() -> reqwest::Client {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// Unix seconds now.
pub(crate) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

//! Google STS and IAM Credentials answers (JSON): the three success shapes and both error shapes.
#![no_main]

use std::time::{Duration, UNIX_EPOCH};

use credbroker::clouds::gcp::sts;
use libfuzzer_sys::fuzz_target;

/// A token long enough not to occur in the fixed text of a Debug rendering by chance.
fn assert_redacted(shown: &str, secret: &str) {
    if secret.len() >= 16 {
        assert!(!shown.contains(secret), "{shown}");
    }
}

fuzz_target!(|data: &[u8]| {
    let started = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    if let Ok(t) = sts::parse_sts_success(data, started) {
        assert_redacted(&format!("{t:?}"), t.token.expose());
    }
    if let Ok(t) = sts::parse_access_token_success(data) {
        assert_redacted(&format!("{t:?}"), t.token.expose());
    }
    let _ = sts::parse_id_token_success(data);
    for status in [400, 403, 404, 429, 500, 503] {
        let _ = sts::parse_error(status, data);
    }
});

//! Google STS and IAM Credentials answers (JSON): the three success shapes and both error shapes.
#![no_main]

use std::time::{Duration, UNIX_EPOCH};

use credbroker::clouds::gcp::sts;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let started = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    if let Ok(t) = sts::parse_sts_success(data, started) {
        assert!(!format!("{t:?}").contains(t.token.expose()));
    }
    if let Ok(t) = sts::parse_access_token_success(data) {
        assert!(!format!("{t:?}").contains(t.token.expose()));
    }
    let _ = sts::parse_id_token_success(data);
    for status in [400, 403, 404, 429, 500, 503] {
        let _ = sts::parse_error(status, data);
    }
});

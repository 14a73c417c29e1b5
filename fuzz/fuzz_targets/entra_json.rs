//! Entra ID token endpoint answers (JSON): success and error parsing.
#![no_main]

use std::time::{Duration, UNIX_EPOCH};

use credbroker::clouds::azure::entra;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let sent = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    if let Ok(t) = entra::parse_success(data, sent) {
        assert!(t.expires_on > sent);
        let secret = t.access_token.expose();
        assert!(secret.len() < 16 || !format!("{t:?}").contains(secret));
    }
    for status in [400, 401, 429, 500] {
        let f = entra::parse_error(status, data);
        assert!(f.error.message.chars().count() <= 513);
    }
});

//! OKE proxymux answers: a JSON string of base64 wrapping `{"token":"ST$<RPST>"}`, the RPST's
//! claims and `jwk` check against our key, and the error bodies.
#![no_main]

use std::sync::OnceLock;

use credbroker::clouds::oci::key::PodKey;
use credbroker::clouds::oci::proxymux;
use libfuzzer_sys::fuzz_target;

fn key() -> &'static PodKey {
    static KEY: OnceLock<PodKey> = OnceLock::new();
    KEY.get_or_init(|| PodKey::generate().unwrap())
}

fuzz_target!(|data: &[u8]| {
    if let Ok(rpst) = proxymux::parse_success(data, key()) {
        // Only an RPST bound to our own key may be accepted.
        assert!(!rpst.token.is_empty());
    }
    for status in [400, 401, 403, 429, 500, 503] {
        let _ = proxymux::parse_error(status, data);
    }
});

//! Request query strings: Azure's token request (both flavours), GCP's scopes, ID-token
//! audience and format.
#![no_main]

use credbroker::clouds::azure::surface::{Flavor, parse_request};
use credbroker::clouds::gcp::{IdFormat, IdKey, ScopeSet};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for flavor in [Flavor::Imds, Flavor::AppService] {
        if let Ok(req) = parse_request(Some(text), flavor) {
            assert!(!req.resource.is_empty());
            assert!(!req.scope.is_empty());
        }
    }
    let _ = ScopeSet::parse(Some(text));
    if let Ok(format) = IdFormat::parse(Some(text)) {
        let _ = IdKey::new(text, format);
    }
});

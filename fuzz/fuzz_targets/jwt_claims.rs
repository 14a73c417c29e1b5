//! Service-account token claims: the unverified JWT decoder.
#![no_main]

use credbroker::token::jwt;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data)
        && let Err(e) = jwt::decode_claims(text)
    {
        // Errors describe the problem in fixed words, never quoting the text: bounded length.
        let shown = e.to_string();
        assert!(shown.len() < 64, "{shown}");
    }
});

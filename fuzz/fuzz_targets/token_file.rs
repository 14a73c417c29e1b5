//! Token file content: size cap, UTF-8, whitespace, JWT shape and `exp`, as every exchange
//! reads it.
#![no_main]

use std::path::Path;

use credbroker::clock::SystemClock;
use credbroker::token::parse_token_bytes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = Path::new("/var/run/secrets/tokens/fuzz");
    match parse_token_bytes(path, data, &SystemClock) {
        Ok(token) => {
            assert!(!token.secret.is_empty());
            let secret = token.secret.expose();
            assert!(secret.len() < 16 || !format!("{token:?}").contains(secret));
        }
        Err(e) => {
            // The path, fixed words and numbers, never the content: bounded length.
            let shown = e.to_string();
            assert!(shown.len() < 160, "{shown}");
        }
    }
});

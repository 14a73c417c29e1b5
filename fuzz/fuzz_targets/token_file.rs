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
            assert!(!format!("{token:?}").contains(token.secret.expose()));
        }
        Err(e) => {
            let shown = e.to_string();
            if let Ok(text) = std::str::from_utf8(data)
                && text.trim().len() > 8
            {
                assert!(!shown.contains(text.trim()), "{shown}");
            }
        }
    }
});

//! STS answers (XML): the element extractor, the success parser and the error parser.
#![no_main]

use credbroker::clouds::aws::{sts, xml};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let body = String::from_utf8_lossy(data);
    let _ = xml::extract(&body, &["a/b", "ErrorResponse/Error/Code"]);
    if let Ok(creds) = sts::parse_success(&body) {
        // A parsed credential never shows its secrets.
        let shown = format!("{creds:?}");
        assert!(!creds.secret_access_key.is_empty());
        assert!(!shown.contains(creds.secret_access_key.expose()));
        assert!(!shown.contains(creds.session_token.expose()));
    }
    for status in [400, 403, 429, 500, 503] {
        let e = sts::parse_error(status, &body);
        assert!(e.message.chars().count() <= 513);
        assert_eq!(
            e.is_transient(),
            status >= 500 || status == 429 || e.is_transient()
        );
    }
});

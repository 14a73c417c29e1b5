//! STS answers (XML): the element extractor, the success parser and the error parser.
#![no_main]

use credbroker::clouds::aws::{sts, xml};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let body = String::from_utf8_lossy(data);
    let _ = xml::extract(&body, &["a/b", "ErrorResponse/Error/Code"]);
    if let Ok(creds) = sts::parse_success(&body) {
        // A parsed credential never shows its secrets. The public fields are shown, and an
        // input may repeat a secret's text inside one (the role ARN): only occurrences beyond
        // those count (found by the long run; fuzz/regressions/sts_xml/).
        let shown = format!("{creds:?}");
        let public = format!(
            "{:?} {:?} {:?}",
            creds.access_key_id, creds.expiration, creds.assumed_role_arn
        );
        assert!(!creds.secret_access_key.is_empty());
        for secret in [
            creds.secret_access_key.expose(),
            creds.session_token.expose(),
        ] {
            // Long enough not to occur in the fixed text of the rendering by chance.
            assert!(
                secret.len() < 16 || shown.matches(secret).count() <= public.matches(secret).count(),
                "{shown}"
            );
        }
    }
    for status in [400, 403, 429, 500, 503] {
        let e = sts::parse_error(status, &body);
        assert!(e.message.chars().count() <= 513);
        assert_eq!(e.status, Some(status));
        // Throttling and server errors are always retried, whatever the body says.
        if status >= 500 || status == 429 {
            assert!(e.is_transient(), "{e:?}");
        }
    }
});

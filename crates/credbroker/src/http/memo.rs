//! The last response body a surface rendered, served again while what it was rendered from is
//! unchanged.
//!
//! GCE's and Azure's token bodies print the seconds a token has left, so they cannot be
//! rendered once per token as AWS's are; but an SDK asks for the same token many times a second,
//! and within one second the body is the same bytes. Rendering it was a buffer allocation, a
//! ~1 KiB copy, the digits, and a wipe and free when the response was done: ~1.5k of the ~4k
//! instructions per request Azure spent over the floor (callgrind, docs/benchmarks.md). A hit
//! is a lock, a comparison and a reference-count increment on the shared body.
//!
//! The key holds the credential's `Arc` itself, compared by address: while the memo holds it no
//! other credential can be allocated at that address, so a refreshed token can never be answered
//! with its predecessor's body. The memo keeps the last body (wiped on drop, like every token
//! body) and its credential until the next request renders another: a replaced credential
//! outlives its cache entry by at most that one request, and never past its own expiry by more
//! than the time to the next request.

use bytes::Bytes;

/// One remembered body and the key it was rendered for.
pub struct BodyMemo<K>(parking_lot::Mutex<Option<(K, Bytes)>>);

impl<K> Default for BodyMemo<K> {
    fn default() -> Self {
        BodyMemo(parking_lot::Mutex::new(None))
    }
}

impl<K> BodyMemo<K> {
    /// The remembered body when `same` says its key describes this request, else `render`'s,
    /// which is remembered in its place. Two requests that miss at once both render; the later
    /// one is kept.
    pub fn get_or_render(
        &self,
        same: impl FnOnce(&K) -> bool,
        render: impl FnOnce() -> (K, Bytes),
    ) -> Bytes {
        if let Some((key, body)) = &*self.0.lock()
            && same(key)
        {
            return body.clone();
        }
        let (key, body) = render();
        *self.0.lock() = Some((key, body.clone()));
        body
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn counted(
        renders: &std::cell::Cell<u32>,
        key: (Arc<String>, u64),
    ) -> ((Arc<String>, u64), Bytes) {
        renders.set(renders.get() + 1);
        let body = Bytes::from(format!("{}:{}", key.0, key.1));
        (key, body)
    }

    #[test]
    fn a_body_is_rendered_once_per_key_and_a_new_credential_is_never_answered_with_the_old_body() {
        let memo = BodyMemo::default();
        let renders = std::cell::Cell::new(0);
        let get = |cred: &Arc<String>, secs: u64| {
            memo.get_or_render(
                |(c, s): &(Arc<String>, u64)| Arc::ptr_eq(c, cred) && *s == secs,
                || counted(&renders, (cred.clone(), secs)),
            )
        };
        let first = Arc::new("token-1".to_string());
        assert_eq!(get(&first, 10), "token-1:10");
        assert_eq!(get(&first, 10), "token-1:10");
        assert_eq!(renders.get(), 1, "the second request is served from memory");
        assert_eq!(
            get(&first, 9),
            "token-1:9",
            "a second later, the body changes"
        );
        assert_eq!(renders.get(), 2);
        // An equal value in another allocation is another credential: compared by address.
        let refreshed = Arc::new("token-1".to_string());
        assert_eq!(get(&refreshed, 9), "token-1:9");
        assert_eq!(renders.get(), 3);
        let next = Arc::new("token-2".to_string());
        assert_eq!(get(&next, 9), "token-2:9");
        assert_eq!(renders.get(), 4);
    }
}

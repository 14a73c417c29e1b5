//! A string that never shows itself in logs, errors or panics, and is wiped on drop.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use zeroize::{Zeroize, Zeroizing};

/// Secret text: service-account tokens, session tokens, access tokens, shared header values.
///
/// `Debug` and `Display` print `<redacted>`; the memory is zeroed when the last clone drops.
/// Cloning is a reference-count bump, so a secret can be shared between the cache and a request.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<Zeroizing<String>>);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(Arc::new(Zeroizing::new(value.into())))
    }

    /// The secret value. Call sites are the few places that must put it on the wire.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Compares two byte strings in time independent of where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    if a.len() != b.len() {
        return false;
    }
    // An XOR-OR fold eight bytes at a time: no branch or early exit depends on the contents,
    // and the fold's result passes `subtle`'s barrier once. `subtle`'s slice comparison puts
    // every byte through it: ~1.1k instructions per IMDSv2 request for one session token
    // (callgrind), the largest single cost of that surface.
    let (a_words, a_tail) = a.as_chunks::<8>();
    let (b_words, b_tail) = b.as_chunks::<8>();
    let mut diff = 0u64;
    for (x, y) in a_words.iter().zip(b_words) {
        diff |= u64::from_ne_bytes(*x) ^ u64::from_ne_bytes(*y);
    }
    for (x, y) in a_tail.iter().zip(b_tail) {
        diff |= u64::from(x ^ y);
    }
    bool::from(std::hint::black_box(diff).ct_eq(&0))
}

/// A rendered response body that holds a secret; wiped when the last `Bytes` clone drops.
pub struct WipedBuf(Vec<u8>);

impl WipedBuf {
    /// `Bytes` over `buf`, wiped on drop.
    pub fn bytes(buf: Vec<u8>) -> Bytes {
        Bytes::from_owner(WipedBuf(buf))
    }

    /// `value` as JSON in a buffer allocated once at its exact size (serialised twice: a
    /// growing `Vec` would leave unwiped copies of the secret in the buffers it outgrew).
    pub fn json<T: serde::Serialize>(value: &T) -> Bytes {
        let mut counter = ByteCounter(0);
        // Serialising plain strings and numbers cannot fail.
        let _ = serde_json::to_writer(&mut counter, value);
        let mut buf = Vec::with_capacity(counter.0);
        let _ = serde_json::to_writer(&mut buf, value);
        Self::bytes(buf)
    }
}

impl AsRef<[u8]> for WipedBuf {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for WipedBuf {
    fn drop(&mut self) {
        wipe(&mut self.0);
    }
}

/// Zeroes `buf` with volatile stores that the compiler cannot elide, a word at a time: bodies
/// holding tokens are wiped on every request of some surfaces, and `zeroize`'s byte loop
/// over a 1 KiB body was a visible part of serving one.
fn wipe(buf: &mut [u8]) {
    // SAFETY: every bit pattern is a valid u64, and `align_to_mut` only hands out the aligned
    // middle as words, so this is a reinterpretation of initialised bytes.
    #[allow(unsafe_code)]
    let (head, words, tail) = unsafe { buf.align_to_mut::<u64>() };
    head.zeroize();
    words.zeroize();
    tail.zeroize();
}

/// A writer that only counts bytes.
struct ByteCounter(usize);

impl std::io::Write for ByteCounter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_redact() {
        let s = Secret::new("AKIA-very-secret");
        assert_eq!(format!("{s:?}"), "Secret(<redacted>)");
        assert_eq!(format!("{s}"), "<redacted>");
        assert_eq!(s.expose(), "AKIA-very-secret");
    }

    #[test]
    fn wiped_buffers() {
        let mut buf: Vec<u8> = (1..=37).collect();
        wipe(&mut buf[3..]);
        assert_eq!(&buf[..3], &[1, 2, 3]);
        assert!(buf[3..].iter().all(|&b| b == 0));
        let body = WipedBuf::json(&serde_json::json!({"Token": "t\"q", "n": 1}));
        assert_eq!(&body[..], br#"{"Token":"t\"q","n":1}"#);
        assert_eq!(&WipedBuf::bytes(b"abc".to_vec())[..], b"abc");
    }

    #[test]
    fn constant_time_comparison() {
        assert!(constant_time_eq(b"", b""));
        // Every length around the word size, a difference at every position.
        for len in 1..40 {
            let a: Vec<u8> = (0..len as u8).collect();
            assert!(constant_time_eq(&a, &a.clone()), "{len}");
            for i in 0..len {
                let mut b = a.clone();
                b[i] ^= 0x80;
                assert!(!constant_time_eq(&a, &b), "{len} at {i}");
            }
        }
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}

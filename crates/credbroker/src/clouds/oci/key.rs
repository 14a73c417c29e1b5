//! The pod key: one RSA-2048 key per pod, bound into every RPST (its `jwk` claim) and written
//! once as `private.pem`.
//!
//! The SDKs re-read the key file and the RPST file separately
//! (docs/oci.md, "Resource principal 2.2 files"), so rotating the key would let an SDK pair a new
//! key with an old token. One long-lived key, with only the RPST rotating, avoids that race;
//! proxymux accepts any `podKey`. A restarted broker reuses the key file it finds, so the RPST
//! still on disk stays usable while the first exchange runs.

use std::path::Path;

use crate::fs::Fs;

use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der, PublicKeyX509Der};
use aws_lc_rs::rsa::{KeyPair, KeySize};
use aws_lc_rs::signature::KeyPair as _;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;

use crate::secret::Secret;

/// The SDKs generate RSA-2048 keys (public exponent 65537); we do the same and accept nothing
/// weaker from disk.
const KEY_BITS: usize = 2048;

/// Why a key could not be made or read. Never contains key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("RSA key generation failed")]
    Generate,
    #[error("not a PEM private key")]
    NotPem,
    #[error("not an RSA private key: {0}")]
    NotRsa(String),
    #[error("the RSA key has {0} bits; at least {KEY_BITS} are required")]
    TooSmall(usize),
}

/// Where the key came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyOrigin {
    /// A valid key file from an earlier run.
    Reused,
    /// Newly generated: there was no file.
    Generated,
    /// Newly generated, replacing a file that was not a usable key (the reason).
    Replaced(String),
}

/// The pod's RSA key pair with its precomputed public forms.
pub struct PodKey {
    /// Kept for the life of the process; the SDKs sign with the copy in `private.pem`.
    _pair: KeyPair,
    spki_der: Vec<u8>,
    modulus: Vec<u8>,
    exponent: Vec<u8>,
    private_pem: Secret,
    fingerprint: String,
}

impl std::fmt::Debug for PodKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodKey")
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

impl PodKey {
    /// A fresh RSA-2048 key.
    pub fn generate() -> Result<PodKey, KeyError> {
        let pair = KeyPair::generate(KeySize::Rsa2048).map_err(|_| KeyError::Generate)?;
        let pkcs8: Pkcs8V1Der<'static> = pair.as_der().map_err(|_| KeyError::Generate)?;
        let pem = pem_encode("PRIVATE KEY", pkcs8.as_ref());
        Self::from_pair(pair, pem)
    }

    /// A key from PEM text (PKCS#8 as we write it; PKCS#1 is accepted too).
    pub fn from_pem(pem: &[u8]) -> Result<PodKey, KeyError> {
        let der = PrivateKeyDer::from_pem_slice(pem).map_err(|_| KeyError::NotPem)?;
        let pair = match &der {
            PrivateKeyDer::Pkcs8(k) => KeyPair::from_pkcs8(k.secret_pkcs8_der()),
            PrivateKeyDer::Pkcs1(k) => KeyPair::from_der(k.secret_pkcs1_der()),
            _ => return Err(KeyError::NotRsa("not an RSA key type".into())),
        }
        .map_err(|e| KeyError::NotRsa(e.to_string()))?;
        let bits = pair.public_modulus_len() * 8;
        if bits < KEY_BITS {
            return Err(KeyError::TooSmall(bits));
        }
        // Re-encode as PKCS#8 so the file we keep is always the form we write.
        let pkcs8: Pkcs8V1Der<'static> = pair.as_der().map_err(|_| KeyError::Generate)?;
        let pem = pem_encode("PRIVATE KEY", pkcs8.as_ref());
        Self::from_pair(pair, pem)
    }

    /// The key in `path` if it holds a usable one, else a new key. Only an unreadable file
    /// (not a missing or invalid one) is an error: the broker could not replace it either.
    pub fn load_or_generate(
        fs: &dyn Fs,
        path: &Path,
    ) -> Result<(PodKey, KeyOrigin), std::io::Error> {
        // An RSA-2048 PEM is under 2 KiB; anything far larger is not a key of ours.
        match fs.read(path, 64 * 1024) {
            Ok(bytes) => {
                let loaded = PodKey::from_pem(&bytes);
                drop(zeroize::Zeroizing::new(bytes));
                match loaded {
                    Ok(key) => Ok((key, KeyOrigin::Reused)),
                    Err(why) => Ok((
                        PodKey::generate().map_err(std::io::Error::other)?,
                        KeyOrigin::Replaced(why.to_string()),
                    )),
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::FileTooLarge => Ok((
                PodKey::generate().map_err(std::io::Error::other)?,
                KeyOrigin::Replaced("the key file is larger than 64 KiB".into()),
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok((
                PodKey::generate().map_err(std::io::Error::other)?,
                KeyOrigin::Generated,
            )),
            Err(e) => Err(e),
        }
    }

    fn from_pair(pair: KeyPair, private_pem: String) -> Result<PodKey, KeyError> {
        let public = pair.public_key();
        let spki: PublicKeyX509Der<'static> = public.as_der().map_err(|_| KeyError::Generate)?;
        let spki_der = spki.as_ref().to_vec();
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &spki_der);
        let fingerprint = format!(
            "SHA256:{}",
            digest.as_ref()[..8]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        );
        Ok(PodKey {
            modulus: public.modulus().big_endian_without_leading_zero().to_vec(),
            exponent: public.exponent().big_endian_without_leading_zero().to_vec(),
            _pair: pair,
            spki_der,
            private_pem: Secret::new(private_pem),
            fingerprint,
        })
    }

    /// `podKey` for proxymux: base64 of the SubjectPublicKeyInfo DER, no armour, no newlines
    /// (Py/TS/Java; docs/oci.md, "Proxymux exchange").
    pub fn pod_key(&self) -> String {
        STANDARD.encode(&self.spki_der)
    }

    /// The SubjectPublicKeyInfo DER.
    pub fn spki_der(&self) -> &[u8] {
        &self.spki_der
    }

    /// `private.pem`: PKCS#8 PEM with no trailing newline.
    pub fn private_pem(&self) -> &Secret {
        &self.private_pem
    }

    /// A short public fingerprint, safe to log: `SHA256:<16 hex>` of the SPKI DER.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Whether a JWK's `n` and `e` (base64url or standard base64, padded or not) are this key's.
    pub fn matches_jwk(&self, n: &str, e: &str) -> bool {
        match (decode_any_base64(n), decode_any_base64(e)) {
            (Some(n), Some(e)) => {
                strip_leading_zeros(&n) == self.modulus.as_slice()
                    && strip_leading_zeros(&e) == self.exponent.as_slice()
            }
            _ => false,
        }
    }
}

/// PEM with 64-column lines and no trailing newline (the SDKs do not trim what they read).
fn pem_encode(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----"));
    out
}

/// Base64 in either alphabet, padded or not: `jwk.n` has been seen as base64url in RPSTs and as
/// standard base64 in instance tokens (docs/oci.md, "RPST claims").
pub fn decode_any_base64(text: &str) -> Option<Vec<u8>> {
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    let normalised: String = text
        .trim()
        .chars()
        .map(|c| match c {
            '-' => '+',
            '_' => '/',
            c => c,
        })
        .collect();
    LENIENT.decode(normalised).ok()
}

fn strip_leading_zeros(bytes: &[u8]) -> &[u8] {
    let first = bytes
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(bytes.len().saturating_sub(1));
    &bytes[first..]
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    #[test]
    fn forms_of_a_generated_key() {
        let key = PodKey::generate().unwrap();
        let pem = key.private_pem().expose();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        assert!(pem.ends_with("-----END PRIVATE KEY-----"));
        assert!(!pem.ends_with('\n'));
        assert!(pem.lines().all(|l| l.len() <= 64));
        let pod_key = key.pod_key();
        assert!(!pod_key.contains(['\n', '-', ' ']));
        assert_eq!(STANDARD.decode(&pod_key).unwrap(), key.spki_der());
        // The public key parses back to the same modulus, as proxymux would read it.
        let parsed = aws_lc_rs::rsa::PublicKey::from_der(key.spki_der()).unwrap();
        assert_eq!(parsed.modulus_len(), 256);
        assert!(key.fingerprint().starts_with("SHA256:"));
        assert!(!format!("{key:?}").contains("PRIVATE"));
    }

    #[test]
    fn pem_round_trip_keeps_the_key() {
        let key = PodKey::generate().unwrap();
        let again = PodKey::from_pem(key.private_pem().expose().as_bytes()).unwrap();
        assert_eq!(again.spki_der(), key.spki_der());
        assert_eq!(again.private_pem(), key.private_pem());
        assert_eq!(PodKey::from_pem(b"garbage").unwrap_err(), KeyError::NotPem);
        let ec = "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg\n-----END PRIVATE KEY-----";
        assert!(matches!(
            PodKey::from_pem(ec.as_bytes()),
            Err(KeyError::NotRsa(_))
        ));
    }

    #[test]
    fn jwk_comparison_normalises_base64() {
        let key = PodKey::generate().unwrap();
        let n_url = URL_SAFE_NO_PAD.encode(&key.modulus);
        let n_std = STANDARD.encode(&key.modulus);
        let mut padded = vec![0u8];
        padded.extend_from_slice(&key.modulus);
        assert!(key.matches_jwk(&n_url, "AQAB"));
        assert!(key.matches_jwk(&n_std, "AQAB"));
        assert!(key.matches_jwk(&URL_SAFE_NO_PAD.encode(&padded), "AQAB"));
        assert!(!key.matches_jwk(&n_url, "AQAD"));
        let other = PodKey::generate().unwrap();
        assert!(!other.matches_jwk(&n_url, "AQAB"));
        assert!(!key.matches_jwk("%%%", "AQAB"));
    }

    #[test]
    fn load_or_generate_reuses_a_valid_file_only() {
        let fs = crate::fs::MemFs::new();
        let path = Path::new("/run/oci/private.pem");
        let (first, origin) = PodKey::load_or_generate(&fs, path).unwrap();
        assert_eq!(origin, KeyOrigin::Generated);
        fs.insert(path, first.private_pem().expose());
        let (again, origin) = PodKey::load_or_generate(&fs, path).unwrap();
        assert_eq!(origin, KeyOrigin::Reused);
        assert_eq!(again.spki_der(), first.spki_der());
        fs.insert(path, "not a key");
        let (fresh, origin) = PodKey::load_or_generate(&fs, path).unwrap();
        assert!(matches!(origin, KeyOrigin::Replaced(_)));
        assert_ne!(fresh.spki_der(), first.spki_der());
    }
}

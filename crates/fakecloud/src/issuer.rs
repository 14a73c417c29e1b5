//! A local OIDC issuer that mints tokens shaped exactly like kubelet's projected
//! service-account tokens, signed RS256 with a freshly generated RSA-2048 key.

use aws_lc_rs::digest::{SHA256, digest};
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::{KeyPair, KeySize};
use aws_lc_rs::signature::KeyPair as _;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::time::Duration;

use crate::timefmt::unix_now;

/// The Kubernetes service account a token is minted for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ServiceAccount {
    pub namespace: String,
    pub name: String,
}

impl Default for ServiceAccount {
    fn default() -> Self {
        ServiceAccount {
            namespace: "default".into(),
            name: "app".into(),
        }
    }
}

impl ServiceAccount {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        ServiceAccount {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// The JWT `sub` kubelet uses: `system:serviceaccount:<namespace>:<name>`.
    pub fn subject(&self) -> String {
        format!("system:serviceaccount:{}:{}", self.namespace, self.name)
    }
}

/// The claims of a token that passed [`Issuer::verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedToken {
    pub subject: String,
    pub jti: String,
    pub exp: u64,
    pub issued_at: u64,
    pub audience: Vec<String>,
}

/// Why [`Issuer::verify`] rejected a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// Not a JWT, not RS256, undecodable claims, a missing required claim or `nbf` in the future.
    #[error("malformed token")]
    Malformed,
    #[error("token signature does not verify")]
    BadSignature,
    #[error("token expired")]
    Expired,
    #[error("token audience does not match")]
    WrongAudience,
    #[error("token issuer does not match")]
    WrongIssuer,
}

/// `aud` is a string or an array of strings (RFC 7519 §4.1.3); kubelet always writes an array.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    fn into_vec(self) -> Vec<String> {
        match self {
            Audience::One(a) => vec![a],
            Audience::Many(v) => v,
        }
    }
}

#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    #[serde(default)]
    jti: String,
    exp: u64,
    #[serde(default)]
    iat: u64,
    aud: Audience,
}

/// Claims of a token read *without* checking its signature (see [`peek_claims`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct UnverifiedClaims {
    #[serde(default)]
    pub jti: String,
    #[serde(default)]
    pub sub: String,
    #[serde(default)]
    pub iss: String,
    #[serde(default)]
    pub exp: Option<u64>,
}

/// Decodes a token's payload without verifying anything; fakes use it to log and word
/// errors for rejected requests. `None` when the payload is not a JWT claims object.
pub fn peek_claims(token: &str) -> Option<UnverifiedClaims> {
    jsonwebtoken::dangerous::insecure_decode_claims(token).ok()
}

/// A local OIDC issuer: one RSA-2048 signing key, a JWKS and a discovery document.
pub struct Issuer {
    url: String,
    kid: String,
    encoding: EncodingKey,
    /// Base64url (no padding) big-endian modulus and exponent, as published in the JWKS.
    n: String,
    e: String,
}

impl std::fmt::Debug for Issuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issuer")
            .field("url", &self.url)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl Issuer {
    /// Generates a new RSA-2048 key. Key generation only fails if the system RNG is broken,
    /// which is treated as fatal.
    pub fn new(issuer_url: impl Into<String>) -> Issuer {
        let key = KeyPair::generate(KeySize::Rsa2048).expect("RSA-2048 key generation");
        let pkcs8 = key.as_der().expect("PKCS#8 encoding of a fresh RSA key");
        // jsonwebtoken's aws-lc backend wants the PKCS#1 RSAPrivateKey, which PKCS#8 wraps.
        let pkcs1 = der::pkcs8_inner_key(pkcs8.as_ref()).expect("PKCS#8 from aws-lc-rs parses");
        let public = key.public_key().as_ref();
        let (n, e) = der::rsa_public_components(public).expect("RSAPublicKey from aws-lc-rs");
        // Like kube-apiserver: kid = base64url(SHA-256(public key DER)).
        let kid = URL_SAFE_NO_PAD.encode(digest(&SHA256, public).as_ref());
        Issuer {
            url: issuer_url.into(),
            kid,
            encoding: EncodingKey::from_rsa_der(pkcs1),
            n: URL_SAFE_NO_PAD.encode(n),
            e: URL_SAFE_NO_PAD.encode(e),
        }
    }

    /// The same signing key under another issuer URL: its tokens verify against this
    /// issuer's JWKS but carry a different `iss` (tests of `WrongIssuer`).
    pub fn with_url(&self, issuer_url: impl Into<String>) -> Issuer {
        Issuer {
            url: issuer_url.into(),
            kid: self.kid.clone(),
            encoding: self.encoding.clone(),
            n: self.n.clone(),
            e: self.e.clone(),
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// `{"keys":[{"kty":"RSA","alg":"RS256","use":"sig","kid":..,"n":..,"e":..}]}`.
    pub fn jwks(&self) -> serde_json::Value {
        json!({"keys": [{
            "kty": "RSA",
            "alg": "RS256",
            "use": "sig",
            "kid": self.kid,
            "n": self.n,
            "e": self.e,
        }]})
    }

    /// The discovery document kube-apiserver serves at `/.well-known/openid-configuration`.
    pub fn openid_configuration(&self) -> serde_json::Value {
        json!({
            "issuer": self.url,
            "jwks_uri": format!("{}/openid/v1/jwks", self.url.trim_end_matches('/')),
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
        })
    }

    /// Mints a token with kubelet's projected-token claims. The pod and UIDs are derived
    /// from this issuer's key and the service account, so rotations keep the same pod.
    pub fn mint(&self, sa: &ServiceAccount, audience: &str, lifetime: Duration) -> String {
        let now = unix_now();
        self.mint_at(sa, audience, now, now + lifetime.as_secs())
    }

    /// Like [`Issuer::mint`] with explicit `iat`/`nbf` and `exp` (tests mint expired tokens).
    pub fn mint_at(&self, sa: &ServiceAccount, audience: &str, issued_at: u64, exp: u64) -> String {
        let seed = format!("{}|{}|{}", self.kid, sa.namespace, sa.name);
        let pod_suffix: String = stable_uuid(&seed, "pod-name")
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .take(5)
            .collect();
        let claims = json!({
            "aud": [audience],
            "exp": exp,
            "iat": issued_at,
            "iss": self.url,
            "jti": random_uuid(),
            "kubernetes.io": {
                "namespace": sa.namespace,
                "node": {
                    "name": "fakecloud-node",
                    "uid": stable_uuid(&self.kid, "node"),
                },
                "pod": {
                    "name": format!("{}-{pod_suffix}", sa.name),
                    "uid": stable_uuid(&seed, "pod"),
                },
                "serviceaccount": {
                    "name": sa.name,
                    "uid": stable_uuid(&seed, "serviceaccount"),
                },
            },
            "nbf": issued_at,
            "sub": sa.subject(),
        });
        // kubelet's tokens carry only `alg` and `kid` in the header (no `typ`).
        let mut header = Header::new(Algorithm::RS256);
        header.typ = None;
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, &claims, &self.encoding)
            .expect("RS256 signing with a valid RSA key")
    }

    /// Signs arbitrary claims with this issuer's key (RS256, `kid` in the header): for tokens
    /// that are not kubelet-shaped, such as the Google-signed ID tokens the GCP fake returns.
    pub fn sign(&self, claims: &serde_json::Value) -> String {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding)
            .expect("RS256 signing with a valid RSA key")
    }

    /// Verifies signature (against the JWKS components), `exp` (no leeway), `nbf`, `iss` and
    /// that `aud` contains `audience`.
    pub fn verify(&self, token: &str, audience: &str) -> Result<VerifiedToken, VerifyError> {
        let key = DecodingKey::from_rsa_components(&self.n, &self.e)
            .map_err(|_| VerifyError::Malformed)?;
        let mut validation = Validation::new(Algorithm::RS256);
        validation.leeway = 0;
        validation.validate_nbf = true;
        validation.set_audience(&[audience]);
        validation.set_issuer(&[&self.url]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let data =
            jsonwebtoken::decode::<Claims>(token, &key, &validation).map_err(|err| {
                match err.kind() {
                    ErrorKind::InvalidSignature => VerifyError::BadSignature,
                    ErrorKind::ExpiredSignature => VerifyError::Expired,
                    ErrorKind::InvalidAudience => VerifyError::WrongAudience,
                    ErrorKind::InvalidIssuer => VerifyError::WrongIssuer,
                    _ => VerifyError::Malformed,
                }
            })?;
        let claims = data.claims;
        Ok(VerifiedToken {
            subject: claims.sub,
            jti: claims.jti,
            exp: claims.exp,
            issued_at: claims.iat,
            audience: claims.aud.into_vec(),
        })
    }
}

/// A random RFC 4122 version-4 UUID string.
pub fn random_uuid() -> String {
    let bytes: [u8; 16] = rand::random();
    format_uuid(bytes)
}

/// A UUID-shaped string derived from `seed` and `label` (stable across calls).
fn stable_uuid(seed: &str, label: &str) -> String {
    let hash = digest(&SHA256, format!("{seed}|{label}").as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&hash.as_ref()[..16]);
    format_uuid(bytes)
}

fn format_uuid(mut b: [u8; 16]) -> String {
    b[6] = (b[6] & 0x0f) | 0x40; // version 4
    b[8] = (b[8] & 0x3f) | 0x80; // RFC 4122 variant
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// Just enough DER to move keys between aws-lc-rs and jsonwebtoken.
mod der {
    /// Splits one TLV off `input`: `(tag, contents, rest)`.
    fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let (&tag, rest) = input.split_first()?;
        let (&first, rest) = rest.split_first()?;
        let (len, rest) = if first < 0x80 {
            (usize::from(first), rest)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 || rest.len() < n {
                return None;
            }
            let len = rest[..n]
                .iter()
                .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
            (len, &rest[n..])
        };
        if rest.len() < len {
            return None;
        }
        Some((tag, &rest[..len], &rest[len..]))
    }

    const SEQUENCE: u8 = 0x30;
    const INTEGER: u8 = 0x02;
    const OCTET_STRING: u8 = 0x04;

    /// PKCS#8 `PrivateKeyInfo ::= SEQUENCE { version INTEGER, algorithm SEQUENCE, privateKey OCTET STRING, .. }`.
    pub(super) fn pkcs8_inner_key(pkcs8: &[u8]) -> Option<&[u8]> {
        let (SEQUENCE, body, _) = tlv(pkcs8)? else {
            return None;
        };
        let (INTEGER, _, body) = tlv(body)? else {
            return None;
        };
        let (SEQUENCE, _, body) = tlv(body)? else {
            return None;
        };
        let (OCTET_STRING, key, _) = tlv(body)? else {
            return None;
        };
        Some(key)
    }

    /// `RSAPublicKey ::= SEQUENCE { modulus INTEGER, publicExponent INTEGER }`, returned
    /// without the sign-padding zero byte.
    pub(super) fn rsa_public_components(der: &[u8]) -> Option<(&[u8], &[u8])> {
        let (SEQUENCE, body, _) = tlv(der)? else {
            return None;
        };
        let (INTEGER, n, body) = tlv(body)? else {
            return None;
        };
        let (INTEGER, e, _) = tlv(body)? else {
            return None;
        };
        Some((trim_zero(n), trim_zero(e)))
    }

    fn trim_zero(x: &[u8]) -> &[u8] {
        match x {
            [0, rest @ ..] if !rest.is_empty() => rest,
            _ => x,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_shape() {
        let u = random_uuid();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert_eq!(u.matches('-').count(), 4);
    }
}

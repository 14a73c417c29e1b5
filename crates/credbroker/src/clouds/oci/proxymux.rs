//! The OKE workload identity exchange (docs/oci.md, "Proxymux exchange"): the pod's service-account
//! token and public key go to proxymux on the API server's address; a resource principal session
//! token (RPST) bound to that key comes back.
//!
//! Proxymux is reached with its own client trusting only the cluster CA. rustls verifies the
//! certificate against the URL's host, which is the IP in `KUBERNETES_SERVICE_HOST`, so the IP
//! SAN is what is checked (as Go and Py do; Java skips it).

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use reqwest::Url;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use serde::Deserialize;

use super::key::PodKey;
use crate::exchange::{ExchangeError, Retry};
use crate::http::client::{read_capped, retry_after, transport_error};
use crate::secret::Secret;
use crate::token::TokenSource;
use crate::token::jwt::decode_claims;

/// A proxymux answer is a few KiB (one JWT, base64 inside JSON).
const MAX_BODY_BYTES: usize = 64 * 1024;

/// An RPST and the claims we read from it.
#[derive(Clone, PartialEq, Eq)]
pub struct Rpst {
    /// The JWT, without the `ST$` prefix: exactly what the `rpst` file holds.
    pub token: Secret,
    pub claims: RpstClaims,
}

impl std::fmt::Debug for Rpst {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rpst")
            .field("token", &self.token)
            .field("claims", &self.claims)
            .finish()
    }
}

/// The claims that matter to us; all of them are identifiers, none is secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpstClaims {
    pub exp: u64,
    pub iat: Option<u64>,
    pub sub: Option<String>,
    pub res_tenant: Option<String>,
    pub res_compartment: Option<String>,
    pub jti: Option<String>,
}

pub struct ProxymuxClient {
    /// A client trusting only the cluster CA.
    pub http: reqwest::Client,
    pub url: Url,
    pub token: Arc<TokenSource>,
    pub key: Arc<PodKey>,
    /// Reads `Retry-After` dates.
    pub clock: Arc<dyn crate::clock::Clock>,
}

impl ProxymuxClient {
    /// One exchange. Re-reads the service-account token first, as the SDKs do.
    pub async fn exchange(&self) -> Result<Rpst, ExchangeError> {
        let token = self
            .token
            .read_now()
            .map_err(|e| ExchangeError::transient("TokenFile", e.to_string()))?;
        let mut bearer = HeaderValue::from_str(&format!("Bearer {}", token.secret.expose()))
            .map_err(|_| {
                ExchangeError::permanent(
                    "TokenFile",
                    "the service-account token has characters not allowed in a header",
                )
            })?;
        bearer.set_sensitive(true);
        let body = serde_json::json!({ "podKey": self.key.pod_key() }).to_string();
        let resp = self
            .http
            .post(self.url.clone())
            .header(AUTHORIZATION, bearer)
            .header(CONTENT_TYPE, "application/json")
            .header("opc-request-id", opc_request_id())
            .body(body)
            .send()
            .await
            .map_err(|e| transport_error(&e))?;
        let status = resp.status().as_u16();
        let after = retry_after(resp.headers(), self.clock.as_ref());
        let body = read_capped(resp, MAX_BODY_BYTES).await?;
        if (200..300).contains(&status) {
            parse_success(&body, &self.key)
        } else {
            Err(parse_error(status, &body).with_retry_after(after))
        }
    }
}

/// `<hex32>/<hex32>/<hex32>`, as Py's `auth_utils.generate_opc_request_id`.
pub fn opc_request_id() -> String {
    (0..3)
        .map(|_| format!("{:032X}", rand::random::<u128>()))
        .collect::<Vec<_>>()
        .join("/")
}

fn malformed(why: impl Into<String>) -> ExchangeError {
    ExchangeError::transient(
        "MalformedResponse",
        format!("proxymux answered 200 with {}", why.into()),
    )
}

/// The 200 body: a JSON string literal of base64, decoding to `{"token":"ST$<RPST>"}`.
/// The quotes are optional (Py, TS and Java decoders ignore them too).
pub fn parse_success(body: &[u8], key: &PodKey) -> Result<Rpst, ExchangeError> {
    let text = std::str::from_utf8(body)
        .map_err(|_| malformed("a body that is not text"))?
        .trim();
    let b64 = if text.starts_with('"') {
        serde_json::from_str::<String>(text)
            .map_err(|_| malformed("a body that is not a JSON string"))?
    } else {
        text.to_string()
    };
    let decoded = zeroize::Zeroizing::new(
        STANDARD
            .decode(b64.trim())
            .map_err(|_| malformed("a body that is not base64"))?,
    );

    #[derive(Deserialize)]
    struct Envelope {
        token: String,
    }
    let envelope: Envelope = serde_json::from_slice(&decoded)
        .map_err(|_| malformed("a document without a \"token\" string"))?;
    let token = Secret::new(envelope.token);
    let rpst = token.expose().strip_prefix("ST$").unwrap_or(token.expose());
    let claims =
        decode_claims(rpst).map_err(|e| malformed(format!("a token that is not a JWT ({e})")))?;
    let exp = claims
        .exp
        .ok_or_else(|| malformed("an RPST without an exp claim"))?;
    if claims.iat.is_some_and(|iat| iat >= exp) {
        return Err(malformed("an RPST whose iat is not before its exp"));
    }
    let extra = rpst_extra_claims(rpst).ok_or_else(|| malformed("an RPST without a jwk claim"))?;
    let (n, e) = extra
        .jwk_components()
        .ok_or_else(|| malformed("an RPST whose jwk is not an RSA JWK"))?;
    if !key.matches_jwk(&n, &e) {
        return Err(ExchangeError::permanent(
            "RpstKeyMismatch",
            format!(
                "proxymux returned an RPST whose jwk is not our pod key ({}); SDKs signing with private.pem would be rejected",
                key.fingerprint()
            ),
        ));
    }
    Ok(Rpst {
        token: Secret::new(rpst),
        claims: RpstClaims {
            exp,
            iat: claims.iat,
            sub: claims.sub,
            res_tenant: extra.res_tenant,
            res_compartment: extra.res_compartment,
            jti: extra.jti,
        },
    })
}

#[derive(Deserialize)]
struct ExtraClaims {
    /// A JSON string holding the JWK in real RPSTs; an object is accepted too.
    jwk: serde_json::Value,
    res_tenant: Option<String>,
    res_compartment: Option<String>,
    jti: Option<String>,
}

impl ExtraClaims {
    fn jwk_components(&self) -> Option<(String, String)> {
        #[derive(Deserialize)]
        struct Jwk {
            n: String,
            e: String,
            kty: Option<String>,
        }
        let jwk: Jwk = match &self.jwk {
            serde_json::Value::String(text) => serde_json::from_str(text).ok()?,
            other => serde_json::from_value(other.clone()).ok()?,
        };
        (jwk.kty.as_deref().is_none_or(|k| k == "RSA")).then_some((jwk.n, jwk.e))
    }
}

fn rpst_extra_claims(rpst: &str) -> Option<ExtraClaims> {
    let payload = rpst.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// A non-2xx answer. OCI errors are `{"code","message"}`; anything else is quoted as text.
pub fn parse_error(status: u16, body: &[u8]) -> ExchangeError {
    #[derive(Deserialize)]
    struct OciError {
        code: Option<String>,
        message: Option<String>,
    }
    let parsed: Option<OciError> = serde_json::from_slice(body).ok();
    let (code, upstream) = match parsed {
        Some(OciError {
            code: Some(code),
            message,
        }) if !code.is_empty() => (code, message.unwrap_or_default()),
        _ => {
            let text: String = String::from_utf8_lossy(body)
                .chars()
                .filter(|c| !c.is_control())
                .take(200)
                .collect();
            (format!("HTTP{status}"), text)
        }
    };
    let upstream = if upstream.trim().is_empty() {
        format!("HTTP {status}")
    } else {
        format!("HTTP {status}: {}", upstream.trim())
    };
    let (retry, message) = match status {
        // Py and Go map 403 to "Please ensure the cluster type is enhanced"
        // (docs/oci.md, "Proxymux exchange").
        403 => (
            Retry::Permanent,
            format!(
                "cluster must be an enhanced cluster to use workload identity (proxymux answered {upstream})"
            ),
        ),
        401 => (
            Retry::Permanent,
            format!("proxymux rejected the service-account token ({upstream})"),
        ),
        429 | 500..=599 => (Retry::Transient, format!("proxymux answered {upstream}")),
        _ => (Retry::Permanent, format!("proxymux answered {upstream}")),
    };
    ExchangeError::new(retry, code, message).with_status(status)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn jwt(payload: &serde_json::Value) -> String {
        let h = URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","kid":"k"}"#);
        let p = URL_SAFE_NO_PAD.encode(payload.to_string());
        format!("{h}.{p}.c2lnbmF0dXJl")
    }

    fn jwk_of(key: &PodKey) -> String {
        let parsed = aws_lc_rs::rsa::PublicKey::from_der(key.spki_der()).unwrap();
        json!({
            "kid": "k",
            "n": URL_SAFE_NO_PAD.encode(parsed.modulus().big_endian_without_leading_zero()),
            "e": "AQAB",
            "kty": "RSA",
            "alg": "RS256",
            "use": "sig",
        })
        .to_string()
    }

    fn body_for(token: &str) -> Vec<u8> {
        let inner = json!({ "token": token }).to_string();
        format!("\"{}\"", STANDARD.encode(inner)).into_bytes()
    }

    fn claims(key: &PodKey) -> serde_json::Value {
        json!({
            "sub": "ocid1.workload.oc1..x", "iss": "authService.oracle.com", "aud": "oci",
            "iat": 1_900_000_000u64, "exp": 1_900_003_600u64, "jti": "j-1",
            "res_tenant": "ocid1.tenancy.oc1..t", "res_compartment": "ocid1.compartment.oc1..c",
            "jwk": jwk_of(key),
        })
    }

    #[test]
    fn decodes_the_quoted_base64_body_and_strips_st() {
        let key = PodKey::generate().unwrap();
        let rpst = jwt(&claims(&key));
        let got = parse_success(&body_for(&format!("ST${rpst}")), &key).unwrap();
        assert_eq!(got.token.expose(), rpst);
        assert_eq!(got.claims.exp, 1_900_003_600);
        assert_eq!(got.claims.iat, Some(1_900_000_000));
        assert_eq!(
            got.claims.res_tenant.as_deref(),
            Some("ocid1.tenancy.oc1..t")
        );
        assert_eq!(got.claims.jti.as_deref(), Some("j-1"));
        assert!(!format!("{got:?}").contains(&rpst));
        // Unquoted bodies and a trailing newline decode too; so does a jwk given as an object.
        let inner = json!({ "token": format!("ST${rpst}") }).to_string();
        let plain = format!("{}\n", STANDARD.encode(inner));
        assert!(parse_success(plain.as_bytes(), &key).is_ok());
        let mut c = claims(&key);
        c["jwk"] = serde_json::from_str(&jwk_of(&key)).unwrap();
        assert!(parse_success(&body_for(&format!("ST${}", jwt(&c))), &key).is_ok());
    }

    #[test]
    fn malformed_bodies_are_transient() {
        let key = PodKey::generate().unwrap();
        let mut no_exp = claims(&key);
        no_exp.as_object_mut().unwrap().remove("exp");
        let mut no_jwk = claims(&key);
        no_jwk.as_object_mut().unwrap().remove("jwk");
        let mut bad_jwk = claims(&key);
        bad_jwk["jwk"] = json!("{\"kty\":\"EC\",\"n\":\"x\",\"e\":\"y\"}");
        let cases: Vec<Vec<u8>> = vec![
            b"".to_vec(),
            b"\"not base64!\"".to_vec(),
            b"<html>proxy error</html>".to_vec(),
            format!("\"{}\"", STANDARD.encode("{\"Token\":\"ST$x\"}")).into_bytes(),
            body_for("ST$not.a.jwt"),
            body_for(&format!("ST${}", jwt(&no_exp))),
            body_for(&format!("ST${}", jwt(&no_jwk))),
            body_for(&format!("ST${}", jwt(&bad_jwk))),
            b"\x00\x1f\x8b<<<not a credential response {\"\xff\xfe".to_vec(),
        ];
        for body in cases {
            let e = parse_success(&body, &key).unwrap_err();
            assert_eq!(
                e.code,
                "MalformedResponse",
                "{}",
                String::from_utf8_lossy(&body)
            );
            assert!(e.is_transient());
        }
    }

    #[test]
    fn an_rpst_bound_to_another_key_is_refused() {
        let ours = PodKey::generate().unwrap();
        let theirs = PodKey::generate().unwrap();
        let rpst = jwt(&claims(&theirs));
        let e = parse_success(&body_for(&format!("ST${rpst}")), &ours).unwrap_err();
        assert_eq!(e.code, "RpstKeyMismatch");
        assert_eq!(e.retry, Retry::Permanent);
        assert!(e.message.contains(ours.fingerprint()));
        assert!(!e.message.contains(&rpst));
    }

    #[test]
    fn error_classification() {
        let e = parse_error(
            403,
            br#"{"code":"NotAuthorized","message":"the cluster type must be enhanced"}"#,
        );
        assert_eq!(e.retry, Retry::Permanent);
        assert_eq!(e.code, "NotAuthorized");
        assert!(e.message.starts_with("cluster must be an enhanced cluster"));
        assert!(e.message.contains("the cluster type must be enhanced"));
        assert_eq!(e.status, Some(403));
        let e = parse_error(403, b"Forbidden");
        assert!(e.message.contains("enhanced cluster") && e.message.contains("Forbidden"));
        assert_eq!(e.code, "HTTP403");
        for (status, retry) in [
            (401, Retry::Permanent),
            (400, Retry::Permanent),
            (404, Retry::Permanent),
            (429, Retry::Transient),
            (500, Retry::Transient),
            (502, Retry::Transient),
            (503, Retry::Transient),
        ] {
            assert_eq!(parse_error(status, b"").retry, retry, "{status}");
        }
    }

    #[test]
    fn request_ids_have_the_sdk_shape() {
        let id = opc_request_id();
        let parts: Vec<&str> = id.split('/').collect();
        assert_eq!(parts.len(), 3);
        assert!(
            parts
                .iter()
                .all(|p| p.len() == 32 && p.bytes().all(|b| b.is_ascii_hexdigit()))
        );
    }
}

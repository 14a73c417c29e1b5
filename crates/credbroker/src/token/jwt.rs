//! Reading a service-account token's claims without verifying it: the cloud verifies the
//! signature; we only need its shape and `exp` to report a bad or stale file clearly.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Claims {
    pub exp: Option<u64>,
    pub iat: Option<u64>,
    pub sub: Option<String>,
    pub iss: Option<String>,
    pub aud: Vec<String>,
}

#[derive(Deserialize)]
struct RawClaims {
    exp: Option<serde_json::Number>,
    iat: Option<serde_json::Number>,
    sub: Option<String>,
    iss: Option<String>,
    #[serde(default)]
    aud: Option<Audience>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct Header {
    alg: String,
}

/// Why text is not a JWT. Never contains the text itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("expected three dot-separated parts, found {0}")]
    Parts(usize),
    #[error("the {0} is not base64url")]
    Base64(&'static str),
    #[error("the {0} is not a JSON object")]
    Json(&'static str),
    #[error("the header names no signing algorithm")]
    NoAlgorithm,
    #[error("the `{0}` claim is not an integer timestamp")]
    Timestamp(&'static str),
}

/// Splits and decodes a compact JWS; checks the header and returns the claims.
pub fn decode_claims(token: &str) -> Result<Claims, JwtError> {
    let parts: Vec<&str> = token.split('.').collect();
    if parts.len() != 3 {
        return Err(JwtError::Parts(parts.len()));
    }
    if parts[2].is_empty() {
        return Err(JwtError::Base64("signature"));
    }
    URL_SAFE_NO_PAD
        .decode(parts[2])
        .map_err(|_| JwtError::Base64("signature"))?;
    let header = URL_SAFE_NO_PAD
        .decode(parts[0])
        .map_err(|_| JwtError::Base64("header"))?;
    let header: Header = serde_json::from_slice(&header).map_err(|_| JwtError::Json("header"))?;
    if header.alg.is_empty() || header.alg.eq_ignore_ascii_case("none") {
        return Err(JwtError::NoAlgorithm);
    }
    let payload = URL_SAFE_NO_PAD
        .decode(parts[1])
        .map_err(|_| JwtError::Base64("payload"))?;
    let raw: RawClaims = serde_json::from_slice(&payload).map_err(|_| JwtError::Json("payload"))?;
    let int = |n: Option<serde_json::Number>, name| match n {
        None => Ok(None),
        Some(n) => n.as_u64().map(Some).ok_or(JwtError::Timestamp(name)),
    };
    Ok(Claims {
        exp: int(raw.exp, "exp")?,
        iat: int(raw.iat, "iat")?,
        sub: raw.sub,
        iss: raw.iss,
        aud: match raw.aud {
            None => Vec::new(),
            Some(Audience::One(a)) => vec![a],
            Some(Audience::Many(v)) => v,
        },
    })
}

#[cfg(test)]
pub(crate) fn fake_jwt(payload: &serde_json::Value) -> String {
    let h = URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","kid":"k"}"#);
    let p = URL_SAFE_NO_PAD.encode(payload.to_string());
    format!("{h}.{p}.c2lnbmF0dXJl")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn decodes_kubelet_claims() {
        let t = fake_jwt(
            &json!({"iss":"https://k8s","sub":"system:serviceaccount:ns:sa","aud":["sts.amazonaws.com"],"exp":2000000000u64,"iat":1999996400u64}),
        );
        let c = decode_claims(&t).unwrap();
        assert_eq!(c.exp, Some(2_000_000_000));
        assert_eq!(c.sub.as_deref(), Some("system:serviceaccount:ns:sa"));
        assert_eq!(c.aud, vec!["sts.amazonaws.com"]);
        let t = fake_jwt(&json!({"aud":"one"}));
        assert_eq!(decode_claims(&t).unwrap().aud, vec!["one"]);
    }

    #[test]
    fn rejects_non_jwts() {
        assert_eq!(decode_claims("abc"), Err(JwtError::Parts(1)));
        assert_eq!(decode_claims("a.b.c.d"), Err(JwtError::Parts(4)));
        assert_eq!(
            decode_claims("!!.e30.c2ln"),
            Err(JwtError::Base64("header"))
        );
        assert_eq!(
            decode_claims("e30.e30."),
            Err(JwtError::Base64("signature"))
        );
        assert_eq!(decode_claims("e30.e30.c2ln"), Err(JwtError::Json("header")));
        let h = URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#);
        assert_eq!(
            decode_claims(&format!("{h}.e30.c2ln")),
            Err(JwtError::NoAlgorithm)
        );
        let t = fake_jwt(&json!({"exp":"soon"}));
        assert_eq!(decode_claims(&t), Err(JwtError::Json("payload")));
        let t = fake_jwt(&json!({"exp":1.5}));
        assert_eq!(decode_claims(&t), Err(JwtError::Timestamp("exp")));
    }
}

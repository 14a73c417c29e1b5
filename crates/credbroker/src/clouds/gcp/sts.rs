//! The two Google calls (docs/gcp.md, "STS token exchange" and "IAM Credentials"): STS token
//! exchange, then IAM Credentials `generateAccessToken` / `generateIdToken` when a service account
//! is impersonated.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use reqwest::Url;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::exchange::{ExchangeError, Retry};
use crate::http::client::{MAX_RESPONSE_BYTES, read_capped, retry_after, transport_error};
use crate::secret::Secret;
use crate::timefmt::parse_rfc3339;
use crate::token::TokenSource;

pub const CLOUD_PLATFORM: &str = "https://www.googleapis.com/auth/cloud-platform";
const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
/// Access tokens can be up to 12 288 bytes (docs/gcp.md, "STS token exchange"); anything longer is
/// not a token.
const MAX_ACCESS_TOKEN_BYTES: usize = 12_288;

/// A Google access token and when it expires.
#[derive(Clone)]
pub struct AccessToken {
    pub token: Secret,
    pub expires_at: SystemTime,
    /// The token needs no JSON escaping (no `"`, `\` or control bytes), so the metadata
    /// server copies it into its body as it is. Decided once per token: scanning a token on
    /// every request was an eighth of the token surface's instructions (callgrind).
    pub json_plain: bool,
}

impl AccessToken {
    pub fn new(token: Secret, expires_at: SystemTime) -> Self {
        let json_plain = json_plain(token.expose());
        AccessToken {
            token,
            expires_at,
            json_plain,
        }
    }
}

/// Whether serde_json writes `s` (inside its quotes) as it is.
pub fn json_plain(s: &str) -> bool {
    !s.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\')
}

impl std::fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessToken")
            .field("token", &self.token)
            .field(
                "expires_at",
                &crate::timefmt::format_rfc3339(self.expires_at),
            )
            .finish()
    }
}

/// Where the subject token is read from, on every exchange.
pub enum SubjectSource {
    /// The projected token, watched (kubelet's swap) and validated as a JWT.
    Watched(Arc<TokenSource>),
    /// A JSON file holding the token in `field`, read afresh each time.
    JsonFile { path: PathBuf, field: String },
}

impl SubjectSource {
    pub fn read(&self) -> Result<Secret, ExchangeError> {
        match self {
            SubjectSource::Watched(t) => t
                .read_now()
                .map(|t| t.secret)
                .map_err(|e| ExchangeError::transient("TokenFile", e.to_string())),
            SubjectSource::JsonFile { path, field } => {
                let fail = |why: String| {
                    ExchangeError::transient(
                        "TokenFile",
                        format!("token file {}: {why}", path.display()),
                    )
                };
                let bytes = std::fs::read(path)
                    .map_err(|e| fail(format!("cannot be read: {}", e.kind())))?;
                let bytes = zeroize::Zeroizing::new(bytes);
                let doc: Value =
                    serde_json::from_slice(&bytes).map_err(|_| fail("is not JSON".into()))?;
                match doc.get(field).and_then(Value::as_str) {
                    Some(t) if !t.trim().is_empty() => Ok(Secret::new(t.trim())),
                    _ => Err(fail(format!("has no string field {field:?}"))),
                }
            }
        }
    }
}

pub struct GoogleClient {
    pub http: reqwest::Client,
    pub token_url: Url,
    pub audience: String,
    pub subject_token_type: String,
    pub subject: SubjectSource,
    pub client_auth: Option<(String, Secret)>,
    pub clock: Arc<dyn crate::clock::Clock>,
}

#[derive(Deserialize)]
struct StsResponse {
    access_token: String,
    #[serde(default)]
    expires_in: Option<Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GenerateAccessTokenResponse {
    access_token: String,
    expire_time: String,
}

#[derive(Deserialize)]
struct GenerateIdTokenResponse {
    token: String,
}

impl GoogleClient {
    /// STS: the subject token → a federated access token with `scopes`.
    pub async fn exchange(&self, scopes: &[String]) -> Result<AccessToken, ExchangeError> {
        let subject = self.subject.read()?;
        let scope = scopes.join(" ");
        let form = [
            ("grant_type", GRANT_TYPE),
            ("audience", self.audience.as_str()),
            ("scope", scope.as_str()),
            ("requested_token_type", ACCESS_TOKEN_TYPE),
            ("subject_token", subject.expose()),
            ("subject_token_type", self.subject_token_type.as_str()),
        ];
        let mut req = self
            .http
            .post(self.token_url.clone())
            .header("accept", "application/json")
            .form(&form);
        if let Some((id, secret)) = &self.client_auth {
            req = req.basic_auth(id, Some(secret.expose()));
        }
        let started = self.clock.wall();
        let body = send(req, self.clock.as_ref()).await?;
        parse_sts_success(&body, started)
    }

    /// IAM Credentials `generateAccessToken` for the caller's scopes.
    pub async fn generate_access_token(
        &self,
        url: &Url,
        federated: &AccessToken,
        scopes: &[String],
        lifetime_secs: u32,
    ) -> Result<AccessToken, ExchangeError> {
        let body = json!({"scope": scopes, "lifetime": format!("{lifetime_secs}s")});
        let req = self
            .http
            .post(url.clone())
            .bearer_auth(federated.token.expose())
            .json(&body);
        let body = send(req, self.clock.as_ref()).await?;
        parse_access_token_success(&body)
    }

    /// IAM Credentials `generateIdToken`; `include_email` adds `email`/`email_verified`.
    pub async fn generate_id_token(
        &self,
        url: &Url,
        federated: &AccessToken,
        audience: &str,
        include_email: bool,
    ) -> Result<Secret, ExchangeError> {
        let body = json!({"audience": audience, "includeEmail": include_email});
        let req = self
            .http
            .post(url.clone())
            .bearer_auth(federated.token.expose())
            .json(&body);
        let body = send(req, self.clock.as_ref()).await?;
        parse_id_token_success(&body)
    }
}

/// A 200 from STS; `started` is when the request left, so the expiry errs early.
pub fn parse_sts_success(body: &[u8], started: SystemTime) -> Result<AccessToken, ExchangeError> {
    let resp: StsResponse = parse(body, "STS")?;
    let expires_in = match resp.expires_in {
        Some(Value::Number(n)) => n.as_u64(),
        // Python tolerates a string here; so do we.
        Some(Value::String(s)) => s.trim().parse().ok(),
        _ => None,
    }
    .ok_or_else(|| malformed("STS answered without a usable expires_in"))?;
    Ok(AccessToken::new(
        checked_token(resp.access_token, "STS")?,
        started
            .checked_add(Duration::from_secs(expires_in))
            .ok_or_else(|| malformed("STS answered an expires_in out of range"))?,
    ))
}

/// A 200 from `generateAccessToken`.
pub fn parse_access_token_success(body: &[u8]) -> Result<AccessToken, ExchangeError> {
    let resp: GenerateAccessTokenResponse = parse(body, "generateAccessToken")?;
    let expires_at = parse_rfc3339(&resp.expire_time).ok_or_else(|| {
        malformed(&format!(
            "generateAccessToken answered an unparseable expireTime {:?}",
            resp.expire_time
        ))
    })?;
    Ok(AccessToken::new(
        checked_token(resp.access_token, "generateAccessToken")?,
        expires_at,
    ))
}

/// A 200 from `generateIdToken`.
pub fn parse_id_token_success(body: &[u8]) -> Result<Secret, ExchangeError> {
    let resp: GenerateIdTokenResponse = parse(body, "generateIdToken")?;
    if resp.token.split('.').count() != 3 {
        return Err(malformed(
            "generateIdToken answered a token that is not a JWT",
        ));
    }
    Ok(Secret::new(resp.token))
}

fn malformed(message: &str) -> ExchangeError {
    ExchangeError::transient("MalformedResponse", message)
}

fn checked_token(token: String, who: &str) -> Result<Secret, ExchangeError> {
    let token = Secret::new(token);
    let ok = !token.is_empty()
        && token.len() <= MAX_ACCESS_TOKEN_BYTES
        && token.expose().bytes().all(|b| b.is_ascii_graphic());
    if ok {
        Ok(token)
    } else {
        Err(malformed(&format!(
            "{who} answered an empty or malformed access token"
        )))
    }
}

fn parse<T: for<'de> Deserialize<'de>>(body: &[u8], who: &str) -> Result<T, ExchangeError> {
    serde_json::from_slice(body)
        .map_err(|_| malformed(&format!("{who} answered 200 with an unexpected body")))
}

/// Sends, and turns a non-200 into a classified error.
async fn send(
    req: reqwest::RequestBuilder,
    clock: &dyn crate::clock::Clock,
) -> Result<zeroize::Zeroizing<Vec<u8>>, ExchangeError> {
    let resp = req.send().await.map_err(|e| transport_error(&e))?;
    let status = resp.status().as_u16();
    let after = retry_after(resp.headers(), clock);
    let body = zeroize::Zeroizing::new(read_capped(resp, MAX_RESPONSE_BYTES).await?.to_vec());
    if status == 200 {
        Ok(body)
    } else {
        Err(parse_error(status, &body).with_retry_after(after))
    }
}

/// OAuth `error` values worth retrying soon (Python `_client._can_retry`,
/// docs/gcp.md, "Error codes and retries").
const TRANSIENT_OAUTH: &[&str] = &[
    "internal_failure",
    "server_error",
    "temporarily_unavailable",
];

/// Statuses worth retrying soon (docs/gcp.md, "Error codes and retries"); 400, 401, 403, 404 and
/// the rest are not.
fn transient_status(status: u16) -> bool {
    matches!(status, 408 | 429 | 500 | 502 | 503 | 504)
}

/// Reads either error shape: STS's OAuth `{"error","error_description"}` or the Google API
/// `{"error":{"code","message","status"}}`.
pub fn parse_error(status: u16, body: &[u8]) -> ExchangeError {
    let doc: Option<Value> = serde_json::from_slice(body).ok();
    let error = doc.as_ref().and_then(|d| d.get("error"));
    let (code, message) = match error {
        Some(Value::String(code)) => (
            code.clone(),
            doc.as_ref()
                .and_then(|d| d.get("error_description"))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
        ),
        Some(Value::Object(e)) => (
            e.get("status")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| format!("HTTP{status}")),
            e.get("message")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
        ),
        _ => (
            format!("HTTP{status}"),
            format!("upstream answered HTTP {status} without a JSON error"),
        ),
    };
    let retry = if transient_status(status) || TRANSIENT_OAUTH.contains(&code.as_str()) {
        Retry::Transient
    } else {
        Retry::Permanent
    };
    ExchangeError::new(retry, code, message).with_status(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_shapes() {
        let e = parse_error(
            400,
            br#"{"error":"invalid_grant","error_description":"ID Token issued at 1749625771 is stale to sign-in."}"#,
        );
        assert_eq!(e.code, "invalid_grant");
        assert_eq!(e.retry, Retry::Permanent);
        assert!(e.message.contains("stale"));
        let e = parse_error(
            403,
            br#"{"error":{"code":403,"message":"Permission 'iam.serviceAccounts.getAccessToken' denied on resource (or it may not exist).","status":"PERMISSION_DENIED"}}"#,
        );
        assert_eq!(
            (e.code.as_str(), e.retry, e.status),
            ("PERMISSION_DENIED", Retry::Permanent, Some(403))
        );
        assert!(e.message.starts_with("Permission 'iam"));
        let e = parse_error(502, b"<html>bad gateway</html>");
        assert_eq!((e.code.as_str(), e.retry), ("HTTP502", Retry::Transient));
    }

    #[test]
    fn retry_policy_matches_the_reference() {
        for status in [408, 429, 500, 502, 503, 504] {
            assert!(parse_error(status, b"{}").is_transient(), "{status}");
        }
        for status in [400, 401, 403, 404, 409, 501] {
            assert!(!parse_error(status, b"{}").is_transient(), "{status}");
        }
        for code in TRANSIENT_OAUTH {
            let body = format!(r#"{{"error":"{code}","error_description":"x"}}"#);
            assert!(parse_error(400, body.as_bytes()).is_transient(), "{code}");
        }
        for code in [
            "invalid_request",
            "invalid_grant",
            "invalid_target",
            "unauthorized_client",
        ] {
            let body = format!(r#"{{"error":"{code}","error_description":"x"}}"#);
            assert!(!parse_error(400, body.as_bytes()).is_transient(), "{code}");
        }
    }

    #[test]
    fn tokens_are_checked() {
        assert!(checked_token("ya29.abc".into(), "STS").is_ok());
        assert!(checked_token(String::new(), "STS").is_err());
        assert!(checked_token("has space".into(), "STS").is_err());
        assert!(checked_token("x".repeat(MAX_ACCESS_TOKEN_BYTES + 1), "STS").is_err());
        let dbg = format!(
            "{:?}",
            AccessToken::new(Secret::new("ya29.secret"), SystemTime::UNIX_EPOCH)
        );
        assert!(!dbg.contains("ya29.secret"));
    }
}

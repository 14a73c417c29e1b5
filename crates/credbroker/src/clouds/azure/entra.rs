//! The Entra ID client-assertion exchange (docs/azure.md, "Entra client-assertion exchange"): a
//! `client_credentials` grant whose `client_assertion` is the projected service-account token, one
//! scope per request.
//!
//! Errors are classified by `error` and `error_codes` only, never by the description text.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use reqwest::Url;
use serde::Deserialize;

use crate::clock::Clock;
use crate::exchange::{ExchangeError, Retry};
use crate::http::client::{MAX_RESPONSE_BYTES, read_capped, retry_after, transport_error};
use crate::secret::Secret;
use crate::token::TokenSource;

pub const GRANT_TYPE: &str = "client_credentials";
pub const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// AADSTS700024: the assertion is outside its validity window (an old token file was sent).
const ASSERTION_EXPIRED: u64 = 700_024;
/// No matching federated identity credential (any part / issuer / subject). Right after an FIC
/// is created these are expected "for a couple of minutes" (azwi FAQ): retried, slowly.
const FIC_MISMATCH: &[u64] = &[70_021, 700_211, 700_213, 7_002_137, 7_002_138];

/// An access token as Entra issued it.
#[derive(Clone)]
pub struct EntraToken {
    pub access_token: Secret,
    /// The request's send time plus `expires_in` (v2 responses carry no absolute expiry).
    pub expires_on: SystemTime,
    /// When the request was sent: the earliest the token can have been issued.
    pub not_before: SystemTime,
}

impl std::fmt::Debug for EntraToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EntraToken")
            .field("access_token", &self.access_token)
            .field(
                "expires_on",
                &crate::timefmt::format_rfc3339(self.expires_on),
            )
            .finish_non_exhaustive()
    }
}

pub struct EntraClient {
    pub http: reqwest::Client,
    /// `{authority}{tenant}/oauth2/v2.0/token`.
    pub token_url: Url,
    pub client_id: String,
    pub token: Arc<TokenSource>,
    pub clock: Arc<dyn Clock>,
}

/// A failed attempt with the `error_codes` it was classified by.
#[derive(Debug)]
pub struct Failure {
    pub error: ExchangeError,
    pub codes: Vec<u64>,
}

impl EntraClient {
    /// One token for `scope`. On AADSTS700024 the token file is re-read and the request sent
    /// once more: kubelet may have rotated it between our read and Entra's check.
    pub async fn token(&self, scope: &str) -> Result<EntraToken, ExchangeError> {
        match self.attempt(scope).await {
            Err(f) if f.codes.contains(&ASSERTION_EXPIRED) => {
                tracing::info!(
                    "Entra rejected the assertion as expired (AADSTS700024); re-reading the token file and retrying once"
                );
                self.attempt(scope).await.map_err(|f| f.error)
            }
            other => other.map_err(|f| f.error),
        }
    }

    async fn attempt(&self, scope: &str) -> Result<EntraToken, Failure> {
        let token = self.token.read_now().map_err(|e| Failure {
            error: ExchangeError::transient("TokenFile", e.to_string()),
            codes: Vec::new(),
        })?;
        let form = [
            ("client_id", self.client_id.as_str()),
            ("scope", scope),
            ("grant_type", GRANT_TYPE),
            ("client_assertion_type", ASSERTION_TYPE),
            ("client_assertion", token.secret.expose()),
        ];
        let sent = self.clock.wall();
        let resp = self
            .http
            .post(self.token_url.clone())
            .header("accept", "application/json")
            .form(&form)
            .send()
            .await
            .map_err(|e| Failure {
                error: transport_error(&e),
                codes: Vec::new(),
            })?;
        let status = resp.status().as_u16();
        let after = retry_after(resp.headers(), self.clock.as_ref());
        let body = read_capped(resp, MAX_RESPONSE_BYTES)
            .await
            .map_err(|error| Failure {
                error,
                codes: Vec::new(),
            })?;
        if status == 200 {
            parse_success(&body, sent).map_err(|error| Failure {
                error,
                codes: Vec::new(),
            })
        } else {
            let mut failure = parse_error(status, &body);
            failure.error = failure.error.with_retry_after(after);
            Err(failure)
        }
    }
}

#[derive(Deserialize)]
struct SuccessBody {
    #[serde(default)]
    token_type: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
    #[serde(default)]
    expires_in: Option<serde_json::Value>,
}

/// Longest lifetime we believe: Entra issues 1 h (apps) to 24 h (managed identities).
const MAX_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);

/// Parses a 200 answer; `sent` is when the request left, so `expires_on` errs early, not late.
pub fn parse_success(body: &[u8], sent: SystemTime) -> Result<EntraToken, ExchangeError> {
    let malformed = |why: &str| {
        ExchangeError::transient(
            "MalformedResponse",
            format!("Entra answered 200 with {why}"),
        )
    };
    let parsed: SuccessBody =
        serde_json::from_slice(body).map_err(|_| malformed("a body that is not a JSON object"))?;
    let access_token = parsed
        .access_token
        .filter(|t| !t.is_empty())
        .map(Secret::new)
        .ok_or_else(|| malformed("no access_token"))?;
    if let Some(kind) = &parsed.token_type
        && !kind.eq_ignore_ascii_case("bearer")
    {
        return Err(malformed("a token_type other than Bearer"));
    }
    // A JSON number per the v2 protocol; some proxies send the IMDS-style string.
    let secs = match parsed.expires_in {
        Some(serde_json::Value::Number(n)) => n.as_u64(),
        Some(serde_json::Value::String(s)) => s.trim().parse::<u64>().ok(),
        _ => None,
    }
    .filter(|s| *s > 0 && Duration::from_secs(*s) <= MAX_LIFETIME)
    .ok_or_else(|| malformed("no usable expires_in"))?;
    Ok(EntraToken {
        access_token,
        expires_on: sent + Duration::from_secs(secs),
        not_before: sent,
    })
}

#[derive(Deserialize, Default)]
struct ErrorBody {
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    error_description: Option<String>,
    #[serde(default)]
    error_codes: Vec<u64>,
}

/// `error` values that say "try again" whatever the status.
const TRANSIENT_ERRORS: &[&str] = &["temporarily_unavailable", "server_error"];

/// Classifies an Entra error answer by status, `error` and `error_codes` (never by text).
pub fn parse_error(status: u16, body: &[u8]) -> Failure {
    let parsed: Option<ErrorBody> = serde_json::from_slice(body).ok();
    let (code, description, codes) = match parsed {
        Some(ErrorBody {
            error: Some(error),
            error_description,
            error_codes,
        }) if !error.is_empty() => (error, error_description.unwrap_or_default(), error_codes),
        _ => (
            if status >= 500 {
                "server_error".to_string()
            } else {
                format!("HTTP{status}")
            },
            format!("Entra answered HTTP {status} without a JSON error"),
            Vec::new(),
        ),
    };
    let retry = if status == 429 || status >= 500 || TRANSIENT_ERRORS.contains(&code.as_str()) {
        Retry::Transient
    } else {
        // Denials, including the FIC mismatches (retried on the long permanent interval, which
        // covers the propagation delay) and an expired assertion that a fresh read did not fix.
        Retry::Permanent
    };
    // The description normally starts with `AADSTS<code>:`; make sure readers see the number.
    let message = match codes.first() {
        Some(n) if !description.contains(&format!("AADSTS{n}")) => {
            format!("AADSTS{n}: {description}")
        }
        _ => description,
    };
    if codes.iter().any(|c| FIC_MISMATCH.contains(c)) {
        tracing::error!(
            code = %code,
            error_codes = ?codes,
            "no federated identity credential matches this service account token; check the FIC's issuer, subject and audience (matching is case-sensitive). A new FIC can take a few minutes to propagate."
        );
    }
    Failure {
        error: ExchangeError::new(retry, code, message).with_status(status),
        codes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::from_unix;

    #[test]
    fn parses_the_documented_success() {
        let body = br#"{"token_type":"Bearer","expires_in":3599,"ext_expires_in":3599,"access_token":"eyJ0eXAi.secret.sig"}"#;
        let t = parse_success(body, from_unix(1_000)).unwrap();
        assert_eq!(t.access_token.expose(), "eyJ0eXAi.secret.sig");
        assert_eq!(t.expires_on, from_unix(4_599));
        assert_eq!(t.not_before, from_unix(1_000));
        assert!(!format!("{t:?}").contains("secret"));
        let t = parse_success(
            br#"{"token_type":"Bearer","expires_in":"86399","access_token":"x"}"#,
            from_unix(0),
        )
        .unwrap();
        assert_eq!(t.expires_on, from_unix(86_399));
    }

    #[test]
    fn unusable_success_bodies_are_transient() {
        for body in [
            &b""[..],
            b"<html>",
            br#"{"token_type":"Bearer","expires_in":3599}"#,
            br#"{"token_type":"Bearer","expires_in":3599,"access_token":""}"#,
            br#"{"token_type":"pop","expires_in":3599,"access_token":"x"}"#,
            br#"{"token_type":"Bearer","access_token":"x"}"#,
            br#"{"token_type":"Bearer","expires_in":0,"access_token":"x"}"#,
            br#"{"token_type":"Bearer","expires_in":99999999,"access_token":"x"}"#,
        ] {
            let e = parse_success(body, from_unix(0)).unwrap_err();
            assert_eq!(e.code, "MalformedResponse");
            assert!(e.is_transient());
        }
    }

    fn entra_error(error: &str, code: u64) -> Vec<u8> {
        serde_json::json!({
            "error": error,
            "error_description": format!("AADSTS{code}: something. Trace ID: t Correlation ID: c Timestamp: 2024-06-04 11:40:28Z"),
            "error_codes": [code],
            "timestamp": "2024-06-04 11:40:28Z",
            "trace_id": "t",
            "correlation_id": "c",
            "error_uri": format!("https://login.microsoftonline.com/error?code={code}"),
        })
        .to_string()
        .into_bytes()
    }

    #[test]
    fn classification_by_error_and_codes() {
        for (status, error, code, retry) in [
            (400, "invalid_request", 70_021, Retry::Permanent),
            (401, "invalid_client", 700_211, Retry::Permanent),
            (401, "invalid_client", 700_213, Retry::Permanent),
            (401, "invalid_client", 700_024, Retry::Permanent),
            (400, "unauthorized_client", 700_016, Retry::Permanent),
            (400, "invalid_scope", 70_011, Retry::Permanent),
            (429, "temporarily_unavailable", 90_055, Retry::Transient),
            (503, "temporarily_unavailable", 90_033, Retry::Transient),
            (500, "server_error", 90_033, Retry::Transient),
            (400, "temporarily_unavailable", 90_033, Retry::Transient),
        ] {
            let f = parse_error(status, &entra_error(error, code));
            assert_eq!(f.error.retry, retry, "{error} {code}");
            assert_eq!(f.error.code, error);
            assert_eq!(f.error.status, Some(status));
            assert_eq!(f.codes, vec![code]);
            assert!(f.error.message.starts_with(&format!("AADSTS{code}:")));
        }
    }

    #[test]
    fn description_text_is_not_used_for_classification() {
        // A transient-sounding description on a denial stays a denial.
        let body = br#"{"error":"invalid_client","error_description":"temporarily_unavailable, please retry","error_codes":[700016]}"#;
        let f = parse_error(400, body);
        assert_eq!(f.error.retry, Retry::Permanent);
        assert_eq!(
            f.error.message,
            "AADSTS700016: temporarily_unavailable, please retry"
        );
    }

    #[test]
    fn non_json_errors() {
        let f = parse_error(502, b"<html>bad gateway</html>");
        assert_eq!(
            (f.error.code.as_str(), f.error.retry),
            ("server_error", Retry::Transient)
        );
        let f = parse_error(404, b"nope");
        assert_eq!(
            (f.error.code.as_str(), f.error.retry),
            ("HTTP404", Retry::Permanent)
        );
    }
}

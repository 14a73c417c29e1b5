//! STS `AssumeRoleWithWebIdentity` (docs/aws.md, "STS AssumeRoleWithWebIdentity"): an unsigned
//! awsQuery POST, an XML answer.

use std::sync::Arc;
use std::time::SystemTime;

use reqwest::Url;

use super::identity::RoleOptions;
use super::xml;
use crate::exchange::{ExchangeError, Retry};
use crate::http::client::{MAX_RESPONSE_BYTES, read_capped, retry_after, transport_error};
use crate::secret::Secret;
use crate::timefmt::parse_rfc3339;
use crate::token::TokenSource;

/// Credentials as STS issued them.
#[derive(Clone)]
pub struct StsCredentials {
    pub access_key_id: String,
    pub secret_access_key: Secret,
    pub session_token: Secret,
    pub expiration: SystemTime,
    pub assumed_role_arn: String,
}

impl std::fmt::Debug for StsCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StsCredentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &self.secret_access_key)
            .field("session_token", &self.session_token)
            .field(
                "expiration",
                &crate::timefmt::format_rfc3339(self.expiration),
            )
            .field("assumed_role_arn", &self.assumed_role_arn)
            .finish()
    }
}

/// The STS client: the endpoint, the pod's web-identity token, and what signing needs.
pub struct StsClient {
    pub http: reqwest::Client,
    pub endpoint: Url,
    /// The region requests are signed for (`AWS_REGION`; `us-east-1` for the global endpoint).
    pub signing_region: String,
    pub token: Arc<TokenSource>,
    /// Reads `Retry-After` dates, and dates signatures.
    pub clock: Arc<dyn crate::clock::Clock>,
}

/// The two STS calls the AWS identities need: the real client, or a scripted one in tests.
pub trait StsApi: Send + Sync + 'static {
    fn web_identity(
        &self,
        role: RoleRequest<'_>,
    ) -> impl std::future::Future<Output = Result<StsCredentials, ExchangeError>> + Send;
    fn chained(
        &self,
        base: &StsCredentials,
        role: RoleRequest<'_>,
        options: &RoleOptions,
    ) -> impl std::future::Future<Output = Result<StsCredentials, ExchangeError>> + Send;
}

impl StsApi for StsClient {
    async fn web_identity(&self, role: RoleRequest<'_>) -> Result<StsCredentials, ExchangeError> {
        self.assume_role_with_web_identity(role).await
    }

    async fn chained(
        &self,
        base: &StsCredentials,
        role: RoleRequest<'_>,
        options: &RoleOptions,
    ) -> Result<StsCredentials, ExchangeError> {
        self.assume_role(base, role, options).await
    }
}

/// What is asked of STS for one role.
#[derive(Debug, Clone, Copy)]
pub struct RoleRequest<'a> {
    pub role_arn: &'a str,
    pub session_name: &'a str,
    pub duration_secs: u32,
}

impl StsClient {
    /// `AssumeRoleWithWebIdentity` with the token on disk now (an unsigned request).
    pub async fn assume_role_with_web_identity(
        &self,
        role: RoleRequest<'_>,
    ) -> Result<StsCredentials, ExchangeError> {
        let token = self
            .token
            .read_now()
            .map_err(|e| ExchangeError::transient("TokenFile", e.to_string()))?;
        let duration = role.duration_secs.to_string();
        let form = [
            ("Action", "AssumeRoleWithWebIdentity"),
            ("Version", "2011-06-15"),
            ("RoleArn", role.role_arn),
            ("RoleSessionName", role.session_name),
            ("DurationSeconds", duration.as_str()),
            ("WebIdentityToken", token.secret.expose()),
        ];
        let body = form_body(&form);
        let resp = self
            .http
            .post(self.endpoint.clone())
            .header("accept", "text/xml")
            .header("content-type", FORM)
            .body(body)
            .send()
            .await
            .map_err(|e| transport_error(&e))?;
        self.answer(resp, WEB_IDENTITY_RESULT).await
    }

    /// `AssumeRole`, signed (SigV4) with `base`'s credentials: role chaining
    /// (docs/aws.md, "STS AssumeRole").
    pub async fn assume_role(
        &self,
        base: &StsCredentials,
        role: RoleRequest<'_>,
        options: &RoleOptions,
    ) -> Result<StsCredentials, ExchangeError> {
        let duration = role.duration_secs.to_string();
        let mut form: Vec<(String, String)> = vec![
            ("Action".into(), "AssumeRole".into()),
            ("Version".into(), "2011-06-15".into()),
            ("RoleArn".into(), role.role_arn.into()),
            ("RoleSessionName".into(), role.session_name.into()),
            ("DurationSeconds".into(), duration),
        ];
        if let Some(v) = &options.external_id {
            form.push(("ExternalId".into(), v.clone()));
        }
        if let Some(v) = &options.source_identity {
            form.push(("SourceIdentity".into(), v.clone()));
        }
        for (i, (k, v)) in options.tags.iter().enumerate() {
            form.push((format!("Tags.member.{}.Key", i + 1), k.clone()));
            form.push((format!("Tags.member.{}.Value", i + 1), v.clone()));
        }
        for (i, k) in options.transitive.iter().enumerate() {
            form.push((format!("TransitiveTagKeys.member.{}", i + 1), k.clone()));
        }
        let pairs: Vec<(&str, &str)> = form.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let body = form_body(&pairs);
        let signed = self.sign(base, &body)?;
        let mut req = self
            .http
            .post(self.endpoint.clone())
            .header("accept", "text/xml")
            .header("content-type", FORM)
            .body(body);
        for (name, value) in signed {
            req = req.header(name, value);
        }
        let resp = req.send().await.map_err(|e| transport_error(&e))?;
        self.answer(resp, ASSUME_ROLE_RESULT).await
    }

    /// The SigV4 headers for a POST of `body` to the endpoint with `base`'s credentials.
    fn sign(
        &self,
        base: &StsCredentials,
        body: &str,
    ) -> Result<Vec<(String, String)>, ExchangeError> {
        use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
        let identity = aws_credential_types::Credentials::new(
            base.access_key_id.clone(),
            base.secret_access_key.expose(),
            Some(base.session_token.expose().to_string()),
            Some(base.expiration),
            "credbroker",
        )
        .into();
        let params = aws_sigv4::sign::v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.signing_region)
            .name("sts")
            .time(self.clock.wall())
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| ExchangeError::permanent("SigningFailed", e.to_string()))?
            .into();
        let host = self.endpoint.host_str().unwrap_or_default();
        let host = match self.endpoint.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_string(),
        };
        let headers = [("host", host.as_str()), ("content-type", FORM)];
        let request = SignableRequest::new(
            "POST",
            self.endpoint.as_str(),
            headers.into_iter(),
            SignableBody::Bytes(body.as_bytes()),
        )
        .map_err(|e| ExchangeError::permanent("SigningFailed", e.to_string()))?;
        let (instructions, _signature) = sign(request, &params)
            .map_err(|e| ExchangeError::permanent("SigningFailed", e.to_string()))?
            .into_parts();
        Ok(instructions
            .headers()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect())
    }

    async fn answer(
        &self,
        resp: reqwest::Response,
        result: &str,
    ) -> Result<StsCredentials, ExchangeError> {
        let status = resp.status().as_u16();
        let after = retry_after(resp.headers(), self.clock.as_ref());
        let body = read_capped(resp, MAX_RESPONSE_BYTES).await?;
        let body = String::from_utf8_lossy(&body);
        if status == 200 {
            parse_result(&body, result)
        } else {
            Err(parse_error(status, &body).with_retry_after(after))
        }
    }
}

const FORM: &str = "application/x-www-form-urlencoded; charset=utf-8";

fn form_body(pairs: &[(&str, &str)]) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

const WEB_IDENTITY_RESULT: &str =
    "AssumeRoleWithWebIdentityResponse/AssumeRoleWithWebIdentityResult";
const ASSUME_ROLE_RESULT: &str = "AssumeRoleResponse/AssumeRoleResult";

/// An `AssumeRoleWithWebIdentity` answer.
pub fn parse_success(body: &str) -> Result<StsCredentials, ExchangeError> {
    parse_result(body, WEB_IDENTITY_RESULT)
}

/// The credentials in an answer whose result element is at `result`.
fn parse_result(body: &str, result: &str) -> Result<StsCredentials, ExchangeError> {
    let malformed = |why: String| {
        ExchangeError::transient("MalformedResponse", format!("STS answered 200 with {why}"))
    };
    let paths = [
        format!("{result}/Credentials/AccessKeyId"),
        format!("{result}/Credentials/SecretAccessKey"),
        format!("{result}/Credentials/SessionToken"),
        format!("{result}/Credentials/Expiration"),
        format!("{result}/AssumedRoleUser/Arn"),
    ];
    let wanted: Vec<&str> = paths.iter().map(String::as_str).collect();
    let mut v = xml::extract(body, &wanted).map_err(malformed)?.into_iter();
    let mut field = |name: &str| {
        v.next()
            .flatten()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| malformed(format!("no {name}")))
    };
    let access_key_id = field("AccessKeyId")?;
    let secret_access_key = Secret::new(field("SecretAccessKey")?);
    let session_token = Secret::new(field("SessionToken")?);
    let expiration_text = field("Expiration")?;
    let assumed_role_arn = field("AssumedRoleUser/Arn").unwrap_or_default();
    if !(16..=128).contains(&access_key_id.len())
        || !access_key_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        return Err(malformed("an AccessKeyId of unexpected form".into()));
    }
    let expiration = parse_rfc3339(&expiration_text)
        .ok_or_else(|| malformed(format!("an unparseable Expiration {expiration_text:?}")))?;
    Ok(StsCredentials {
        access_key_id,
        secret_access_key,
        session_token,
        expiration,
        assumed_role_arn,
    })
}

/// Codes worth retrying soon (docs/aws.md, "Error codes and retries", and the SDKs' throttling
/// codes).
const TRANSIENT_CODES: &[&str] = &[
    "IDPCommunicationError",
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestLimitExceeded",
    "TooManyRequestsException",
    "InternalFailure",
    "InternalError",
    "ServiceUnavailable",
];

pub fn parse_error(status: u16, body: &str) -> ExchangeError {
    let fields = xml::extract(
        body,
        &["ErrorResponse/Error/Code", "ErrorResponse/Error/Message"],
    )
    .ok();
    let (code, message) = match fields.as_deref() {
        Some([Some(code), message]) if !code.is_empty() => {
            (code.clone(), message.clone().unwrap_or_default())
        }
        _ => (
            if status >= 500 {
                "ServiceUnavailable".into()
            } else {
                format!("HTTP{status}")
            },
            format!("STS answered HTTP {status} without an XML error"),
        ),
    };
    let retry = if status >= 500 || status == 429 || TRANSIENT_CODES.contains(&code.as_str()) {
        Retry::Transient
    } else {
        Retry::Permanent
    };
    ExchangeError::new(retry, code, message).with_status(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &str = r#"<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleWithWebIdentityResult>
    <SubjectFromWebIdentityToken>system:serviceaccount:ns:sa</SubjectFromWebIdentityToken>
    <Audience>sts.amazonaws.com</Audience>
    <AssumedRoleUser>
      <Arn>arn:aws:sts::123456789012:assumed-role/ROLE/SESSION</Arn>
      <AssumedRoleId>AROAEXAMPLE:SESSION</AssumedRoleId>
    </AssumedRoleUser>
    <Provider>arn:aws:iam::123:oidc-provider/oidc.eks</Provider>
    <Credentials>
      <AccessKeyId>ASIAEXAMPLE123456789</AccessKeyId><SecretAccessKey>wJalr/secret+key</SecretAccessKey>
      <SessionToken>FwoGZX&amp;token</SessionToken><Expiration>2022-05-25T11:45:17Z</Expiration>
    </Credentials>
  </AssumeRoleWithWebIdentityResult>
  <ResponseMetadata><RequestId>b1663ad1</RequestId></ResponseMetadata>
</AssumeRoleWithWebIdentityResponse>"#;

    #[test]
    fn parses_the_documented_response() {
        let c = parse_success(OK).unwrap();
        assert_eq!(c.access_key_id, "ASIAEXAMPLE123456789");
        assert_eq!(c.secret_access_key.expose(), "wJalr/secret+key");
        assert_eq!(c.session_token.expose(), "FwoGZX&token");
        assert_eq!(
            crate::timefmt::format_rfc3339(c.expiration),
            "2022-05-25T11:45:17Z"
        );
        assert_eq!(
            c.assumed_role_arn,
            "arn:aws:sts::123456789012:assumed-role/ROLE/SESSION"
        );
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("wJalr") && !dbg.contains("FwoGZX"));
    }

    #[test]
    fn garbage_200_is_transient() {
        for body in [
            "",
            "{\"json\":true}",
            "<html>oops</html>",
            &OK.replace("<SessionToken>FwoGZX&amp;token</SessionToken>", ""),
            &OK[..OK.len() / 2],
        ] {
            let e = parse_success(body).unwrap_err();
            assert_eq!(e.code, "MalformedResponse");
            assert!(e.is_transient());
        }
        let e = parse_success(&OK.replace("2022-05-25T11:45:17Z", "tomorrow")).unwrap_err();
        assert!(e.message.contains("Expiration"));
    }

    #[test]
    fn parses_the_documented_error() {
        let body = r#"<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <Error><Type>Sender</Type><Code>InvalidIdentityToken</Code>
    <Message>No OpenIDConnect provider found in your account for https://x</Message></Error>
  <RequestId>5045ca91</RequestId>
</ErrorResponse>"#;
        let e = parse_error(400, body);
        assert_eq!(e.code, "InvalidIdentityToken");
        assert_eq!(e.retry, Retry::Permanent);
        assert_eq!(e.status, Some(400));
        assert!(e.message.starts_with("No OpenIDConnect provider"));
    }

    #[test]
    fn classification() {
        let xml = |code: &str| {
            format!(
                "<ErrorResponse><Error><Code>{code}</Code><Message>m</Message></Error></ErrorResponse>"
            )
        };
        for (status, code, retry) in [
            (400, "IDPCommunicationError", Retry::Transient),
            (400, "Throttling", Retry::Transient),
            (400, "ExpiredTokenException", Retry::Permanent),
            (403, "AccessDenied", Retry::Permanent),
            (403, "IDPRejectedClaim", Retry::Permanent),
            (403, "RegionDisabledException", Retry::Permanent),
            (503, "ServiceUnavailable", Retry::Transient),
            (500, "Whatever", Retry::Transient),
            (429, "Whatever", Retry::Transient),
        ] {
            assert_eq!(parse_error(status, &xml(code)).retry, retry, "{code}");
        }
        let e = parse_error(502, "<html>bad gateway</html>");
        assert_eq!(
            (e.code.as_str(), e.retry),
            ("ServiceUnavailable", Retry::Transient)
        );
        let e = parse_error(404, "nope");
        assert_eq!((e.code.as_str(), e.retry), ("HTTP404", Retry::Permanent));
    }
}

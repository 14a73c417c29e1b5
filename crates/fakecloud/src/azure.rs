//! A faithful fake of the Entra ID v2 token endpoint for the client-assertion grant
//! (docs/azure.md, "Entra client-assertion exchange" and "Entra error codes"):
//! `POST /{tenant}/oauth2/v2.0/token` with `client_credentials` and a service-account JWT as
//! `client_assertion`. The assertion is verified against an [`Issuer`] (signature, `exp`, audience
//! `api://AzureADTokenExchange`) and matched against federated identity credentials (issuer +
//! subject + audience → app, case-sensitive). Errors use Entra's JSON shape with the AADSTS codes
//! SDKs and operators see: 70021, 700211, 700213, 700024, 700016, invalid_scope (70011, 1002012),
//! and 429/5xx on demand through [`Faults`].

use crate::http::Running;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use parking_lot::Mutex;
use serde::Serialize;
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::aws::sha256_hex;
use crate::faults::{Fault, Faults};
use crate::http::{Fake, HttpResponse, ServeOptions, serve, set_content_type};
use crate::issuer::{Issuer, VerifyError, peek_claims, random_uuid};
use crate::timefmt::{iso8601, unix_now, unix_now_f64};

/// The tenant the fake serves.
pub const DEMO_TENANT_ID: &str = "8d3c5e2a-6f1b-4c7d-9e0a-1b2c3d4e5f60";
/// The app (or user-assigned identity) whose federated credential trusts the demo service account.
pub const DEMO_CLIENT_ID: &str = "3f9a1c2e-7b4d-4e8f-a1b2-c3d4e5f60718";
/// The audience AKS workload identity projects tokens for (azwi `DefaultAudience`).
pub const ENTRA_AUDIENCE: &str = "api://AzureADTokenExchange";
/// `expires_in` of issued tokens unless changed: Entra's usual 1 h less a second.
pub const DEFAULT_TOKEN_LIFETIME: u64 = 3599;
pub const CLIENT_ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// Log entries kept (oldest dropped first).
const LOG_CAPACITY: usize = 10_000;

/// One request as the fake saw it (rejected and faulted ones included). Never holds the assertion.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EntraRecord {
    pub at: f64,
    pub tenant: Option<String>,
    pub client_id: Option<String>,
    pub scope: Option<String>,
    pub grant_type: Option<String>,
    pub assertion_jti: Option<String>,
    pub assertion_subject: Option<String>,
    /// Hex SHA-256 of the `client_assertion`.
    pub assertion_sha256: Option<String>,
    /// `issued`, `error:<AADSTS code or error>` or `fault:<kind>`.
    pub outcome: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_in: Option<u64>,
}

/// A federated identity credential on an app: the assertion's `iss`, `sub` and `aud` must all
/// match exactly (case-sensitive, as Entra has compared since 2025).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FederatedCredential {
    pub issuer: String,
    pub subject: String,
    pub audience: String,
}

/// An Entra error: HTTP status, `error`, AADSTS number and the description's text.
#[derive(Debug, Clone)]
struct EntraError {
    status: u16,
    error: &'static str,
    code: Option<u64>,
    text: String,
}

impl EntraError {
    fn new(status: u16, error: &'static str, code: u64, text: impl Into<String>) -> Self {
        EntraError {
            status,
            error,
            code: Some(code),
            text: text.into(),
        }
    }

    fn missing(param: &str) -> Self {
        Self::new(
            400,
            "invalid_request",
            900_144,
            format!("The request body must contain the following parameter: '{param}'."),
        )
    }

    fn no_fic(iss: &str, sub: &str, aud: &str) -> Self {
        Self::new(
            400,
            "invalid_request",
            70_021,
            format!(
                "No matching federated identity record found for presented assertion. Assertion Issuer: '{iss}'. Assertion Subject: '{sub}'. Assertion Audience: '{aud}'. https://learn.microsoft.com/entra/workload-id/workload-identity-federation"
            ),
        )
    }

    fn no_fic_issuer(iss: &str) -> Self {
        Self::new(
            401,
            "invalid_client",
            700_211,
            format!(
                "No matching federated identity record found for presented assertion issuer '{iss}'. Please note that the matching is done using a case-sensitive comparison. Please check your federated identity credential Subject, Audience and Issuer against the presented assertion. https://learn.microsoft.com/entra/workload-id/workload-identity-federation"
            ),
        )
    }

    fn no_fic_subject(sub: &str) -> Self {
        Self::new(
            401,
            "invalid_client",
            700_213,
            format!(
                "No matching federated identity record found for presented assertion subject '{sub}'. Please note that the matching is done using a case-sensitive comparison. Please check your federated identity credential Subject, Audience and Issuer against the presented assertion. https://learn.microsoft.com/entra/workload-id/workload-identity-federation"
            ),
        )
    }

    fn expired(exp: u64, nbf: u64) -> Self {
        let now = unix_now();
        Self::new(
            401,
            "invalid_client",
            700_024,
            format!(
                "Client assertion is not within its valid time range. Current time: {}, assertion valid from {}, expiry time of assertion {}. Review the documentation at https://learn.microsoft.com/entra/identity-platform/certificate-credentials .",
                iso8601(now),
                iso8601(nbf),
                iso8601(exp)
            ),
        )
    }

    fn app_not_found(client_id: &str, tenant: &str) -> Self {
        Self::new(
            400,
            "unauthorized_client",
            700_016,
            format!(
                "Application with identifier '{client_id}' was not found in the directory '{tenant}'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You may have sent your authentication request to the wrong tenant."
            ),
        )
    }

    fn scope_not_valid(scope: &str) -> Self {
        Self::new(
            400,
            "invalid_scope",
            70_011,
            format!(
                "The provided request must include a 'scope' input parameter. The provided value for the input parameter 'scope' is not valid. The scope {scope} is not valid."
            ),
        )
    }

    fn scope_without_default(scope: &str) -> Self {
        Self::new(
            400,
            "invalid_scope",
            1_002_012,
            format!(
                "The provided value for scope {scope} is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI)."
            ),
        )
    }

    fn throttled() -> Self {
        Self::new(
            429,
            "temporarily_unavailable",
            90_055,
            "TenantThrottlingError - There are too many incoming requests.",
        )
    }

    fn unavailable(status: u16) -> Self {
        Self::new(
            status,
            if status == 503 {
                "temporarily_unavailable"
            } else {
                "server_error"
            },
            90_033,
            "A transient error has occurred. Please try again.",
        )
    }

    fn outcome(&self) -> String {
        match self.code {
            Some(n) => format!("error:AADSTS{n}"),
            None => format!("error:{}", self.error),
        }
    }
}

/// The fake token endpoint. Use [`FakeEntra::start`] to serve it.
#[derive(Debug)]
pub struct FakeEntra {
    issuer: Arc<Issuer>,
    faults: Faults,
    tenant: String,
    /// Apps (client ids, lower case) registered in the tenant, with their federated credentials.
    apps: Mutex<HashMap<String, Vec<FederatedCredential>>>,
    lifetime: AtomicU64,
    log: Mutex<Vec<EntraRecord>>,
    issued: AtomicUsize,
}

/// A running [`FakeEntra`]; derefs to it. Dropping it stops the server.
pub type FakeEntraHandle = Running<FakeEntra>;

impl Running<FakeEntra> {
    /// `{url}/{tenant}/oauth2/v2.0/token`.
    pub fn token_url(&self) -> String {
        format!("{}/{}/oauth2/v2.0/token", self.url(), self.tenant)
    }
}

impl FakeEntra {
    /// A tenant [`DEMO_TENANT_ID`] with app [`DEMO_CLIENT_ID`] trusting `subject` of `issuer`.
    pub fn new(issuer: Arc<Issuer>, subject: &str) -> FakeEntra {
        let entra = FakeEntra {
            faults: Faults::new(),
            tenant: DEMO_TENANT_ID.to_string(),
            apps: Mutex::new(HashMap::new()),
            lifetime: AtomicU64::new(DEFAULT_TOKEN_LIFETIME),
            log: Mutex::new(Vec::new()),
            issued: AtomicUsize::new(0),
            issuer,
        };
        entra.add_federated_credential(
            DEMO_CLIENT_ID,
            FederatedCredential {
                issuer: entra.issuer.url().to_string(),
                subject: subject.to_string(),
                audience: ENTRA_AUDIENCE.to_string(),
            },
        );
        entra
    }

    pub async fn start(
        issuer: Arc<Issuer>,
        subject: &str,
        addr: SocketAddr,
    ) -> io::Result<FakeEntraHandle> {
        let entra = Arc::new(FakeEntra::new(issuer, subject));
        let server = serve(entra.clone(), addr, ServeOptions::default()).await?;
        Ok(Running::new(entra, server))
    }

    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    /// Registers `client_id` (if new) and adds a federated credential to it.
    pub fn add_federated_credential(&self, client_id: &str, fic: FederatedCredential) {
        self.apps
            .lock()
            .entry(client_id.to_ascii_lowercase())
            .or_default()
            .push(fic);
    }

    /// Removes every federated credential of `client_id`; the app stays registered.
    pub fn clear_federated_credentials(&self, client_id: &str) {
        if let Some(fics) = self.apps.lock().get_mut(&client_id.to_ascii_lowercase()) {
            fics.clear();
        }
    }

    /// Deletes the app: requests for it get AADSTS700016.
    pub fn remove_app(&self, client_id: &str) {
        self.apps.lock().remove(&client_id.to_ascii_lowercase());
    }

    /// Sets `expires_in` of tokens issued from now on.
    pub fn set_token_lifetime(&self, secs: u64) {
        self.lifetime.store(secs, Ordering::SeqCst);
    }

    /// Every recorded request, oldest first.
    pub fn log(&self) -> Vec<EntraRecord> {
        self.log.lock().clone()
    }

    pub fn issued_count(&self) -> usize {
        self.issued.load(Ordering::SeqCst)
    }

    fn push(&self, record: EntraRecord) {
        let mut log = self.log.lock();
        if log.len() >= LOG_CAPACITY {
            log.remove(0);
        }
        log.push(record);
    }

    /// Validates one token request; returns the access token and its lifetime.
    fn exchange(&self, tenant: &str, p: &Params) -> Result<(String, u64), EntraError> {
        if tenant != self.tenant {
            return Err(EntraError::new(
                400,
                "invalid_request",
                90_002,
                format!(
                    "Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud."
                ),
            ));
        }
        let grant = p
            .get("grant_type")
            .ok_or(EntraError::missing("grant_type"))?;
        if grant != "client_credentials" {
            return Err(EntraError::new(
                400,
                "unsupported_grant_type",
                70_003,
                format!("The app requested an unsupported grant type '{grant}'."),
            ));
        }
        let client_id = p.get("client_id").ok_or(EntraError::missing("client_id"))?;
        let scope = p.get("scope").ok_or(EntraError::missing("scope"))?;
        let assertion = p.get("client_assertion").ok_or_else(|| {
            EntraError::new(
                401,
                "invalid_client",
                7_000_218,
                "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
            )
        })?;
        if p.get("client_assertion_type") != Some(CLIENT_ASSERTION_TYPE) {
            return Err(EntraError::new(
                400,
                "invalid_request",
                50_027,
                "Invalid client_assertion_type: only urn:ietf:params:oauth:client-assertion-type:jwt-bearer is supported.",
            ));
        }
        let fics = self
            .apps
            .lock()
            .get(&client_id.to_ascii_lowercase())
            .cloned()
            .ok_or_else(|| EntraError::app_not_found(client_id, tenant))?;
        let scopes: Vec<&str> = scope.split_whitespace().collect();
        let resource = match scopes.as_slice() {
            [one] => one
                .strip_suffix("/.default")
                .ok_or_else(|| EntraError::scope_without_default(one))?,
            _ => return Err(EntraError::scope_not_valid(scope)),
        };
        if resource.is_empty() {
            return Err(EntraError::scope_not_valid(scope));
        }

        let claims = peek_claims(assertion).unwrap_or_default();
        let verified = self
            .issuer
            .verify(assertion, ENTRA_AUDIENCE)
            .map_err(|err| match err {
                VerifyError::Expired => {
                    let exp = claims.exp.unwrap_or(0);
                    EntraError::expired(exp, exp.saturating_sub(3600))
                }
                VerifyError::WrongAudience => {
                    let aud = jsonwebtoken::dangerous::insecure_decode_claims::<serde_json::Value>(
                        assertion,
                    )
                    .ok()
                    .and_then(|v| v.get("aud").cloned())
                    .map(|a| match a {
                        serde_json::Value::Array(v) => v
                            .iter()
                            .filter_map(|x| x.as_str())
                            .collect::<Vec<_>>()
                            .join(","),
                        serde_json::Value::String(s) => s,
                        _ => String::new(),
                    })
                    .unwrap_or_default();
                    EntraError::no_fic(&claims.iss, &claims.sub, &aud)
                }
                VerifyError::WrongIssuer => EntraError::no_fic_issuer(&claims.iss),
                VerifyError::BadSignature => EntraError::new(
                    401,
                    "invalid_client",
                    50_013,
                    "Assertion failed signature validation. [Reason - The key was not found.]",
                ),
                VerifyError::Malformed => EntraError::new(
                    400,
                    "invalid_request",
                    50_027,
                    "JWT token is invalid or malformed.",
                ),
            })?;
        let iss = self.issuer.url();
        let by_issuer: Vec<&FederatedCredential> =
            fics.iter().filter(|f| f.issuer == iss).collect();
        if by_issuer.is_empty() {
            return Err(EntraError::no_fic_issuer(iss));
        }
        let by_subject: Vec<&&FederatedCredential> = by_issuer
            .iter()
            .filter(|f| f.subject == verified.subject)
            .collect();
        if by_subject.is_empty() {
            return Err(EntraError::no_fic_subject(&verified.subject));
        }
        if !by_subject
            .iter()
            .any(|f| verified.audience.contains(&f.audience))
        {
            return Err(EntraError::no_fic(
                iss,
                &verified.subject,
                &verified.audience.join(","),
            ));
        }
        let lifetime = self.lifetime.load(Ordering::SeqCst);
        Ok((
            access_token(&self.tenant, client_id, resource, lifetime),
            lifetime,
        ))
    }
}

/// A JWT-shaped access token (header and claims as Entra writes them; the signature is random
/// bytes: SDKs treat access tokens as opaque).
fn access_token(tenant: &str, client_id: &str, resource: &str, lifetime: u64) -> String {
    let now = unix_now();
    let header = serde_json::json!({"typ": "JWT", "alg": "RS256", "kid": "fakecloud-entra"});
    let oid = sha256_hex(format!("{tenant}|{client_id}"));
    let claims = serde_json::json!({
        "aud": resource,
        "iss": format!("https://sts.windows.net/{tenant}/"),
        "iat": now,
        "nbf": now,
        "exp": now + lifetime,
        "appid": client_id,
        "idtyp": "app",
        "oid": format!("{}-{}-{}-{}-{}", &oid[0..8], &oid[8..12], &oid[12..16], &oid[16..20], &oid[20..32]),
        "sub": format!("{}-{}-{}-{}-{}", &oid[0..8], &oid[8..12], &oid[12..16], &oid[16..20], &oid[20..32]),
        "tid": tenant,
        "uti": random_uuid(),
        "ver": "1.0",
    });
    let sig: [u8; 32] = rand::random();
    format!(
        "{}.{}.{}{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        URL_SAFE_NO_PAD.encode(sig),
        URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>()),
    )
}

/// The form parameters of a request body.
struct Params(HashMap<String, String>);

impl Params {
    fn of(req: &Request<Bytes>) -> Params {
        Params(form_urlencoded::parse(req.body()).into_owned().collect())
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    fn record(&self, tenant: Option<&str>) -> EntraRecord {
        let assertion = self.get("client_assertion");
        let claims = assertion.and_then(peek_claims);
        EntraRecord {
            at: unix_now_f64(),
            tenant: tenant.map(str::to_string),
            client_id: self.get("client_id").map(str::to_string),
            scope: self.get("scope").map(str::to_string),
            grant_type: self.get("grant_type").map(str::to_string),
            assertion_jti: claims.as_ref().map(|c| c.jti.clone()),
            assertion_subject: claims.map(|c| c.sub),
            assertion_sha256: assertion.map(sha256_hex),
            outcome: String::new(),
            access_token: None,
            expires_in: None,
        }
    }
}

/// `/{tenant}/oauth2/v2.0/token` → the tenant.
fn tenant_of(path: &str) -> Option<&str> {
    let tenant = path.strip_prefix('/')?.strip_suffix("/oauth2/v2.0/token")?;
    (!tenant.is_empty() && !tenant.contains('/')).then_some(tenant)
}

impl Fake for FakeEntra {
    fn faults(&self) -> &Faults {
        &self.faults
    }

    async fn handle(&self, req: Request<Bytes>) -> HttpResponse {
        let Some(tenant) = tenant_of(req.uri().path()) else {
            return error_response(
                &EntraError::new(
                    404,
                    "invalid_request",
                    900_561,
                    "The endpoint only serves /{tenant}/oauth2/v2.0/token.",
                ),
                None,
            );
        };
        let params = Params::of(&req);
        let mut record = params.record(Some(tenant));
        let result = if req.method() == Method::POST {
            self.exchange(tenant, &params)
        } else {
            Err(EntraError::new(
                400,
                "invalid_request",
                900_561,
                "The endpoint only accepts POST, OPTIONS requests. Received a GET request.",
            ))
        };
        let response = match result {
            Ok((token, lifetime)) => {
                self.issued.fetch_add(1, Ordering::SeqCst);
                let body = serde_json::json!({
                    "token_type": "Bearer",
                    "expires_in": lifetime,
                    "ext_expires_in": lifetime,
                    "access_token": token,
                });
                record.outcome = "issued".into();
                record.access_token = Some(token);
                record.expires_in = Some(lifetime);
                json(200, body.to_string())
            }
            Err(err) => {
                record.outcome = err.outcome();
                error_response(&err, None)
            }
        };
        self.push(record);
        response
    }

    /// `code` is an AADSTS number (`70021`, `AADSTS700024`, …) or an `error` name
    /// (`invalid_scope`, `temporarily_unavailable`).
    fn render_error(&self, code: &str) -> HttpResponse {
        let subject = crate::aws::DEMO_SUBJECT;
        let iss = self.issuer.url();
        let n = code.trim_start_matches("AADSTS").parse::<u64>().ok();
        let err = match (n, code) {
            (Some(70_021), _) => EntraError::no_fic(iss, subject, ENTRA_AUDIENCE),
            (Some(700_211), _) => EntraError::no_fic_issuer(iss),
            (Some(700_213), _) => EntraError::no_fic_subject(subject),
            (Some(700_024), _) => {
                let now = unix_now();
                EntraError::expired(now - 60, now - 3660)
            }
            (Some(700_016), _) => EntraError::app_not_found(DEMO_CLIENT_ID, &self.tenant),
            (Some(70_011), _) | (None, "invalid_scope") => {
                EntraError::scope_not_valid("https://management.azure.com//.default")
            }
            (Some(1_002_012), _) => EntraError::scope_without_default("https://vault.azure.net"),
            (Some(90_055), _) | (None, "temporarily_unavailable") => EntraError::throttled(),
            (Some(n), _) => EntraError::new(400, "invalid_request", n, "Injected error."),
            (None, _) => EntraError {
                status: 400,
                error: "invalid_request",
                code: None,
                text: format!("Injected error {code}."),
            },
        };
        error_response(&err, None)
    }

    fn render_status(&self, status: u16, retry_after: Option<u64>) -> HttpResponse {
        let err = match status {
            429 => EntraError::throttled(),
            500.. => EntraError::unavailable(status),
            _ => EntraError {
                status,
                error: "invalid_request",
                code: None,
                text: format!("Injected HTTP {status}."),
            },
        };
        error_response(&err, retry_after)
    }

    fn log_json(&self) -> serde_json::Value {
        serde_json::to_value(&*self.log.lock()).unwrap_or_default()
    }

    fn record_fault(&self, req: &Request<Bytes>, fault: &Fault) {
        let mut record = Params::of(req).record(tenant_of(req.uri().path()));
        record.outcome = format!("fault:{}", fault.kind());
        self.push(record);
    }
}

fn json(status: u16, body: String) -> HttpResponse {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    set_content_type(&mut resp, "application/json; charset=utf-8");
    resp
}

/// Entra's error document: `error`, `error_description` (`AADSTS<n>: text Trace ID: …
/// Correlation ID: … Timestamp: …`), `error_codes`, `timestamp`, `trace_id`, `correlation_id`,
/// `error_uri`.
fn error_response(err: &EntraError, retry_after: Option<u64>) -> HttpResponse {
    let trace = random_uuid();
    let correlation = random_uuid();
    let timestamp = iso8601(unix_now()).replace('T', " ");
    let prefix = err.code.map(|n| format!("AADSTS{n}: ")).unwrap_or_default();
    let mut body = serde_json::json!({
        "error": err.error,
        "error_description": format!(
            "{prefix}{} Trace ID: {trace} Correlation ID: {correlation} Timestamp: {timestamp}",
            err.text
        ),
        "error_codes": err.code.into_iter().collect::<Vec<u64>>(),
        "timestamp": timestamp,
        "trace_id": trace,
        "correlation_id": correlation,
    });
    if let Some(n) = err.code {
        body["error_uri"] = format!("https://login.microsoftonline.com/error?code={n}").into();
    }
    let mut resp = json(err.status, body.to_string());
    if let Some(secs) = retry_after {
        resp.headers_mut()
            .insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_paths() {
        assert_eq!(tenant_of("/t1/oauth2/v2.0/token"), Some("t1"));
        assert_eq!(tenant_of("//oauth2/v2.0/token"), None);
        assert_eq!(tenant_of("/a/b/oauth2/v2.0/token"), None);
        assert_eq!(tenant_of("/t1/oauth2/token"), None);
    }

    #[test]
    fn access_tokens_are_jwt_shaped_and_unique() {
        let a = access_token(
            DEMO_TENANT_ID,
            DEMO_CLIENT_ID,
            "https://vault.azure.net",
            3599,
        );
        let b = access_token(
            DEMO_TENANT_ID,
            DEMO_CLIENT_ID,
            "https://vault.azure.net",
            3599,
        );
        assert_ne!(a, b);
        assert_eq!(a.split('.').count(), 3);
        let claims: serde_json::Value = serde_json::from_slice(
            &URL_SAFE_NO_PAD
                .decode(a.split('.').nth(1).unwrap())
                .unwrap(),
        )
        .unwrap();
        assert_eq!(claims["aud"], "https://vault.azure.net");
        assert_eq!(claims["tid"], DEMO_TENANT_ID);
    }
}

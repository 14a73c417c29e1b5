//! A faithful fake of Google's Security Token Service (`POST /v1/token`) and IAM Credentials
//! (`generateAccessToken`, `generateIdToken`), on one server (docs/gcp.md, "STS token exchange" and
//! "IAM Credentials"):
//!
//! - STS checks the grant and token types, the workload identity provider audience (its exact
//!   resource-name form), the subject JWT (RS256 with a `kid`, signature against the [`Issuer`],
//!   `aud` equal to the provider's canonical name with or without `https:`, `iat` in the past,
//!   a lifetime under 48 h, `sub` ≤ 127 characters), an optional attribute condition, and clamps
//!   the federated token's lifetime to the subject token's `exp`. Errors use the OAuth shape
//!   `{"error":..,"error_description":..}`.
//! - IAM Credentials requires the `-` project wildcard, a live STS token with the
//!   `cloud-platform` (or `iam`) scope as bearer, a `roles/iam.workloadIdentityUser` binding of
//!   the federated principal on the service account, and a lifetime within the 1 h default
//!   maximum (12 h with the lifetime-extension policy). Errors use the Google API shape
//!   `{"error":{"code":..,"message":..,"status":..,"details":[..]}}`.
//!
//! Admin: `POST /_fake/bindings` `{"service_account":..,"member":..,"bound":bool}` adds or
//! removes a binding; `GET /_fake/log` records every request with the SHA-256 of the subject
//! token (never the token itself) and the tokens issued.

use crate::http::Running;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, StatusCode};
use parking_lot::Mutex;
use serde::Serialize;
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::aws::sha256_hex;
use crate::faults::{Fault, Faults};
use crate::http::{Fake, HttpResponse, ServeOptions, json_response, serve};
use crate::issuer::{Issuer, VerifyError, peek_claims};
use crate::timefmt::{iso8601, unix_now, unix_now_f64};

/// The demo project.
pub const DEMO_PROJECT_ID: &str = "credbroker-demo";
pub const DEMO_PROJECT_NUMBER: &str = "314159265358";
/// The demo workload identity pool and its OIDC provider.
pub const DEMO_POOL: &str = "credbroker-pool";
pub const DEMO_PROVIDER: &str = "kubernetes";
/// The Google service account the demo impersonates.
pub const DEMO_SERVICE_ACCOUNT: &str = "credbroker-demo@credbroker-demo.iam.gserviceaccount.com";

pub const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
pub const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
pub const JWT_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";
pub const ID_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:id_token";
pub const CLOUD_PLATFORM: &str = "https://www.googleapis.com/auth/cloud-platform";
const IAM_SCOPE: &str = "https://www.googleapis.com/auth/iam";
/// Federated tokens live at most an hour (and never past the subject token's `exp`).
const STS_LIFETIME: u64 = 3600;
/// generateAccessToken's default and maximum lifetime; 12 h with the org policy exception.
const DEFAULT_LIFETIME: u64 = 3600;
const EXTENDED_MAX_LIFETIME: u64 = 43_200;
/// Google ID tokens live one hour.
const ID_TOKEN_LIFETIME: u64 = 3600;
/// STS rejects subject tokens valid for 48 h or more.
const MAX_SUBJECT_LIFETIME: u64 = 48 * 3600;
/// `google.subject` is limited to 127 characters.
const MAX_SUBJECT_CHARS: usize = 127;
const LOG_CAPACITY: usize = 10_000;
/// Live STS tokens remembered (for the bearer check); expired ones are pruned first.
const GRANT_CAPACITY: usize = 10_000;
const RATE_LIMIT_MESSAGE: &str = "[Security Token Service] The request was throttled due to rate limit. Please retry after a few seconds.";
const INVALID_AUDIENCE_MESSAGE: &str = "Invalid value for \"audience\". This value should be the full resource name of the Identity Provider. See https://cloud.google.com/iam/docs/reference/sts/rest/v1/TopLevel/token for the list of possible formats.";
const INVALID_TARGET_MESSAGE: &str = "The target service indicated by the \"audience\" parameters is invalid. This might either be because the pool or provider is disabled or deleted or because it doesn't exist.";
const UNAUTHENTICATED_MESSAGE: &str = "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential. See https://developers.google.com/identity/sign-in/web/devconsole-project.";

/// `//iam.googleapis.com/projects/NUM/locations/global/workloadIdentityPools/POOL/providers/PROV`.
pub fn provider_name(number: &str, pool: &str, provider: &str) -> String {
    format!(
        "//iam.googleapis.com/projects/{number}/locations/global/workloadIdentityPools/{pool}/providers/{provider}"
    )
}

/// The audience the projected token carries: the provider's name with `https:` (what
/// `gcloud iam workload-identity-pools create-cred-config` and the docs use by default).
pub fn token_audience() -> String {
    format!(
        "https:{}",
        provider_name(DEMO_PROJECT_NUMBER, DEMO_POOL, DEMO_PROVIDER)
    )
}

/// `principal://iam.googleapis.com/projects/NUM/locations/global/workloadIdentityPools/POOL/subject/SUB`.
pub fn principal(number: &str, pool: &str, subject: &str) -> String {
    format!(
        "principal://iam.googleapis.com/projects/{number}/locations/global/workloadIdentityPools/{pool}/subject/{subject}"
    )
}

/// One request as the fake saw it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GcpRecord {
    /// Unix seconds.
    pub at: f64,
    /// `sts`, `generateAccessToken`, `generateIdToken` or `unknown`.
    pub api: String,
    /// STS: the provider audience; generateIdToken: the requested audience.
    pub audience: Option<String>,
    pub scopes: Vec<String>,
    pub service_account: Option<String>,
    /// STS: the subject token's `sub`; IAM: the calling principal.
    pub subject: Option<String>,
    /// Hex SHA-256 of the STS `subject_token`; the token itself is never stored.
    pub subject_token_sha256: Option<String>,
    pub lifetime: Option<String>,
    pub include_email: Option<bool>,
    /// `issued`, `error:<code>` or `fault:<kind>`.
    pub outcome: String,
    pub status: u16,
    /// The access token or ID token handed out (tests compare what SDKs received).
    pub token: Option<String>,
    pub expires_in: Option<u64>,
    pub expire_time: Option<String>,
}

impl GcpRecord {
    fn new(api: &str) -> GcpRecord {
        GcpRecord {
            at: unix_now_f64(),
            api: api.to_string(),
            audience: None,
            scopes: Vec::new(),
            service_account: None,
            subject: None,
            subject_token_sha256: None,
            lifetime: None,
            include_email: None,
            outcome: String::new(),
            status: 0,
            token: None,
            expires_in: None,
            expire_time: None,
        }
    }
}

/// A workload identity pool provider.
#[derive(Debug, Clone)]
struct Provider {
    /// Empty: the provider's canonical name, with or without `https:`.
    allowed_audiences: Vec<String>,
    /// Attribute condition as subject prefixes; `None` accepts every subject.
    subject_prefixes: Option<Vec<String>>,
}

#[derive(Debug, Clone)]
struct ServiceAccount {
    unique_id: String,
    members: HashSet<String>,
    /// `constraints/iam.allowServiceAccountCredentialLifetimeExtension` covers this account.
    lifetime_extension: bool,
}

/// A federated token STS issued.
#[derive(Debug, Clone)]
struct Grant {
    principal: String,
    scopes: Vec<String>,
    expires_at: u64,
}

/// An error in one of the two shapes.
#[derive(Debug, Clone)]
enum GcpError {
    /// STS (OAuth 2.0 / RFC 6749 §5.2).
    OAuth {
        status: u16,
        error: String,
        description: String,
    },
    /// Google APIs (`google.rpc.Status`).
    Api {
        code: u16,
        status: &'static str,
        message: String,
        reason: Option<&'static str>,
        permission: Option<&'static str>,
    },
}

impl GcpError {
    fn oauth(error: &str, description: impl Into<String>) -> GcpError {
        let status = match error {
            "temporarily_unavailable" => 503,
            "server_error" | "internal_failure" => 500,
            "rate_limit_exceeded" => 429,
            _ => 400,
        };
        GcpError::OAuth {
            status,
            error: error.to_string(),
            description: description.into(),
        }
    }

    fn api(code: u16, message: impl Into<String>) -> GcpError {
        GcpError::Api {
            code,
            status: api_status(code),
            message: message.into(),
            reason: None,
            permission: None,
        }
    }

    fn denied(permission: &'static str) -> GcpError {
        GcpError::Api {
            code: 403,
            status: "PERMISSION_DENIED",
            message: format!("Permission '{permission}' denied on resource (or it may not exist)."),
            reason: Some("IAM_PERMISSION_DENIED"),
            permission: Some(permission),
        }
    }

    fn code(&self) -> String {
        match self {
            GcpError::OAuth { error, .. } => error.clone(),
            GcpError::Api { status, .. } => status.to_string(),
        }
    }

    fn status(&self) -> u16 {
        match self {
            GcpError::OAuth { status, .. } => *status,
            GcpError::Api { code, .. } => *code,
        }
    }

    fn render(&self) -> HttpResponse {
        let body = match self {
            GcpError::OAuth {
                error, description, ..
            } => json!({"error": error, "error_description": description}),
            GcpError::Api {
                code,
                status,
                message,
                reason,
                permission,
            } => {
                let mut error = json!({"code": code, "message": message, "status": status});
                if let Some(reason) = reason {
                    error["details"] = json!([{
                        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                        "reason": reason,
                        "domain": "iam.googleapis.com",
                        "metadata": {"permission": permission.unwrap_or_default()},
                    }]);
                }
                json!({ "error": error })
            }
        };
        json_response(
            StatusCode::from_u16(self.status()).unwrap_or(StatusCode::BAD_REQUEST),
            &body,
        )
    }
}

/// The canonical `google.rpc.Code` name for an HTTP status.
fn api_status(code: u16) -> &'static str {
    match code {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        409 => "ABORTED",
        429 => "RESOURCE_EXHAUSTED",
        499 => "CANCELLED",
        501 => "UNIMPLEMENTED",
        503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        _ => "INTERNAL",
    }
}

/// The fake Google token services. Use [`FakeGcp::start`] to serve them.
#[derive(Debug)]
pub struct FakeGcp {
    issuer: Arc<Issuer>,
    /// Signs ID tokens as `https://accounts.google.com`.
    google: Issuer,
    project_number: String,
    faults: Faults,
    providers: Mutex<HashMap<(String, String), Provider>>,
    accounts: Mutex<HashMap<String, ServiceAccount>>,
    grants: Mutex<HashMap<String, Grant>>,
    log: Mutex<Vec<GcpRecord>>,
    issued: AtomicUsize,
    /// Test hook: lifetime of every access token issued, whatever was asked (0 = off).
    lifetime_override: AtomicU64,
}

/// A running [`FakeGcp`]; derefs to it. Dropping it stops the server.
pub type FakeGcpHandle = Running<FakeGcp>;

impl Running<FakeGcp> {
    /// The STS endpoint (`token_url`).
    pub fn token_url(&self) -> String {
        format!("{}/v1/token", self.url())
    }

    /// The `service_account_impersonation_url` for `email`.
    pub fn impersonation_url(&self, email: &str) -> String {
        format!(
            "{}/v1/projects/-/serviceAccounts/{email}:generateAccessToken",
            self.url()
        )
    }
}

impl FakeGcp {
    /// The demo project: its pool and provider, and [`DEMO_SERVICE_ACCOUNT`] with no bindings.
    pub fn new(issuer: Arc<Issuer>) -> FakeGcp {
        let gcp = FakeGcp {
            issuer,
            google: Issuer::new("https://accounts.google.com"),
            project_number: DEMO_PROJECT_NUMBER.to_string(),
            faults: Faults::new(),
            providers: Mutex::new(HashMap::new()),
            accounts: Mutex::new(HashMap::new()),
            grants: Mutex::new(HashMap::new()),
            log: Mutex::new(Vec::new()),
            issued: AtomicUsize::new(0),
            lifetime_override: AtomicU64::new(0),
        };
        gcp.add_provider(DEMO_POOL, DEMO_PROVIDER);
        gcp.add_service_account(DEMO_SERVICE_ACCOUNT);
        gcp
    }

    pub async fn start(issuer: Arc<Issuer>, addr: SocketAddr) -> io::Result<FakeGcpHandle> {
        let gcp = Arc::new(FakeGcp::new(issuer));
        let server = serve(gcp.clone(), addr, ServeOptions::default()).await?;
        Ok(Running::new(gcp, server))
    }

    pub fn project_number(&self) -> &str {
        &self.project_number
    }

    /// Adds a provider with no attribute condition and the default audiences.
    pub fn add_provider(&self, pool: &str, provider: &str) {
        self.providers.lock().insert(
            (pool.to_string(), provider.to_string()),
            Provider {
                allowed_audiences: Vec::new(),
                subject_prefixes: None,
            },
        );
    }

    /// Restricts a provider to subjects starting with one of `prefixes` (an attribute condition).
    pub fn set_attribute_condition(&self, pool: &str, provider: &str, prefixes: &[&str]) {
        if let Some(p) = self
            .providers
            .lock()
            .get_mut(&(pool.to_string(), provider.to_string()))
        {
            p.subject_prefixes = Some(prefixes.iter().map(|s| s.to_string()).collect());
        }
    }

    /// Sets a provider's `allowedAudiences` (empty restores the default).
    pub fn set_allowed_audiences(&self, pool: &str, provider: &str, audiences: &[&str]) {
        if let Some(p) = self
            .providers
            .lock()
            .get_mut(&(pool.to_string(), provider.to_string()))
        {
            p.allowed_audiences = audiences.iter().map(|s| s.to_string()).collect();
        }
    }

    pub fn add_service_account(&self, email: &str) {
        let hash = sha256_hex(email);
        // A 21-digit unique id, stable per email.
        let unique_id: String = std::iter::once('1')
            .chain(hash.bytes().take(20).map(|b| char::from(b'0' + b % 10)))
            .collect();
        self.accounts
            .lock()
            .entry(email.to_string())
            .or_insert(ServiceAccount {
                unique_id,
                members: HashSet::new(),
                lifetime_extension: false,
            });
    }

    /// Grants (or revokes) `roles/iam.workloadIdentityUser` on `email` to `member`, a
    /// `principal://…` or `principalSet://…/*` (every identity of a pool).
    pub fn bind(&self, email: &str, member: &str, bound: bool) {
        if let Some(sa) = self.accounts.lock().get_mut(email) {
            if bound {
                sa.members.insert(member.to_string());
            } else {
                sa.members.remove(member);
            }
        }
    }

    /// Binds the principal of `subject` in the demo pool to `email`.
    pub fn trust(&self, email: &str, subject: &str) {
        let member = principal(&self.project_number, DEMO_POOL, subject);
        self.bind(email, &member, true);
    }

    pub fn allow_lifetime_extension(&self, email: &str, allowed: bool) {
        if let Some(sa) = self.accounts.lock().get_mut(email) {
            sa.lifetime_extension = allowed;
        }
    }

    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    /// Test hook, not a Google behaviour: STS and `generateAccessToken` tokens expire
    /// `lifetime` after issue whatever was asked, so refreshes happen within seconds.
    pub fn set_issued_lifetime(&self, lifetime: Option<std::time::Duration>) {
        let secs = lifetime.map_or(0, |d| d.as_secs().max(1));
        self.lifetime_override.store(secs, Ordering::SeqCst);
    }

    fn lifetime_or(&self, asked: u64) -> u64 {
        match self.lifetime_override.load(Ordering::SeqCst) {
            0 => asked,
            forced => forced,
        }
    }

    pub fn log(&self) -> Vec<GcpRecord> {
        self.log.lock().clone()
    }

    /// Tokens issued so far (STS and IAM together).
    pub fn issued_count(&self) -> usize {
        self.issued.load(Ordering::SeqCst)
    }

    fn push(&self, record: GcpRecord) {
        let mut log = self.log.lock();
        if log.len() >= LOG_CAPACITY {
            log.remove(0);
        }
        log.push(record);
    }

    // === STS ===

    fn sts(&self, req: &Request<Bytes>, rec: &mut GcpRecord) -> Result<Value, GcpError> {
        if req.method() != Method::POST {
            return Err(GcpError::oauth(
                "invalid_request",
                "The token endpoint only accepts POST.",
            ));
        }
        let p = StsParams::of(req)?;
        rec.audience = p.get("audience").map(str::to_string);
        rec.scopes = p.scopes();
        let token = p.get("subject_token");
        rec.subject_token_sha256 = token.map(sha256_hex);
        rec.subject = token.and_then(peek_claims).map(|c| c.sub);

        if p.get("grant_type") != Some(GRANT_TYPE) {
            return Err(GcpError::oauth(
                "unsupported_grant_type",
                format!("Invalid value for \"grant_type\". Expected \"{GRANT_TYPE}\"."),
            ));
        }
        if p.get("requested_token_type") != Some(ACCESS_TOKEN_TYPE) {
            return Err(GcpError::oauth(
                "invalid_request",
                format!(
                    "Invalid value for \"requested_token_type\". Expected \"{ACCESS_TOKEN_TYPE}\"."
                ),
            ));
        }
        match p.get("subject_token_type") {
            Some(JWT_TOKEN_TYPE | ID_TOKEN_TYPE) => {}
            Some(_) => {
                return Err(GcpError::oauth(
                    "invalid_request",
                    "Invalid value for \"subject_token_type\". The subject token type is not supported by this OIDC provider.",
                ));
            }
            None => {
                return Err(GcpError::oauth(
                    "invalid_request",
                    "Missing required parameter: subject_token_type.",
                ));
            }
        }
        let Some(token) = token.filter(|t| !t.is_empty()) else {
            return Err(GcpError::oauth(
                "invalid_request",
                "Missing required parameter: subject_token.",
            ));
        };
        let audience = p.get("audience").unwrap_or_default();
        let (number, pool, provider_id) =
            parse_provider(audience).ok_or_else(|| match audience {
                a if a.starts_with("//iam.googleapis.com/locations/global/workforcePools/") => {
                    GcpError::oauth("invalid_target", INVALID_TARGET_MESSAGE)
                }
                _ => GcpError::oauth("invalid_request", INVALID_AUDIENCE_MESSAGE),
            })?;
        let provider = match self.providers.lock().get(&(pool.clone(), provider_id)) {
            Some(p) if number == self.project_number => p.clone(),
            _ => return Err(GcpError::oauth("invalid_target", INVALID_TARGET_MESSAGE)),
        };
        if rec.scopes.is_empty() {
            return Err(GcpError::oauth(
                "invalid_scope",
                "Scope(s) must be provided.",
            ));
        }

        let subject = self.verify_subject(token, audience, &provider)?;
        let now = unix_now();
        let expires_at = (now + self.lifetime_or(STS_LIFETIME)).min(subject.exp);
        let access_token = format!("ya29.d.{}", random_b64(180));
        rec.token = Some(access_token.clone());
        rec.expires_in = Some(expires_at - now);
        let mut grants = self.grants.lock();
        if grants.len() >= GRANT_CAPACITY {
            grants.retain(|_, g| g.expires_at > now);
        }
        if grants.len() < GRANT_CAPACITY {
            grants.insert(
                access_token.clone(),
                Grant {
                    principal: principal(&number, &pool, &subject.subject),
                    scopes: rec.scopes.clone(),
                    expires_at,
                },
            );
        }
        Ok(json!({
            "access_token": access_token,
            "issued_token_type": ACCESS_TOKEN_TYPE,
            "token_type": "Bearer",
            "expires_in": expires_at - now,
        }))
    }

    /// The subject JWT checks of the STS reference.
    fn verify_subject(
        &self,
        token: &str,
        audience: &str,
        provider: &Provider,
    ) -> Result<crate::issuer::VerifiedToken, GcpError> {
        let grant = |m: String| GcpError::oauth("invalid_grant", m);
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| grant("Unable to parse the ID Token.".into()))?;
        if header.kid.is_none() {
            return Err(grant(
                "The ID Token header must contain a \"kid\" (key ID).".into(),
            ));
        }
        if header.alg != jsonwebtoken::Algorithm::RS256 {
            return Err(grant(format!(
                "The ID Token is signed with {:?}; only RS256 is supported.",
                header.alg
            )));
        }
        let accepted: Vec<String> = if provider.allowed_audiences.is_empty() {
            vec![format!("https:{audience}"), audience.to_string()]
        } else {
            provider.allowed_audiences.clone()
        };
        let claims = peek_claims(token).unwrap_or_default();
        let mut last = VerifyError::WrongAudience;
        let mut verified = None;
        for aud in &accepted {
            match self.issuer.verify(token, aud) {
                Ok(v) => {
                    verified = Some(v);
                    break;
                }
                Err(e) => last = e,
            }
        }
        let Some(verified) = verified else {
            return Err(grant(match last {
                VerifyError::Expired => format!(
                    "ID Token expired at {}; current time is {}.",
                    claims.exp.unwrap_or(0),
                    unix_now()
                ),
                VerifyError::WrongAudience => format!(
                    "The audience in ID Token does not match the expected audience {}.",
                    accepted.join(" or ")
                ),
                VerifyError::WrongIssuer => format!(
                    "The issuer in ID Token {} does not match the expected issuer {}.",
                    claims.iss,
                    self.issuer.url()
                ),
                VerifyError::BadSignature => "Invalid ID Token signature.".to_string(),
                VerifyError::Malformed => "Unable to parse the ID Token.".to_string(),
            }));
        };
        let now = unix_now();
        if verified.issued_at > now {
            return Err(grant(format!(
                "ID Token issued at {} is in the future.",
                verified.issued_at
            )));
        }
        if verified.exp.saturating_sub(verified.issued_at) >= MAX_SUBJECT_LIFETIME {
            return Err(grant(
                "The ID Token's lifetime (exp - iat) must be less than 48 hours.".into(),
            ));
        }
        if verified.subject.chars().count() > MAX_SUBJECT_CHARS {
            return Err(GcpError::oauth(
                "invalid_request",
                "The mapped attribute 'google.subject' exceeds the 127 byte limit.",
            ));
        }
        if let Some(prefixes) = &provider.subject_prefixes
            && !prefixes.iter().any(|p| verified.subject.starts_with(p))
        {
            return Err(GcpError::oauth(
                "unauthorized_client",
                "The given credential is rejected by the attribute condition.",
            ));
        }
        Ok(verified)
    }

    // === IAM Credentials ===

    fn iam(&self, req: &Request<Bytes>, rec: &mut GcpRecord) -> Result<Value, GcpError> {
        let path = req.uri().path();
        let rest = path.strip_prefix("/v1/projects/").ok_or_else(|| {
            GcpError::api(404, format!("The requested URL {path} was not found."))
        })?;
        let (project, rest) = rest.split_once("/serviceAccounts/").ok_or_else(|| {
            GcpError::api(404, format!("The requested URL {path} was not found."))
        })?;
        let (account, method) = rest.rsplit_once(':').ok_or_else(|| {
            GcpError::api(404, format!("The requested URL {path} was not found."))
        })?;
        let account = percent_decode(account);
        rec.api = method.to_string();
        rec.service_account = Some(account.clone());
        let permission = match method {
            "generateAccessToken" => "iam.serviceAccounts.getAccessToken",
            "generateIdToken" => "iam.serviceAccounts.getOpenIdToken",
            _ => {
                return Err(GcpError::api(
                    404,
                    format!("The requested URL {path} was not found."),
                ));
            }
        };
        if req.method() != Method::POST {
            return Err(GcpError::api(
                404,
                format!("The requested URL {path} was not found."),
            ));
        }
        if project != "-" {
            return Err(GcpError::api(
                400,
                format!(
                    "Invalid resource name projects/{project}/serviceAccounts/{account}: the project must be the wildcard \"-\"."
                ),
            ));
        }
        let bearer = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let now = unix_now();
        let grant = bearer
            .and_then(|b| self.grants.lock().get(b.trim()).cloned())
            .filter(|g| g.expires_at > now)
            .ok_or_else(|| GcpError::api(401, UNAUTHENTICATED_MESSAGE))?;
        rec.subject = Some(grant.principal.clone());
        if !grant
            .scopes
            .iter()
            .any(|s| s == CLOUD_PLATFORM || s == IAM_SCOPE)
        {
            return Err(GcpError::Api {
                code: 403,
                status: "PERMISSION_DENIED",
                message: "Request had insufficient authentication scopes.".into(),
                reason: Some("ACCESS_TOKEN_SCOPE_INSUFFICIENT"),
                permission: None,
            });
        }
        let sa = {
            let accounts = self.accounts.lock();
            let found = accounts
                .get(&account)
                .or_else(|| accounts.values().find(|sa| sa.unique_id == account));
            match found {
                Some(sa) if self.is_member(sa, &grant.principal) => sa.clone(),
                _ => return Err(GcpError::denied(permission)),
            }
        };
        let body: Value = serde_json::from_slice(req.body())
            .map_err(|e| GcpError::api(400, format!("Invalid JSON payload received. {e}")))?;
        if let Some(delegates) = body.get("delegates").and_then(Value::as_array)
            && !delegates.is_empty()
        {
            // The fake has no delegation chains: every delegate lacks Token Creator.
            return Err(GcpError::denied(permission));
        }
        if method == "generateAccessToken" {
            let scopes: Vec<String> = body
                .get("scope")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default();
            rec.scopes = scopes.clone();
            if scopes.is_empty() {
                return Err(GcpError::api(400, "Scope required."));
            }
            let lifetime = match body.get("lifetime") {
                None => DEFAULT_LIFETIME,
                Some(v) => {
                    let text = v.as_str().unwrap_or_default();
                    rec.lifetime = Some(text.to_string());
                    parse_duration(text).ok_or_else(|| {
                        GcpError::api(
                            400,
                            format!("Invalid value at 'lifetime' (type.googleapis.com/google.protobuf.Duration), \"{text}\""),
                        )
                    })?
                }
            };
            let max = if sa.lifetime_extension {
                EXTENDED_MAX_LIFETIME
            } else {
                DEFAULT_LIFETIME
            };
            if lifetime == 0 || lifetime > max {
                return Err(GcpError::api(
                    400,
                    format!(
                        "The lifetime must be between 1 and {max} seconds; requested {lifetime} seconds."
                    ),
                ));
            }
            let token = format!("ya29.c.{}", random_b64(180));
            let lifetime = self.lifetime_or(lifetime);
            let expire_time = iso8601(now + lifetime);
            rec.token = Some(token.clone());
            rec.expires_in = Some(lifetime);
            rec.expire_time = Some(expire_time.clone());
            Ok(json!({"accessToken": token, "expireTime": expire_time}))
        } else {
            let audience = body
                .get("audience")
                .and_then(Value::as_str)
                .unwrap_or_default();
            rec.audience = Some(audience.to_string());
            if audience.is_empty() {
                return Err(GcpError::api(400, "Audience required."));
            }
            let include_email = body
                .get("includeEmail")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            rec.include_email = Some(include_email);
            let mut claims = json!({
                "iss": "https://accounts.google.com",
                "aud": audience,
                "azp": sa.unique_id,
                "sub": sa.unique_id,
                "iat": now,
                "exp": now + ID_TOKEN_LIFETIME,
            });
            if include_email {
                claims["email"] = json!(account);
                claims["email_verified"] = json!(true);
            }
            let token = self.google.sign(&claims);
            rec.token = Some(token.clone());
            rec.expires_in = Some(ID_TOKEN_LIFETIME);
            Ok(json!({ "token": token }))
        }
    }

    fn is_member(&self, sa: &ServiceAccount, principal: &str) -> bool {
        sa.members.iter().any(|m| match m.strip_suffix("/*") {
            Some(set) => set
                .strip_prefix("principalSet://")
                .zip(principal.strip_prefix("principal://"))
                .is_some_and(|(set, p)| p.starts_with(set)),
            None => m == principal,
        })
    }
}

/// The STS request parameters: a form body, or JSON with camelCase (or snake_case) keys.
struct StsParams(HashMap<String, String>);

impl StsParams {
    fn of(req: &Request<Bytes>) -> Result<StsParams, GcpError> {
        let json = req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.starts_with("application/json"));
        let mut map = HashMap::new();
        if json {
            let body: Value = serde_json::from_slice(req.body()).map_err(|_| {
                GcpError::oauth("invalid_request", "Invalid JSON payload received.")
            })?;
            for (k, v) in body.as_object().into_iter().flatten() {
                if let Some(v) = v.as_str() {
                    map.insert(snake_case(k), v.to_string());
                }
            }
        } else {
            map.extend(form_urlencoded::parse(req.body()).into_owned());
        }
        Ok(StsParams(map))
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    fn scopes(&self) -> Vec<String> {
        self.get("scope")
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_string)
            .collect()
    }
}

fn snake_case(key: &str) -> String {
    let mut out = String::with_capacity(key.len() + 4);
    for c in key.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// `(number, pool, provider)` of a workload identity pool provider's resource name.
fn parse_provider(audience: &str) -> Option<(String, String, String)> {
    let rest = audience.strip_prefix("//iam.googleapis.com/projects/")?;
    let mut parts = rest.split('/');
    let (number, "locations", "global", "workloadIdentityPools", pool, "providers", provider) = (
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
    ) else {
        return None;
    };
    let valid = parts.next().is_none()
        && !number.is_empty()
        && number.bytes().all(|b| b.is_ascii_digit())
        && !pool.is_empty()
        && !provider.is_empty();
    valid.then(|| (number.to_string(), pool.to_string(), provider.to_string()))
}

/// A protobuf JSON `Duration`: `"3600s"`, `"3600.5s"`; whole seconds, fractions dropped.
fn parse_duration(text: &str) -> Option<u64> {
    let secs = text.strip_suffix('s')?;
    let (whole, frac) = secs.split_once('.').unwrap_or((secs, "0"));
    if whole.is_empty() || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    whole.parse().ok()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .filter(|h| h.iter().all(u8::is_ascii_hexdigit));
        if let (b'%', Some(hex)) = (b[i], hex)
            && let Ok(v) = u8::from_str_radix(&String::from_utf8_lossy(hex), 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn random_b64(bytes: usize) -> String {
    let raw: Vec<u8> = (0..bytes).map(|_| rand::random::<u8>()).collect();
    URL_SAFE_NO_PAD.encode(raw)
}

impl Fake for FakeGcp {
    fn faults(&self) -> &Faults {
        &self.faults
    }

    async fn handle(&self, req: Request<Bytes>) -> HttpResponse {
        let is_sts = req.uri().path() == "/v1/token";
        let mut rec = GcpRecord::new(if is_sts { "sts" } else { "unknown" });
        let result = if is_sts {
            self.sts(&req, &mut rec)
        } else {
            self.iam(&req, &mut rec)
        };
        let resp = match result {
            Ok(body) => {
                self.issued.fetch_add(1, Ordering::SeqCst);
                rec.outcome = "issued".into();
                rec.status = 200;
                json_response(StatusCode::OK, &body)
            }
            Err(err) => {
                rec.outcome = format!("error:{}", err.code());
                rec.status = err.status();
                rec.token = None;
                err.render()
            }
        };
        self.push(rec);
        resp
    }

    /// OAuth error codes render in STS's shape, `google.rpc` status names in the API shape.
    fn render_error(&self, code: &str) -> HttpResponse {
        let api = match code {
            "PERMISSION_DENIED" => Some((403, "Permission denied (injected).")),
            "UNAUTHENTICATED" => Some((401, UNAUTHENTICATED_MESSAGE)),
            "NOT_FOUND" => Some((404, "Not found (injected).")),
            "INVALID_ARGUMENT" => Some((400, "Invalid argument (injected).")),
            "RESOURCE_EXHAUSTED" => Some((429, "Quota exceeded (injected).")),
            "UNAVAILABLE" => Some((503, "The service is currently unavailable.")),
            "INTERNAL" => Some((500, "Internal error encountered.")),
            _ => None,
        };
        match api {
            Some((status, message)) => GcpError::api(status, message).render(),
            None => {
                let description = match code {
                    "invalid_request" => INVALID_AUDIENCE_MESSAGE,
                    "invalid_target" => INVALID_TARGET_MESSAGE,
                    "unauthorized_client" => {
                        "The given credential is rejected by the attribute condition."
                    }
                    "invalid_grant" => "ID Token issued at 1749625771 is stale to sign-in.",
                    "rate_limit_exceeded" => RATE_LIMIT_MESSAGE,
                    _ => "Injected error.",
                };
                GcpError::oauth(code, description).render()
            }
        }
    }

    /// A bare status in STS's OAuth shape (the first call of every exchange is STS).
    fn render_status(&self, status: u16, retry_after: Option<u64>) -> HttpResponse {
        let (error, description) = match status {
            429 => ("rate_limit_exceeded", RATE_LIMIT_MESSAGE),
            500 => ("server_error", "Internal error encountered."),
            503 => (
                "temporarily_unavailable",
                "The service is currently unavailable.",
            ),
            403 => ("access_denied", "Permission denied (injected)."),
            _ => ("invalid_request", "Injected status."),
        };
        let mut resp = json_response(
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            &json!({"error": error, "error_description": description}),
        );
        if let Some(secs) = retry_after {
            resp.headers_mut()
                .insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }

    fn log_json(&self) -> Value {
        serde_json::to_value(&*self.log.lock()).unwrap_or_default()
    }

    fn record_fault(&self, req: &Request<Bytes>, fault: &Fault) {
        let api = if req.uri().path() == "/v1/token" {
            "sts"
        } else if req.uri().path().ends_with(":generateIdToken") {
            "generateIdToken"
        } else {
            "generateAccessToken"
        };
        let mut rec = GcpRecord::new(api);
        if api == "sts"
            && let Ok(p) = StsParams::of(req)
        {
            rec.subject_token_sha256 = p.get("subject_token").map(sha256_hex);
            rec.audience = p.get("audience").map(str::to_string);
            rec.scopes = p.scopes();
        }
        rec.outcome = format!("fault:{}", fault.kind());
        self.push(rec);
    }

    fn admin(&self, req: &Request<Bytes>) -> Option<HttpResponse> {
        if req.method() != Method::POST || req.uri().path() != "/_fake/bindings" {
            return None;
        }
        let body: Value = serde_json::from_slice(req.body()).unwrap_or_default();
        let (Some(sa), Some(member)) = (
            body.get("service_account").and_then(Value::as_str),
            body.get("member").and_then(Value::as_str),
        ) else {
            return Some(json_response(
                StatusCode::BAD_REQUEST,
                &json!({"error": "expected {\"service_account\":..,\"member\":..,\"bound\":bool}"}),
            ));
        };
        let bound = body.get("bound").and_then(Value::as_bool).unwrap_or(true);
        self.bind(sa, member, bound);
        Some(json_response(StatusCode::OK, &json!({"bound": bound})))
    }
}

/// The `external_account` credential configuration (AIP-4117) a pod would be given.
pub fn external_account_json(
    token_url: &str,
    impersonation_url: Option<&str>,
    token_file: &str,
) -> Value {
    let mut doc = json!({
        "type": "external_account",
        "audience": provider_name(DEMO_PROJECT_NUMBER, DEMO_POOL, DEMO_PROVIDER),
        "subject_token_type": JWT_TOKEN_TYPE,
        "token_url": token_url,
        "credential_source": {"file": token_file, "format": {"type": "text"}},
    });
    if let Some(url) = impersonation_url {
        doc["service_account_impersonation_url"] = json!(url);
        doc["service_account_impersonation"] = json!({"token_lifetime_seconds": 3600});
    }
    doc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_names() {
        let name = provider_name("123", "pool", "prov");
        assert_eq!(
            parse_provider(&name),
            Some(("123".into(), "pool".into(), "prov".into()))
        );
        for bad in [
            "https://iam.googleapis.com/projects/123/locations/global/workloadIdentityPools/p/providers/v",
            "//iam.googleapis.com/projects/abc/locations/global/workloadIdentityPools/p/providers/v",
            "//iam.googleapis.com/projects/123/locations/global/workloadIdentityPools/p/providers/v/x",
            "//iam.googleapis.com/projects/123/locations/global/workloadIdentityPools/p",
            "identitynamespace:p.svc.id.goog:https://container.googleapis.com/x",
        ] {
            assert_eq!(parse_provider(bad), None, "{bad}");
        }
    }

    #[test]
    fn durations_and_decoding() {
        assert_eq!(parse_duration("3600s"), Some(3600));
        assert_eq!(parse_duration("3600.5s"), Some(3600));
        assert_eq!(parse_duration("3600"), None);
        assert_eq!(parse_duration("s"), None);
        assert_eq!(percent_decode("a%40b.com"), "a@b.com");
        assert_eq!(percent_decode("a@b%4"), "a@b%4");
        assert_eq!(snake_case("subjectTokenType"), "subject_token_type");
    }

    #[test]
    fn principal_sets() {
        let gcp = FakeGcp::new(Arc::new(Issuer::new("http://issuer")));
        let sa = ServiceAccount {
            unique_id: "1".into(),
            members: [format!(
                "principalSet://iam.googleapis.com/projects/{DEMO_PROJECT_NUMBER}/locations/global/workloadIdentityPools/{DEMO_POOL}/*"
            )]
            .into_iter()
            .collect(),
            lifetime_extension: false,
        };
        assert!(gcp.is_member(
            &sa,
            &principal(DEMO_PROJECT_NUMBER, DEMO_POOL, "system:serviceaccount:a:b")
        ));
        assert!(!gcp.is_member(&sa, &principal(DEMO_PROJECT_NUMBER, "other", "x")));
    }
}

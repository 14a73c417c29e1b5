//! AWS surfaces: container credentials (`/v1/credentials`) and IMDSv2 (`/latest/...`), exactly as
//! docs/aws.md ("Container credentials", "IMDSv2") describes. Bodies are rendered once per
//! credential, not per request.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_lc_rs::hmac;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::request::Parts;
use http::{HeaderName, HeaderValue, Method};
use serde::Serialize;

use super::auth::AuthToken;
use super::config::RoleArn;
use super::sts::StsCredentials;
use crate::clock::Clock;
use crate::http::guard::Refusal;
use crate::http::server::{Resp, json, respond, text};
use crate::refresh::{Slot, Unavailable};
use crate::secret::WipedBuf;
use crate::surface::{BoxFuture, Claim, ErrorShape, Surface, no_credential};
use crate::timefmt::format_rfc3339;

/// How long a request waits for an exchange in flight. botocore's IMDS timeout is 1 s and its
/// container timeout 2 s: answer (503, retried) before they give up.
const WAIT: Duration = Duration::from_millis(900);

/// A credential with its two response bodies pre-rendered.
pub struct AwsCredential {
    pub sts: StsCredentials,
    pub container_body: Bytes,
    pub imds_body: Bytes,
    /// For a chained role: the access key of the base credential it was derived from.
    pub base_key_id: Option<String>,
}

impl std::fmt::Debug for AwsCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsCredential")
            .field("sts", &self.sts)
            .finish_non_exhaustive()
    }
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ContainerBody<'a> {
    access_key_id: &'a str,
    secret_access_key: &'a str,
    token: &'a str,
    expiration: &'a str,
    account_id: &'a str,
    role_arn: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ImdsBody<'a> {
    code: &'a str,
    last_updated: &'a str,
    #[serde(rename = "Type")]
    kind: &'a str,
    access_key_id: &'a str,
    secret_access_key: &'a str,
    token: &'a str,
    expiration: &'a str,
}

fn wiped_json<T: Serialize>(value: &T) -> Bytes {
    WipedBuf::json(value)
}

impl AwsCredential {
    pub fn render(
        sts: StsCredentials,
        role: &RoleArn,
        last_updated: SystemTime,
        base_key_id: Option<String>,
    ) -> Self {
        let expiration = format_rfc3339(sts.expiration);
        let container_body = wiped_json(&ContainerBody {
            access_key_id: &sts.access_key_id,
            secret_access_key: sts.secret_access_key.expose(),
            token: sts.session_token.expose(),
            expiration: &expiration,
            account_id: &role.account,
            role_arn: &role.arn,
        });
        let imds_body = wiped_json(&ImdsBody {
            code: "Success",
            last_updated: &format_rfc3339(last_updated),
            kind: "AWS-HMAC",
            access_key_id: &sts.access_key_id,
            secret_access_key: sts.secret_access_key.expose(),
            token: sts.session_token.expose(),
            expiration: &expiration,
        });
        AwsCredential {
            sts,
            container_body,
            imds_body,
            base_key_id,
        }
    }
}

/// `{"Code":…,"Message":…}` — the error shape Go, Rust and JS SDKs decode.
fn error_body(status: u16, code: &str, message: &str) -> Resp {
    json(
        status,
        serde_json::json!({ "Code": code, "Message": message }).to_string(),
    )
}

/// AWS's "no credential": the `{Code, Message}` body; a denial without an upstream 4xx is 403.
struct AwsErrors;

impl ErrorShape for AwsErrors {
    const DENIED: u16 = 403;

    fn no_credential(status: u16, why: &Unavailable) -> Resp {
        match why {
            Unavailable::Failed(e) => error_body(status, &e.code, &e.message),
            Unavailable::Undelivered(why) => error_body(status, "CredentialsUnavailable", why),
            Unavailable::Pending | Unavailable::Expired => error_body(
                status,
                "CredentialsPending",
                "credentials are being fetched; retry shortly",
            ),
        }
    }
}

fn unavailable(why: &Unavailable) -> Resp {
    no_credential::<AwsErrors>(why)
}

/// The identities both surfaces serve: the default role, and the named ones.
pub struct Identities {
    pub(super) default: Arc<Slot<AwsCredential>>,
    pub(super) default_role: RoleArn,
    pub(super) named: BTreeMap<String, Arc<Slot<AwsCredential>>>,
}

impl Identities {
    /// The slot for a named identity.
    fn named(&self, name: &str) -> Option<&Arc<Slot<AwsCredential>>> {
        self.named.get(name)
    }

    /// IMDS names a role by its name: the default role's, or an identity's.
    fn by_imds_name(&self, name: &str) -> Option<&Arc<Slot<AwsCredential>>> {
        if name == self.default_role.name {
            Some(&self.default)
        } else {
            self.named(name)
        }
    }

    /// IMDS's role listing: one name per line.
    fn imds_listing(&self) -> String {
        let mut out = self.default_role.name.clone();
        for name in self.named.keys() {
            out.push('\n');
            out.push_str(name);
        }
        out
    }
}

// === impl ContainerSurface ===

/// `GET /v1/credentials` (the default role) and `/v1/credentials/NAME` (a named identity) with
/// `Authorization: <token>` (AWS_CONTAINER_CREDENTIALS_FULL_URI).
pub struct ContainerSurface {
    pub(super) identities: Arc<Identities>,
    /// `None`: no shared value is configured, so the endpoint is off.
    pub(super) auth: Option<Arc<AuthToken>>,
}

impl ContainerSurface {
    /// The slot a request asks for, or the refusal (every check but the credential's own).
    fn slot_for(&self, req: &Parts) -> Result<&Arc<Slot<AwsCredential>>, Box<Resp>> {
        if req.method != Method::GET && req.method != Method::HEAD {
            return Err(Box::new(error_body(405, "MethodNotAllowed", "use GET")));
        }
        let Some(auth) = &self.auth else {
            return Err(Box::new(error_body(
                404,
                "NotFound",
                "the container endpoint is off: start credbroker with --aws-auth-token-file or --aws-auth-token (IMDSv2 serves meanwhile)",
            )));
        };
        let presented = req.headers.get(http::header::AUTHORIZATION);
        match presented {
            None => {
                return Err(Box::new(error_body(
                    401,
                    "Unauthorized",
                    "the Authorization header is required",
                )));
            }
            Some(v) if !auth.matches(v.as_bytes()) => {
                return Err(Box::new(error_body(
                    403,
                    "AccessDenied",
                    "the Authorization header does not match",
                )));
            }
            Some(_) => {}
        }
        match req.uri.path() {
            "/v1/credentials" | "/v1/credentials/" => Ok(&self.identities.default),
            path => {
                let name = path
                    .strip_prefix("/v1/credentials/")
                    .unwrap_or_default()
                    .trim_end_matches('/');
                self.identities.named(name).ok_or_else(|| {
                    Box::new(error_body(
                        404,
                        "NotFound",
                        "no credentials are configured at this path (identities are /v1/credentials and /v1/credentials/NAME)",
                    ))
                })
            }
        }
    }

    fn credentials(cred: &AwsCredential) -> Resp {
        respond(200, "application/json", cred.container_body.clone())
    }

    async fn serve(&self, req: &Parts) -> Resp {
        match self.slot_for(req) {
            Ok(slot) => match slot.get(WAIT).await {
                Ok(cred) => Self::credentials(&cred.value),
                Err(u) => unavailable(&u),
            },
            Err(refused) => *refused,
        }
    }
}

impl Surface for ContainerSurface {
    fn name(&self) -> &'static str {
        "aws-container"
    }

    fn claims(&self) -> &'static [Claim] {
        &[Claim::Tree("/v1/credentials")]
    }

    fn refuse(&self, refusal: Refusal) -> Resp {
        error_body(403, "AccessDenied", refusal.message())
    }

    fn answer_now(&self, req: &Parts) -> Option<Resp> {
        match self.slot_for(req) {
            Ok(slot) => slot.get_now().map(|cred| Self::credentials(&cred.value)),
            Err(refused) => Some(*refused),
        }
    }

    fn handle<'a>(&'a self, req: &'a Parts) -> BoxFuture<'a, Resp> {
        Box::pin(self.serve(req))
    }
}

// === impl ImdsSurface ===

/// IMDSv2: `PUT /latest/api/token`, then `GET /latest/meta-data/...` with the session token.
pub struct ImdsSurface {
    pub(super) identities: Arc<Identities>,
    pub(super) region: Option<String>,
    pub(super) sessions: ImdsSessions,
}

// `HeaderName` constants: looking up by `&str` parses the name on every request.
const TTL_HEADER: HeaderName = HeaderName::from_static("x-aws-ec2-metadata-token-ttl-seconds");
const TOKEN_HEADER: HeaderName = HeaderName::from_static("x-aws-ec2-metadata-token");

/// Where an IMDS request leads once its checks are done.
enum ImdsRoute<'a> {
    /// Answered (refusals, listings, region, the identity document, session tokens).
    Done(Resp),
    /// A role's credentials.
    Credentials(&'a Arc<Slot<AwsCredential>>),
    /// `iam/info`, which needs the default role's credential.
    Info,
}

impl ImdsSurface {
    fn route(&self, req: &Parts) -> ImdsRoute<'_> {
        use ImdsRoute::Done;
        // "//latest/..." is what SDKs send when the endpoint variable ends in "/" and they
        // append "/latest/..." as it is (aws-sdk-go v1): the same resource (the contract).
        let path = req.uri.path();
        let path = path
            .strip_prefix('/')
            .filter(|p| p.starts_with("/latest"))
            .unwrap_or(path);
        if path == "/latest/api/token" {
            return Done(self.put_token(req));
        }
        if req.method != Method::GET && req.method != Method::HEAD {
            return Done(text(405, "Method Not Allowed\n"));
        }
        let session = req.headers.get(TOKEN_HEADER).and_then(|v| v.to_str().ok());
        if !session.is_some_and(|t| self.sessions.verify(t)) {
            return Done(text(
                401,
                "Unauthorized: a valid x-aws-ec2-metadata-token header is required (IMDSv2)\n",
            ));
        }
        const CREDS: &str = "/latest/meta-data/iam/security-credentials";
        match path {
            "/latest/meta-data/iam/security-credentials"
            | "/latest/meta-data/iam/security-credentials/" => {
                Done(text(200, self.identities.imds_listing()))
            }
            "/latest/meta-data/iam/info" => ImdsRoute::Info,
            "/latest/meta-data/placement/region" => Done(match &self.region {
                Some(r) => text(200, r.clone()),
                None => text(404, "Not Found\n"),
            }),
            "/latest/dynamic/instance-identity/document" => Done(self.identity_document()),
            p => match p
                .strip_prefix(CREDS)
                .and_then(|r| r.strip_prefix('/'))
                .and_then(|name| self.identities.by_imds_name(name.trim_end_matches('/')))
            {
                Some(slot) => ImdsRoute::Credentials(slot),
                None => Done(text(404, "Not Found\n")),
            },
        }
    }

    /// Real IMDS serves the credentials JSON as text/plain.
    fn credentials(cred: &AwsCredential) -> Resp {
        respond(200, "text/plain", cred.imds_body.clone())
    }

    async fn serve(&self, req: &Parts) -> Resp {
        match self.route(req) {
            ImdsRoute::Done(resp) => resp,
            ImdsRoute::Credentials(slot) => match slot.get(WAIT).await {
                Ok(cred) => Self::credentials(&cred.value),
                Err(u) => unavailable(&u),
            },
            ImdsRoute::Info => self.info().await,
        }
    }

    fn put_token(&self, req: &Parts) -> Resp {
        if req.method != Method::PUT {
            return text(405, "Method Not Allowed\n");
        }
        let ttl = req
            .headers
            .get(TTL_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u32>().ok())
            .filter(|t| (1..=21_600).contains(t));
        let Some(ttl) = ttl else {
            return text(
                400,
                "Bad Request: x-aws-ec2-metadata-token-ttl-seconds must be 1..21600\n",
            );
        };
        let mut resp = text(200, self.sessions.issue(ttl));
        resp.headers_mut()
            .insert(TTL_HEADER, HeaderValue::from(ttl));
        resp
    }

    async fn info(&self) -> Resp {
        let updated = match self.identities.default.get(WAIT).await {
            Ok(cred) => {
                format_rfc3339(cred.expires_wall - cred.expires_at.duration_since(cred.issued_at))
            }
            Err(u) => return unavailable(&u),
        };
        let role = &self.identities.default_role;
        let body = serde_json::json!({
            "Code": "Success",
            "LastUpdated": updated,
            "InstanceProfileArn": format!("arn:{}:iam::{}:instance-profile/{}", role.partition, role.account, role.name),
            "InstanceProfileId": "AIPACREDBROKER000000",
        });
        respond(200, "text/plain", body.to_string())
    }

    fn identity_document(&self) -> Resp {
        let body = serde_json::json!({
            "accountId": self.identities.default_role.account,
            "region": self.region,
            "instanceId": "i-credbroker",
        });
        respond(200, "text/plain", body.to_string())
    }
}

impl Surface for ImdsSurface {
    fn name(&self) -> &'static str {
        "aws-imds"
    }

    fn claims(&self) -> &'static [Claim] {
        &[Claim::Tree("/latest"), Claim::Tree("//latest")]
    }

    fn refuse(&self, refusal: Refusal) -> Resp {
        text(403, refusal.message())
    }

    fn answer_now(&self, req: &Parts) -> Option<Resp> {
        match self.route(req) {
            ImdsRoute::Done(resp) => Some(resp),
            ImdsRoute::Credentials(slot) => slot.get_now().map(|c| Self::credentials(&c.value)),
            ImdsRoute::Info => None,
        }
    }

    fn handle<'a>(&'a self, req: &'a Parts) -> BoxFuture<'a, Resp> {
        Box::pin(self.serve(req))
    }
}

// === impl ImdsSessions ===

/// Stateless IMDSv2 session tokens: `expiry.nonce.hmac`, keyed per process. Verifying needs no
/// table, so a flood of token PUTs costs no memory.
///
/// SDKs reuse one session token for its whole TTL (botocore: 6 h), so the last few tokens that
/// verified are remembered with their expiry: a request presenting one of them (compared in
/// constant time) skips the HMAC, which was a quarter of the instructions of serving IMDS
/// credentials. Forged or altered tokens never match a remembered one and still get the HMAC.
pub struct ImdsSessions {
    key: hmac::Key,
    clock: Arc<dyn Clock>,
    verified: parking_lot::Mutex<Verified>,
}

/// Tokens that verified, with their expiry (Unix seconds); replaced round-robin.
#[derive(Default)]
struct Verified {
    slots: [Option<(Box<str>, u64)>; VERIFIED_SLOTS],
    next: usize,
}

/// One per client process that holds its own session token; more only costs an HMAC.
const VERIFIED_SLOTS: usize = 4;

impl Verified {
    /// The expiry of `token` if it verified before.
    fn expiry_of(&self, token: &str) -> Option<u64> {
        // Every slot is compared, so the time taken does not tell which one matched.
        let mut found = None;
        for (t, expiry) in self.slots.iter().flatten() {
            if crate::secret::constant_time_eq(t.as_bytes(), token.as_bytes()) {
                found = Some(*expiry);
            }
        }
        found
    }

    fn remember(&mut self, token: &str, expiry: u64) {
        self.slots[self.next] = Some((token.into(), expiry));
        self.next = (self.next + 1) % VERIFIED_SLOTS;
    }
}

impl ImdsSessions {
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        // Generating a key only fails if the OS RNG does, which is fatal anyway.
        let key = hmac::Key::generate(hmac::HMAC_SHA256, &rng).expect("system RNG available");
        ImdsSessions {
            key,
            clock,
            verified: parking_lot::Mutex::new(Verified::default()),
        }
    }

    pub fn issue(&self, ttl_secs: u32) -> String {
        let expiry = self.clock.unix_secs() + u64::from(ttl_secs);
        let nonce: [u8; 12] = rand::random();
        let payload = format!("{expiry}.{}", URL_SAFE_NO_PAD.encode(nonce));
        let tag = hmac::sign(&self.key, payload.as_bytes());
        format!("{payload}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
    }

    pub fn verify(&self, token: &str) -> bool {
        if token.len() > 128 {
            return false;
        }
        let now = self.clock.unix_secs();
        if let Some(expiry) = self.verified.lock().expiry_of(token) {
            return expiry > now;
        }
        let Some((payload, tag)) = token.rsplit_once('.') else {
            return false;
        };
        let Ok(tag) = URL_SAFE_NO_PAD.decode(tag) else {
            return false;
        };
        if hmac::verify(&self.key, payload.as_bytes(), &tag).is_err() {
            return false;
        }
        let expiry = payload
            .split('.')
            .next()
            .and_then(|e| e.parse::<u64>().ok());
        match expiry {
            Some(e) if e > now => {
                self.verified.lock().remember(token, e);
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests;

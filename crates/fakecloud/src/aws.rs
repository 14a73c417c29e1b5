//! A faithful fake of AWS STS (awsQuery protocol, XML responses): `AssumeRoleWithWebIdentity`
//! (unsigned, real JWT verification against an [`Issuer`]), and, SigV4-signed with credentials
//! this fake issued, `AssumeRole` for role chaining and `GetCallerIdentity` ([`chain`]); real
//! parameter validation, a role trust table, and the real error codes in the real
//! `ErrorResponse` shape. The signature is verified by hand ([`sigv4`]), independently of the
//! `aws-sigv4` crate the broker signs with.

mod chain;
mod sigv4;

use crate::http::Running;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use parking_lot::Mutex;
use rand::Rng;
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::faults::{Fault, Faults};
use crate::http::{Fake, HttpResponse, ServeOptions, serve, set_content_type};
use crate::issuer::{Issuer, VerifyError, peek_claims, random_uuid};
use crate::timefmt::{iso8601, unix_now, unix_now_f64};

/// The role the demo and default configuration trust.
pub const DEMO_ROLE_ARN: &str = "arn:aws:iam::123456789012:role/credbroker-demo";
/// The account of [`DEMO_ROLE_ARN`].
pub const DEMO_ACCOUNT: &str = "123456789012";
/// The subject [`DEMO_ROLE_ARN`] trusts by default (`ServiceAccount::default()`).
pub const DEMO_SUBJECT: &str = "system:serviceaccount:default:app";
/// The region the fake claims to be.
pub const DEFAULT_REGION: &str = "us-east-1";
/// The audience STS requires in web identity tokens.
pub const STS_AUDIENCE: &str = "sts.amazonaws.com";
/// The only API version STS has.
pub const STS_VERSION: &str = "2011-06-15";

const XMLNS: &str = "https://sts.amazonaws.com/doc/2011-06-15/";
const ACTION: &str = "AssumeRoleWithWebIdentity";
/// `DurationSeconds` bounds from the STS model: 15 minutes to 12 hours.
const MIN_DURATION: u64 = 900;
const MAX_DURATION: u64 = 43_200;
const DEFAULT_DURATION: u64 = 3_600;
/// Roles accept the STS maximum unless told otherwise (real IAM defaults to 3600).
const DEFAULT_MAX_SESSION: u64 = MAX_DURATION;
/// Inline session policies share a 2048-character budget; `PackedPolicySize` is a percentage of it.
const POLICY_BUDGET: usize = 2_048;
/// Log entries kept (oldest dropped first), so a long demo run cannot grow without bound.
const LOG_CAPACITY: usize = 10_000;

/// One request as seen by the fake (rejected and faulted ones included).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StsRecord {
    /// Unix seconds.
    pub at: f64,
    pub action: Option<String>,
    pub role_arn: Option<String>,
    pub session_name: Option<String>,
    pub duration_seconds: Option<u64>,
    pub token_jti: Option<String>,
    pub token_subject: Option<String>,
    /// Hex SHA-256 of the `WebIdentityToken`; the token itself is never stored.
    pub token_sha256: Option<String>,
    /// `AssumeRole`'s `ExternalId`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
    /// `AssumeRole`'s `SourceIdentity` as requested.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_identity: Option<String>,
    /// `AssumeRole`'s `Tags.member.N` as requested (a member without `Key` or `Value` is
    /// recorded with an empty string).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<SessionTag>,
    /// `AssumeRole`'s `TransitiveTagKeys.member.N` as requested.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub transitive_tag_keys: Vec<String>,
    /// On an issued `AssumeRole`: the calling session's transitive tags, propagated into the new
    /// session (the new session's tags are these plus [`StsRecord::tags`]).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub inherited_tags: Vec<SessionTag>,
    /// The access key id named in the SigV4 `Authorization` header (whether or not it verified).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub caller_access_key_id: Option<String>,
    /// The ARN of the authenticated caller: `arn:aws:sts::ACCOUNT:assumed-role/ROLE/SESSION`
    /// (or an IAM user ARN for keys from [`FakeSts::create_access_key`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub caller_arn: Option<String>,
    /// `issued` (credentials handed out), `answered` (`GetCallerIdentity`), `error:<Code>` or
    /// `fault:<kind>`.
    pub outcome: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credentials: Option<IssuedCredentials>,
}

/// A session tag (`Tags.member.N.Key` / `.Value`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SessionTag {
    pub key: String,
    pub value: String,
}

/// Who a set of credentials this fake issued (or created) is: what `GetCallerIdentity` answers
/// and what `AssumeRole` carries along a chain. The secret is not part of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Identity {
    pub access_key_id: String,
    /// `arn:aws:sts::ACCOUNT:assumed-role/ROLE/SESSION`, or `arn:aws:iam::ACCOUNT:user/NAME`.
    pub arn: String,
    /// `AROA…:SESSION` for a role session, `AIDA…` for a user.
    pub user_id: String,
    pub account: String,
    /// The IAM role of a role session (`arn:aws:iam::ACCOUNT:role/NAME`); `None` for a user.
    pub role_arn: Option<String>,
    /// Set for temporary credentials, which must carry it as `X-Amz-Security-Token`.
    #[serde(skip)]
    pub session_token: Option<String>,
    /// Unix seconds; `None` for a user's long-term key.
    pub expires_at: Option<u64>,
    pub source_identity: Option<String>,
    /// The session's tags: the ones it was given and the transitive ones it inherited.
    pub tags: Vec<SessionTag>,
    /// Keys of [`Identity::tags`] that pass on to sessions this one creates.
    pub transitive_tag_keys: Vec<String>,
}

impl Identity {
    /// Whether this is an assumed-role session (so `AssumeRole` with it is role chaining).
    pub fn is_role_session(&self) -> bool {
        self.role_arn.is_some()
    }
}

/// A long-term access key created by [`FakeSts::create_access_key`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessKey {
    pub access_key_id: String,
    pub secret_access_key: String,
}

/// Credentials handed out by a successful exchange.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct IssuedCredentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: String,
    /// `YYYY-MM-DDTHH:MM:SSZ`.
    pub expiration: String,
}

#[derive(Debug, Clone)]
struct Role {
    /// Exact subjects, or prefixes ending in `*` (like an IAM `StringLike` condition).
    subjects: HashSet<String>,
    /// `AssumeRole` trust: principal ARN (a role, an assumed-role session, a user, or an
    /// account's `:root`) to what its statement allows.
    principals: HashMap<String, Trust>,
    max_session: u64,
}

/// One `AssumeRole` trust statement for one principal.
#[derive(Debug, Clone)]
struct Trust {
    /// The `sts:ExternalId` the statement requires, if any.
    external_id: Option<String>,
    /// Whether the statement also allows `sts:TagSession` (needed to pass session tags, and to
    /// carry transitive tags along a chain).
    tag_session: bool,
    /// Whether the statement also allows `sts:SetSourceIdentity`.
    set_source_identity: bool,
}

impl Role {
    fn new() -> Role {
        Role {
            subjects: HashSet::new(),
            principals: HashMap::new(),
            max_session: DEFAULT_MAX_SESSION,
        }
    }

    fn trusts(&self, subject: &str) -> bool {
        self.subjects
            .iter()
            .any(|pattern| match pattern.strip_suffix('*') {
                Some(prefix) => subject.starts_with(prefix),
                None => pattern == subject,
            })
    }
}

/// The fake STS service. Use [`FakeSts::start`] to serve it.
#[derive(Debug)]
pub struct FakeSts {
    issuer: Arc<Issuer>,
    faults: Faults,
    roles: Mutex<HashMap<String, Role>>,
    log: Mutex<Vec<StsRecord>>,
    issued: AtomicUsize,
    exchanges: AtomicUsize,
    /// Test hook: issue credentials that expire after this many seconds whatever was asked.
    lifetime_override: Mutex<Option<u64>>,
    /// Per-role lifetime overrides (seconds), ahead of `lifetime_override`.
    role_lifetimes: Mutex<HashMap<String, u64>>,
    /// Every credential this fake issued or created, by access key id, with its secret.
    identities: Mutex<HashMap<String, StoredIdentity>>,
    /// The region SigV4 credential scopes must name.
    region: Mutex<String>,
}

#[derive(Debug, Clone)]
struct StoredIdentity {
    secret: String,
    identity: Identity,
}

/// Issued credentials kept before expired ones are pruned; expired ones stay an hour so that
/// using them still answers `ExpiredToken`.
const IDENTITY_CAPACITY: usize = 50_000;

/// A running [`FakeSts`]; derefs to it. Dropping it stops the server.
pub type FakeStsHandle = Running<FakeSts>;

/// An STS error: code, message; the HTTP status and fault type follow from the code.
#[derive(Debug, Clone)]
struct StsError {
    code: String,
    message: String,
}

impl StsError {
    fn new(code: &str, message: impl Into<String>) -> StsError {
        StsError {
            code: code.to_string(),
            message: message.into(),
        }
    }
}

/// HTTP status STS uses for an error code (docs/aws.md, "Error codes and retries"); unknown codes
/// are client errors.
pub fn status_for_code(code: &str) -> u16 {
    match code {
        "IDPRejectedClaim" | "AccessDenied" | "RegionDisabledException" => 403,
        // The signature and credential errors (AWS "Common Errors"; ExpiredToken: see
        // `sigv4::EXPIRED_TOKEN`). IncompleteSignature is 400.
        "InvalidClientTokenId"
        | "SignatureDoesNotMatch"
        | "MissingAuthenticationToken"
        | "ExpiredToken" => 403,
        "InternalFailure" => 500,
        "ServiceUnavailable" => 503,
        _ => 400,
    }
}

fn default_message(code: &str) -> &'static str {
    match code {
        "InvalidIdentityToken" => "Incorrect token audience",
        "ExpiredTokenException" => {
            "Token expired: current date/time must be before the expiration date/time"
        }
        "IDPCommunicationError" => {
            "Couldn't retrieve verification key from your identity provider, please reference AssumeRoleWithWebIdentity documentation for requirements"
        }
        "IDPRejectedClaim" => "The identity provider rejected the claim",
        "AccessDenied" => "Not authorized to perform sts:AssumeRoleWithWebIdentity",
        "RegionDisabledException" => {
            "STS is not activated in this region for account:123456789012. Your account administrator can activate STS in this region using the IAM Console."
        }
        "Throttling" => "Rate exceeded",
        "InternalFailure" => {
            "The request processing has failed because of an unknown error, exception or failure."
        }
        "ServiceUnavailable" => "Service is unavailable. Please try again later.",
        "MalformedPolicyDocument" => "The policy is not in the valid JSON format.",
        "PackedPolicyTooLarge" => {
            "The total packed size of the session policies and session tags exceeds the limit."
        }
        "ExpiredToken" => sigv4::EXPIRED_TOKEN,
        "InvalidClientTokenId" => sigv4::UNKNOWN_KEY,
        "SignatureDoesNotMatch" => sigv4::SIGNATURE_MISMATCH,
        "MissingAuthenticationToken" => sigv4::MISSING_AUTH,
        "IncompleteSignature" => "The request signature does not conform to AWS standards.",
        _ => "Injected error",
    }
}

/// The awsQuery parameters of one request: query string, then (for POST) the form body.
struct Params(HashMap<String, String>);

impl Params {
    fn of(req: &Request<Bytes>) -> Params {
        let mut map = HashMap::new();
        if let Some(query) = req.uri().query() {
            map.extend(form_urlencoded::parse(query.as_bytes()).into_owned());
        }
        if req.method() == Method::POST {
            map.extend(form_urlencoded::parse(req.body()).into_owned());
        }
        Params(map)
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// The members of an awsQuery list, `PREFIX.member.N[SUFFIX]`, ordered by `N`.
    fn list(&self, prefix: &str, suffix: &str) -> Vec<(u32, &str)> {
        let head = format!("{prefix}.member.");
        let mut members: Vec<(u32, &str)> = self
            .0
            .iter()
            .filter_map(|(k, v)| {
                let n = k.strip_prefix(&head)?.strip_suffix(suffix)?;
                Some((n.parse().ok()?, v.as_str()))
            })
            .collect();
        members.sort_unstable();
        members
    }

    /// `Tags.member.N.Key/Value` by `N`, either half possibly missing.
    fn tags(&self) -> Vec<(Option<&str>, Option<&str>)> {
        let keys = self.list("Tags", ".Key");
        let values = self.list("Tags", ".Value");
        let mut ns: Vec<u32> = keys.iter().chain(&values).map(|(n, _)| *n).collect();
        ns.sort_unstable();
        ns.dedup();
        ns.into_iter()
            .map(|n| (find_member(&keys, n), find_member(&values, n)))
            .collect()
    }

    /// `TransitiveTagKeys.member.N`.
    fn transitive_tag_keys(&self) -> Vec<&str> {
        self.list("TransitiveTagKeys", "")
            .into_iter()
            .map(|(_, v)| v)
            .collect()
    }

    /// A log record with whatever the request carried; `outcome` is filled in later.
    fn record(&self, req: &Request<Bytes>) -> StsRecord {
        let token = self.get("WebIdentityToken");
        let claims = token.and_then(peek_claims);
        StsRecord {
            at: unix_now_f64(),
            action: self.get("Action").map(str::to_string),
            role_arn: self.get("RoleArn").map(str::to_string),
            session_name: self.get("RoleSessionName").map(str::to_string),
            duration_seconds: self.get("DurationSeconds").and_then(|d| d.parse().ok()),
            token_jti: claims.as_ref().map(|c| c.jti.clone()),
            token_subject: claims.map(|c| c.sub),
            token_sha256: token.map(sha256_hex),
            external_id: self.get("ExternalId").map(str::to_string),
            source_identity: self.get("SourceIdentity").map(str::to_string),
            tags: self
                .tags()
                .into_iter()
                .map(|(k, v)| SessionTag {
                    key: k.unwrap_or_default().to_string(),
                    value: v.unwrap_or_default().to_string(),
                })
                .collect(),
            transitive_tag_keys: self
                .transitive_tag_keys()
                .into_iter()
                .map(str::to_string)
                .collect(),
            inherited_tags: Vec::new(),
            caller_access_key_id: sigv4::claimed_access_key(req),
            caller_arn: None,
            outcome: String::new(),
            credentials: None,
        }
    }
}

fn find_member<'a>(list: &[(u32, &'a str)], n: u32) -> Option<&'a str> {
    list.iter().find(|(m, _)| *m == n).map(|(_, v)| *v)
}

/// A parsed IAM role ARN `arn:PARTITION:iam::ACCOUNT:role/[PATH/]NAME`.
struct RoleArn<'a> {
    partition: &'a str,
    account: &'a str,
    name: &'a str,
}

fn parse_role_arn(arn: &str) -> Option<RoleArn<'_>> {
    let mut parts = arn.splitn(6, ':');
    let ("arn", partition, "iam", "", account, resource) = (
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
    ) else {
        return None;
    };
    let path_and_name = resource.strip_prefix("role/")?;
    let name = path_and_name.rsplit('/').next()?;
    let valid = !partition.is_empty()
        && account.len() == 12
        && account.bytes().all(|b| b.is_ascii_digit())
        && !name.is_empty();
    valid.then_some(RoleArn {
        partition,
        account,
        name,
    })
}

/// `[\w+=,.@-]*`, the `RoleSessionName` pattern (`\w` is ASCII in AWS's Java regexes).
fn valid_session_name_chars(name: &str) -> bool {
    name.chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || "+=,.@-".contains(c))
}

impl FakeSts {
    /// A fake STS verifying tokens with `issuer`, trusting [`DEMO_SUBJECT`] on [`DEMO_ROLE_ARN`].
    pub fn new(issuer: Arc<Issuer>) -> FakeSts {
        let sts = FakeSts {
            issuer,
            faults: Faults::new(),
            roles: Mutex::new(HashMap::new()),
            log: Mutex::new(Vec::new()),
            issued: AtomicUsize::new(0),
            exchanges: AtomicUsize::new(0),
            lifetime_override: Mutex::new(None),
            role_lifetimes: Mutex::new(HashMap::new()),
            identities: Mutex::new(HashMap::new()),
            region: Mutex::new(DEFAULT_REGION.to_string()),
        };
        sts.trust(DEMO_ROLE_ARN, DEMO_SUBJECT);
        sts
    }

    /// Serves a new fake STS on `addr` (port 0 allowed).
    pub async fn start(issuer: Arc<Issuer>, addr: SocketAddr) -> io::Result<FakeStsHandle> {
        let sts = Arc::new(FakeSts::new(issuer));
        let server = serve(sts.clone(), addr, ServeOptions::default()).await?;
        Ok(Running::new(sts, server))
    }

    /// Lets `subject` assume `role_arn` (creating the role if needed). A subject ending in
    /// `*` matches every subject with that prefix.
    pub fn trust(&self, role_arn: &str, subject: &str) {
        self.roles
            .lock()
            .entry(role_arn.to_string())
            .or_insert_with(Role::new)
            .subjects
            .insert(subject.to_string());
    }

    /// Lets `from_role_arn` call `AssumeRole` on `target_role_arn` (creating the target role if
    /// needed), like a trust policy statement `{"Principal":{"AWS":FROM},"Action":"sts:AssumeRole"}`
    /// with, when `required_external_id` is set, `"Condition":{"StringEquals":{"sts:ExternalId":..}}`.
    /// `from_role_arn` is a role ARN (any session of that role), an assumed-role session ARN, an
    /// IAM user ARN (see [`FakeSts::create_access_key`]) or `arn:aws:iam::ACCOUNT:root` (anyone in
    /// the account). The statement also allows `sts:TagSession` and `sts:SetSourceIdentity`
    /// (see [`FakeSts::set_trust_actions`]). Calling it again replaces the statement.
    /// Also `POST /_fake/trust_role` with `{"role_arn":..,"from_role_arn":..,"external_id":..}`
    /// (and optionally `"tag_session":false`, `"set_source_identity":false`).
    pub fn trust_role(
        &self,
        target_role_arn: &str,
        from_role_arn: &str,
        required_external_id: Option<&str>,
    ) {
        self.roles
            .lock()
            .entry(target_role_arn.to_string())
            .or_insert_with(Role::new)
            .principals
            .insert(
                from_role_arn.to_string(),
                Trust {
                    external_id: required_external_id.map(str::to_string),
                    tag_session: true,
                    set_source_identity: true,
                },
            );
    }

    /// Whether the trust statement [`FakeSts::trust_role`] made for `from_role_arn` on
    /// `target_role_arn` also allows `sts:TagSession` (passing session tags, and inheriting
    /// transitive ones along a chain) and `sts:SetSourceIdentity`. Without them `AssumeRole`
    /// answers `AccessDenied` "… is not authorized to perform: sts:TagSession on resource: …"
    /// (IAM User Guide, "Permissions required to add session tags" and "Permissions required to
    /// set source identity"). Returns whether such a statement exists.
    pub fn set_trust_actions(
        &self,
        target_role_arn: &str,
        from_role_arn: &str,
        tag_session: bool,
        set_source_identity: bool,
    ) -> bool {
        let mut roles = self.roles.lock();
        match roles
            .get_mut(target_role_arn)
            .and_then(|r| r.principals.get_mut(from_role_arn))
        {
            Some(trust) => {
                trust.tag_session = tag_session;
                trust.set_source_identity = set_source_identity;
                true
            }
            None => false,
        }
    }

    /// Removes `from_role_arn` from `target_role_arn`'s `AssumeRole` trust (the role stays).
    /// Also `DELETE /_fake/trust_role` with `{"role_arn":..,"from_role_arn":..}`.
    pub fn untrust_role(&self, target_role_arn: &str, from_role_arn: &str) {
        if let Some(role) = self.roles.lock().get_mut(target_role_arn) {
            role.principals.remove(from_role_arn);
        }
    }

    /// Creates a long-term access key (`AKIA…`) for the IAM user `user_arn`
    /// (`arn:aws:iam::ACCOUNT:user/NAME`), to sign `AssumeRole` as a user rather than a role
    /// session (no role-chaining limit). `None` if the ARN is not a user ARN.
    pub fn create_access_key(&self, user_arn: &str) -> Option<AccessKey> {
        let mut parts = user_arn.splitn(6, ':');
        let ("arn", _, "iam", "", account, resource) = (
            parts.next()?,
            parts.next()?,
            parts.next()?,
            parts.next()?,
            parts.next()?,
            parts.next()?,
        ) else {
            return None;
        };
        resource.strip_prefix("user/")?;
        let key = AccessKey {
            access_key_id: format!("AKIA{}", random_chars(UPPER_ALNUM, 16)),
            secret_access_key: random_chars(SECRET_CHARS, 40),
        };
        self.register(
            key.secret_access_key.clone(),
            Identity {
                access_key_id: key.access_key_id.clone(),
                arn: user_arn.to_string(),
                user_id: unique_id("AIDA", user_arn),
                account: account.to_string(),
                role_arn: None,
                session_token: None,
                expires_at: None,
                source_identity: None,
                tags: Vec::new(),
                transitive_tag_keys: Vec::new(),
            },
        );
        Some(key)
    }

    /// What the fake knows of the credentials with this access key id (issued or created).
    pub fn identity(&self, access_key_id: &str) -> Option<Identity> {
        self.identities
            .lock()
            .get(access_key_id)
            .map(|s| s.identity.clone())
    }

    /// Test hook: the credentials with this access key id expire now (signed calls with them
    /// then answer `ExpiredToken`). Returns whether the key was known.
    /// Also `POST /_fake/expire` with `{"access_key_id":..}`.
    pub fn expire_credentials(&self, access_key_id: &str) -> bool {
        match self.identities.lock().get_mut(access_key_id) {
            Some(stored) => {
                stored.identity.expires_at = Some(unix_now().saturating_sub(1));
                true
            }
            None => false,
        }
    }

    /// The region SigV4 credential scopes must name (default [`DEFAULT_REGION`]).
    pub fn set_region(&self, region: &str) {
        *self.region.lock() = region.to_string();
    }

    pub fn region(&self) -> String {
        self.region.lock().clone()
    }

    fn register(&self, secret: String, identity: Identity) {
        let mut identities = self.identities.lock();
        if identities.len() >= IDENTITY_CAPACITY {
            let cutoff = unix_now().saturating_sub(3600);
            identities.retain(|_, s| s.identity.expires_at.is_none_or(|e| e > cutoff));
        }
        identities.insert(
            identity.access_key_id.clone(),
            StoredIdentity { secret, identity },
        );
    }

    /// Removes `subject` from `role_arn`'s trust policy (the role stays).
    pub fn untrust(&self, role_arn: &str, subject: &str) {
        if let Some(role) = self.roles.lock().get_mut(role_arn) {
            role.subjects.remove(subject);
        }
    }

    /// Deletes a role; assuming it then fails with `AccessDenied`.
    pub fn remove_role(&self, role_arn: &str) {
        self.roles.lock().remove(role_arn);
    }

    /// Test hook, not an STS behaviour: credentials expire `lifetime` after issue whatever
    /// `DurationSeconds` asked, so tests can drive refresh cycles in seconds. `None` restores STS.
    /// Also `POST /_fake/lifetime` with `{"seconds": N}` or `{"seconds": null}`.
    pub fn set_issued_lifetime(&self, lifetime: Option<std::time::Duration>) {
        *self.lifetime_override.lock() = lifetime.map(|d| d.as_secs());
    }

    /// [`FakeSts::set_issued_lifetime`] for one role only (e.g. a chain's base, so that it
    /// is re-issued while the role chained from it is not yet due). `None` removes it.
    pub fn set_role_issued_lifetime(&self, role_arn: &str, lifetime: Option<std::time::Duration>) {
        let mut map = self.role_lifetimes.lock();
        match lifetime {
            Some(d) => map.insert(role_arn.to_string(), d.as_secs()),
            None => map.remove(role_arn),
        };
    }

    /// Sets a role's MaxSessionDuration (seconds); longer `DurationSeconds` are rejected.
    pub fn set_max_session_duration(&self, role_arn: &str, seconds: u64) {
        if let Some(role) = self.roles.lock().get_mut(role_arn) {
            role.max_session = seconds;
        }
    }

    pub fn issuer(&self) -> &Arc<Issuer> {
        &self.issuer
    }

    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    /// Every recorded request, oldest first.
    pub fn log(&self) -> Vec<StsRecord> {
        self.log.lock().clone()
    }

    /// Credentials issued so far (`AssumeRoleWithWebIdentity` and `AssumeRole`).
    pub fn issued_count(&self) -> usize {
        self.issued.load(Ordering::SeqCst)
    }

    /// Requests that reached the handler (not replaced by a fault, admin calls excluded).
    pub fn exchanges(&self) -> usize {
        self.exchanges.load(Ordering::SeqCst)
    }

    fn push(&self, record: StsRecord) {
        let mut log = self.log.lock();
        if log.len() >= LOG_CAPACITY {
            log.remove(0);
        }
        log.push(record);
    }

    /// Fresh temporary credentials lasting `duration` (or the test override), and their
    /// expiry in Unix seconds.
    fn new_credentials(&self, role_arn: &str, duration: u64) -> (IssuedCredentials, u64) {
        let lifetime = self.role_lifetimes.lock().get(role_arn).copied();
        let lifetime = lifetime.or(*self.lifetime_override.lock());
        let expires_at = unix_now() + lifetime.unwrap_or(duration);
        let creds = IssuedCredentials {
            access_key_id: format!("ASIA{}", random_chars(UPPER_ALNUM, 16)),
            secret_access_key: random_chars(SECRET_CHARS, 40),
            session_token: session_token(),
            expiration: iso8601(expires_at),
        };
        (creds, expires_at)
    }

    /// Validates and performs one exchange; returns the response XML and the credentials.
    fn assume(
        &self,
        p: &Params,
        request_id: &str,
    ) -> Result<(String, IssuedCredentials), StsError> {
        let version = p.get("Version");
        match p.get("Action") {
            None | Some("") => {
                return Err(StsError::new("MissingAction", "Missing Action"));
            }
            Some(ACTION) if version.is_none_or(|v| v == STS_VERSION) => {}
            Some(action) => {
                return Err(StsError::new(
                    "InvalidAction",
                    format!(
                        "Could not find operation {action} for version {}",
                        version.unwrap_or("NO_VERSION_SPECIFIED")
                    ),
                ));
            }
        }
        let required = |name: &str| {
            p.get(name).ok_or_else(|| {
                StsError::new(
                    "MissingParameter",
                    format!("The request must contain the parameter {name}"),
                )
            })
        };
        let role_arn = required("RoleArn")?;
        let session = required("RoleSessionName")?;
        let token = required("WebIdentityToken")?;

        let mut problems = Vec::new();
        // Messages are plain text: `error_response` escapes them once.
        let value = |v: &str| v.to_string();
        if !(20..=2048).contains(&role_arn.chars().count()) {
            problems.push(format!(
                "Value '{}' at 'roleArn' failed to satisfy constraint: Member must have length {}",
                value(role_arn),
                if role_arn.chars().count() < 20 {
                    "greater than or equal to 20"
                } else {
                    "less than or equal to 2048"
                }
            ));
        }
        let session_len = session.chars().count();
        if session_len < 2 {
            problems.push(format!("Value '{}' at 'roleSessionName' failed to satisfy constraint: Member must have length greater than or equal to 2", value(session)));
        } else if session_len > 64 {
            problems.push(format!("Value '{}' at 'roleSessionName' failed to satisfy constraint: Member must have length less than or equal to 64", value(session)));
        }
        if !valid_session_name_chars(session) {
            problems.push(format!("Value '{}' at 'roleSessionName' failed to satisfy constraint: Member must satisfy regular expression pattern: [\\w+=,.@-]*", value(session)));
        }
        let token_len = token.chars().count();
        if token_len < 4 {
            problems.push("Value at 'webIdentityToken' failed to satisfy constraint: Member must have length greater than or equal to 4".into());
        } else if token_len > 20_000 {
            problems.push("Value at 'webIdentityToken' failed to satisfy constraint: Member must have length less than or equal to 20000".into());
        }
        let mut duration = DEFAULT_DURATION;
        if let Some(raw) = p.get("DurationSeconds") {
            match raw.parse::<u64>() {
                Ok(d) if d < MIN_DURATION => problems.push(format!("Value '{d}' at 'durationSeconds' failed to satisfy constraint: Member must have value greater than or equal to {MIN_DURATION}")),
                Ok(d) if d > MAX_DURATION => problems.push(format!("Value '{d}' at 'durationSeconds' failed to satisfy constraint: Member must have value less than or equal to {MAX_DURATION}")),
                Ok(d) => duration = d,
                Err(_) => problems.push(format!("Value '{}' at 'durationSeconds' failed to satisfy constraint: Member must be an integer", value(raw))),
            }
        }
        let policy = p.get("Policy");
        if let Some(policy) = policy
            && !(1..=POLICY_BUDGET).contains(&policy.chars().count())
        {
            problems.push(format!("Value at 'policy' failed to satisfy constraint: Member must have length less than or equal to {POLICY_BUDGET}"));
        }
        if !problems.is_empty() {
            let n = problems.len();
            let noun = if n == 1 { "error" } else { "errors" };
            return Err(StsError::new(
                "ValidationError",
                format!("{n} validation {noun} detected: {}", problems.join("; ")),
            ));
        }
        let Some(arn) = parse_role_arn(role_arn) else {
            return Err(StsError::new("ValidationError", "Request ARN is invalid"));
        };

        let verified = self.issuer.verify(token, STS_AUDIENCE).map_err(|err| {
            let claims = peek_claims(token).unwrap_or_default();
            match err {
                VerifyError::Expired => StsError::new(
                    "ExpiredTokenException",
                    format!(
                        "Token expired: current date/time {} must be before the expiration date/time {}",
                        unix_now(),
                        claims.exp.unwrap_or(0)
                    ),
                ),
                VerifyError::WrongAudience => {
                    StsError::new("InvalidIdentityToken", "Incorrect token audience")
                }
                VerifyError::WrongIssuer => StsError::new(
                    "InvalidIdentityToken",
                    format!(
                        "No OpenIDConnect provider found in your account for {}",
                        claims.iss
                    ),
                ),
                VerifyError::BadSignature | VerifyError::Malformed => StsError::new(
                    "InvalidIdentityToken",
                    "The web identity token that was passed could not be validated by Amazon Web Services. Get a new identity token from the identity provider and then retry the request.",
                ),
            }
        })?;

        let max_session = {
            let roles = self.roles.lock();
            match roles.get(role_arn) {
                Some(role) if role.trusts(&verified.subject) => role.max_session,
                _ => {
                    return Err(StsError::new(
                        "AccessDenied",
                        "Not authorized to perform sts:AssumeRoleWithWebIdentity",
                    ));
                }
            }
        };
        if duration > max_session {
            return Err(StsError::new(
                "ValidationError",
                "The requested DurationSeconds exceeds the MaxSessionDuration set for this role.",
            ));
        }

        let (creds, expires_at) = self.new_credentials(role_arn, duration);
        self.register(
            creds.secret_access_key.clone(),
            Identity {
                access_key_id: creds.access_key_id.clone(),
                arn: format!(
                    "arn:{}:sts::{}:assumed-role/{}/{session}",
                    arn.partition, arn.account, arn.name
                ),
                user_id: format!("{}:{session}", role_id(role_arn)),
                account: arn.account.to_string(),
                role_arn: Some(role_arn.to_string()),
                session_token: Some(creds.session_token.clone()),
                expires_at: Some(expires_at),
                source_identity: None,
                tags: Vec::new(),
                transitive_tag_keys: Vec::new(),
            },
        );
        let mut xml = String::with_capacity(2048);
        let _ = write!(
            xml,
            "<AssumeRoleWithWebIdentityResponse xmlns=\"{XMLNS}\">\n\
             \x20 <AssumeRoleWithWebIdentityResult>\n\
             \x20   <SubjectFromWebIdentityToken>{subject}</SubjectFromWebIdentityToken>\n\
             \x20   <Audience>{STS_AUDIENCE}</Audience>\n\
             \x20   <AssumedRoleUser>\n\
             \x20     <Arn>arn:{partition}:sts::{account}:assumed-role/{role}/{session}</Arn>\n\
             \x20     <AssumedRoleId>{role_id}:{session}</AssumedRoleId>\n\
             \x20   </AssumedRoleUser>\n\
             \x20   <Provider>{provider}</Provider>\n\
             \x20   <Credentials>\n\
             \x20     <AccessKeyId>{akid}</AccessKeyId>\n\
             \x20     <SecretAccessKey>{secret}</SecretAccessKey>\n\
             \x20     <SessionToken>{token}</SessionToken>\n\
             \x20     <Expiration>{expiration}</Expiration>\n\
             \x20   </Credentials>\n",
            subject = xml_escape(&verified.subject),
            partition = xml_escape(arn.partition),
            account = arn.account,
            role = xml_escape(arn.name),
            session = xml_escape(session),
            role_id = role_id(role_arn),
            provider = xml_escape(self.issuer.url()),
            akid = creds.access_key_id,
            secret = creds.secret_access_key,
            token = creds.session_token,
            expiration = creds.expiration,
        );
        if let Some(policy) = policy {
            let percent = (policy.len() * 100).div_ceil(POLICY_BUDGET).max(1);
            let _ = writeln!(xml, "    <PackedPolicySize>{percent}</PackedPolicySize>");
        }
        let _ = write!(
            xml,
            "  </AssumeRoleWithWebIdentityResult>\n\
             \x20 <ResponseMetadata>\n\
             \x20   <RequestId>{request_id}</RequestId>\n\
             \x20 </ResponseMetadata>\n\
             </AssumeRoleWithWebIdentityResponse>\n"
        );
        Ok((xml, creds))
    }
}

impl Fake for FakeSts {
    fn faults(&self) -> &Faults {
        &self.faults
    }

    async fn handle(&self, req: Request<Bytes>) -> HttpResponse {
        self.exchanges.fetch_add(1, Ordering::SeqCst);
        let params = Params::of(&req);
        let mut record = params.record(&req);
        let request_id = random_uuid();
        // The action is looked up first: AssumeRoleWithWebIdentity needs no signature (botocore's
        // model: `smithy.api#noAuth`), the others are authenticated before anything else.
        let signed = matches!(
            params.get("Action"),
            Some("AssumeRole" | "GetCallerIdentity")
        ) && params.get("Version").is_none_or(|v| v == STS_VERSION);
        let result = if signed {
            self.signed_call(&req, &params, &request_id, &mut record)
        } else {
            self.assume(&params, &request_id)
                .map(|(xml, creds)| (xml, Some(creds)))
        };
        let response = match result {
            Ok((xml, Some(creds))) => {
                self.issued.fetch_add(1, Ordering::SeqCst);
                record.outcome = "issued".into();
                record.credentials = Some(creds);
                xml_response(200, xml, &request_id)
            }
            Ok((xml, None)) => {
                record.outcome = "answered".into();
                xml_response(200, xml, &request_id)
            }
            Err(err) => {
                record.outcome = format!("error:{}", err.code);
                error_response(&err.code, &err.message, None)
            }
        };
        self.push(record);
        response
    }

    fn render_error(&self, code: &str) -> HttpResponse {
        error_response(code, default_message(code), None)
    }

    fn admin(&self, req: &Request<Bytes>) -> Option<HttpResponse> {
        let body = serde_json::from_slice::<serde_json::Value>(req.body()).ok();
        let field = |name: &str| {
            body.as_ref()
                .and_then(|b| b.get(name))
                .and_then(serde_json::Value::as_str)
        };
        let ok = match (req.method(), req.uri().path()) {
            (&Method::POST, "/_fake/lifetime") => {
                match body
                    .as_ref()
                    .map(|v| v.get("seconds").and_then(serde_json::Value::as_u64))
                {
                    Some(s) => {
                        self.set_issued_lifetime(s.map(std::time::Duration::from_secs));
                        true
                    }
                    None => false,
                }
            }
            (&Method::POST, "/_fake/trust_role") => {
                match (field("role_arn"), field("from_role_arn")) {
                    (Some(role), Some(from)) => {
                        self.trust_role(role, from, field("external_id"));
                        let allowed = |name: &str| {
                            body.as_ref()
                                .and_then(|b| b.get(name))
                                .and_then(serde_json::Value::as_bool)
                                .unwrap_or(true)
                        };
                        self.set_trust_actions(
                            role,
                            from,
                            allowed("tag_session"),
                            allowed("set_source_identity"),
                        )
                    }
                    _ => false,
                }
            }
            (&Method::DELETE, "/_fake/trust_role") => {
                match (field("role_arn"), field("from_role_arn")) {
                    (Some(role), Some(from)) => {
                        self.untrust_role(role, from);
                        true
                    }
                    _ => false,
                }
            }
            (&Method::POST, "/_fake/expire") => {
                field("access_key_id").is_some_and(|k| self.expire_credentials(k))
            }
            _ => return None,
        };
        let mut resp = Response::new(Full::new(Bytes::new()));
        *resp.status_mut() = if ok {
            StatusCode::NO_CONTENT
        } else {
            StatusCode::BAD_REQUEST
        };
        Some(resp)
    }

    fn render_status(&self, status: u16, retry_after: Option<u64>) -> HttpResponse {
        let code = match status {
            400 | 429 => "Throttling",
            403 => "AccessDenied",
            503 => "ServiceUnavailable",
            _ => "InternalFailure",
        };
        let mut resp = error_response(code, default_message(code), retry_after);
        *resp.status_mut() =
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        resp
    }

    fn log_json(&self) -> serde_json::Value {
        serde_json::to_value(&*self.log.lock()).unwrap_or_default()
    }

    fn content_type(&self) -> &'static str {
        "text/xml"
    }

    fn record_fault(&self, req: &Request<Bytes>, fault: &Fault) {
        let mut record = Params::of(req).record(req);
        record.outcome = format!("fault:{}", fault.kind());
        self.push(record);
    }
}

/// The real STS `ErrorResponse` document with the status for `code`.
fn error_response(code: &str, message: &str, retry_after: Option<u64>) -> HttpResponse {
    let status = status_for_code(code);
    let kind = if status >= 500 { "Receiver" } else { "Sender" };
    let request_id = random_uuid();
    let xml = format!(
        "<ErrorResponse xmlns=\"{XMLNS}\">\n\
         \x20 <Error>\n\
         \x20   <Type>{kind}</Type>\n\
         \x20   <Code>{code}</Code>\n\
         \x20   <Message>{message}</Message>\n\
         \x20 </Error>\n\
         \x20 <RequestId>{request_id}</RequestId>\n\
         </ErrorResponse>\n",
        code = xml_escape(code),
        message = xml_escape(message),
    );
    let mut resp = xml_response(status, xml, &request_id);
    if let Some(secs) = retry_after {
        resp.headers_mut()
            .insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
    }
    resp
}

fn xml_response(status: u16, xml: String, request_id: &str) -> HttpResponse {
    let mut resp = Response::new(Full::new(Bytes::from(xml)));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    set_content_type(&mut resp, "text/xml");
    if let Ok(id) = HeaderValue::from_str(request_id) {
        resp.headers_mut().insert("x-amzn-requestid", id);
    }
    resp
}

/// Escapes the five XML special characters. Messages may echo request values.
fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

const UPPER_ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
const SECRET_CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn random_chars(alphabet: &[u8], n: usize) -> String {
    let mut rng = rand::rng();
    (0..n)
        .map(|_| char::from(alphabet[rng.random_range(0..alphabet.len())]))
        .collect()
}

/// Real session tokens are opaque base64 of several hundred characters and start with
/// `IQoJb3JpZ2luX2Vj` ("\t\x0forigin_ec"); 384 random bytes give 512 more characters.
fn session_token() -> String {
    let mut bytes = [0u8; 384];
    rand::rng().fill(&mut bytes[..]);
    format!("IQoJb3JpZ2luX2VjE{}", STANDARD.encode(bytes))
}

/// A stable `AROA` + 17 characters role id per role ARN, like IAM's unique ids.
fn role_id(role_arn: &str) -> String {
    unique_id("AROA", role_arn)
}

/// A stable IAM-style unique id: `prefix` (`AROA` role, `AIDA` user) and 17 characters.
fn unique_id(prefix: &str, arn: &str) -> String {
    let hash = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, arn.as_bytes());
    let suffix: String = hash.as_ref()[..17]
        .iter()
        .map(|b| char::from(UPPER_ALNUM[usize::from(*b) % UPPER_ALNUM.len()]))
        .collect();
    format!("{prefix}{suffix}")
}

/// Lower-case hex SHA-256.
pub use crate::sha256_hex;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_arns() {
        let arn = parse_role_arn(DEMO_ROLE_ARN).unwrap();
        assert_eq!(
            (arn.partition, arn.account, arn.name),
            ("aws", DEMO_ACCOUNT, "credbroker-demo")
        );
        let arn = parse_role_arn("arn:aws-cn:iam::123456789012:role/path/to/r").unwrap();
        assert_eq!(arn.name, "r");
        assert!(parse_role_arn("arn:aws:iam::123:role/x").is_none());
        assert!(parse_role_arn("arn:aws:iam::123456789012:user/x").is_none());
        assert!(parse_role_arn("not an arn at all, really").is_none());
    }

    #[test]
    fn session_names() {
        assert!(valid_session_name_chars("botocore-session-1700000000"));
        assert!(valid_session_name_chars("a+b=c,d.e@f_g"));
        assert!(!valid_session_name_chars("has space"));
        assert!(!valid_session_name_chars("semi;colon"));
    }

    #[test]
    fn ids_have_real_shapes() {
        let id = role_id(DEMO_ROLE_ARN);
        assert_eq!(id.len(), 21);
        assert_eq!(id, role_id(DEMO_ROLE_ARN));
        assert!(session_token().len() >= 300);
        assert_eq!(
            sha256_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}

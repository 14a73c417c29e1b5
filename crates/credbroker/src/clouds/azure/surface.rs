//! Azure surfaces (docs/azure.md, "IMDS token endpoint" and "App Service endpoint"): the IMDS
//! managed-identity endpoint `/metadata/identity/oauth2/token` and the App Service 2019-08-01
//! endpoint `/msi/token`.
//!
//! Both turn `resource` into a scope, find (or create) that scope's cache slot, and render the
//! token in their protocol's JSON: every value a string, `resource` echoed exactly as asked.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderName, Method};

use super::AzureKey;
use super::config::{Identity, check_resource, scope_for};
use crate::clock::Clock;
use crate::exchange::Exchange;
use crate::http::guard::Refusal;
use crate::http::memo::BodyMemo;
use crate::http::server::{Resp, json, push_u64};
use crate::refresh::{Cache, Issued, Unavailable};
use crate::secret::{Secret, WipedBuf, constant_time_eq};
use crate::surface::{BoxFuture, Claim, ErrorShape, Surface, no_credential};

/// How long a request waits for an exchange in flight (typically a resource's first). Entra
/// answers in well under a second; past this the caller gets a 503 and its SDK retries
/// (azure-identity's IMDS policy retries 5xx up to 5 times over ~20 s).
pub const WAIT: Duration = Duration::from_secs(5);

/// The App Service protocol version served (the 2017-09-01 one uses a different header,
/// parameter name and date format; no current SDK sends it with `IDENTITY_HEADER`).
const APP_SERVICE_API_VERSION: &str = "2019-08-01";

/// An Entra access token as cached, one per scope.
pub struct AzureToken {
    pub access_token: Secret,
    /// Unix seconds.
    pub expires_on: u64,
    pub not_before: u64,
    /// `access_token` as a JSON string (quoted, escaped), rendered once per token: escaping
    /// a ~1 KiB token was most of the cost of serving one.
    access_token_json: Bytes,
}

impl AzureToken {
    pub fn new(access_token: Secret, expires_on: u64, not_before: u64) -> Self {
        let access_token_json = WipedBuf::json(&access_token.expose());
        AzureToken {
            access_token,
            expires_on,
            not_before,
            access_token_json,
        }
    }
}

impl std::fmt::Debug for AzureToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AzureToken")
            .field("access_token", &self.access_token)
            .field("expires_on", &self.expires_on)
            .field("not_before", &self.not_before)
            .finish_non_exhaustive()
    }
}

/// The two protocols differ in parameter names, headers and response keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    Imds,
    AppService,
}

/// How a request names the identity it wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdKind {
    ClientId,
    ObjectId,
    ResourceId,
}

impl Flavor {
    fn identity_param(self, name: &str) -> Option<IdKind> {
        match (self, name) {
            (_, "client_id") => Some(IdKind::ClientId),
            (_, "object_id") | (Flavor::AppService, "principal_id") => Some(IdKind::ObjectId),
            (_, "msi_res_id" | "mi_res_id") => Some(IdKind::ResourceId),
            _ => None,
        }
    }
}

/// A request refused before the cache is consulted: status and the `{error, error_description}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    pub status: u16,
    pub error: &'static str,
    pub description: String,
}

impl Reject {
    fn bad(description: impl Into<String>) -> Self {
        Reject {
            status: 400,
            error: "invalid_request",
            description: description.into(),
        }
    }

    pub fn render(&self) -> Resp {
        error_body(self.status, self.error, &self.description)
    }
}

fn error_body(status: u16, error: &str, description: &str) -> Resp {
    json(
        status,
        serde_json::json!({ "error": error, "error_description": description }).to_string(),
    )
}

/// A validated token request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRequest {
    /// Exactly as the caller sent it (echoed back).
    pub resource: String,
    /// `resource` as a JSON string, rendered once per parse (the memo keeps it).
    pub resource_json: Box<[u8]>,
    pub scope: Arc<str>,
    pub identity: Option<(IdKind, String)>,
}

/// Parses and validates the query of a token request.
pub fn parse_request(query: Option<&str>, flavor: Flavor) -> Result<TokenRequest, Reject> {
    let mut api_version = None;
    let mut resource = None;
    let mut identity: Option<(IdKind, String)> = None;
    let mut seen: Vec<std::borrow::Cow<'_, str>> = Vec::new();
    for (name, value) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        if seen.contains(&name) {
            return Err(Reject::bad(format!(
                "Duplicate query parameter '{name}' is not allowed"
            )));
        }
        seen.push(name.clone());
        match name.as_ref() {
            "api-version" => api_version = Some(value.into_owned()),
            "resource" => resource = Some(value.into_owned()),
            other => {
                if let Some(kind) = flavor.identity_param(other) {
                    if identity.is_some() {
                        return Err(Reject::bad(
                            "Only one of client_id, object_id and msi_res_id may be given",
                        ));
                    }
                    identity = Some((kind, value.into_owned()));
                }
            }
        }
    }
    let api_version = api_version
        .filter(|v| !v.is_empty())
        .ok_or_else(|| Reject::bad("Required query variable 'api-version' is missing"))?;
    if flavor == Flavor::AppService && api_version != APP_SERVICE_API_VERSION {
        return Err(Reject::bad(format!(
            "api-version {api_version:?} is not supported; use {APP_SERVICE_API_VERSION}"
        )));
    }
    let resource = resource
        .filter(|r| !r.is_empty())
        .ok_or_else(|| Reject::bad("Required audience variable 'resource' is missing"))?;
    check_resource(&resource).map_err(|why| Reject::bad(format!("resource {why}")))?;
    Ok(TokenRequest {
        scope: scope_for(&resource).into(),
        resource_json: json_string(&resource),
        resource,
        identity,
    })
}

/// `s` as a JSON string (quoted, escaped).
fn json_string(s: &str) -> Box<[u8]> {
    // Serialising a &str cannot fail.
    serde_json::to_vec(s).unwrap_or_default().into_boxed_slice()
}

/// The identity a request names among `identities` (the default first, answering when none
/// is named); GUIDs and ARM ids compare case-insensitively, as Azure does.
pub fn select<'a>(
    identities: &'a [Identity],
    asked: &Option<(IdKind, String)>,
) -> Option<(usize, &'a Identity)> {
    let Some((kind, value)) = asked else {
        return identities.first().map(|i| (0, i));
    };
    identities.iter().enumerate().find(|(_, identity)| {
        let ours = match kind {
            IdKind::ClientId => Some(&*identity.client_id),
            IdKind::ObjectId => identity.object_id.as_deref(),
            IdKind::ResourceId => identity.msi_res_id.as_deref(),
        };
        ours.is_some_and(|o| o.eq_ignore_ascii_case(value.trim()))
    })
}

/// The success body for `flavor`, every value a string. `now` is Unix seconds.
///
/// Rendered once per token, request and second: [`Tokens`] keeps the last body of each
/// protocol ([`BodyMemo`]).
///
/// Written straight into one buffer sized so it never grows (a grown buffer would leave an
/// unwiped copy of the token behind), key order as serde would write the documented shape.
/// Every string arrives as JSON already: the token's is rendered once per token,
/// `resource_json` once per query (the parse memo keeps it) and `client_id_json` once per
/// identity; escaping the last two on every request was ~0.65k instructions (callgrind).
pub fn render(
    flavor: Flavor,
    token: &AzureToken,
    resource_json: &[u8],
    client_id_json: &[u8],
    now: u64,
) -> Bytes {
    let expires_in = token.expires_on.saturating_sub(now);
    let room = 192 + token.access_token_json.len() + resource_json.len() + client_id_json.len();
    let mut buf: Vec<u8> = Vec::with_capacity(room);
    {
        buf.extend_from_slice(br#"{"access_token":"#);
        buf.extend_from_slice(&token.access_token_json);
        // Numbers are written digit by digit: `write!` went through core::fmt, 1.3k
        // instructions per request (callgrind).
        match flavor {
            Flavor::Imds => {
                buf.extend_from_slice(br#","refresh_token":"","expires_in":""#);
                push_u64(&mut buf, expires_in);
                buf.extend_from_slice(br#"","expires_on":""#);
                push_u64(&mut buf, token.expires_on);
                buf.extend_from_slice(br#"","not_before":""#);
                push_u64(&mut buf, token.not_before);
                buf.extend_from_slice(br#"","resource":"#);
            }
            // `expires_in` is not in the App Service documentation's example, but MSAL
            // Python's VM path and others read it; sending both, consistent, satisfies every
            // parser (docs/azure.md, "Response compatibility rules", rule 1).
            Flavor::AppService => {
                buf.extend_from_slice(br#","expires_on":""#);
                push_u64(&mut buf, token.expires_on);
                buf.extend_from_slice(br#"","expires_in":""#);
                push_u64(&mut buf, expires_in);
                buf.extend_from_slice(br#"","resource":"#);
            }
        }
        buf.extend_from_slice(resource_json);
        buf.extend_from_slice(br#","token_type":"Bearer","client_id":"#);
        buf.extend_from_slice(client_id_json);
        buf.push(b'}');
    }
    debug_assert!(buf.len() <= room, "the body outgrew its buffer");
    WipedBuf::bytes(buf)
}

/// Azure's "no token": `{error, error_description}`, Entra's own 4xx and `error` with the AADSTS
/// description after a denial (400 when it came without one).
struct AzureErrors;

impl ErrorShape for AzureErrors {
    const DENIED: u16 = 400;

    fn no_credential(status: u16, why: &Unavailable) -> Resp {
        match why {
            Unavailable::Failed(e) => error_body(status, &e.code, &e.message),
            Unavailable::Undelivered(why) => error_body(status, "temporarily_unavailable", why),
            Unavailable::Pending | Unavailable::Expired => error_body(
                status,
                "temporarily_unavailable",
                "the token is being fetched; retry shortly",
            ),
        }
    }
}

pub fn unavailable(why: &Unavailable) -> Resp {
    no_credential::<AzureErrors>(why)
}

/// What both surfaces share: the per-scope cache, the identity and the clock.
pub struct Tokens<E: Exchange<AzureKey, Credential = AzureToken>> {
    cache: Cache<AzureKey, E>,
    /// The default identity first.
    identities: Arc<Vec<Identity>>,
    /// Each identity's `client_id` as a JSON string, in `identities`' order.
    client_ids_json: Vec<Box<[u8]>>,
    clock: Arc<dyn Clock>,
    parsed: ParseMemo,
    /// Each protocol's last token body ([`Flavor`] as the index).
    bodies: [BodyMemo<BodyKey>; 2],
}

/// What a token body is rendered from: the token, the request (its `resource` is echoed), the
/// identity's index, and the `expires_in` printed.
type BodyKey = (Arc<Issued<AzureToken>>, Arc<TokenRequest>, usize, u64);

/// The last valid query string of each protocol and what it parsed to. An SDK asks with the same
/// query every time; parsing it again (percent-decoding, validating the resource, building the
/// scope: a third of the instructions of serving a token) is skipped when the bytes are equal.
#[derive(Default)]
pub struct ParseMemo(parking_lot::Mutex<[Option<Parsed>; 2]>);

/// A query string and its parse.
type Parsed = (Box<str>, Arc<TokenRequest>);

/// Queries longer than this are parsed every time, not remembered.
const MEMO_MAX_QUERY: usize = 2048;

impl ParseMemo {
    /// `parse_request(query, flavor)`, from memory when `query` is the last one that parsed.
    pub fn parse(&self, query: Option<&str>, flavor: Flavor) -> Result<Arc<TokenRequest>, Reject> {
        let q = query.unwrap_or_default();
        let slot = flavor as usize;
        if let Some((last, req)) = &self.0.lock()[slot]
            && **last == *q
        {
            return Ok(req.clone());
        }
        let req = Arc::new(parse_request(query, flavor)?);
        if q.len() <= MEMO_MAX_QUERY {
            self.0.lock()[slot] = Some((q.into(), req.clone()));
        }
        Ok(req)
    }
}

impl<E: Exchange<AzureKey, Credential = AzureToken>> Tokens<E> {
    pub fn new(
        cache: Cache<AzureKey, E>,
        identities: Vec<Identity>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Tokens {
            client_ids_json: identities
                .iter()
                .map(|i| json_string(&i.client_id))
                .collect(),
            identities: Arc::new(identities),
            cache,
            clock,
            parsed: ParseMemo::default(),
            bodies: Default::default(),
        }
    }

    /// What a token request asks for (its parse, the identity's index, the cache key), or the
    /// refusal.
    fn plan(&self, query: Option<&str>, flavor: Flavor) -> Result<Planned, Box<Resp>> {
        let req = self
            .parsed
            .parse(query, flavor)
            .map_err(|r| Box::new(r.render()))?;
        // Azure's own answer for an identity the VM does not have (docs/azure.md).
        let Some((index, identity)) = select(&self.identities, &req.identity) else {
            return Err(Box::new(
                Reject::bad(
                    "Identity not found: no managed identity of this sidecar has that client_id, object_id or msi_res_id",
                )
                .render(),
            ));
        };
        let key = AzureKey {
            client_id: identity.client_id.clone(),
            scope: req.scope.clone(),
            default: index == 0,
        };
        Ok(Planned { req, index, key })
    }

    /// The token response for `planned` from `cred`.
    fn answer(&self, flavor: Flavor, planned: &Planned, cred: &Arc<Issued<AzureToken>>) -> Resp {
        let Planned { req, index, .. } = planned;
        let index = *index;
        let now = self.clock.unix_secs();
        let expires_in = cred.value.expires_on.saturating_sub(now);
        let body = self.bodies[flavor as usize].get_or_render(
            |(c, r, i, e)| {
                Arc::ptr_eq(c, cred) && Arc::ptr_eq(r, req) && *i == index && *e == expires_in
            },
            || {
                let body = render(
                    flavor,
                    &cred.value,
                    &req.resource_json,
                    &self.client_ids_json[index],
                    now,
                );
                ((cred.clone(), req.clone(), index, expires_in), body)
            },
        );
        json(200, body)
    }

    /// [`Tokens::serve`] when it needs no waiting.
    fn serve_now(&self, query: Option<&str>, flavor: Flavor) -> Option<Resp> {
        match self.plan(query, flavor) {
            Ok(planned) => self
                .cache
                .get_now(&planned.key)
                .map(|cred| self.answer(flavor, &planned, &cred)),
            Err(refused) => Some(*refused),
        }
    }

    async fn serve(&self, query: Option<&str>, flavor: Flavor) -> Resp {
        let planned = match self.plan(query, flavor) {
            Ok(p) => p,
            Err(refused) => return *refused,
        };
        match self.cache.get(&planned.key, WAIT).await {
            Ok(cred) => self.answer(flavor, &planned, &cred),
            Err(u) => unavailable(&u),
        }
    }
}

/// A token request ready for the cache.
struct Planned {
    req: Arc<TokenRequest>,
    index: usize,
    key: AzureKey,
}

/// Where a `/metadata/...` path leads (the `metadata` segment is matched case-insensitively).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ImdsPath {
    Token,
    /// msal-node's ImdsV2 probe (`POST /metadata/identity/credential`): answered so that SDKs
    /// stay on the v1 token flow.
    CredentialV2,
    Other,
}

/// `Some` for every path under `/metadata` (any case), `None` otherwise.
fn imds_path(path: &str) -> Option<ImdsPath> {
    let b = path.as_bytes();
    if b.len() < 9 || !b[..9].eq_ignore_ascii_case(b"/metadata") || (b.len() > 9 && b[9] != b'/') {
        return None;
    }
    let rest = &path[9..];
    Some(match rest {
        "/identity/oauth2/token" | "/identity/oauth2/token/" => ImdsPath::Token,
        r if r == "/identity/credential" || r.starts_with("/identity/credential/") => {
            ImdsPath::CredentialV2
        }
        _ => ImdsPath::Other,
    })
}

// === impl ImdsSurface ===

/// `HeaderName` constants: looking up by `&str` parses the name on every request.
const METADATA_HEADER: HeaderName = HeaderName::from_static("metadata");

/// `GET /metadata/identity/oauth2/token` with `Metadata: true` (AZURE_POD_IDENTITY_AUTHORITY_HOST).
pub struct ImdsSurface<E: Exchange<AzureKey, Credential = AzureToken>> {
    pub tokens: Arc<Tokens<E>>,
}

impl<E: Exchange<AzureKey, Credential = AzureToken>> ImdsSurface<E> {
    /// The answer to a request refused before any token is looked up (`None`: serve a token).
    fn refused(&self, req: &Parts) -> Option<Resp> {
        let kind = imds_path(req.uri.path()).unwrap_or(ImdsPath::Other);
        match kind {
            ImdsPath::CredentialV2 => {
                return Some(error_body(
                    404,
                    "not_found",
                    "IMDS v2 credentials are not offered here; use /metadata/identity/oauth2/token",
                ));
            }
            ImdsPath::Other => {
                return Some(error_body(
                    404,
                    "not_found",
                    "only /metadata/identity/oauth2/token is served",
                ));
            }
            ImdsPath::Token => {}
        }
        if req.method != Method::GET {
            return Some(error_body(405, "invalid_request", "use GET"));
        }
        // Answered at once, before anything else: SDK probes send no Metadata header.
        let metadata = req.headers.get(METADATA_HEADER).map(|v| v.as_bytes());
        if !metadata.is_some_and(|v| v.eq_ignore_ascii_case(b"true")) {
            return Some(Reject::bad("Required metadata header not specified").render());
        }
        None
    }

    async fn serve(&self, req: &Parts) -> Resp {
        match self.refused(req) {
            Some(refused) => refused,
            None => self.tokens.serve(req.uri.query(), Flavor::Imds).await,
        }
    }
}

impl<E: Exchange<AzureKey, Credential = AzureToken>> Surface for ImdsSurface<E> {
    fn name(&self) -> &'static str {
        "azure-imds"
    }

    fn claims(&self) -> &'static [Claim] {
        &[Claim::TreeIgnoreCase("/metadata")]
    }

    fn refuse(&self, refusal: Refusal) -> Resp {
        Reject::bad(refusal.message()).render()
    }

    fn answer_now(&self, req: &Parts) -> Option<Resp> {
        match self.refused(req) {
            Some(refused) => Some(refused),
            None => self.tokens.serve_now(req.uri.query(), Flavor::Imds),
        }
    }

    fn handle<'a>(&'a self, req: &'a Parts) -> BoxFuture<'a, Resp> {
        Box::pin(self.serve(req))
    }
}

// === impl AppServiceSurface ===

/// App Service 2019-08-01: `GET /msi/token` with `X-IDENTITY-HEADER` (IDENTITY_ENDPOINT and
/// IDENTITY_HEADER; the one managed-identity source Go SDKs let us redirect).
pub struct AppServiceSurface<E: Exchange<AzureKey, Credential = AzureToken>> {
    pub tokens: Arc<Tokens<E>>,
    /// `None` disables the endpoint (no `--azure-identity-header`).
    pub header: Option<Secret>,
}

const IDENTITY_HEADER: HeaderName = HeaderName::from_static("x-identity-header");

impl<E: Exchange<AzureKey, Credential = AzureToken>> AppServiceSurface<E> {
    /// The answer to a request refused before any token is looked up (`None`: serve a token).
    fn refused(&self, req: &Parts) -> Option<Resp> {
        let Some(expected) = &self.header else {
            return Some(error_body(
                404,
                "not_found",
                "the App Service endpoint is disabled: start credbroker with --azure-identity-header",
            ));
        };
        if req.method != Method::GET {
            return Some(error_body(405, "invalid_request", "use GET"));
        }
        match req.headers.get(IDENTITY_HEADER) {
            None => Some(Reject::bad("Required header X-IDENTITY-HEADER not specified").render()),
            Some(v) if !constant_time_eq(v.as_bytes(), expected.expose().as_bytes()) => {
                Some(error_body(
                    401,
                    "unauthorized",
                    "X-IDENTITY-HEADER does not match IDENTITY_HEADER",
                ))
            }
            Some(_) => None,
        }
    }

    async fn serve(&self, req: &Parts) -> Resp {
        match self.refused(req) {
            Some(refused) => refused,
            None => self.tokens.serve(req.uri.query(), Flavor::AppService).await,
        }
    }
}

impl<E: Exchange<AzureKey, Credential = AzureToken>> Surface for AppServiceSurface<E> {
    fn name(&self) -> &'static str {
        "azure-app-service"
    }

    fn claims(&self) -> &'static [Claim] {
        &[Claim::Exact("/msi/token"), Claim::Exact("/msi/token/")]
    }

    fn refuse(&self, refusal: Refusal) -> Resp {
        Reject::bad(refusal.message()).render()
    }

    fn answer_now(&self, req: &Parts) -> Option<Resp> {
        match self.refused(req) {
            Some(refused) => Some(refused),
            None => self.tokens.serve_now(req.uri.query(), Flavor::AppService),
        }
    }

    fn handle<'a>(&'a self, req: &'a Parts) -> BoxFuture<'a, Resp> {
        Box::pin(self.serve(req))
    }
}

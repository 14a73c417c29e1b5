//! The GCE metadata server (docs/gcp.md, "Metadata server"): `/`, and `/computeMetadata/v1/...`
//! with the token, identity, service-account, project, instance and universe entries.
//!
//! Rules every response follows: `Metadata-Flavor: Google` (node's gcp-metadata throws without
//! it, even on errors); `application/text` for scalars and listings and `application/json` for
//! the token and `?recursive=true` (Python decodes JSON only for that exact type); 403 without
//! the `Metadata-Flavor: Google` request header (except `/`, which Go's ping sends without it)
//! or with `X-Forwarded-For`; 503 while a token is being fetched or upstream fails transiently;
//! 403 or 404 with the upstream reason for a permanent denial.

use std::borrow::Cow;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderName, Method};
use serde::Serialize;
use serde_json::{Value, json};

use super::config::GcpConfig;
use super::keys::{AccessKey, Account, IdFor, IdFormat, IdKey, ScopeSet};
use super::sts::AccessToken;
use super::{AccessExchange, IdExchange};
use crate::exchange::Exchange;
use crate::http::guard::Refusal;
use crate::http::memo::BodyMemo;
use crate::http::server::{HeaderSet, JSON_TYPE, Resp, push_u64};
use crate::refresh::{Cache, Issued, Slot, Unavailable};
use crate::secret::{Secret, WipedBuf};
use crate::surface::{BoxFuture, Claim, ErrorShape, Surface, no_credential};
use crate::token::TokenSource;

/// How long a request waits for an exchange in flight. Python and node give up on the metadata
/// server after 3 s per attempt: answer (503, which all retry) well before.
pub const WAIT: Duration = Duration::from_millis(2200);

const TEXT: &str = "application/text";
/// A `HeaderName` constant: looking up or inserting by `&str` parses the name every time.
const FLAVOR: HeaderName = HeaderName::from_static("metadata-flavor");
const PREFIX: &str = "/computeMetadata/v1";

/// One entry of the metadata tree.
#[derive(Debug, Clone)]
pub enum Node {
    /// Children as (path name, key in `?recursive=true` JSON, node).
    Dir(Vec<(String, String, Node)>),
    Text(String),
    Number(u64),
    /// Served one per line; a JSON array when recursive.
    Lines(Vec<String>),
    /// Answered by a handler (`token`, `identity`); listed, but not in recursive output.
    Dynamic,
}

impl Node {
    fn dir(entries: Vec<(&str, &str, Node)>) -> Node {
        Node::Dir(
            entries
                .into_iter()
                .map(|(n, k, v)| (n.to_string(), k.to_string(), v))
                .collect(),
        )
    }

    fn child(&self, name: &str) -> Option<&Node> {
        match self {
            Node::Dir(entries) => entries
                .iter()
                .find(|(n, _, _)| n == name)
                .map(|(_, _, v)| v),
            _ => None,
        }
    }

    fn listing(&self) -> String {
        let Node::Dir(entries) = self else {
            return String::new();
        };
        entries
            .iter()
            .map(|(n, _, v)| match v {
                Node::Dir(_) => format!("{n}/\n"),
                _ => format!("{n}\n"),
            })
            .collect()
    }

    fn to_json(&self) -> Value {
        match self {
            Node::Dir(entries) => Value::Object(
                entries
                    .iter()
                    .filter(|(_, _, v)| !matches!(v, Node::Dynamic))
                    .map(|(_, k, v)| (k.clone(), v.to_json()))
                    .collect(),
            ),
            Node::Text(s) => json!(s),
            Node::Number(n) => json!(n),
            Node::Lines(l) => json!(l),
            Node::Dynamic => Value::Null,
        }
    }

    fn text(&self) -> String {
        match self {
            Node::Text(s) => s.clone(),
            Node::Number(n) => n.to_string(),
            Node::Lines(l) => l.iter().map(|s| format!("{s}\n")).collect(),
            Node::Dir(_) => self.listing(),
            Node::Dynamic => String::new(),
        }
    }
}

/// The static part of the metadata server, built once from configuration.
#[derive(Debug, Clone)]
pub struct MetadataTree {
    root: Node,
}

impl MetadataTree {
    pub fn build(config: &GcpConfig, email: &str, default_scopes: &ScopeSet) -> Self {
        let account_of = |email: &str, aliases: Vec<String>| {
            Node::dir(vec![
                ("aliases", "aliases", Node::Lines(aliases)),
                ("email", "email", Node::Text(email.to_string())),
                ("identity", "identity", Node::Dynamic),
                (
                    "scopes",
                    "scopes",
                    Node::Lines(default_scopes.as_slice().to_vec()),
                ),
                ("token", "token", Node::Dynamic),
            ])
        };
        let account = || account_of(email, vec!["default".into()]);
        let mut accounts = vec![
            ("default".to_string(), "default".to_string(), account()),
            (email.to_string(), email.to_string(), account()),
        ];
        for other in &config.others {
            let e = other.email.clone();
            accounts.push((e.clone(), e.clone(), account_of(&e, Vec::new())));
        }
        let number = &config.provider.project_number;
        let mut project = Vec::new();
        if let Ok(n) = number.parse::<u64>() {
            project.push(("numeric-project-id", "numericProjectId", Node::Number(n)));
        }
        if let Some(id) = &config.project_id {
            project.push(("project-id", "projectId", Node::Text(id.clone())));
        }
        let i = &config.instance;
        let mut attributes = Vec::new();
        if let Some(v) = &i.cluster_location {
            attributes.push((
                "cluster-location",
                "cluster-location",
                Node::Text(v.clone()),
            ));
        }
        if let Some(v) = &i.cluster_name {
            attributes.push(("cluster-name", "cluster-name", Node::Text(v.clone())));
        }
        let mut instance = vec![
            ("attributes", "attributes", Node::dir(attributes)),
            ("hostname", "hostname", Node::Text(i.hostname.clone())),
            ("id", "id", Node::Number(i.id)),
            ("name", "name", Node::Text(i.name.clone())),
            ("service-accounts", "serviceAccounts", Node::Dir(accounts)),
        ];
        if let Some(zone) = &i.zone {
            instance.push((
                "zone",
                "zone",
                Node::Text(format!("projects/{number}/zones/{zone}")),
            ));
        }
        let root = Node::dir(vec![
            ("instance", "instance", Node::dir(instance)),
            ("project", "project", Node::dir(project)),
            (
                "universe",
                "universe",
                Node::dir(vec![(
                    "universe-domain",
                    "universeDomain",
                    Node::Text(config.universe_domain.clone()),
                )]),
            ),
        ]);
        MetadataTree { root }
    }

    fn lookup(&self, path: &str) -> Option<&Node> {
        path.split('/')
            .filter(|s| !s.is_empty())
            .try_fold(&self.root, |node, seg| node.child(seg))
    }
}

/// The metadata surface. Generic over the exchangers so tests drive it with fakes.
pub struct MetadataSurface<A = AccessExchange, I = IdExchange>
where
    A: Exchange<AccessKey, Credential = AccessToken>,
    I: Exchange<IdFor, Credential = Secret>,
{
    pub access: Cache<AccessKey, A>,
    pub default_scopes: ScopeSet,
    /// The default account's default-scope slot, pinned in `access`: the request nearly every
    /// client sends goes straight to it, without hashing a key or taking the cache's lock.
    pub default_slot: Arc<Slot<AccessToken>>,
    /// `None` when no account is impersonated: there is no service account to mint ID tokens for.
    pub ids: Option<Cache<IdFor, I>>,
    /// Whether the default account is impersonated (direct federation has no ID tokens).
    pub default_impersonated: bool,
    pub tree: MetadataTree,
    pub email: String,
    /// The other service accounts' emails.
    pub others: Vec<Arc<str>>,
    /// The projected token, for the Kubernetes service account named in errors.
    pub ksa: Option<Arc<TokenSource>>,
    /// The last token body served, with the token and the `expires_in` it printed.
    pub token_bodies: BodyMemo<(Arc<Issued<AccessToken>>, u64)>,
}

/// Every answer carries `Metadata-Flavor: Google` (node's gcp-metadata throws without it, even
/// on errors) and the server name GCE sends; the maps are built once ([`HeaderSet`]).
static GOOGLE_TEXT: LazyLock<HeaderSet> = LazyLock::new(|| google_headers(TEXT));
static GOOGLE_JSON: LazyLock<HeaderSet> = LazyLock::new(|| google_headers(JSON_TYPE));

fn google_headers(content_type: &'static str) -> HeaderSet {
    HeaderSet::new(&[
        (http::header::CONTENT_TYPE, content_type),
        (FLAVOR, "Google"),
        (http::header::SERVER, "Metadata Server for VM"),
    ])
}

fn text(status: u16, body: impl Into<Bytes>) -> Resp {
    GOOGLE_TEXT.respond(status, body)
}

fn json(status: u16, body: impl Into<Bytes>) -> Resp {
    GOOGLE_JSON.respond(status, body)
}

/// The metadata server's error text (plain, as GCE and GKE answer).
fn error(status: u16, message: &str) -> Resp {
    text(status, format!("{message}\n"))
}

/// GCE's "no token": plain text. A denial without an upstream 4xx is 403, as GKE's metadata
/// server answers a missing `roles/iam.workloadIdentityUser` binding; the upstream's own 4xx
/// otherwise, like every cloud here. No client tells 400 from 403 (google-auth Python raises
/// the same `TransportError` for both, Go's metadata client singles out only 404 as "not
/// defined"), so GCP needs no rule of its own.
struct GceErrors;

impl ErrorShape for GceErrors {
    const DENIED: u16 = 403;

    fn no_credential(status: u16, why: &Unavailable) -> Resp {
        match why {
            Unavailable::Failed(e) if e.is_transient() => {
                error(status, &format!("upstream failed, retrying: {e}"))
            }
            Unavailable::Failed(e) => error(status, &e.to_string()),
            Unavailable::Undelivered(why) => error(status, why),
            Unavailable::Pending | Unavailable::Expired => error(
                status,
                "credbroker: the token is being fetched; retry shortly",
            ),
        }
    }
}

fn unavailable(why: &Unavailable) -> Resp {
    no_credential::<GceErrors>(why)
}

fn wiped(bytes: Vec<u8>) -> Bytes {
    WipedBuf::bytes(bytes)
}

/// The token response (docs/gcp.md, "Metadata server").
#[derive(Serialize)]
struct TokenBody<'a> {
    access_token: &'a str,
    expires_in: u64,
    token_type: &'a str,
}

/// The token response body in one exactly-sized buffer, wiped on drop. Google access tokens
/// are URL-safe text that JSON needs no escaping for (`json_plain`, decided when the token was
/// issued), so they are copied as they are (the bytes serde_json would write); anything else
/// goes through serde_json.
fn token_body(token: &str, json_plain: bool, expires_in: u64) -> Bytes {
    if !json_plain {
        return WipedBuf::json(&TokenBody {
            access_token: token,
            expires_in,
            token_type: "Bearer",
        });
    }
    const HEAD: &[u8] = br#"{"access_token":""#;
    const MID: &[u8] = br#"","expires_in":"#;
    const TAIL: &[u8] = br#","token_type":"Bearer"}"#;
    // 20 digits hold any u64; written by hand, as `to_string` would allocate.
    let mut buf = Vec::with_capacity(HEAD.len() + token.len() + MID.len() + 20 + TAIL.len());
    buf.extend_from_slice(HEAD);
    buf.extend_from_slice(token.as_bytes());
    buf.extend_from_slice(MID);
    push_u64(&mut buf, expires_in);
    buf.extend_from_slice(TAIL);
    WipedBuf::bytes(buf)
}

/// Where a metadata request leads once its checks are done.
enum GceRoute {
    /// Answered (refusals, the metadata tree).
    Done(Resp),
    /// An account's access token.
    Token(Account, Query),
    /// An account's ID token.
    Identity(Account, Query),
}

/// The query parameters the server reads (others are ignored, as GCE does).
#[derive(Default)]
struct Query {
    recursive: bool,
    alt: Option<String>,
    scopes: Option<String>,
    audience: Option<String>,
    format: Option<String>,
    wait_for_change: bool,
}

impl Query {
    fn parse(q: Option<&str>) -> Query {
        let mut out = Query::default();
        for (k, v) in url::form_urlencoded::parse(q.unwrap_or_default().as_bytes()) {
            match k.as_ref() {
                "recursive" => out.recursive = v.eq_ignore_ascii_case("true"),
                "alt" => out.alt = Some(v.into_owned()),
                "scopes" => out.scopes = Some(v.into_owned()),
                "audience" => out.audience = Some(v.into_owned()),
                "format" => out.format = Some(v.into_owned()),
                "wait_for_change" => out.wait_for_change = v.eq_ignore_ascii_case("true"),
                _ => {}
            }
        }
        out
    }
}

impl<A, I> MetadataSurface<A, I>
where
    A: Exchange<AccessKey, Credential = AccessToken>,
    I: Exchange<IdFor, Credential = Secret>,
{
    fn route(&self, req: &Parts) -> GceRoute {
        use GceRoute::Done;
        if req.method != Method::GET && req.method != Method::HEAD {
            return Done(error(405, "Method Not Allowed"));
        }
        let path = req.uri.path();
        if path == "/" {
            // Go's ping sends no flavor header; SDKs check ours.
            return Done(text(200, "computeMetadata/\n"));
        }
        let flavored = req
            .headers
            .get(FLAVOR)
            .is_some_and(|v| v.as_bytes() == b"Google");
        if !flavored {
            return Done(error(
                403,
                "Missing required header \"Metadata-Flavor\": \"Google\"",
            ));
        }
        if path == "/computeMetadata" || path == "/computeMetadata/" {
            return Done(text(200, "v1/\n"));
        }
        let Some(rest) = path
            .strip_prefix(PREFIX)
            .filter(|r| r.is_empty() || r.starts_with('/'))
        else {
            // Includes the legacy /computeMetadata/v1beta1/, which must not be served.
            return Done(error(404, "Not Found"));
        };
        let q = Query::parse(req.uri.query());
        if q.wait_for_change {
            return Done(error(
                400,
                "wait_for_change is not supported by this metadata server",
            ));
        }
        let rel = rest.trim_start_matches('/');
        if let Some((name, leaf)) = rel
            .strip_prefix("instance/service-accounts/")
            .and_then(|r| r.split_once('/'))
            && let Some(account) = self.account(name)
        {
            match leaf {
                "token" => return GceRoute::Token(account, q),
                "identity" => return GceRoute::Identity(account, q),
                _ => {}
            }
        }
        let Some(node) = self.tree.lookup(rel) else {
            return Done(error(404, "Not Found"));
        };
        let trailing = rest.ends_with('/') && !rel.is_empty();
        let json_alt = q.alt.as_deref() == Some("json");
        Done(match node {
            Node::Dir(_) if q.recursive => json(200, node.to_json().to_string()),
            Node::Dir(_) if json_alt => {
                let names: Vec<String> = node.listing().lines().map(str::to_string).collect();
                json(200, json!(names).to_string())
            }
            Node::Dir(_) => text(200, node.listing()),
            // A leaf with a trailing slash is not a directory.
            _ if trailing => error(404, "Not Found"),
            Node::Dynamic => error(404, "Not Found"),
            leaf if json_alt => json(200, leaf.to_json().to_string()),
            leaf => text(200, leaf.text()),
        })
    }

    async fn serve(&self, req: &Parts) -> Resp {
        match self.route(req) {
            GceRoute::Done(resp) => resp,
            GceRoute::Token(account, q) => self.token(account, &q).await,
            GceRoute::Identity(account, q) => self.identity(account, &q).await,
        }
    }

    /// The account a path segment names: `default` and the configuration's own email are the
    /// default account; the others by their email.
    fn account(&self, name: &str) -> Option<Account> {
        if name == "default" || name == self.email {
            return Some(Account::Default);
        }
        self.others
            .iter()
            .find(|e| &***e == name)
            .map(|e| Account::Other(e.clone()))
    }

    /// The slot holding the token a request asks for (created on first use for other scopes
    /// and accounts), or the refusal.
    ///
    /// The default slot is lent, not cloned: its count is shared by every core serving it.
    fn token_slot(
        &self,
        account: Account,
        q: &Query,
    ) -> Result<Cow<'_, Arc<Slot<AccessToken>>>, Box<Resp>> {
        let asked =
            ScopeSet::parse(q.scopes.as_deref()).map_err(|why| Box::new(error(400, &why)))?;
        Ok(match (asked, account) {
            (None, Account::Default) => Cow::Borrowed(&self.default_slot),
            (asked, account) => {
                let scopes = asked.unwrap_or_else(|| self.default_scopes.clone());
                Cow::Owned(self.access.slot(&AccessKey::new(account, scopes)))
            }
        })
    }

    fn token_response(&self, cred: &Arc<Issued<AccessToken>>) -> Resp {
        // The remaining lifetime now, never 0 (Go rejects 0; the cache never serves a token
        // with under 5 s left).
        let expires_in = cred.remaining(tokio::time::Instant::now()).as_secs().max(1);
        let body = self.token_bodies.get_or_render(
            |(last, secs)| Arc::ptr_eq(last, cred) && *secs == expires_in,
            || {
                let body = token_body(cred.value.token.expose(), cred.value.json_plain, expires_in);
                ((cred.clone(), expires_in), body)
            },
        );
        json(200, body)
    }

    async fn token(&self, account: Account, q: &Query) -> Resp {
        let slot = match self.token_slot(account, q) {
            Ok(slot) => slot,
            Err(refused) => return *refused,
        };
        match slot.get(WAIT).await {
            Ok(cred) => self.token_response(&cred),
            Err(u) => unavailable(&u),
        }
    }

    async fn identity(&self, account: Account, q: &Query) -> Resp {
        let direct = account == Account::Default && !self.default_impersonated;
        let Some(ids) = self.ids.as_ref().filter(|_| !direct) else {
            let ksa = self
                .ksa
                .as_ref()
                .and_then(|t| t.snapshot().token.ok())
                .and_then(|t| t.claims.sub)
                .and_then(|s| {
                    s.strip_prefix("system:serviceaccount:")
                        .map(|r| r.replacen(':', "/", 1))
                })
                .unwrap_or_else(|| "unknown".into());
            return error(
                404,
                &format!(
                    "Your Kubernetes service account ({ksa}) is not annotated with a target Google service account, which is a requirement for retrieving Identity Tokens using Workload Identity. (credbroker: the external_account configuration has no service_account_impersonation_url.)"
                ),
            );
        };
        let key = IdFormat::parse(q.format.as_deref())
            .and_then(|f| IdKey::new(q.audience.as_deref().unwrap_or_default(), f));
        let key = match key {
            Ok(k) => k,
            Err(why) => return error(400, &why),
        };
        match ids.get(&IdFor { account, id: key }, WAIT).await {
            Ok(cred) => text(200, wiped(cred.value.expose().as_bytes().to_vec())),
            Err(u) => unavailable(&u),
        }
    }
}

impl<A, I> Surface for MetadataSurface<A, I>
where
    A: Exchange<AccessKey, Credential = AccessToken>,
    I: Exchange<IdFor, Credential = Secret>,
{
    fn name(&self) -> &'static str {
        "gcp-metadata"
    }

    fn claims(&self) -> &'static [Claim] {
        &[Claim::Exact("/"), Claim::Tree("/computeMetadata")]
    }

    fn refuse(&self, refusal: Refusal) -> Resp {
        error(403, refusal.message())
    }

    fn answer_now(&self, req: &Parts) -> Option<Resp> {
        match self.route(req) {
            GceRoute::Done(resp) => Some(resp),
            GceRoute::Token(account, q) => match self.token_slot(account, &q) {
                Ok(slot) => slot.get_now().map(|cred| self.token_response(&cred)),
                Err(refused) => Some(*refused),
            },
            GceRoute::Identity(..) => None,
        }
    }

    fn handle<'a>(&'a self, req: &'a Parts) -> BoxFuture<'a, Resp> {
        Box::pin(self.serve(req))
    }
}

#[cfg(test)]
mod body_tests {
    use super::*;

    #[test]
    fn token_body_is_what_serde_json_writes() {
        for token in [
            "ya29.a0AfB_byC-x~y",
            "t\"q",
            "back\\slash",
            "tab\there",
            "ünïcode",
        ] {
            let expected = serde_json::to_vec(&TokenBody {
                access_token: token,
                expires_in: 3599,
                token_type: "Bearer",
            })
            .unwrap();
            let plain = super::super::sts::json_plain(token);
            assert_eq!(plain, !token.contains(['"', '\\', '\t']), "{token:?}");
            assert_eq!(
                &token_body(token, plain, 3599)[..],
                &expected[..],
                "{token:?}"
            );
        }
    }
}

//! GCP under tokio's paused time: the refresh margins, single flight per key, young ID tokens,
//! and every metadata-server rule, driven through the router (guard included) with fake
//! exchangers.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http_body_util::BodyExt;
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::time::{Instant, advance, sleep};

use super::keys::{AccessKey, Account, IdFor, ScopeSet};
use super::sts::AccessToken;
use super::surface::{MetadataSurface, MetadataTree, WAIT};
use super::{Gcp, GcpConfig, ID_TOKEN_REUSE, id_policy};
use crate::clock::{Clock, TokioClock};
use crate::clouds::Cloud;
use crate::config::Env;
use crate::exchange::{Exchange, ExchangeError, Fresh};
use crate::http::server::Resp;
use crate::metrics::Metrics;
use crate::secret::Secret;
use crate::testing::{claims, route};

/// Issues `ya29.N.<scopes>` tokens living `life`, after `delay`; fails while `fail` is set.
struct FakeAccess {
    clock: Arc<dyn Clock>,
    life: Mutex<Duration>,
    delay: Duration,
    fail: Mutex<Option<ExchangeError>>,
    calls: AtomicUsize,
    per_key: Mutex<HashMap<String, usize>>,
}

impl FakeAccess {
    fn new(clock: Arc<dyn Clock>, life: Duration, delay: Duration) -> Self {
        FakeAccess {
            clock,
            life: Mutex::new(life),
            delay,
            fail: Mutex::new(None),
            calls: AtomicUsize::new(0),
            per_key: Mutex::new(HashMap::new()),
        }
    }
}

impl Exchange<AccessKey> for FakeAccess {
    type Credential = AccessToken;

    async fn exchange(&self, key: &AccessKey) -> Result<Fresh<AccessToken>, ExchangeError> {
        sleep(self.delay).await;
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        *self.per_key.lock().entry(key.to_string()).or_default() += 1;
        if let Some(e) = self.fail.lock().clone() {
            return Err(e);
        }
        let expires_at = self.clock.wall() + *self.life.lock();
        Ok(Fresh {
            value: AccessToken::new(Secret::new(format!("ya29.{n}.{key}")), expires_at),
            expires_at,
        })
    }
}

/// Issues JWT-shaped ID tokens with a 1 h `exp`, as Google does.
struct FakeId {
    clock: Arc<dyn Clock>,
    calls: AtomicUsize,
}

impl Exchange<IdFor> for FakeId {
    type Credential = Secret;

    async fn exchange(&self, key: &IdFor) -> Result<Fresh<Secret>, ExchangeError> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        let exp = self.clock.unix_secs() + 3600;
        let who = match &key.account {
            Account::Default => "default".to_string(),
            Account::Other(email) => email.to_string(),
        };
        let token = crate::token::jwt::fake_jwt(
            &json!({"aud": key.id.audience, "exp": exp, "n": n, "sa": who}),
        );
        // What IdExchange does with the real token: reuse only while young.
        let until = (self.clock.wall() + ID_TOKEN_REUSE).min(crate::clock::from_unix(exp));
        Ok(Fresh {
            value: Secret::new(token),
            expires_at: until,
        })
    }
}

const AUD: &str = "//iam.googleapis.com/projects/314159/locations/global/workloadIdentityPools/pool/providers/k8s";
const EMAIL: &str = "app@my-project.iam.gserviceaccount.com";
/// A second service account impersonated with the same federated token.
const OTHER: &str = "reports@my-project.iam.gserviceaccount.com";

fn config(impersonate: bool, others: &[&str]) -> GcpConfig {
    let mut doc = json!({
        "type": "external_account",
        "audience": AUD,
        "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
        "token_url": "http://127.0.0.1:1/v1/token",
        "credential_source": {"file": "/dev/null"},
    });
    if impersonate {
        doc["service_account_impersonation_url"] = json!(format!(
            "http://127.0.0.1:1/v1/projects/-/serviceAccounts/{EMAIL}:generateAccessToken"
        ));
    }
    let flags = super::Flags {
        gcp_cluster_name: Some("prod".into()),
        gcp_cluster_location: Some("europe-west1".into()),
        gcp_zone: Some("europe-west1-b".into()),
        gcp_instance_name: Some("app-5d8c".into()),
        gcp_instance_id: Some(4_242_424_242_424_242_424),
        gcp_instance_hostname: None,
        gcp_service_account: others.iter().map(|o| o.to_string()).collect(),
    };
    GcpConfig::from_json(&doc, &Env::default(), &flags).unwrap()
}

struct Rig {
    surface: Arc<MetadataSurface<FakeAccess, FakeId>>,
}

impl Rig {
    fn new(impersonate: bool, life: Duration, delay: Duration) -> Rig {
        Self::with_others(impersonate, &[], life, delay)
    }

    /// With other service accounts (`--gcp-service-account`).
    fn with_others(impersonate: bool, others: &[&str], life: Duration, delay: Duration) -> Rig {
        let clock: Arc<dyn Clock> = Arc::new(TokioClock::now_wall());
        let metrics = Arc::new(Metrics::new());
        let access = Gcp::cache_builder(FakeAccess::new(clock.clone(), life, delay))
            .clock(clock.clone())
            .metrics(metrics.clone())
            .build();
        let default_scopes = ScopeSet::default_set();
        let default_slot = access.pin(AccessKey::new(Account::Default, default_scopes.clone()));
        let ids = (impersonate || !others.is_empty()).then(|| {
            Gcp::cache_builder(FakeId {
                clock: clock.clone(),
                calls: AtomicUsize::new(0),
            })
            .policy(id_policy())
            .clock(clock.clone())
            .metrics(metrics.clone())
            .build()
        });
        let cfg = config(impersonate, others);
        let email = cfg.email();
        Rig {
            surface: Arc::new(MetadataSurface {
                access,
                tree: MetadataTree::build(&cfg, &email, &default_scopes),
                default_scopes,
                default_slot,
                ids,
                default_impersonated: impersonate,
                email,
                others: cfg
                    .others
                    .iter()
                    .map(|o| Arc::<str>::from(o.email.as_str()))
                    .collect(),
                ksa: None,
                token_bodies: Default::default(),
            }),
        }
    }

    fn exchanger(&self) -> &FakeAccess {
        self.surface.access.exchanger()
    }

    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> (u16, http::HeaderMap, String) {
        let mut b = http::Request::builder().uri(path);
        if !headers.iter().any(|(k, _)| *k == "host") {
            b = b.header("host", "127.0.0.1:8189");
        }
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let parts = b.body(()).unwrap().into_parts().0;
        assert!(
            claims(self.surface.as_ref(), parts.uri.path()),
            "{path} not claimed"
        );
        let resp: Resp = route(self.surface.clone(), parts).await;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, headers, String::from_utf8_lossy(&body).into_owned())
    }

    async fn md(&self, path: &str) -> (u16, http::HeaderMap, String) {
        self.get(
            &format!("/computeMetadata/v1/{path}"),
            &[("metadata-flavor", "Google")],
        )
        .await
    }

    async fn token(&self, query: &str) -> Value {
        let (status, h, body) = self
            .md(&format!("instance/service-accounts/default/token{query}"))
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(h["content-type"], "application/json");
        serde_json::from_str(&body).unwrap()
    }
}

const HOUR: Duration = Duration::from_secs(3600);
const FAST: Duration = Duration::from_millis(10);

// === refresh margins and single flight ===

#[tokio::test(start_paused = true)]
async fn no_access_token_with_five_minutes_or_less_is_served() {
    let rig = Rig::new(true, HOUR, FAST);
    let mut last = String::new();
    let mut distinct = 0;
    // A reader every 20 s for 6 hours.
    for _ in 0..(6 * 180) {
        let t = rig.token("").await;
        let expires_in = t["expires_in"].as_u64().unwrap();
        assert!(expires_in > 10 * 60, "served with {expires_in} s left");
        assert!(expires_in <= 3600);
        if t["access_token"] != last.as_str() {
            distinct += 1;
            last = t["access_token"].as_str().unwrap().to_string();
        }
        advance(Duration::from_secs(20)).await;
    }
    // Refreshed around half-life: ~12 exchanges in 6 h, never a loop.
    let calls = rig.exchanger().calls.load(Ordering::SeqCst);
    assert!((10..=15).contains(&calls), "{calls} exchanges");
    assert!(distinct >= 10);
}

#[tokio::test(start_paused = true)]
async fn expires_in_is_the_remaining_lifetime_and_decreases() {
    let rig = Rig::new(true, HOUR, FAST);
    let first = rig.token("").await;
    let e0 = first["expires_in"].as_u64().unwrap();
    assert!((3595..=3600).contains(&e0), "{e0}");
    advance(Duration::from_secs(90)).await;
    let second = rig.token("").await;
    assert_eq!(second["access_token"], first["access_token"]);
    let e1 = second["expires_in"].as_u64().unwrap();
    assert!(e1 < e0 && e1 >= e0 - 91, "{e0} then {e1}");
    assert_eq!(second["token_type"], "Bearer");
}

#[tokio::test(start_paused = true)]
async fn short_tokens_refresh_at_half_life_and_never_serve_zero() {
    // Direct federation with a 10-minute projected token: STS caps the token at 10 min.
    let rig = Rig::new(false, Duration::from_secs(600), FAST);
    for _ in 0..120 {
        let t = rig.token("").await;
        assert!(t["expires_in"].as_u64().unwrap() > 5);
        advance(Duration::from_secs(10)).await;
    }
    // 20 minutes of a 10-minute token at half-life: about 4 exchanges.
    let calls = rig.exchanger().calls.load(Ordering::SeqCst);
    assert!((3..=6).contains(&calls), "{calls}");
}

#[tokio::test(start_paused = true)]
async fn single_flight_per_scope_set() {
    let rig = Arc::new(Rig::new(true, HOUR, Duration::from_millis(500)));
    let mut tasks = Vec::new();
    for i in 0..200 {
        let rig = rig.clone();
        tasks.push(tokio::spawn(async move {
            let q = if i % 2 == 0 {
                "?scopes=https://www.googleapis.com/auth/devstorage.read_only"
            } else {
                "?scopes=https://www.googleapis.com/auth/pubsub,https://www.googleapis.com/auth/devstorage.read_only"
            };
            rig.token(q).await["access_token"].as_str().unwrap().to_string()
        }));
    }
    let mut tokens = Vec::new();
    for t in tasks {
        tokens.push(t.await.unwrap());
    }
    tokens.sort();
    tokens.dedup();
    // One token per scope set, one exchange per scope set (plus the pinned default).
    assert_eq!(tokens.len(), 2, "{tokens:?}");
    let per_key = rig.exchanger().per_key.lock().clone();
    assert_eq!(per_key.len(), 3, "{per_key:?}");
    assert!(per_key.values().all(|n| *n == 1), "{per_key:?}");
}

#[tokio::test(start_paused = true)]
async fn scope_sets_are_normalised_and_distinct() {
    let rig = Rig::new(true, HOUR, FAST);
    let default = rig.token("").await["access_token"].clone();
    let a = rig.token("?scopes=b,a").await["access_token"].clone();
    let b = rig.token("?scopes=a,b,a").await["access_token"].clone();
    let c = rig
        .token("?scopes=https://www.googleapis.com/auth/cloud-platform")
        .await["access_token"]
        .clone();
    assert_eq!(a, b);
    assert_ne!(a, default);
    assert_ne!(c, default);
    assert!(default.as_str().unwrap().ends_with(
        ".https://www.googleapis.com/auth/cloud-platform,https://www.googleapis.com/auth/userinfo.email"
    ));
    let (status, _, _) = rig
        .md("instance/service-accounts/default/token?scopes=bad%01scope")
        .await;
    assert_eq!(status, 400);
}

#[tokio::test(start_paused = true)]
async fn the_default_slot_is_the_cache_entry_for_the_default_scopes() {
    // No `?scopes=` takes the surface's pinned slot directly; the same scopes spelled out (in
    // either order), or the account named by its email, must reach the same credential.
    let rig = Rig::new(true, HOUR, FAST);
    let default = rig.token("").await["access_token"].clone();
    let spelled = rig
        .token("?scopes=https://www.googleapis.com/auth/userinfo.email,https://www.googleapis.com/auth/cloud-platform")
        .await["access_token"]
        .clone();
    let email = rig.surface.email.clone();
    let (status, _, body) = rig
        .md(&format!("instance/service-accounts/{email}/token"))
        .await;
    assert_eq!(status, 200, "{body}");
    let by_email: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(spelled, default);
    assert_eq!(by_email["access_token"], default);
    assert_eq!(rig.exchanger().calls.load(Ordering::SeqCst), 1);
    assert_eq!(rig.surface.access.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn id_tokens_are_reused_only_while_young() {
    let rig = Rig::new(true, HOUR, FAST);
    let path = "instance/service-accounts/default/identity?audience=https://svc&format=full";
    let issued_at = |body: &str| -> (String, Instant) { (body.to_string(), Instant::now()) };
    let mut seen: HashMap<String, Instant> = HashMap::new();
    for _ in 0..120 {
        let (status, h, body) = rig.md(path).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(h["content-type"], "application/text");
        assert_eq!(body.split('.').count(), 3);
        let (token, now) = issued_at(&body);
        let first = *seen.entry(token).or_insert(now);
        assert!(
            now.duration_since(first) <= ID_TOKEN_REUSE,
            "ID token served too old"
        );
        advance(Duration::from_secs(15)).await;
    }
    // 30 minutes: a fresh token every ~90 s, not one per request and not one for 30 min.
    assert!((10..=30).contains(&seen.len()), "{}", seen.len());
    let (status, _, body) = rig
        .md("instance/service-accounts/default/identity?format=full")
        .await;
    assert_eq!(
        (status, body.as_str()),
        (400, "non-empty audience parameter required\n")
    );
    let (status, _, _) = rig
        .md("instance/service-accounts/default/identity?audience=x&format=weird")
        .await;
    assert_eq!(status, 400);
}

// === upstream trouble ===

#[tokio::test(start_paused = true)]
async fn pending_is_503_within_the_budget() {
    let rig = Rig::new(true, HOUR, Duration::from_secs(10));
    let started = Instant::now();
    let (status, h, body) = rig.md("instance/service-accounts/default/token").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(h["metadata-flavor"], "Google");
    assert!(Instant::now().duration_since(started) <= WAIT);
    assert!(WAIT < Duration::from_millis(2500));
    advance(Duration::from_secs(11)).await;
    rig.token("").await;
}

#[tokio::test(start_paused = true)]
async fn transient_failures_are_503_and_permanent_denials_403_or_404() {
    let rig = Rig::new(true, HOUR, FAST);
    *rig.exchanger().fail.lock() =
        Some(ExchangeError::transient("temporarily_unavailable", "try later").with_status(503));
    let (status, _, body) = rig.md("instance/service-accounts/default/token").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("temporarily_unavailable"));

    let rig = Rig::new(true, HOUR, FAST);
    *rig.exchanger().fail.lock() = Some(
        ExchangeError::permanent(
            "PERMISSION_DENIED",
            "Permission 'iam.serviceAccounts.getAccessToken' denied on resource (or it may not exist).",
        )
        .with_status(403),
    );
    let (status, h, body) = rig.md("instance/service-accounts/default/token").await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("iam.serviceAccounts.getAccessToken"));
    assert_eq!(h["content-type"], "application/text");

    let rig = Rig::new(true, HOUR, FAST);
    *rig.exchanger().fail.lock() =
        Some(ExchangeError::permanent("NOT_FOUND", "gone").with_status(404));
    let (status, _, _) = rig.md("instance/service-accounts/default/token").await;
    assert_eq!(status, 404);
}

#[tokio::test(start_paused = true)]
async fn a_valid_token_is_still_served_while_upstream_is_down() {
    let rig = Rig::new(true, HOUR, FAST);
    let first = rig.token("").await["access_token"].clone();
    *rig.exchanger().fail.lock() =
        Some(ExchangeError::transient("HTTP503", "down").with_status(503));
    advance(Duration::from_secs(50 * 60)).await;
    let t = rig.token("").await;
    assert_eq!(t["access_token"], first);
    assert!(t["expires_in"].as_u64().unwrap() <= 600);
    *rig.exchanger().fail.lock() = None;
    advance(Duration::from_secs(65)).await;
    sleep(Duration::from_millis(100)).await;
    let t = rig.token("").await;
    assert_ne!(t["access_token"], first);
    assert!(t["expires_in"].as_u64().unwrap() > 3500);
}

// === the metadata rules ===

#[tokio::test(start_paused = true)]
async fn root_needs_no_header_and_every_answer_is_flavored() {
    let rig = Rig::new(true, HOUR, FAST);
    let (status, h, body) = rig.get("/", &[]).await;
    assert_eq!((status, body.as_str()), (200, "computeMetadata/\n"));
    assert_eq!(h["metadata-flavor"], "Google");
    assert_eq!(h["content-type"], "application/text");
    for path in [
        "/computeMetadata/v1/project/project-id",
        "/computeMetadata/v1/instance/service-accounts/default/token",
        "/computeMetadata/v1/",
    ] {
        let (status, h, body) = rig.get(path, &[]).await;
        assert_eq!(status, 403, "{path}");
        assert_eq!(
            body,
            "Missing required header \"Metadata-Flavor\": \"Google\"\n"
        );
        assert_eq!(h["metadata-flavor"], "Google");
        let (status, _, _) = rig.get(path, &[("metadata-flavor", "google")]).await;
        assert_eq!(status, 403, "flavor value is case-sensitive");
    }
    sleep(Duration::from_secs(1)).await;
    let keys = rig.exchanger().per_key.lock().clone();
    assert_eq!(keys.len(), 1, "403s started no exchange: {keys:?}");
}

#[tokio::test(start_paused = true)]
async fn forwarded_requests_are_refused() {
    let rig = Rig::new(true, HOUR, FAST);
    for path in [
        "/",
        "/computeMetadata/v1/instance/service-accounts/default/token",
    ] {
        let (status, h, _) = rig
            .get(
                path,
                &[
                    ("metadata-flavor", "Google"),
                    ("x-forwarded-for", "10.0.0.1"),
                ],
            )
            .await;
        assert_eq!(status, 403, "{path}");
        assert_eq!(h["metadata-flavor"], "Google");
    }
    let (status, _, _) = rig.get("/", &[("host", "evil.example.com")]).await;
    assert_eq!(status, 403);
}

#[tokio::test(start_paused = true)]
async fn scalars_listings_and_recursive_json() {
    let rig = Rig::new(true, HOUR, FAST);
    let expect_text = [
        ("project/project-id", "my-project"),
        ("project/numeric-project-id", "314159"),
        ("instance/service-accounts/default/email", EMAIL),
        (&format!("instance/service-accounts/{EMAIL}/email"), EMAIL),
        ("instance/service-accounts/default/aliases", "default\n"),
        (
            "instance/service-accounts/default/scopes",
            "https://www.googleapis.com/auth/cloud-platform\nhttps://www.googleapis.com/auth/userinfo.email\n",
        ),
        ("instance/zone", "projects/314159/zones/europe-west1-b"),
        ("instance/id", "4242424242424242424"),
        ("instance/name", "app-5d8c"),
        ("instance/hostname", "app-5d8c"),
        ("instance/attributes/cluster-name", "prod"),
        ("instance/attributes/cluster-location", "europe-west1"),
        ("universe/universe-domain", "googleapis.com"),
    ];
    for (path, want) in expect_text {
        let (status, h, body) = rig.md(path).await;
        assert_eq!((status, body.as_str()), (200, want), "{path}");
        assert_eq!(h["content-type"], "application/text", "{path}");
        assert_eq!(h["metadata-flavor"], "Google", "{path}");
    }
    for path in ["instance/service-accounts/", "instance/service-accounts"] {
        let (status, _, body) = rig.md(path).await;
        assert_eq!(
            (status, body),
            (200, format!("default/\n{EMAIL}/\n")),
            "{path}"
        );
    }
    for path in [
        "instance/service-accounts/default/?recursive=true",
        "instance/service-accounts/default?recursive=true",
        &format!("instance/service-accounts/{EMAIL}/?recursive=true"),
    ] {
        let (status, h, body) = rig.md(path).await;
        assert_eq!(status, 200, "{path}");
        assert_eq!(h["content-type"], "application/json");
        let doc: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            doc,
            json!({"aliases": ["default"], "email": EMAIL, "scopes": [
                "https://www.googleapis.com/auth/cloud-platform",
                "https://www.googleapis.com/auth/userinfo.email"]})
        );
    }
    let (_, _, body) = rig.md("project/?recursive=true").await;
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"numericProjectId": 314159, "projectId": "my-project"})
    );
    let (_, _, body) = rig.md("instance/service-accounts/default/").await;
    assert_eq!(body, "aliases\nemail\nidentity\nscopes\ntoken\n");
    let (status, _, body) = rig.md("instance").await;
    assert_eq!(status, 200);
    assert!(body.contains("service-accounts/\n") && body.contains("zone\n"));
    let (_, _, body) = rig.md("").await;
    assert_eq!(body, "instance/\nproject/\nuniverse/\n");
    let (_, h, body) = rig.md("project/project-id?alt=json").await;
    assert_eq!(
        (h["content-type"].to_str().unwrap(), body.as_str()),
        ("application/json", "\"my-project\"")
    );
}

#[tokio::test(start_paused = true)]
async fn unknown_legacy_and_unsupported_paths() {
    let rig = Rig::new(true, HOUR, FAST);
    for path in [
        "/computeMetadata/v1beta1/instance/service-accounts/default/token",
        "/computeMetadata/v1/instance/service-accounts/other@x.iam.gserviceaccount.com/token",
        "/computeMetadata/v1/instance/attributes/kube-env",
        "/computeMetadata/v1/project/project-id/",
        "/computeMetadata/v1/instance/service-accounts/default/token/",
    ] {
        let (status, h, _) = rig.get(path, &[("metadata-flavor", "Google")]).await;
        assert_eq!(status, 404, "{path}");
        assert_eq!(h["metadata-flavor"], "Google");
    }
    assert!(!claims(
        rig.surface.as_ref(),
        "/0.1/meta-data/service-accounts/default/acquire"
    ));
    assert!(!claims(rig.surface.as_ref(), "/latest/meta-data/"));
    let (status, _, _) = rig
        .md("instance/service-accounts/default/token?wait_for_change=true")
        .await;
    assert_eq!(status, 400);
    let mut b = http::Request::builder()
        .method("POST")
        .uri("/computeMetadata/v1/project/project-id");
    b = b.header("metadata-flavor", "Google");
    let parts = b.body(()).unwrap().into_parts().0;
    assert_eq!(route(rig.surface.clone(), parts).await.status(), 405);
}

#[tokio::test(start_paused = true)]
async fn direct_federation_has_no_identity() {
    let rig = Rig::new(false, HOUR, FAST);
    let (status, _, body) = rig
        .md("instance/service-accounts/default/identity?audience=https://svc&format=full")
        .await;
    assert_eq!(status, 404);
    assert!(
        body.contains("is not annotated with a target Google service account"),
        "{body}"
    );
    let (_, _, email) = rig.md("instance/service-accounts/default/email").await;
    assert_eq!(email, "314159.svc.id.goog");
    let (status, _, _) = rig.md("project/project-id").await;
    assert_eq!(
        status, 404,
        "no GOOGLE_CLOUD_PROJECT and no service account: not defined"
    );
    rig.token("").await;
}

#[tokio::test(start_paused = true)]
async fn other_service_accounts_are_listed_and_served_under_their_email() {
    for impersonate in [true, false] {
        let rig = Rig::with_others(impersonate, &[OTHER], HOUR, FAST);
        let (status, _, listing) = rig.md("instance/service-accounts/").await;
        assert_eq!(status, 200);
        assert!(listing.lines().any(|l| l == "default/"), "{listing}");
        assert!(
            listing.lines().any(|l| l == format!("{OTHER}/")),
            "{listing}"
        );
        for leaf in ["email", "scopes", "aliases"] {
            let (status, _, _) = rig
                .md(&format!("instance/service-accounts/{OTHER}/{leaf}"))
                .await;
            assert_eq!(status, 200, "{leaf}");
        }
        let (_, _, email) = rig
            .md(&format!("instance/service-accounts/{OTHER}/email"))
            .await;
        assert_eq!(email, OTHER);
        let default = rig.token("").await["access_token"].clone();
        let (status, _, body) = rig
            .md(&format!("instance/service-accounts/{OTHER}/token"))
            .await;
        assert_eq!(status, 200, "{body}");
        let other: Value = serde_json::from_str(&body).unwrap();
        assert_ne!(other["access_token"], default);
        assert!(other["access_token"].as_str().unwrap().contains(OTHER));
        // Its ID tokens are minted for it, even in direct federation (it is impersonated).
        let (status, _, jwt) = rig
            .md(&format!(
                "instance/service-accounts/{OTHER}/identity?audience=https://svc"
            ))
            .await;
        assert_eq!(status, 200, "{jwt}");
        let payload = jwt.split('.').nth(1).unwrap();
        let claims: Value = serde_json::from_slice(
            &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, payload)
                .unwrap(),
        )
        .unwrap();
        assert_eq!(claims["sa"], OTHER);
        // An email the sidecar does not hold is GCE's 404.
        let (status, _, _) = rig
            .md("instance/service-accounts/nobody@my-project.iam.gserviceaccount.com/token")
            .await;
        assert_eq!(status, 404);
    }
}

/// What the metadata server answers without waiting is what `handle` answers; a token request
/// waits (`None`) only while its token is not held, and ID tokens always go the waiting way.
#[tokio::test(start_paused = true)]
async fn answers_without_waiting_are_the_answers_after_waiting() {
    use crate::testing::answers_now_as_handle;
    let rig = Rig::with_others(true, &[OTHER], HOUR, FAST);
    let s = rig.surface.as_ref();
    let get = |path: &str, flavored: bool| {
        let mut headers = vec![("host", "127.0.0.1:8189")];
        if flavored {
            headers.push(("metadata-flavor", "Google"));
        }
        crate::testing::parts("GET", path, &headers)
    };
    const TOKEN: &str = "/computeMetadata/v1/instance/service-accounts/default/token";
    assert!(
        !answers_now_as_handle(s, &get(TOKEN, true), false).await,
        "nothing held yet: the request waits"
    );
    rig.token("").await;
    let other = format!("/computeMetadata/v1/instance/service-accounts/{OTHER}/token");
    assert_eq!(
        rig.get(&other, &[("metadata-flavor", "Google")]).await.0,
        200
    );
    for (req, now) in [
        (get(TOKEN, true), true),
        (get(&other, true), true),
        (get(TOKEN, false), true),
        (get(&format!("{TOKEN}?scopes=a%20b"), true), false),
        (get(&format!("{TOKEN}?wait_for_change=true"), true), true),
        (get("/computeMetadata/v1/project/project-id", true), true),
        (
            get("/computeMetadata/v1/instance/?recursive=true", true),
            true,
        ),
        (get("/computeMetadata/v1/nothing", true), true),
        (get("/", false), true),
        (
            get(
                "/computeMetadata/v1/instance/service-accounts/default/identity?audience=x",
                true,
            ),
            false,
        ),
    ] {
        let what = format!("{} {}", req.method, req.uri);
        assert_eq!(answers_now_as_handle(s, &req, false).await, now, "{what}");
    }
}

//! Azure: the refresher under Azure's margins (paused time), the surfaces' serving rules, and
//! the Entra exchange against the fake Entra over real HTTP.

use std::sync::Arc;
use std::time::Duration;

use http::request::Parts;
use tokio::time::{Instant, sleep};

use super::surface::{AppServiceSurface, AzureToken, Flavor, ImdsSurface, Tokens, render};
use super::*;
use crate::clock::Clock;
use crate::clouds::Cloud;
use crate::exchange::{Exchange, ExchangeError, Fresh, Retry};
use crate::metrics::Metrics;
use crate::refresh::{Cache, Unavailable};
use crate::secret::Secret;
use crate::surface::Surface;
use crate::testing::{Scripted, claims, route};

const CLIENT: &str = "3f9a1c2e-7b4d-4e8f-a1b2-c3d4e5f60718";
const HEADER: &str = "identity-header-0123456789";
/// A second managed identity, federated with the same token.
const OTHER: &str = "0b6c1f4e-2d3a-4b5c-8d9e-0f1a2b3c4d5e";
const OTHER_RES: &str = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/other";

fn mins(m: u64) -> Duration {
    Duration::from_secs(m * 60)
}

/// Issues `life`-long tokens named `<scope>#<n>`, after 100 ms, unless told to fail.
#[derive(Clone)]
struct Script(Arc<Scripted>);

impl Exchange<AzureKey> for Script {
    type Credential = AzureToken;

    async fn exchange(&self, key: &AzureKey) -> Result<Fresh<AzureToken>, ExchangeError> {
        let scope = &key.scope;
        let (n, expires) = self.0.issue(&key.to_string()).await?;
        let now = self.0.clock.wall();
        Ok(Fresh {
            value: AzureToken::new(
                Secret::new(format!("{scope}#{n}")),
                unix(expires),
                unix(now),
            ),
            expires_at: expires,
        })
    }
}

/// The default identity's key for `scope`.
fn key(scope: &str) -> AzureKey {
    AzureKey {
        client_id: Arc::from(CLIENT),
        scope: scope.into(),
        default: true,
    }
}

struct Rig {
    ex: Arc<Scripted>,
    cache: Cache<AzureKey, Script>,
    imds: Arc<ImdsSurface<Script>>,
    app: Arc<AppServiceSurface<Script>>,
}

fn rig(life: Duration) -> Rig {
    let ex = Scripted::new(life);
    let cache = Azure::cache_builder(Script(ex.clone()))
        .clock(Arc::new(ex.clock))
        .build();
    let tokens = Arc::new(Tokens::new(
        cache.clone(),
        vec![
            Identity {
                client_id: CLIENT.into(),
                tenant_id: "t.example.com".into(),
                object_id: Some("aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee".into()),
                msi_res_id: None,
            },
            Identity {
                client_id: OTHER.into(),
                tenant_id: "t.example.com".into(),
                object_id: None,
                msi_res_id: Some(OTHER_RES.into()),
            },
        ],
        Arc::new(ex.clock),
    ));
    Rig {
        ex,
        cache,
        imds: Arc::new(ImdsSurface {
            tokens: tokens.clone(),
        }),
        app: Arc::new(AppServiceSurface {
            tokens,
            header: Some(Secret::new(HEADER)),
        }),
    }
}

fn parts(method: &str, uri: &str, headers: &[(&str, &str)]) -> Parts {
    let mut headers = headers.to_vec();
    headers.push(("host", "127.0.0.1:8189"));
    crate::testing::parts(method, uri, &headers)
}

async fn call(surface: Arc<dyn Surface>, req: Parts) -> (u16, serde_json::Value) {
    assert!(
        claims(surface.as_ref(), req.uri.path()),
        "{} unclaimed",
        req.uri
    );
    let resp = route(surface, req).await;
    let status = resp.status().as_u16();
    assert_eq!(resp.headers()["content-type"], "application/json");
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    (status, serde_json::from_slice(&body).unwrap())
}

const MGMT: &str =
    "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://management.azure.com/";

async fn imds(r: &Rig, uri: &str) -> (u16, serde_json::Value) {
    call(r.imds.clone(), parts("GET", uri, &[("metadata", "true")])).await
}

#[test]
fn command_line_is_consistent_and_parses_azure_flags() {
    use clap::{CommandFactory, Parser};
    crate::cli::Cli::command().debug_assert();
    let cli = crate::cli::Cli::try_parse_from([
        "credbroker",
        "serve",
        "--azure-identity-header",
        HEADER,
        "--azure-resources",
        "https://vault.azure.net,https://management.azure.com/",
    ])
    .unwrap();
    let crate::cli::Command::Serve(args) = cli.command else {
        panic!("not serve");
    };
    assert_eq!(
        args.clouds.of::<Flags>().azure_resources,
        ["https://vault.azure.net", "https://management.azure.com/"]
    );
    assert_eq!(
        args.clouds
            .of::<Flags>()
            .azure_identity_header
            .unwrap()
            .expose(),
        HEADER
    );
    let e = crate::cli::Cli::try_parse_from([
        "credbroker",
        "serve",
        "--azure-identity-header",
        "short",
    ])
    .unwrap_err();
    assert!(e.to_string().contains("at least 16"), "{e}");
}

// === the refresher with Azure's margins (paused time) ===

#[tokio::test(start_paused = true)]
async fn one_hour_tokens_refresh_at_half_life_and_are_never_served_inside_the_window() {
    let r = rig(Duration::from_secs(3599));
    let slot = r
        .cache
        .pin(key(&scope_for("https://management.azure.com/")));
    slot.get(Duration::from_secs(2)).await.unwrap();
    let t0 = Instant::now();
    for _ in 0..(6 * 60) {
        sleep(Duration::from_secs(60)).await;
        let c = slot.current().expect("always servable while Entra works");
        let left = c.remaining(Instant::now());
        assert!(left > mins(10), "served with {left:?} left");
    }
    let times = r.ex.times("https://management.azure.com//.default");
    // Half-life of a 3599 s token is ~30 min (±10 %): ~12 exchanges in 6 h, not more.
    assert!(
        (12..=14).contains(&times.len()),
        "{} exchanges",
        times.len()
    );
    let first_refresh = times[1] - t0 + Duration::from_millis(100);
    assert!(
        first_refresh >= mins(26) && first_refresh <= mins(34),
        "{first_refresh:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn day_long_managed_identity_tokens_refresh_at_half_life() {
    let r = rig(Duration::from_secs(86_399));
    let slot = r.cache.pin(key("https://vault.azure.net/.default"));
    slot.get(Duration::from_secs(2)).await.unwrap();
    sleep(Duration::from_secs(10 * 3600)).await;
    assert_eq!(r.ex.calls(), 1, "refreshed before 10.8 h");
    sleep(Duration::from_secs(4 * 3600)).await;
    assert_eq!(r.ex.calls(), 2, "not refreshed by 13.2 h");
    let c = slot.current().unwrap();
    assert!(c.remaining(Instant::now()) > Duration::from_secs(20 * 3600));
}

#[tokio::test(start_paused = true)]
async fn a_pinned_key_is_served_from_its_slot_without_a_second_exchange_or_entry() {
    use http_body_util::BodyExt;
    let ex = Scripted::new(Duration::from_secs(3599));
    let cache = Azure::cache_builder(Script(ex.clone()))
        .clock(Arc::new(ex.clock))
        .build();
    let identity = Identity {
        client_id: CLIENT.into(),
        tenant_id: "t.example.com".into(),
        object_id: None,
        msi_res_id: None,
    };
    let tokens = Tokens::new(cache.clone(), vec![identity], Arc::new(ex.clock));
    // As `start` pins `--azure-resources`: the scope the resource maps to.
    let arm = key(&config::scope_for("https://management.azure.com/"));
    let pinned = cache.pin(arm.clone());
    // Pinning again, and looking the key up, find the same slot (the pinned fast path).
    assert!(Arc::ptr_eq(&pinned, &cache.pin(arm.clone())));
    assert!(Arc::ptr_eq(&pinned, &cache.slot(&arm)));
    let imds = ImdsSurface {
        tokens: Arc::new(tokens),
    };
    for _ in 0..3 {
        let resp = imds
            .handle(&parts(
                "GET",
                "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://management.azure.com/",
                &[("metadata", "true")],
            ))
            .await;
        assert_eq!(resp.status(), 200);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["resource"], "https://management.azure.com/");
        assert_eq!(v["client_id"], CLIENT);
    }
    assert_eq!(
        ex.calls(),
        1,
        "one exchange for the pinned key: {:?}",
        ex.log.lock()
    );
    assert_eq!(cache.len(), 1, "no second entry for the same key");
}

#[tokio::test(start_paused = true)]
async fn tokens_shorter_than_the_window_refresh_at_half_life_without_looping() {
    // 8 minutes: less than azure-identity's 5 min window plus our 5 min margin.
    let r = rig(mins(8));
    let slot = r.cache.pin(key("https://vault.azure.net/.default"));
    slot.get(Duration::from_secs(2)).await.unwrap();
    for _ in 0..60 {
        sleep(Duration::from_secs(60)).await;
        assert!(slot.current().is_some(), "a valid token was not served");
    }
    // Refreshed every ~4 min: ~15 an hour, never in a tight loop.
    assert!((13..=17).contains(&r.ex.calls()), "{}", r.ex.calls());
}

#[tokio::test(start_paused = true)]
async fn single_flight_per_resource_and_spellings_of_one_scope_share_it() {
    let r = Arc::new(rig(Duration::from_secs(3599)));
    let mut tasks = Vec::new();
    for i in 0..300 {
        let r = r.clone();
        tasks.push(tokio::spawn(async move {
            let resource = match i % 3 {
                0 => "https://vault.azure.net",
                1 => "https://vault.azure.net/.default",
                _ => "https://storage.azure.com/",
            };
            let uri = format!(
                "/metadata/identity/oauth2/token?api-version=2018-02-01&resource={resource}"
            );
            let (status, body) = imds(&r, &uri).await;
            assert_eq!(status, 200, "{body}");
            assert_eq!(body["resource"], resource, "echoed exactly as asked");
            body["access_token"].as_str().unwrap().to_string()
        }));
    }
    let mut tokens = std::collections::BTreeSet::new();
    for t in tasks {
        tokens.insert(t.await.unwrap());
    }
    assert_eq!(r.ex.calls(), 2, "one exchange per scope");
    let vault = "https://vault.azure.net/.default";
    let storage = "https://storage.azure.com//.default";
    assert_eq!(r.ex.times(vault).len(), 1);
    assert_eq!(r.ex.times(storage).len(), 1);
    // 300 callers, two distinct tokens: every caller got its scope's one token.
    assert_eq!(tokens.len(), 2, "{tokens:?}");
    let scopes: std::collections::BTreeSet<String> = tokens
        .iter()
        .map(|t| t.rsplit_once('#').unwrap().0.to_string())
        .collect();
    assert_eq!(scopes, [vault.to_string(), storage.to_string()].into());
}

#[tokio::test(start_paused = true)]
async fn failures_map_to_retryable_503_or_the_upstream_denial() {
    let r = rig(Duration::from_secs(3599));
    *r.ex.fail_with.lock() = Some(
        ExchangeError::transient("temporarily_unavailable", "AADSTS90055: throttled")
            .with_status(429),
    );
    let (status, body) = imds(&r, MGMT).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "temporarily_unavailable");

    let r = rig(Duration::from_secs(3599));
    *r.ex.fail_with.lock() = Some(
        ExchangeError::new(
            Retry::Permanent,
            "invalid_request",
            "AADSTS70021: No matching federated identity record found",
        )
        .with_status(400),
    );
    let (status, body) = imds(&r, MGMT).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "invalid_request");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .starts_with("AADSTS70021")
    );
    let resp = super::surface::unavailable(&Unavailable::Failed(
        ExchangeError::permanent("invalid_client", "AADSTS700024: expired").with_status(401),
    ));
    assert_eq!(resp.status(), 401);
    assert_eq!(
        super::surface::unavailable(&Unavailable::Pending).status(),
        503
    );
}

// === serving rules ===

#[tokio::test(start_paused = true)]
async fn imds_response_has_every_value_as_a_string() {
    let r = rig(Duration::from_secs(3599));
    let (status, body) = imds(&r, MGMT).await;
    assert_eq!(status, 200);
    let obj = body.as_object().unwrap();
    let keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    for k in [
        "access_token",
        "refresh_token",
        "expires_in",
        "expires_on",
        "not_before",
        "resource",
        "token_type",
        "client_id",
    ] {
        assert!(keys.contains(&k), "{k} missing: {keys:?}");
    }
    assert!(obj.values().all(|v| v.is_string()), "{body}");
    assert_eq!(body["refresh_token"], "");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["client_id"], CLIENT);
    assert_eq!(body["resource"], "https://management.azure.com/");
    let on: u64 = body["expires_on"].as_str().unwrap().parse().unwrap();
    let inn: u64 = body["expires_in"].as_str().unwrap().parse().unwrap();
    let nb: u64 = body["not_before"].as_str().unwrap().parse().unwrap();
    let now = r.ex.clock.unix_secs();
    assert_eq!(on - inn, now);
    assert!(nb <= now && on - nb == 3599);
}

#[tokio::test(start_paused = true)]
async fn imds_request_rules() {
    let r = rig(Duration::from_secs(3599));
    // Metadata: true is required, answered at once (probes send none).
    let (s, b) = call(r.imds.clone(), parts("GET", MGMT, &[])).await;
    assert_eq!(
        (s, b["error_description"].as_str().unwrap()),
        (400, "Required metadata header not specified")
    );
    let (s, _) = call(r.imds.clone(), parts("GET", MGMT, &[("metadata", "false")])).await;
    assert_eq!(s, 400);
    let probe = parts("GET", "/metadata/identity/oauth2/token", &[]);
    assert_eq!(call(r.imds.clone(), probe).await.0, 400);
    assert_eq!(r.ex.calls(), 0, "rejected requests reach no exchange");
    // X-Forwarded-For is refused.
    let (s, _) = call(
        r.imds.clone(),
        parts(
            "GET",
            MGMT,
            &[("metadata", "true"), ("x-forwarded-for", "10.0.0.1")],
        ),
    )
    .await;
    assert_eq!(s, 400);
    // Case-insensitive /metadata, trailing slash accepted (msal-node sends one).
    for path in [
        "/METADATA/identity/oauth2/token",
        "/Metadata/identity/oauth2/token/",
    ] {
        let (s, b) = imds(
            &r,
            &format!("{path}?api-version=2018-02-01&resource=https://vault.azure.net"),
        )
        .await;
        assert_eq!(s, 200, "{path}: {b}");
    }
    // Parameters.
    for (query, why) in [
        ("resource=https://vault.azure.net", "api-version"),
        ("api-version=2018-02-01", "resource"),
        (
            "api-version=2018-02-01&resource=https://a&resource=https://b",
            "Duplicate",
        ),
        (
            "api-version=2018-02-01&resource=https://a%20https://b",
            "single resource",
        ),
        (
            &format!("api-version=2018-02-01&resource=https://a&client_id={CLIENT}&object_id=x"),
            "Only one",
        ),
    ] {
        let (s, b) = imds(&r, &format!("/metadata/identity/oauth2/token?{query}")).await;
        assert_eq!(s, 400, "{query}");
        assert!(
            b["error_description"].as_str().unwrap().contains(why),
            "{query}: {b}"
        );
    }
    // Identities: ours by client id (any case) or object id; anything else is 400.
    for (param, ok) in [
        (format!("client_id={CLIENT}"), true),
        (format!("client_id={}", CLIENT.to_uppercase()), true),
        (
            "object_id=aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee".into(),
            true,
        ),
        (
            "client_id=00000000-0000-0000-0000-000000000000".into(),
            false,
        ),
        ("msi_res_id=/subscriptions/x".into(), false),
    ] {
        let (s, b) = imds(&r, &format!("{MGMT}&{param}")).await;
        assert_eq!(s == 200, ok, "{param}: {b}");
        if !ok {
            assert_eq!(s, 400);
            assert!(
                b["error_description"]
                    .as_str()
                    .unwrap()
                    .contains("Identity not found")
            );
        }
    }
    // Other methods, other metadata paths, and the ImdsV2 probe (no IMDS Server header).
    let (s, _) = call(r.imds.clone(), parts("POST", MGMT, &[("metadata", "true")])).await;
    assert_eq!(s, 405);
    let v2 = parts(
        "POST",
        "/metadata/identity/credential?cred-api-version=1.0",
        &[("metadata", "true")],
    );
    let resp = route(r.imds.clone(), v2).await;
    assert_eq!(resp.status(), 404);
    assert!(resp.headers().get("server").is_none());
    let (s, _) = imds(&r, "/metadata/instance?api-version=2021-02-01").await;
    assert_eq!(s, 404);
    assert!(!claims(r.imds.as_ref(), "/metadataX/identity/oauth2/token"));
    assert!(!claims(r.imds.as_ref(), "/computeMetadata/v1/"));
}

#[tokio::test(start_paused = true)]
async fn app_service_rules() {
    let r = rig(Duration::from_secs(3599));
    let uri = "/msi/token?api-version=2019-08-01&resource=https://vault.azure.net";
    let (s, _) = call(r.app.clone(), parts("GET", uri, &[])).await;
    assert_eq!(s, 400, "missing X-IDENTITY-HEADER");
    let (s, _) = call(
        r.app.clone(),
        parts("GET", uri, &[("x-identity-header", "wrong")]),
    )
    .await;
    assert_eq!(s, 401);
    let (s, _) = call(
        r.app.clone(),
        parts(
            "GET",
            uri,
            &[
                ("x-identity-header", HEADER),
                ("x-forwarded-for", "1.2.3.4"),
            ],
        ),
    )
    .await;
    assert_eq!(s, 400);
    assert_eq!(r.ex.calls(), 0);
    let (s, b) = call(
        r.app.clone(),
        parts("GET", uri, &[("x-identity-header", HEADER)]),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    assert!(b.as_object().unwrap().values().all(|v| v.is_string()));
    assert_eq!(b["resource"], "https://vault.azure.net");
    assert_eq!(b["client_id"], CLIENT);
    let on: u64 = b["expires_on"].as_str().unwrap().parse().unwrap();
    assert!(on > r.ex.clock.unix_secs() + 3000);
    for (query, status) in [
        (
            "api-version=2017-09-01&resource=https://vault.azure.net",
            400,
        ),
        (
            "api-version=2019-08-01&resource=https://vault.azure.net&principal_id=aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee",
            200,
        ),
        (
            "api-version=2019-08-01&resource=https://vault.azure.net&mi_res_id=/subscriptions/s",
            400,
        ),
    ] {
        let (s, b) = call(
            r.app.clone(),
            parts(
                "GET",
                &format!("/msi/token?{query}"),
                &[("x-identity-header", HEADER)],
            ),
        )
        .await;
        assert_eq!(s, status, "{query}: {b}");
    }
    // Without --azure-identity-header the endpoint is off.
    let off = Arc::new(AppServiceSurface {
        tokens: r.app.tokens.clone(),
        header: None,
    });
    let (s, _) = call(off, parts("GET", uri, &[("x-identity-header", HEADER)])).await;
    assert_eq!(s, 404);
}

// === the Entra exchange against the fake Entra (real time, real HTTP) ===

mod against_fake_entra {
    use super::*;
    use fakecloud::azure::{DEMO_CLIENT_ID, ENTRA_AUDIENCE, FakeEntra, FakeEntraHandle};
    use fakecloud::faults::Fault;
    use fakecloud::{Issuer, ProjectedToken, ServiceAccount};

    use crate::clock::SystemClock;
    use crate::token::TokenSource;

    struct World {
        _dir: tempfile::TempDir,
        entra: FakeEntraHandle,
        volume: Arc<ProjectedToken>,
        exchange: AzureExchange,
    }

    async fn world() -> World {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let dir = tempfile::tempdir().unwrap();
        let issuer = Arc::new(Issuer::new("https://oidc.test/cluster"));
        let sa = ServiceAccount::default();
        let volume = Arc::new(
            ProjectedToken::create(
                dir.path(),
                issuer.clone(),
                sa.clone(),
                ENTRA_AUDIENCE,
                Duration::from_secs(3600),
            )
            .unwrap(),
        );
        let entra = FakeEntra::start(issuer, &sa.subject(), "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let token =
            TokenSource::open(volume.path(), clock.clone(), Arc::new(Metrics::new())).unwrap();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        let client = EntraClient {
            http,
            token_url: entra.token_url().parse().unwrap(),
            client_id: DEMO_CLIENT_ID.into(),
            token,
            clock,
        };
        let exchange = AzureExchange {
            clients: HashMap::from([(Arc::<str>::from(DEMO_CLIENT_ID), client)]),
        };
        World {
            _dir: dir,
            entra,
            volume,
            exchange,
        }
    }

    const SCOPE: &str = "https://management.azure.com//.default";

    fn scope_key() -> AzureKey {
        AzureKey {
            client_id: Arc::from(DEMO_CLIENT_ID),
            scope: SCOPE.into(),
            default: true,
        }
    }

    #[tokio::test]
    async fn issues_the_token_the_fake_logged_for_that_scope() {
        let w = world().await;
        let fresh = w.exchange.exchange(&scope_key()).await.unwrap();
        let log = w.entra.log();
        assert_eq!(log.len(), 1);
        assert_eq!(log[0].scope.as_deref(), Some(SCOPE));
        assert_eq!(log[0].client_id.as_deref(), Some(DEMO_CLIENT_ID));
        assert_eq!(log[0].grant_type.as_deref(), Some("client_credentials"));
        assert_eq!(
            log[0].assertion_sha256.as_deref(),
            Some(fakecloud::aws::sha256_hex(w.volume.current()).as_str())
        );
        assert_eq!(
            Some(fresh.value.access_token.expose()),
            log[0].access_token.as_deref()
        );
        let left = fresh
            .expires_at
            .duration_since(std::time::SystemTime::now())
            .unwrap();
        assert!(left > Duration::from_secs(3590) && left <= Duration::from_secs(3599));
    }

    #[tokio::test]
    async fn each_exchange_sends_the_token_on_disk_now() {
        let w = world().await;
        w.exchange.exchange(&scope_key()).await.unwrap();
        let rotated = w.volume.rotate().unwrap();
        w.exchange.exchange(&scope_key()).await.unwrap();
        let log = w.entra.log();
        assert_eq!(
            log[1].assertion_sha256.as_deref(),
            Some(fakecloud::aws::sha256_hex(&rotated).as_str())
        );
        assert_ne!(log[0].assertion_sha256, log[1].assertion_sha256);
    }

    #[tokio::test]
    async fn expired_assertion_is_retried_once_with_a_fresh_read() {
        let w = world().await;
        w.entra.faults().set(Fault::Error {
            code: "700024".into(),
            count: Some(1),
        });
        w.exchange.exchange(&scope_key()).await.unwrap();
        let outcomes: Vec<String> = w.entra.log().into_iter().map(|r| r.outcome).collect();
        assert_eq!(outcomes, ["fault:error", "issued"]);

        // Twice in a row: a denial, surfaced with Entra's status and code.
        w.entra.faults().set(Fault::Error {
            code: "700024".into(),
            count: Some(2),
        });
        let e = w.exchange.exchange(&scope_key()).await.unwrap_err();
        assert_eq!(
            (e.code.as_str(), e.status, e.retry),
            ("invalid_client", Some(401), Retry::Permanent)
        );
        assert!(e.message.starts_with("AADSTS700024:"));
        assert_eq!(w.entra.log().len(), 4, "exactly one retry");
    }

    #[tokio::test]
    async fn entra_error_codes_are_classified() {
        let w = world().await;
        for (code, status, error, retry) in [
            ("70021", 400, "invalid_request", Retry::Permanent),
            ("700211", 401, "invalid_client", Retry::Permanent),
            ("700213", 401, "invalid_client", Retry::Permanent),
            ("700016", 400, "unauthorized_client", Retry::Permanent),
            ("invalid_scope", 400, "invalid_scope", Retry::Permanent),
        ] {
            w.entra.faults().set(Fault::Error {
                code: code.into(),
                count: Some(1),
            });
            let e = w.exchange.exchange(&scope_key()).await.unwrap_err();
            assert_eq!(
                (e.status, e.code.as_str(), e.retry),
                (Some(status), error, retry),
                "{code}"
            );
            assert!(e.message.starts_with("AADSTS"), "{code}: {}", e.message);
        }
        w.entra.faults().set(Fault::Status {
            status: 429,
            count: Some(1),
            retry_after: Some(7),
        });
        let e = w.exchange.exchange(&scope_key()).await.unwrap_err();
        assert_eq!(
            (e.status, e.retry, e.retry_after),
            (Some(429), Retry::Transient, Some(Duration::from_secs(7)))
        );
        for status in [500, 503] {
            w.entra.faults().set(Fault::Status {
                status,
                count: Some(1),
                retry_after: None,
            });
            let e = w.exchange.exchange(&scope_key()).await.unwrap_err();
            assert_eq!((e.status, e.retry), (Some(status), Retry::Transient));
        }
        w.entra.faults().set(Fault::Garbage { count: Some(1) });
        let e = w.exchange.exchange(&scope_key()).await.unwrap_err();
        assert_eq!(
            (e.code.as_str(), e.retry),
            ("MalformedResponse", Retry::Transient)
        );
    }

    #[tokio::test]
    async fn real_fic_mismatches_and_scope_errors() {
        let w = world().await;
        // A multi-resource scope: Entra's own invalid_scope.
        let e = w
            .exchange
            .exchange(&AzureKey {
                scope: "https://a/.default https://b/.default".into(),
                ..scope_key()
            })
            .await
            .unwrap_err();
        assert_eq!((e.code.as_str(), e.status), ("invalid_scope", Some(400)));
        // A federated credential for another subject: 700213.
        w.entra.clear_federated_credentials(DEMO_CLIENT_ID);
        w.entra.add_federated_credential(
            DEMO_CLIENT_ID,
            fakecloud::azure::FederatedCredential {
                issuer: "https://oidc.test/cluster".into(),
                subject: "system:serviceaccount:default:App".into(),
                audience: ENTRA_AUDIENCE.into(),
            },
        );
        let e = w.exchange.exchange(&scope_key()).await.unwrap_err();
        assert!(e.message.starts_with("AADSTS700213"), "{}", e.message);
        // No federated credential for this issuer at all: 700211.
        w.entra.clear_federated_credentials(DEMO_CLIENT_ID);
        let e = w.exchange.exchange(&scope_key()).await.unwrap_err();
        assert!(e.message.starts_with("AADSTS700211"), "{}", e.message);
        // The app is gone: 700016.
        w.entra.remove_app(DEMO_CLIENT_ID);
        let e = w.exchange.exchange(&scope_key()).await.unwrap_err();
        assert!(e.message.starts_with("AADSTS700016"), "{}", e.message);
        assert_eq!(e.retry, Retry::Permanent);
        // The assertion is never logged by us or echoed back.
        assert!(!e.message.contains(&w.volume.current()));
    }
}

#[test]
fn rendered_bodies_splice_the_pre_rendered_token() {
    let token = AzureToken::new(Secret::new("eyJ0\"x\\y"), 2_000, 1_000);
    for (flavor, keys) in [
        (
            Flavor::Imds,
            &[
                "access_token",
                "refresh_token",
                "expires_in",
                "expires_on",
                "not_before",
                "resource",
                "token_type",
                "client_id",
            ][..],
        ),
        (
            Flavor::AppService,
            &[
                "access_token",
                "expires_on",
                "expires_in",
                "resource",
                "token_type",
                "client_id",
            ][..],
        ),
    ] {
        let body = render(flavor, &token, br#""https://a\"b/""#, br#""cid""#, 1_500);
        let v: serde_json::Value = serde_json::from_slice(&body).expect("valid JSON");
        let obj = v.as_object().unwrap();
        assert_eq!(obj.len(), keys.len(), "{v}");
        for k in keys {
            assert!(obj.contains_key(*k), "{k} missing in {v}");
        }
        assert_eq!(v["access_token"], "eyJ0\"x\\y");
        assert_eq!(v["expires_in"], "500");
        assert_eq!(v["expires_on"], "2000");
        assert_eq!(v["resource"], "https://a\"b/");
        assert_eq!(v["client_id"], "cid");
        // Key order as the SDK documentation shows it: access_token first.
        assert!(body.starts_with(br#"{"access_token":"eyJ0\"x\\y","#));
    }
}

#[tokio::test(start_paused = true)]
async fn requests_select_each_managed_identity_as_azure_does() {
    let r = rig(mins(60));
    const Q: &str =
        "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://vault.azure.net";
    let (status, default) = imds(&r, Q).await;
    assert_eq!(status, 200);
    assert_eq!(default["client_id"], CLIENT);
    for selector in [
        format!("client_id={OTHER}"),
        format!("client_id={}", OTHER.to_ascii_uppercase()),
        format!("msi_res_id={OTHER_RES}"),
    ] {
        let (status, body) = imds(&r, &format!("{Q}&{selector}")).await;
        assert_eq!(status, 200, "{selector}: {body}");
        assert_eq!(body["client_id"], OTHER, "{selector}");
        assert_ne!(body["access_token"], default["access_token"]);
    }
    // One exchange per identity and resource, whichever way the identity was named.
    assert_eq!(
        r.ex.times(&format!("{OTHER} https://vault.azure.net/.default"))
            .len(),
        1
    );
    assert_eq!(r.ex.times("https://vault.azure.net/.default").len(), 1);
    // App Service selects the same way; an identity the sidecar does not hold is Azure's 400.
    let uri = format!(
        "/msi/token?api-version=2019-08-01&resource=https://vault.azure.net&client_id={OTHER}"
    );
    let (status, body) = call(
        r.app.clone(),
        parts("GET", &uri, &[("x-identity-header", HEADER)]),
    )
    .await;
    assert_eq!((status, body["client_id"].as_str()), (200, Some(OTHER)));
    let (status, body) = imds(
        &r,
        &format!("{Q}&client_id=11111111-2222-3333-4444-555555555555"),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"], "invalid_request");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("Identity not found")
    );
}

#[test]
fn parse_memo_answers_as_parse_request() {
    use super::surface::{ParseMemo, parse_request};
    let memo = ParseMemo::default();
    let vault = "api-version=2018-02-01&resource=https%3A%2F%2Fvault.azure.net";
    let arm = "api-version=2018-02-01&resource=https%3A%2F%2Fmanagement.azure.com%2F";
    for _ in 0..2 {
        let got = memo.parse(Some(vault), Flavor::Imds).unwrap();
        assert_eq!(*got, parse_request(Some(vault), Flavor::Imds).unwrap());
    }
    // Each protocol has its own slot and its own rules (App Service needs 2019-08-01).
    for _ in 0..2 {
        assert_eq!(
            memo.parse(Some(vault), Flavor::AppService).unwrap_err(),
            parse_request(Some(vault), Flavor::AppService).unwrap_err()
        );
    }
    assert_eq!(
        memo.parse(Some(arm), Flavor::Imds).unwrap().resource,
        "https://management.azure.com/"
    );
    assert_eq!(
        memo.parse(Some(vault), Flavor::Imds).unwrap().resource,
        "https://vault.azure.net"
    );
    // Refusals are not remembered: they are refused every time.
    for _ in 0..2 {
        assert!(memo.parse(Some("resource=x"), Flavor::Imds).is_err());
        assert!(memo.parse(None, Flavor::Imds).is_err());
        let dup = format!("{vault}&resource=https%3A%2F%2Fvault.azure.net");
        assert!(memo.parse(Some(&dup), Flavor::Imds).is_err());
    }
    assert_eq!(
        memo.parse(Some(vault), Flavor::Imds).unwrap().scope,
        parse_request(Some(vault), Flavor::Imds).unwrap().scope
    );
}

/// Bodies are remembered per protocol ([`crate::http::memo::BodyMemo`]); a remembered body is
/// answered only for the same token, request, identity and second.
#[tokio::test(start_paused = true)]
async fn a_remembered_body_follows_the_clock_the_token_the_identity_and_the_request() {
    let r = rig(mins(60));
    let expires_in =
        |v: &serde_json::Value| -> u64 { v["expires_in"].as_str().unwrap().parse().unwrap() };
    let (_, first) = imds(&r, MGMT).await;
    assert_eq!(
        imds(&r, MGMT).await.1,
        first,
        "the same second, the same body"
    );
    sleep(Duration::from_secs(90)).await;
    let (_, later) = imds(&r, MGMT).await;
    assert_eq!(later["access_token"], first["access_token"]);
    assert_eq!(expires_in(&first) - expires_in(&later), 90);
    // The other protocol, the other identity, another resource: each its own body.
    let app = parts(
        "GET",
        "/msi/token?api-version=2019-08-01&resource=https://management.azure.com/",
        &[("x-identity-header", HEADER)],
    );
    let (_, via_app) = call(r.app.clone(), app).await;
    assert_eq!(via_app["access_token"], first["access_token"]);
    assert!(
        via_app.get("not_before").is_none(),
        "App Service's shape: {via_app}"
    );
    let (_, other) = imds(&r, &format!("{MGMT}&client_id={OTHER}")).await;
    assert_eq!(other["client_id"], OTHER);
    let vault =
        "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://vault.azure.net";
    let (_, v) = imds(&r, vault).await;
    assert_eq!(v["resource"], "https://vault.azure.net");
    assert_eq!(imds(&r, MGMT).await.1["client_id"], CLIENT);
    // Past the first token's life: the next token, never the remembered body.
    sleep(mins(61)).await;
    let (status, next) = imds(&r, MGMT).await;
    assert_eq!(status, 200);
    assert_ne!(next["access_token"], first["access_token"]);
    assert!(expires_in(&next) > 0);
}

/// What the Azure surfaces answer without waiting is what `handle` answers; a token request
/// waits (`None`) only while its token is not held.
#[tokio::test(start_paused = true)]
async fn answers_without_waiting_are_the_answers_after_waiting() {
    use crate::testing::answers_now_as_handle;
    let r = rig(mins(60));
    let imds_req = |uri: &str, headers: &[(&str, &str)]| parts("GET", uri, headers);
    let token = imds_req(MGMT, &[("metadata", "true")]);
    assert!(
        !answers_now_as_handle(r.imds.as_ref(), &token, false).await,
        "nothing held yet: the request waits"
    );
    assert_eq!(imds(&r, MGMT).await.0, 200);
    let other = format!("{MGMT}&client_id={OTHER}");
    assert_eq!(imds(&r, &other).await.0, 200);
    for (req, now) in [
        (token, true),
        (imds_req(&other, &[("metadata", "true")]), true),
        (imds_req(MGMT, &[]), true),
        (
            imds_req(&format!("{MGMT}&client_id=nobody"), &[("metadata", "true")]),
            true,
        ),
        (
            imds_req(
                "/metadata/identity/oauth2/token?resource=x",
                &[("metadata", "true")],
            ),
            true,
        ),
        (
            imds_req("/metadata/instance", &[("metadata", "true")]),
            true,
        ),
        (
            parts(
                "POST",
                "/metadata/identity/credential",
                &[("metadata", "true")],
            ),
            true,
        ),
        (parts("POST", MGMT, &[("metadata", "true")]), true),
        (
            imds_req(
                "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://vault.azure.net",
                &[("metadata", "true")],
            ),
            false,
        ),
    ] {
        let what = format!("{} {}", req.method, req.uri);
        assert_eq!(
            answers_now_as_handle(r.imds.as_ref(), &req, false).await,
            now,
            "{what}"
        );
    }
    const APP: &str = "/msi/token?api-version=2019-08-01&resource=https://management.azure.com/";
    for (req, now) in [
        (parts("GET", APP, &[("x-identity-header", HEADER)]), true),
        (parts("GET", APP, &[("x-identity-header", "wrong")]), true),
        (parts("GET", APP, &[]), true),
        (
            parts(
                "GET",
                "/msi/token?api-version=2017-09-01&resource=x",
                &[("x-identity-header", HEADER)],
            ),
            true,
        ),
    ] {
        let what = format!("{} {}", req.method, req.uri);
        assert_eq!(
            answers_now_as_handle(r.app.as_ref(), &req, false).await,
            now,
            "{what}"
        );
    }
}

//! The fake Google STS and IAM Credentials over HTTP: the success shapes, the checks of
//! docs/gcp.md, "STS token exchange" and "IAM Credentials", and their error shapes, and fault
//! injection.

use fakecloud::gcp::{
    self, ACCESS_TOKEN_TYPE, CLOUD_PLATFORM, DEMO_POOL, DEMO_PROJECT_NUMBER, DEMO_PROVIDER,
    DEMO_SERVICE_ACCOUNT, FakeGcp, FakeGcpHandle, GRANT_TYPE, JWT_TOKEN_TYPE,
};
use fakecloud::{Fault, Issuer, ServiceAccount};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

struct Env {
    gcp: FakeGcpHandle,
    issuer: Arc<Issuer>,
    http: reqwest::Client,
}

async fn env() -> Env {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let issuer = Arc::new(Issuer::new("http://127.0.0.1:1"));
    let gcp = FakeGcp::start(issuer.clone(), SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .unwrap();
    gcp.trust(DEMO_SERVICE_ACCOUNT, &ServiceAccount::default().subject());
    Env {
        gcp,
        issuer,
        http: reqwest::Client::new(),
    }
}

fn audience() -> String {
    gcp::provider_name(DEMO_PROJECT_NUMBER, DEMO_POOL, DEMO_PROVIDER)
}

impl Env {
    fn token(&self, aud: &str) -> String {
        self.issuer
            .mint(&ServiceAccount::default(), aud, Duration::from_secs(3600))
    }

    async fn sts_form(&self, form: &[(&str, &str)]) -> (u16, Value) {
        let resp = self
            .http
            .post(self.gcp.token_url())
            .form(form)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn sts(&self, token: &str, scope: &str) -> (u16, Value) {
        let aud = audience();
        self.sts_form(&[
            ("grant_type", GRANT_TYPE),
            ("audience", &aud),
            ("scope", scope),
            ("requested_token_type", ACCESS_TOKEN_TYPE),
            ("subject_token", token),
            ("subject_token_type", JWT_TOKEN_TYPE),
        ])
        .await
    }

    async fn federated(&self) -> String {
        let (status, body) = self
            .sts(
                &self.token(&format!("https:{}", audience())),
                CLOUD_PLATFORM,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body["access_token"].as_str().unwrap().to_string()
    }

    async fn iam(&self, method: &str, bearer: &str, body: Value) -> (u16, Value) {
        let url = format!(
            "{}/v1/projects/-/serviceAccounts/{DEMO_SERVICE_ACCOUNT}:{method}",
            self.gcp.url()
        );
        let resp = self
            .http
            .post(url)
            .bearer_auth(bearer)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }
}

#[tokio::test]
async fn sts_exchanges_a_kubelet_token_with_either_audience_form() {
    let e = env().await;
    for aud in [format!("https:{}", audience()), audience()] {
        let (status, body) = e.sts(&e.token(&aud), CLOUD_PLATFORM).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["token_type"], "Bearer");
        assert_eq!(body["issued_token_type"], ACCESS_TOKEN_TYPE);
        assert!(body["access_token"].as_str().unwrap().starts_with("ya29."));
        let expires_in = body["expires_in"].as_u64().unwrap();
        assert!((3590..=3600).contains(&expires_in), "{expires_in}");
    }
    let log = e.gcp.log();
    assert_eq!(log.len(), 2);
    assert_eq!(log[0].api, "sts");
    assert_eq!(log[0].outcome, "issued");
    assert_eq!(
        log[0].subject.as_deref(),
        Some("system:serviceaccount:default:app")
    );
    assert_eq!(log[0].subject_token_sha256.as_ref().unwrap().len(), 64);
}

#[tokio::test]
async fn sts_clamps_the_lifetime_to_the_subject_token() {
    let e = env().await;
    let short = e.issuer.mint(
        &ServiceAccount::default(),
        &audience(),
        Duration::from_secs(300),
    );
    let (status, body) = e.sts(&short, CLOUD_PLATFORM).await;
    assert_eq!(status, 200);
    assert!(body["expires_in"].as_u64().unwrap() <= 300);
}

#[tokio::test]
async fn sts_errors_have_the_oauth_shape() {
    let e = env().await;
    let good = e.token(&audience());
    let wrong_aud = e.token("sts.amazonaws.com");
    let (s, b) = e.sts(&wrong_aud, CLOUD_PLATFORM).await;
    assert_eq!(
        (s, b["error"].as_str()),
        (400, Some("invalid_grant")),
        "{b}"
    );
    assert!(
        b["error_description"]
            .as_str()
            .unwrap()
            .contains("audience")
    );

    let (s, b) = e.sts(&good, "").await;
    assert_eq!((s, b["error"].as_str()), (400, Some("invalid_scope")));

    let mut form = vec![
        ("grant_type", GRANT_TYPE),
        ("audience", "https://iam.googleapis.com/projects/1/x"),
        ("scope", CLOUD_PLATFORM),
        ("requested_token_type", ACCESS_TOKEN_TYPE),
        ("subject_token", good.as_str()),
        ("subject_token_type", JWT_TOKEN_TYPE),
    ];
    let (s, b) = e.sts_form(&form).await;
    assert_eq!((s, b["error"].as_str()), (400, Some("invalid_request")));
    assert!(
        b["error_description"]
            .as_str()
            .unwrap()
            .starts_with("Invalid value for \"audience\"")
    );

    let other = gcp::provider_name(DEMO_PROJECT_NUMBER, "nope", DEMO_PROVIDER);
    form[1].1 = &other;
    let (s, b) = e.sts_form(&form).await;
    assert_eq!((s, b["error"].as_str()), (400, Some("invalid_target")));

    let aud = audience();
    form[1].1 = &aud;
    form[0].1 = "client_credentials";
    let (s, b) = e.sts_form(&form).await;
    assert_eq!(
        (s, b["error"].as_str()),
        (400, Some("unsupported_grant_type"))
    );
    form[0].1 = GRANT_TYPE;
    form[5].1 = "urn:ietf:params:oauth:token-type:saml2";
    let (s, b) = e.sts_form(&form).await;
    assert_eq!((s, b["error"].as_str()), (400, Some("invalid_request")));

    // A token from another key (same issuer URL) fails the signature check.
    let forged = Issuer::new(e.issuer.url()).mint(
        &ServiceAccount::default(),
        &aud,
        Duration::from_secs(600),
    );
    let (s, b) = e.sts(&forged, CLOUD_PLATFORM).await;
    assert_eq!((s, b["error"].as_str()), (400, Some("invalid_grant")));

    // Expired, and longer than 48 h.
    let sa = ServiceAccount::default();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let expired = e.issuer.mint_at(&sa, &aud, now - 7200, now - 3600);
    let (s, b) = e.sts(&expired, CLOUD_PLATFORM).await;
    assert_eq!((s, b["error"].as_str()), (400, Some("invalid_grant")));
    let long = e.issuer.mint_at(&sa, &aud, now - 10, now + 49 * 3600);
    let (s, b) = e.sts(&long, CLOUD_PLATFORM).await;
    assert_eq!((s, b["error"].as_str()), (400, Some("invalid_grant")));
    assert!(
        b["error_description"]
            .as_str()
            .unwrap()
            .contains("48 hours")
    );

    e.gcp
        .set_attribute_condition(DEMO_POOL, DEMO_PROVIDER, &["system:serviceaccount:prod:"]);
    let (s, b) = e.sts(&good, CLOUD_PLATFORM).await;
    assert_eq!((s, b["error"].as_str()), (400, Some("unauthorized_client")));

    assert!(e.gcp.log().iter().all(|r| r.outcome.starts_with("error:")));
}

#[tokio::test]
async fn sts_accepts_json_bodies() {
    let e = env().await;
    let resp = e
        .http
        .post(e.gcp.token_url())
        .json(&json!({
            "grantType": GRANT_TYPE, "audience": audience(), "scope": CLOUD_PLATFORM,
            "requestedTokenType": ACCESS_TOKEN_TYPE, "subjectToken": e.token(&audience()),
            "subjectTokenType": JWT_TOKEN_TYPE,
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn generate_access_token_needs_a_bound_principal_and_the_right_scope() {
    let e = env().await;
    let fed = e.federated().await;
    let (s, b) = e
        .iam(
            "generateAccessToken",
            &fed,
            json!({"scope": ["https://www.googleapis.com/auth/devstorage.read_only"], "lifetime": "1800s"}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    assert!(b["accessToken"].as_str().unwrap().starts_with("ya29.c."));
    assert!(b["expireTime"].as_str().unwrap().ends_with('Z'));
    let rec = e.gcp.log().pop().unwrap();
    assert_eq!(rec.api, "generateAccessToken");
    assert_eq!(rec.token.as_deref(), b["accessToken"].as_str());
    assert_eq!(rec.lifetime.as_deref(), Some("1800s"));

    let (s, b) = e
        .iam(
            "generateAccessToken",
            &fed,
            json!({"scope": [], "lifetime": "3600s"}),
        )
        .await;
    assert_eq!(
        (s, b["error"]["status"].as_str()),
        (400, Some("INVALID_ARGUMENT"))
    );
    let (s, _) = e
        .iam(
            "generateAccessToken",
            &fed,
            json!({"scope": [CLOUD_PLATFORM], "lifetime": "7200s"}),
        )
        .await;
    assert_eq!(s, 400);
    e.gcp.allow_lifetime_extension(DEMO_SERVICE_ACCOUNT, true);
    let (s, _) = e
        .iam(
            "generateAccessToken",
            &fed,
            json!({"scope": [CLOUD_PLATFORM], "lifetime": "7200s"}),
        )
        .await;
    assert_eq!(s, 200);

    let (s, b) = e
        .iam(
            "generateAccessToken",
            "ya29.unknown",
            json!({"scope": [CLOUD_PLATFORM]}),
        )
        .await;
    assert_eq!(
        (s, b["error"]["status"].as_str()),
        (401, Some("UNAUTHENTICATED"))
    );

    // A federated token without cloud-platform cannot impersonate.
    let (status, body) = e
        .sts(
            &e.token(&audience()),
            "https://www.googleapis.com/auth/devstorage.read_only",
        )
        .await;
    assert_eq!(status, 200);
    let narrow = body["access_token"].as_str().unwrap();
    let (s, b) = e
        .iam(
            "generateAccessToken",
            narrow,
            json!({"scope": [CLOUD_PLATFORM]}),
        )
        .await;
    assert_eq!(s, 403);
    assert_eq!(
        b["error"]["details"][0]["reason"],
        "ACCESS_TOKEN_SCOPE_INSUFFICIENT"
    );

    // Unbinding the principal: the documented 403 with IAM_PERMISSION_DENIED.
    let member = gcp::principal(
        DEMO_PROJECT_NUMBER,
        DEMO_POOL,
        &ServiceAccount::default().subject(),
    );
    let resp = e
        .http
        .post(format!("{}/bindings", e.gcp.admin_url()))
        .json(&json!({"service_account": DEMO_SERVICE_ACCOUNT, "member": member, "bound": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let (s, b) = e
        .iam(
            "generateAccessToken",
            &fed,
            json!({"scope": [CLOUD_PLATFORM]}),
        )
        .await;
    assert_eq!(s, 403);
    assert_eq!(b["error"]["status"], "PERMISSION_DENIED");
    assert_eq!(b["error"]["details"][0]["reason"], "IAM_PERMISSION_DENIED");
    assert_eq!(
        b["error"]["message"],
        "Permission 'iam.serviceAccounts.getAccessToken' denied on resource (or it may not exist)."
    );
}

#[tokio::test]
async fn generate_access_token_requires_the_project_wildcard() {
    let e = env().await;
    let fed = e.federated().await;
    let resp = e
        .http
        .post(format!(
            "{}/v1/projects/my-project/serviceAccounts/{DEMO_SERVICE_ACCOUNT}:generateAccessToken",
            e.gcp.url()
        ))
        .bearer_auth(&fed)
        .json(&json!({"scope": [CLOUD_PLATFORM]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
}

#[tokio::test]
async fn generate_id_token_signs_the_audience_and_optional_email() {
    let e = env().await;
    let fed = e.federated().await;
    for include in [true, false] {
        let (s, b) = e
            .iam(
                "generateIdToken",
                &fed,
                json!({"audience": "https://svc.example", "includeEmail": include}),
            )
            .await;
        assert_eq!(s, 200, "{b}");
        let token = b["token"].as_str().unwrap();
        let payload = token.split('.').nth(1).unwrap();
        use base64::Engine as _;
        let claims: Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload)
                .unwrap(),
        )
        .unwrap();
        assert_eq!(claims["aud"], "https://svc.example");
        assert_eq!(claims["iss"], "https://accounts.google.com");
        assert_eq!(claims.get("email").is_some(), include);
        assert_eq!(
            claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
            3600
        );
    }
    let (s, _) = e
        .iam("generateIdToken", &fed, json!({"audience": ""}))
        .await;
    assert_eq!(s, 400);
}

#[tokio::test]
async fn faults_render_in_the_google_shapes() {
    let e = env().await;
    e.gcp.faults().set(Fault::Status {
        status: 429,
        count: Some(1),
        retry_after: Some(2),
    });
    let resp = e
        .http
        .post(e.gcp.token_url())
        .form(&[("grant_type", GRANT_TYPE)])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "2");
    let body: Value = resp.json().await.unwrap();
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("throttled")
    );
    e.gcp.faults().set(Fault::Error {
        code: "PERMISSION_DENIED".into(),
        count: Some(1),
    });
    let (s, b) = e.iam("generateAccessToken", "x", json!({})).await;
    assert_eq!(
        (s, b["error"]["status"].as_str()),
        (403, Some("PERMISSION_DENIED"))
    );
    let outcomes: Vec<String> = e.gcp.log().into_iter().map(|r| r.outcome).collect();
    assert_eq!(outcomes, ["fault:status", "fault:error"]);
}

//! FakeSts over real HTTP.

mod support;
use support::now;

use fakecloud::aws::{DEMO_ROLE_ARN, FakeSts, FakeStsHandle, StsRecord, sha256_hex};
use fakecloud::faults::Fault;
use fakecloud::issuer::{Issuer, ServiceAccount};
use quick_xml::events::Event;
use quick_xml::{Reader, XmlVersion};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

const AUD: &str = "sts.amazonaws.com";

struct Env {
    issuer: Arc<Issuer>,
    sts: FakeStsHandle,
    client: reqwest::Client,
}

async fn env() -> Env {
    let issuer = Arc::new(Issuer::new("https://oidc.test/cluster"));
    let sts = FakeSts::start(issuer.clone(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    // reqwest is built with `rustls-no-provider`; plain http still needs a provider installed.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    Env {
        issuer,
        sts,
        client,
    }
}

impl Env {
    fn token(&self) -> String {
        self.issuer
            .mint(&ServiceAccount::default(), AUD, Duration::from_secs(3600))
    }

    async fn post(&self, params: &[(&str, &str)]) -> reqwest::Response {
        self.client
            .post(self.sts.url() + "/")
            .form(params)
            .send()
            .await
            .unwrap()
    }

    async fn assume(&self, token: &str, extra: &[(&str, &str)]) -> reqwest::Response {
        let mut params = vec![
            ("Action", "AssumeRoleWithWebIdentity"),
            ("Version", "2011-06-15"),
            ("RoleArn", DEMO_ROLE_ARN),
            ("RoleSessionName", "test-session"),
            ("WebIdentityToken", token),
        ];
        for (k, v) in extra {
            params.retain(|(name, _)| name != k);
            params.push((k, v));
        }
        self.post(&params).await
    }

    async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&str>,
    ) -> serde_json::Value {
        let mut req = self
            .client
            .request(method, format!("{}{path}", self.sts.admin_url()));
        if let Some(body) = body {
            req = req.body(body.to_string());
        }
        let resp = req.send().await.unwrap();
        assert!(resp.status().is_success(), "{}", resp.status());
        resp.json().await.unwrap()
    }
}

/// Element text by local name path ("A/B/C"), first occurrence.
fn xml_fields(xml: &str) -> HashMap<String, String> {
    let mut reader = Reader::from_str(xml);
    let mut path: Vec<String> = Vec::new();
    let mut out = HashMap::new();
    loop {
        match reader.read_event().unwrap() {
            Event::Start(e) => path.push(e.local_name().into_inner().to_string()),
            Event::End(_) => {
                path.pop();
            }
            Event::Text(t) => {
                let text = t.xml_content(XmlVersion::Implicit1_0).into_owned();
                if !text.trim().is_empty() {
                    out.entry(path.join("/")).or_insert(text);
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    out
}

async fn error_of(resp: reqwest::Response) -> (u16, String, String, String) {
    let status = resp.status().as_u16();
    assert_eq!(
        resp.headers()["content-type"],
        "text/xml",
        "error responses are XML"
    );
    assert!(resp.headers().contains_key("x-amzn-requestid"));
    let body = resp.text().await.unwrap();
    let f = xml_fields(&body);
    assert!(f.contains_key("ErrorResponse/RequestId"), "{body}");
    (
        status,
        f["ErrorResponse/Error/Type"].clone(),
        f["ErrorResponse/Error/Code"].clone(),
        f["ErrorResponse/Error/Message"].clone(),
    )
}

#[tokio::test]
async fn happy_path_post_and_get() {
    let env = env().await;
    let token = env.token();
    let resp = env.assume(&token, &[("DurationSeconds", "7200")]).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/xml");
    let request_id = resp.headers()["x-amzn-requestid"]
        .to_str()
        .unwrap()
        .to_string();
    let body = resp.text().await.unwrap();
    let f = xml_fields(&body);
    let r = "AssumeRoleWithWebIdentityResponse/AssumeRoleWithWebIdentityResult";
    assert!(body.contains("xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\""));
    assert_eq!(
        f[&format!("{r}/SubjectFromWebIdentityToken")],
        "system:serviceaccount:default:app"
    );
    assert_eq!(f[&format!("{r}/Audience")], AUD);
    assert_eq!(f[&format!("{r}/Provider")], "https://oidc.test/cluster");
    assert_eq!(
        f[&format!("{r}/AssumedRoleUser/Arn")],
        "arn:aws:sts::123456789012:assumed-role/credbroker-demo/test-session"
    );
    let role_id = &f[&format!("{r}/AssumedRoleUser/AssumedRoleId")];
    assert!(
        role_id.starts_with("AROA") && role_id.ends_with(":test-session"),
        "{role_id}"
    );
    let akid = &f[&format!("{r}/Credentials/AccessKeyId")];
    assert_eq!(akid.len(), 20);
    assert!(akid.starts_with("ASIA"));
    assert!(
        akid[4..]
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
    );
    assert_eq!(f[&format!("{r}/Credentials/SecretAccessKey")].len(), 40);
    assert!(f[&format!("{r}/Credentials/SessionToken")].len() >= 300);
    let expiration = &f[&format!("{r}/Credentials/Expiration")];
    assert_eq!(expiration.len(), 20);
    assert!(expiration.ends_with('Z') && &expiration[10..11] == "T");
    let expires = httpdate_like(expiration);
    let expected = now() + 7200;
    assert!(expires.abs_diff(expected) <= 2, "{expiration}");
    assert!(!f.contains_key(&format!("{r}/PackedPolicySize")));
    assert_eq!(
        f["AssumeRoleWithWebIdentityResponse/ResponseMetadata/RequestId"],
        request_id
    );

    // GET with the query string, default duration 3600, Policy gives PackedPolicySize.
    let url = reqwest::Url::parse_with_params(
        &(env.sts.url() + "/"),
        &[
            ("Action", "AssumeRoleWithWebIdentity"),
            ("Version", "2011-06-15"),
            ("RoleArn", DEMO_ROLE_ARN),
            ("RoleSessionName", "get-session"),
            ("WebIdentityToken", &token),
            ("Policy", r#"{"Version":"2012-10-17","Statement":[]}"#),
        ],
    )
    .unwrap();
    let resp = env.client.get(url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let f = xml_fields(&resp.text().await.unwrap());
    let expires = httpdate_like(&f[&format!("{r}/Credentials/Expiration")]);
    assert!(expires.abs_diff(now() + 3600) <= 2);
    assert!(f.contains_key(&format!("{r}/PackedPolicySize")));

    assert_eq!(env.sts.issued_count(), 2);
    assert_eq!(env.sts.exchanges(), 2);
    let log = env.sts.log();
    assert_eq!(log.len(), 2);
    assert_eq!(log[0].outcome, "issued");
    assert_eq!(log[0].duration_seconds, Some(7200));
    assert_eq!(log[1].session_name.as_deref(), Some("get-session"));
    let creds = log[0].credentials.as_ref().unwrap();
    assert_eq!(&creds.access_key_id, akid);
}

/// Parses `YYYY-MM-DDTHH:MM:SSZ` to Unix seconds.
fn httpdate_like(s: &str) -> u64 {
    let num = |a: usize, b: usize| s[a..b].parse::<i64>().unwrap();
    let (y, m, d) = (num(0, 4), num(5, 7), num(8, 10));
    let (hh, mm, ss) = (num(11, 13), num(14, 16), num(17, 19));
    // days_from_civil
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    (days * 86_400 + hh * 3600 + mm * 60 + ss) as u64
}

#[tokio::test]
async fn token_errors() {
    let env = env().await;
    let sa = ServiceAccount::default();

    let wrong_aud = env.issuer.mint(&sa, "api", Duration::from_secs(600));
    let (status, kind, code, msg) = error_of(env.assume(&wrong_aud, &[]).await).await;
    assert_eq!(
        (status, kind.as_str(), code.as_str()),
        (400, "Sender", "InvalidIdentityToken")
    );
    assert_eq!(msg, "Incorrect token audience");

    let t = now();
    let expired = env.issuer.mint_at(&sa, AUD, t - 7200, t - 60);
    let (status, _, code, msg) = error_of(env.assume(&expired, &[]).await).await;
    assert_eq!((status, code.as_str()), (400, "ExpiredTokenException"));
    assert!(msg.starts_with("Token expired"), "{msg}");

    let foreign = Issuer::new("https://oidc.test/cluster").mint(&sa, AUD, Duration::from_secs(600));
    let (status, _, code, _) = error_of(env.assume(&foreign, &[]).await).await;
    assert_eq!((status, code.as_str()), (400, "InvalidIdentityToken"));

    let other_iss =
        env.issuer
            .with_url("https://evil.test")
            .mint(&sa, AUD, Duration::from_secs(600));
    let (status, _, code, msg) = error_of(env.assume(&other_iss, &[]).await).await;
    assert_eq!((status, code.as_str()), (400, "InvalidIdentityToken"));
    assert!(msg.contains("https://evil.test"), "{msg}");

    let (status, _, code, _) = error_of(env.assume("garbage-token", &[]).await).await;
    assert_eq!((status, code.as_str()), (400, "InvalidIdentityToken"));

    let log = env.sts.log();
    let outcomes: Vec<&str> = log.iter().map(|r| r.outcome.as_str()).collect();
    assert_eq!(
        outcomes,
        [
            "error:InvalidIdentityToken",
            "error:ExpiredTokenException",
            "error:InvalidIdentityToken",
            "error:InvalidIdentityToken",
            "error:InvalidIdentityToken"
        ]
    );
    assert!(log.iter().all(|r| r.credentials.is_none()));
    assert_eq!(env.sts.issued_count(), 0);
    assert_eq!(env.sts.exchanges(), 5);
}

#[tokio::test]
async fn trust_rules() {
    let env = env().await;
    let other_sa = ServiceAccount::new("prod", "billing");
    let other = env.issuer.mint(&other_sa, AUD, Duration::from_secs(600));

    let (status, kind, code, msg) = error_of(env.assume(&other, &[]).await).await;
    assert_eq!(
        (status, kind.as_str(), code.as_str()),
        (403, "Sender", "AccessDenied")
    );
    assert_eq!(
        msg,
        "Not authorized to perform sts:AssumeRoleWithWebIdentity"
    );

    let unknown_role = "arn:aws:iam::123456789012:role/nope";
    let (status, _, code, _) =
        error_of(env.assume(&env.token(), &[("RoleArn", unknown_role)]).await).await;
    assert_eq!((status, code.as_str()), (403, "AccessDenied"));

    env.sts.trust(DEMO_ROLE_ARN, &other_sa.subject());
    assert_eq!(env.assume(&other, &[]).await.status(), 200);

    env.sts.trust(
        "arn:aws:iam::210987654321:role/team/wild",
        "system:serviceaccount:prod:*",
    );
    let resp = env
        .assume(
            &other,
            &[("RoleArn", "arn:aws:iam::210987654321:role/team/wild")],
        )
        .await;
    assert_eq!(resp.status(), 200);
    let f = xml_fields(&resp.text().await.unwrap());
    assert_eq!(
        f["AssumeRoleWithWebIdentityResponse/AssumeRoleWithWebIdentityResult/AssumedRoleUser/Arn"],
        "arn:aws:sts::210987654321:assumed-role/wild/test-session"
    );

    env.sts.untrust(DEMO_ROLE_ARN, &other_sa.subject());
    assert_eq!(env.assume(&other, &[]).await.status(), 403);

    env.sts.set_max_session_duration(DEMO_ROLE_ARN, 3600);
    let (status, _, code, msg) = error_of(
        env.assume(&env.token(), &[("DurationSeconds", "3601")])
            .await,
    )
    .await;
    assert_eq!((status, code.as_str()), (400, "ValidationError"));
    assert!(msg.contains("MaxSessionDuration"), "{msg}");
}

#[tokio::test]
async fn parameter_validation() {
    let env = env().await;
    let token = env.token();
    let long_name = "s".repeat(65);
    let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
        (vec![("RoleSessionName", "x")], "ValidationError"),
        (vec![("RoleSessionName", &long_name)], "ValidationError"),
        (vec![("RoleSessionName", "has space")], "ValidationError"),
        (vec![("DurationSeconds", "899")], "ValidationError"),
        (vec![("DurationSeconds", "43201")], "ValidationError"),
        (vec![("DurationSeconds", "abc")], "ValidationError"),
        (
            vec![("RoleArn", "arn:aws:iam::1:role/x")],
            "ValidationError",
        ),
        (
            vec![("RoleArn", "arn:aws:iam::123456789012:user/x")],
            "ValidationError",
        ),
        (vec![("WebIdentityToken", "abc")], "ValidationError"),
        (vec![("Action", "AssumeRoleWithMagic")], "InvalidAction"),
        (vec![("Version", "2010-01-01")], "InvalidAction"),
    ];
    for (extra, expected) in cases {
        let (status, _, code, msg) = error_of(env.assume(&token, &extra).await).await;
        assert_eq!((status, code.as_str()), (400, expected), "{extra:?}: {msg}");
    }
    for missing in ["RoleArn", "RoleSessionName", "WebIdentityToken"] {
        let mut params = vec![
            ("Action", "AssumeRoleWithWebIdentity"),
            ("Version", "2011-06-15"),
            ("RoleArn", DEMO_ROLE_ARN),
            ("RoleSessionName", "s1"),
            ("WebIdentityToken", token.as_str()),
        ];
        params.retain(|(k, _)| *k != missing);
        let (status, _, code, msg) = error_of(env.post(&params).await).await;
        assert_eq!((status, code.as_str()), (400, "MissingParameter"));
        assert!(msg.contains(missing));
    }
    let (status, _, code, _) = error_of(env.post(&[]).await).await;
    assert_eq!((status, code.as_str()), (400, "MissingAction"));
    // Boundaries accepted.
    assert_eq!(
        env.assume(
            &token,
            &[("DurationSeconds", "900"), ("RoleSessionName", "ab")]
        )
        .await
        .status(),
        200
    );
    assert_eq!(
        env.assume(&token, &[("DurationSeconds", "43200")])
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn injected_error_codes_use_real_statuses() {
    let env = env().await;
    let token = env.token();
    let table = [
        ("InvalidIdentityToken", 400, "Sender"),
        ("ExpiredTokenException", 400, "Sender"),
        ("IDPCommunicationError", 400, "Sender"),
        ("IDPRejectedClaim", 403, "Sender"),
        ("AccessDenied", 403, "Sender"),
        ("RegionDisabledException", 403, "Sender"),
        ("Throttling", 400, "Sender"),
        ("InternalFailure", 500, "Receiver"),
        ("ServiceUnavailable", 503, "Receiver"),
    ];
    for (code, status, kind) in table {
        env.sts.faults().set(Fault::Error {
            code: code.into(),
            count: Some(1),
        });
        let (got_status, got_kind, got_code, _) = error_of(env.assume(&token, &[]).await).await;
        assert_eq!(
            (got_status, got_kind.as_str(), got_code.as_str()),
            (status, kind, code)
        );
    }
    // count: 2 via the admin API, then back to normal.
    env.admin(
        reqwest::Method::POST,
        "/faults",
        Some(r#"{"kind":"error","code":"IDPCommunicationError","count":2}"#),
    )
    .await;
    for _ in 0..2 {
        let (_, _, code, _) = error_of(env.assume(&token, &[]).await).await;
        assert_eq!(code, "IDPCommunicationError");
    }
    assert_eq!(env.assume(&token, &[]).await.status(), 200);
    assert_eq!(
        env.sts.exchanges(),
        1,
        "faulted requests never reach the handler"
    );
    let log = env.sts.log();
    assert_eq!(log.len(), 12);
    assert!(log[..11].iter().all(|r| r.outcome == "fault:error"));
    assert_eq!(log[11].outcome, "issued");
    assert_eq!(log[0].role_arn.as_deref(), Some(DEMO_ROLE_ARN));
}

#[tokio::test]
async fn injected_status_garbage_oversized_reset_timeout() {
    let env = env().await;
    let token = env.token();

    env.admin(
        reqwest::Method::POST,
        "/faults",
        Some(r#"[{"kind":"status","status":503,"count":1,"retry_after":7},{"kind":"status","status":429,"count":1}]"#),
    )
    .await;
    let resp = env.assume(&token, &[]).await;
    assert_eq!(resp.headers()["retry-after"], "7");
    let (status, kind, code, _) = error_of(resp).await;
    assert_eq!(
        (status, kind.as_str(), code.as_str()),
        (503, "Receiver", "ServiceUnavailable")
    );
    let resp = env.assume(&token, &[]).await;
    assert!(!resp.headers().contains_key("retry-after"));
    let (status, _, code, _) = error_of(resp).await;
    assert_eq!((status, code.as_str()), (429, "Throttling"));

    env.sts.faults().set(Fault::Garbage { count: Some(1) });
    let resp = env.assume(&token, &[]).await;
    assert_eq!(resp.status(), 200);
    let body = resp.bytes().await.unwrap();
    assert!(!body.windows(11).any(|w| w == b"Credentials"));
    assert!(std::str::from_utf8(&body).is_err() || xml_fields_fails(&body));

    env.sts.faults().set(Fault::Oversized { count: Some(1) });
    let resp = env.assume(&token, &[]).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.bytes().await.unwrap().len(), 8 * 1024 * 1024);

    env.sts.faults().set(Fault::Reset { count: Some(1) });
    let err = env
        .client
        .post(env.sts.url() + "/")
        .form(&[("Action", "AssumeRoleWithWebIdentity")])
        .send()
        .await
        .unwrap_err();
    assert!(!err.is_timeout(), "{err:?}");

    env.sts.faults().set(Fault::Timeout { count: Some(1) });
    let started = Instant::now();
    let err = env
        .client
        .post(env.sts.url() + "/")
        .timeout(Duration::from_millis(300))
        .form(&[("Action", "AssumeRoleWithWebIdentity")])
        .send()
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    assert!(started.elapsed() >= Duration::from_millis(300));

    // Everything consumed: a normal exchange works again.
    assert_eq!(env.assume(&token, &[]).await.status(), 200);
    let outcomes: Vec<String> = env.sts.log().into_iter().map(|r| r.outcome).collect();
    assert_eq!(
        outcomes,
        [
            "fault:status",
            "fault:status",
            "fault:garbage",
            "fault:oversized",
            "fault:reset",
            "fault:timeout",
            "issued"
        ]
    );
}

fn xml_fields_fails(body: &[u8]) -> bool {
    let text = String::from_utf8_lossy(body);
    let mut reader = Reader::from_str(&text);
    loop {
        match reader.read_event() {
            Err(_) => return true,
            Ok(Event::Eof) => return false,
            Ok(_) => {}
        }
    }
}

#[tokio::test]
async fn latency_and_clear() {
    let env = env().await;
    let token = env.token();
    env.admin(
        reqwest::Method::POST,
        "/faults",
        Some(r#"{"kind":"latency","ms":250}"#),
    )
    .await;
    let state = env.admin(reqwest::Method::GET, "/faults", None).await;
    assert_eq!(state["latency_ms"], 250);
    let started = Instant::now();
    assert_eq!(env.assume(&token, &[]).await.status(), 200);
    assert!(started.elapsed() >= Duration::from_millis(250));

    // Admin calls are never delayed.
    let started = Instant::now();
    env.admin(
        reqwest::Method::POST,
        "/faults",
        Some(r#"{"kind":"reset"}"#),
    )
    .await;
    let cleared = env.admin(reqwest::Method::DELETE, "/faults", None).await;
    assert!(started.elapsed() < Duration::from_millis(250));
    assert_eq!(cleared, serde_json::json!({"latency_ms": 0, "pending": []}));
    let started = Instant::now();
    assert_eq!(env.assume(&token, &[]).await.status(), 200);
    assert!(started.elapsed() < Duration::from_millis(250));

    let resp = env
        .client
        .post(env.sts.admin_url() + "/faults")
        .body("{\"kind\":\"bogus\"}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
}

#[tokio::test]
async fn log_records_hash_not_token() {
    let env = env().await;
    let token = env.token();
    assert_eq!(env.assume(&token, &[]).await.status(), 200);
    let bad = env
        .issuer
        .mint(&ServiceAccount::new("x", "y"), AUD, Duration::from_secs(60));
    assert_eq!(env.assume(&bad, &[]).await.status(), 403);

    let log: Vec<serde_json::Value> = env
        .admin(reqwest::Method::GET, "/log", None)
        .await
        .as_array()
        .unwrap()
        .clone();
    let raw = serde_json::to_string(&log).unwrap();
    assert!(
        !raw.contains(&token),
        "the token itself must never be logged"
    );
    assert!(!raw.contains(&bad));
    assert_eq!(log.len(), 2);
    let first = &log[0];
    assert_eq!(first["token_sha256"], sha256_hex(&token));
    assert_eq!(first["action"], "AssumeRoleWithWebIdentity");
    assert_eq!(first["role_arn"], DEMO_ROLE_ARN);
    assert_eq!(first["session_name"], "test-session");
    assert_eq!(first["token_subject"], "system:serviceaccount:default:app");
    assert_eq!(first["token_jti"].as_str().unwrap().len(), 36);
    assert_eq!(first["outcome"], "issued");
    assert!(first["at"].as_f64().unwrap() > 1.7e9);
    for key in [
        "AccessKeyId",
        "SecretAccessKey",
        "SessionToken",
        "Expiration",
    ] {
        assert!(first["credentials"][key].is_string(), "{key}");
    }
    assert_eq!(log[1]["outcome"], "error:AccessDenied");
    assert_eq!(log[1]["token_subject"], "system:serviceaccount:x:y");
    assert!(log[1].get("credentials").is_none());

    let typed: Vec<StsRecord> = env.sts.log();
    assert_eq!(
        typed[0].token_sha256.as_deref(),
        Some(sha256_hex(&token).as_str())
    );
}

#[tokio::test]
async fn keep_alive_and_body_cap() {
    let env = env().await;
    let token = env.token();
    for _ in 0..5 {
        assert_eq!(env.assume(&token, &[]).await.status(), 200);
    }
    let resp = env
        .client
        .post(env.sts.url() + "/")
        .body(vec![b'a'; 1024 * 1024 + 1])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    let resp = env
        .client
        .get(env.sts.admin_url() + "/nope")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
}

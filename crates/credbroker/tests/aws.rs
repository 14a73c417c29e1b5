//! The binary against the emulated AWS: serving rules, rotation, faults, readiness, metrics.

mod common;

use std::time::Duration;

use common::*;
use fakecloud::aws::sha256_hex;
use fakecloud::faults::Fault;

fn latest_issued(scape: &fakecloud::Cloudscape) -> fakecloud::aws::IssuedCredentials {
    scape
        .sts
        .log()
        .into_iter()
        .rev()
        .find_map(|r| r.credentials)
        .expect("STS issued credentials")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_endpoint_serves_exactly_what_sts_issued() {
    let dir = tempfile::tempdir().unwrap();
    let scape = cloudscape(dir.path()).await;
    let mut env = sidecar(&scape, &["aws"]);
    env.push(("AWS_ROLE_SESSION_NAME".into(), "itest".into()));
    let broker = Broker::start(&dir.path().join("b"), &env, &[]).await;
    broker.wait_ready().await;
    let auth = broker.auth_token();
    assert_eq!(auth.len(), 43, "32 random bytes, base64url");
    let r = get(broker.creds, "/v1/credentials", &[("Authorization", &auth)]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let doc = r.json();
    let issued = latest_issued(&scape);
    assert_eq!(doc["AccessKeyId"], issued.access_key_id.as_str());
    assert_eq!(doc["SecretAccessKey"], issued.secret_access_key.as_str());
    assert_eq!(doc["Token"], issued.session_token.as_str());
    assert_eq!(doc["Expiration"], issued.expiration.as_str());
    assert_eq!(doc["AccountId"], "123456789012");
    assert_eq!(doc["RoleArn"], fakecloud::aws::DEMO_ROLE_ARN);
    // Exactly one exchange, with the session name and duration asked for.
    let log = scape.sts.log();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].session_name.as_deref(), Some("itest"));
    assert_eq!(log[0].duration_seconds, Some(3600));
    assert_eq!(
        log[0].token_sha256.as_deref(),
        Some(sha256_hex(scape.aws_token.current()).as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_endpoint_rules() {
    let dir = tempfile::tempdir().unwrap();
    let scape = cloudscape(dir.path()).await;
    let broker = Broker::start(&dir.path().join("b"), &sidecar(&scape, &["aws"]), &[]).await;
    broker.wait_ready().await;
    let auth = broker.auth_token();
    let a = broker.creds;

    let r = get(a, "/v1/credentials", &[]).await;
    assert_eq!(
        (r.status, r.json()["Code"].as_str()),
        (401, Some("Unauthorized"))
    );
    let r = get(a, "/v1/credentials", &[("Authorization", "nope")]).await;
    assert_eq!(
        (r.status, r.json()["Code"].as_str()),
        (403, Some("AccessDenied"))
    );
    let r = get(
        a,
        "/v1/credentials",
        &[("Authorization", &format!("Bearer {auth}"))],
    )
    .await;
    assert_eq!(r.status, 403);
    let r = get(
        a,
        "/v1/credentials",
        &[("Authorization", &auth), ("X-Forwarded-For", "10.0.0.9")],
    )
    .await;
    assert_eq!(r.status, 403);
    let r = raw(a, format!("GET /v1/credentials HTTP/1.1\r\nHost: evil.example.com\r\nAuthorization: {auth}\r\nConnection: close\r\n\r\n").as_bytes()).await;
    assert_eq!(r.status, 403, "DNS-rebinding Host must be refused");
    let r = request(a, "POST", "/v1/credentials", &[("Authorization", &auth)]).await;
    assert_eq!(r.status, 405);
    let r = get(a, "/v1/other", &[("Authorization", &auth)]).await;
    assert_eq!(r.status, 404);
    assert!(!broker.logs().contains(&auth), "the auth token was logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imdsv2_rules_and_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let scape = cloudscape(dir.path()).await;
    let broker = Broker::start(&dir.path().join("b"), &sidecar(&scape, &["aws"]), &[]).await;
    broker.wait_ready().await;
    let a = broker.creds;
    const TTL: &str = "X-aws-ec2-metadata-token-ttl-seconds";

    // Token: PUT with a TTL in 1..21600, echoed in the response header.
    for bad in [None, Some("0"), Some("21601"), Some("abc")] {
        let h: Vec<(&str, &str)> = bad.map(|v| (TTL, v)).into_iter().collect();
        assert_eq!(
            request(a, "PUT", "/latest/api/token", &h).await.status,
            400,
            "{bad:?}"
        );
    }
    assert_eq!(
        request(a, "GET", "/latest/api/token", &[(TTL, "60")])
            .await
            .status,
        405
    );
    let proxied = request(
        a,
        "PUT",
        "/latest/api/token",
        &[(TTL, "60"), ("X-Forwarded-For", "1.2.3.4")],
    )
    .await;
    assert_eq!(
        proxied.status, 403,
        "a proxied request must not get a session token"
    );
    let t = request(a, "PUT", "/latest/api/token", &[(TTL, "21600")]).await;
    assert_eq!(t.status, 200);
    assert_eq!(
        t.header("x-aws-ec2-metadata-token-ttl-seconds"),
        Some("21600")
    );
    let token = t.body.clone();
    let h = [("X-aws-ec2-metadata-token", token.as_str())];

    // Every GET needs a valid session token.
    assert_eq!(
        get(a, "/latest/meta-data/iam/security-credentials/", &[])
            .await
            .status,
        401
    );
    assert_eq!(
        get(
            a,
            "/latest/meta-data/iam/security-credentials/",
            &[("X-aws-ec2-metadata-token", "forged")]
        )
        .await
        .status,
        401
    );
    let tampered = format!("9{token}");
    assert_eq!(
        get(
            a,
            "/latest/meta-data/iam/security-credentials/",
            &[("X-aws-ec2-metadata-token", &tampered)]
        )
        .await
        .status,
        401
    );

    let roles = get(a, "/latest/meta-data/iam/security-credentials/", &h).await;
    assert_eq!(
        (roles.status, roles.body.as_str()),
        (200, "credbroker-demo")
    );
    let creds = get(
        a,
        "/latest/meta-data/iam/security-credentials/credbroker-demo",
        &h,
    )
    .await;
    assert_eq!(creds.status, 200);
    assert_eq!(creds.header("content-type"), Some("text/plain"));
    let doc = creds.json();
    let issued = latest_issued(&scape);
    assert_eq!(doc["Code"], "Success");
    assert_eq!(doc["Type"], "AWS-HMAC");
    assert_eq!(doc["AccessKeyId"], issued.access_key_id.as_str());
    assert_eq!(doc["Token"], issued.session_token.as_str());
    assert_eq!(doc["Expiration"], issued.expiration.as_str());
    assert!(doc["LastUpdated"].as_str().unwrap().ends_with('Z'));
    assert_eq!(
        get(
            a,
            "/latest/meta-data/iam/security-credentials/other-role",
            &h
        )
        .await
        .status,
        404
    );

    let info = get(a, "/latest/meta-data/iam/info", &h).await.json();
    assert_eq!(info["Code"], "Success");
    assert_eq!(
        info["InstanceProfileArn"],
        "arn:aws:iam::123456789012:instance-profile/credbroker-demo"
    );
    assert_eq!(
        get(a, "/latest/meta-data/placement/region", &h).await.body,
        "us-east-1"
    );
    let doc = get(a, "/latest/dynamic/instance-identity/document", &h)
        .await
        .json();
    assert_eq!(
        (doc["region"].as_str(), doc["accountId"].as_str()),
        (Some("us-east-1"), Some("123456789012"))
    );
    assert_eq!(get(a, "/latest/meta-data/ami-id", &h).await.status, 404);
    assert_eq!(get(a, "/nothing-here", &h).await.status, 404);
}

/// kubelet's symlink swap, repeatedly, while the binary runs: each next exchange at STS carries
/// the new token. Credentials are cut to 12 s by the fake so refreshes come every ~6 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imdsv2_with_a_doubled_slash_and_the_irsa_variables_alone() {
    // Only what the IRSA webhook injects: no Authorization value, so /v1/credentials is off,
    // and IMDSv2 serves, also as "//latest/..." (an endpoint variable with a trailing slash).
    let dir = tempfile::tempdir().unwrap();
    let scape = cloudscape(dir.path()).await;
    let env: Vec<(String, String)> = sidecar(&scape, &["aws"])
        .into_iter()
        .filter(|(k, _)| !k.starts_with("CREDBROKER_"))
        .collect();
    let broker = Broker::start(&dir.path().join("b"), &env, &[]).await;
    broker.wait_ready().await;
    let a = broker.creds;
    let r = request(
        a,
        "PUT",
        "//latest/api/token",
        &[("X-aws-ec2-metadata-token-ttl-seconds", "60")],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let session = r.body;
    let role = fakecloud::aws::DEMO_ROLE_ARN.rsplit('/').next().unwrap();
    let r = get(
        a,
        &format!("//latest/meta-data/iam/security-credentials/{role}"),
        &[("X-aws-ec2-metadata-token", &session)],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.json()["AccessKeyId"],
        latest_issued(&scape).access_key_id.as_str()
    );
    let r = get(
        a,
        "/v1/credentials",
        &[("Authorization", "anything-at-all")],
    )
    .await;
    assert_eq!(r.status, 404);
    assert!(r.body.contains("--aws-auth-token"), "{}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_next_exchange_uses_the_new_token() {
    let dir = tempfile::tempdir().unwrap();
    let scape = cloudscape(dir.path()).await;
    scape.sts.set_issued_lifetime(Some(Duration::from_secs(12)));
    let broker = Broker::start(&dir.path().join("b"), &sidecar(&scape, &["aws"]), &[]).await;
    broker.wait_ready().await;
    for round in 1..=3 {
        let seen = scape.sts.log().len();
        let new_token = scape.aws_token.rotate().unwrap();
        let want = sha256_hex(&new_token);
        wait_until(Duration::from_secs(15), || async {
            scape.sts.log().len() > seen
        })
        .await;
        let next = &scape.sts.log()[seen];
        assert_eq!(next.outcome, "issued", "round {round}");
        assert_eq!(
            next.token_sha256.as_deref(),
            Some(want.as_str()),
            "round {round}: old token used"
        );
        // And the broker serves what that exchange issued.
        let issued = next.credentials.clone().unwrap();
        wait_until(Duration::from_secs(5), || async {
            get(
                broker.creds,
                "/v1/credentials",
                &[("Authorization", &broker.auth_token())],
            )
            .await
            .json()["AccessKeyId"]
                == issued.access_key_id.as_str()
        })
        .await;
    }
    let metrics = get(broker.ops, "/metrics", &[]).await.body;
    assert!(
        metrics.contains("credbroker_token_reloads_total{outcome=\"valid\"}"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_while_upstream_fails_and_bad_token_files_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let scape = cloudscape(dir.path()).await;
    scape.sts.set_issued_lifetime(Some(Duration::from_secs(20)));
    let broker = Broker::start(&dir.path().join("b"), &sidecar(&scape, &["aws"]), &[]).await;
    broker.wait_ready().await;
    let auth = broker.auth_token();
    let first = latest_issued(&scape);

    // Upstream down and the token file replaced by garbage: the held credential is still served.
    scape.sts.faults().set(Fault::Status {
        status: 503,
        count: None,
        retry_after: None,
    });
    scape.aws_token.write_raw(b"this is not a jwt").unwrap();
    tokio::time::sleep(Duration::from_secs(13)).await; // past the refresh point (~10 s)
    let r = get(broker.creds, "/v1/credentials", &[("Authorization", &auth)]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["AccessKeyId"], first.access_key_id.as_str());
    assert_eq!(get(broker.ops, "/readyz", &[]).await.status, 200);
    let logs = broker.logs();
    assert!(logs.contains("is not a JWT"), "token problem not reported");
    assert!(!logs.contains("this is not a jwt"), "token content logged");

    // Past expiry − 5 s: a retryable 503, never an expired credential.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let r = get(broker.creds, "/v1/credentials", &[("Authorization", &auth)]).await;
    assert_eq!(r.status, 503, "{}", r.body);
    let ready = get(broker.ops, "/readyz/aws", &[]).await;
    assert_eq!(ready.status, 503);
    assert!(ready.body.contains("aws: not ready"), "{}", ready.body);

    // Recovery: a valid token and a healthy STS.
    scape.sts.faults().clear();
    scape.aws_token.rotate().unwrap();
    broker.wait_ready().await;
    let r = get(broker.creds, "/v1/credentials", &[("Authorization", &auth)]).await;
    assert_eq!(
        r.json()["AccessKeyId"],
        latest_issued(&scape).access_key_id.as_str()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_reports_the_upstream_reason_and_metrics_count() {
    let dir = tempfile::tempdir().unwrap();
    let scape = cloudscape(dir.path()).await;
    scape.sts.faults().set(Fault::Error {
        code: "AccessDenied".into(),
        count: None,
    });
    let broker = Broker::start(&dir.path().join("b"), &sidecar(&scape, &["aws"]), &[]).await;
    wait_until(Duration::from_secs(10), || async {
        get(broker.ops, "/readyz", &[])
            .await
            .body
            .contains("AccessDenied")
    })
    .await;
    let r = get(broker.ops, "/readyz", &[]).await;
    assert_eq!(r.status, 503);
    let r = get(
        broker.creds,
        "/v1/credentials",
        &[("Authorization", &broker.auth_token())],
    )
    .await;
    assert_eq!(
        (r.status, r.json()["Code"].as_str()),
        (403, Some("AccessDenied"))
    );
    assert_eq!(get(broker.ops, "/healthz", &[]).await.status, 200);
    assert_eq!(get(broker.ops, "/readyz/gcp", &[]).await.status, 404);
    let m = get(broker.ops, "/metrics", &[]).await.body;
    assert!(
        m.contains("credbroker_exchanges_total{cloud=\"aws\",outcome=\"permanent_error\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("credbroker_requests_total{surface=\"aws-container\",status=\"403\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("credbroker_exchange_duration_seconds_count{cloud=\"aws\"} 1"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let scape = cloudscape(dir.path()).await;
    let mut broker = Broker::start(&dir.path().join("b"), &sidecar(&scape, &["aws"]), &[]).await;
    broker.wait_ready().await;
    let started = std::time::Instant::now();
    assert_eq!(broker.terminate(), Some(0));
    assert!(started.elapsed() < Duration::from_secs(5));
}

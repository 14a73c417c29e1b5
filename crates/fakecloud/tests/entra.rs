//! The fake Entra token endpoint over real HTTP, inside a Cloudscape.

mod support;
use support::client;

use fakecloud::azure::{DEMO_CLIENT_ID, DEMO_TENANT_ID, ENTRA_AUDIENCE};
use fakecloud::faults::Fault;
use fakecloud::{Cloudscape, CloudscapeOptions, ServiceAccount};

const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

async fn post(url: &str, form: &[(&str, &str)]) -> (u16, Option<String>, serde_json::Value) {
    let resp = client().post(url).form(form).send().await.unwrap();
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    (status, retry_after, resp.json().await.unwrap())
}

fn form<'a>(assertion: &'a str, scope: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("client_id", DEMO_CLIENT_ID),
        ("scope", scope),
        ("grant_type", "client_credentials"),
        ("client_assertion_type", ASSERTION_TYPE),
        ("client_assertion", assertion),
    ]
}

fn assert_entra_error(body: &serde_json::Value, error: &str, code: u64) {
    assert_eq!(body["error"], error, "{body}");
    assert_eq!(body["error_codes"], serde_json::json!([code]), "{body}");
    let description = body["error_description"].as_str().unwrap();
    assert!(
        description.starts_with(&format!("AADSTS{code}: ")),
        "{description}"
    );
    assert!(description.contains("Trace ID: ") && description.contains("Correlation ID: "));
    for key in ["timestamp", "trace_id", "correlation_id"] {
        assert!(body[key].is_string(), "{key} in {body}");
    }
    assert_eq!(
        body["error_uri"],
        format!("https://login.microsoftonline.com/error?code={code}")
    );
}

#[tokio::test]
async fn cloudscape_describes_entra_and_issues_tokens_for_the_projected_assertion() {
    let tmp = tempfile::tempdir().unwrap();
    let cloud = Cloudscape::start(CloudscapeOptions::new(tmp.path().join("state")))
        .await
        .unwrap();
    let d = cloud.describe();
    let az = &d["azure"];
    assert_eq!(az["tenant_id"], DEMO_TENANT_ID);
    assert_eq!(az["client_id"], DEMO_CLIENT_ID);
    assert_eq!(az["audience"], ENTRA_AUDIENCE);
    let host = az["authority_host"].as_str().unwrap();
    assert!(host.starts_with("http://127.0.0.1:") && host.ends_with('/'));
    let url = format!("{host}{DEMO_TENANT_ID}/oauth2/v2.0/token");
    assert_eq!(az["token_url"], url);
    assert_eq!(az["admin"], format!("{}_fake", host));
    let path = d["tokens"]["azure"].as_str().unwrap();
    assert!(path.ends_with("state/tokens/azure/token"));
    let assertion = std::fs::read_to_string(path).unwrap();
    let verified = cloud.issuer.verify(&assertion, ENTRA_AUDIENCE).unwrap();
    assert_eq!(verified.subject, ServiceAccount::default().subject());

    let (status, _, body) = post(&url, &form(&assertion, "https://vault.azure.net/.default")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 3599, "a JSON number");
    assert!(body.get("expires_on").is_none() && body.get("resource").is_none());
    let token = body["access_token"].as_str().unwrap();
    let log = cloud.entra.log();
    assert_eq!(log.last().unwrap().access_token.as_deref(), Some(token));
    assert_eq!(log.last().unwrap().outcome, "issued");

    // The AWS-audience token is not a valid assertion here: no FIC matches its audience.
    let aws = cloud.aws_token.current();
    let (status, _, body) = post(&url, &form(&aws, "https://vault.azure.net/.default")).await;
    assert_eq!(status, 400);
    assert_entra_error(&body, "invalid_request", 70_021);
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("Assertion Audience: 'sts.amazonaws.com'")
    );
}

#[tokio::test]
async fn entra_errors_have_the_real_shape() {
    let tmp = tempfile::tempdir().unwrap();
    let cloud = Cloudscape::start(CloudscapeOptions::new(tmp.path().join("state")))
        .await
        .unwrap();
    let url = cloud.entra.token_url();
    let assertion = cloud.azure_token.current();
    let mgmt = "https://management.azure.com//.default";

    // Validation done by the fake itself.
    let expired = cloud.issuer.mint_at(
        &ServiceAccount::default(),
        ENTRA_AUDIENCE,
        1_000_000,
        1_003_600,
    );
    let (status, _, body) = post(&url, &form(&expired, mgmt)).await;
    assert_eq!(status, 401);
    assert_entra_error(&body, "invalid_client", 700_024);
    let (status, _, body) = post(&url, &form(&assertion, "https://vault.azure.net")).await;
    assert_eq!(status, 400);
    assert_entra_error(&body, "invalid_scope", 1_002_012);
    let (status, _, body) = post(
        &url,
        &form(&assertion, "https://a/.default https://b/.default"),
    )
    .await;
    assert_eq!(status, 400);
    assert_entra_error(&body, "invalid_scope", 70_011);
    let mut other_app = form(&assertion, mgmt);
    other_app[0].1 = "00000000-0000-0000-0000-000000000001";
    let (status, _, body) = post(&url, &other_app).await;
    assert_eq!(status, 400);
    assert_entra_error(&body, "unauthorized_client", 700_016);
    let wrong_tenant = url.replace(DEMO_TENANT_ID, "contoso.onmicrosoft.com");
    let (status, _, body) = post(&wrong_tenant, &form(&assertion, mgmt)).await;
    assert_eq!(status, 400);
    assert_entra_error(&body, "invalid_request", 90_002);
    // Change one signature character (never to itself): the signature no longer verifies.
    let mut tampered = assertion.clone().into_bytes();
    let i = tampered.len() - 10;
    tampered[i] = if tampered[i] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    let (status, _, body) = post(&url, &form(&tampered, mgmt)).await;
    assert_eq!(status, 401);
    assert_entra_error(&body, "invalid_client", 50_013);

    // On demand through faults.
    for (code, status, error, n) in [
        ("70021", 400, "invalid_request", 70_021),
        ("AADSTS700211", 401, "invalid_client", 700_211),
        ("700213", 401, "invalid_client", 700_213),
        ("700024", 401, "invalid_client", 700_024),
        ("700016", 400, "unauthorized_client", 700_016),
        ("invalid_scope", 400, "invalid_scope", 70_011),
    ] {
        cloud.entra.faults().set(Fault::Error {
            code: code.into(),
            count: Some(1),
        });
        let (got, _, body) = post(&url, &form(&assertion, mgmt)).await;
        assert_eq!(got, status, "{code}");
        assert_entra_error(&body, error, n);
    }
    cloud.entra.faults().set(Fault::Status {
        status: 429,
        count: Some(1),
        retry_after: Some(3),
    });
    let (status, retry_after, body) = post(&url, &form(&assertion, mgmt)).await;
    assert_eq!((status, retry_after.as_deref()), (429, Some("3")));
    assert_entra_error(&body, "temporarily_unavailable", 90_055);
    cloud.entra.faults().set(Fault::Status {
        status: 503,
        count: Some(1),
        retry_after: None,
    });
    let (status, _, body) = post(&url, &form(&assertion, mgmt)).await;
    assert_eq!(status, 503);
    assert_entra_error(&body, "temporarily_unavailable", 90_033);
    let outcomes: Vec<String> = cloud.entra.log().into_iter().map(|r| r.outcome).collect();
    assert!(outcomes.contains(&"error:AADSTS700024".to_string()));
    assert!(outcomes.contains(&"fault:status".to_string()));
    // GET is refused as Entra refuses it.
    let resp = client().get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 400);
}

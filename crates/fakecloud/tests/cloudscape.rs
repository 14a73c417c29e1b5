//! Cloudscape end to end, and the `fakecloud run` binary.

mod support;
use support::client;

use fakecloud::aws::DEMO_ROLE_ARN;
use fakecloud::{Cloudscape, CloudscapeOptions};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

async fn exchange(client: &reqwest::Client, endpoint: &str, token: &str) -> reqwest::StatusCode {
    client
        .post(format!("{endpoint}/"))
        .form(&[
            ("Action", "AssumeRoleWithWebIdentity"),
            ("Version", "2011-06-15"),
            ("RoleArn", DEMO_ROLE_ARN),
            ("RoleSessionName", "cloudscape"),
            ("WebIdentityToken", token),
        ])
        .send()
        .await
        .unwrap()
        .status()
}

#[tokio::test]
async fn cloudscape_serves_issuer_tokens_and_sts() {
    let tmp = tempfile::tempdir().unwrap();
    let cloud = Cloudscape::start(CloudscapeOptions::new(tmp.path().join("state")))
        .await
        .unwrap();
    let d = cloud.describe();
    let issuer = d["issuer"].as_str().unwrap();
    assert!(issuer.starts_with("http://127.0.0.1:"));
    let token_path = d["tokens"]["aws"].as_str().unwrap();
    assert!(Path::new(token_path).is_absolute());
    assert!(token_path.ends_with("state/tokens/aws/token"));
    let sts = d["aws"]["sts_endpoint"].as_str().unwrap();
    assert_eq!(d["aws"]["admin"], format!("{sts}/_fake"));
    assert_eq!(d["aws"]["role_arn"], DEMO_ROLE_ARN);
    assert_eq!(d["aws"]["region"], "us-east-1");
    assert_eq!(d["aws"]["account"], "123456789012");
    // One key per cloud besides these; each cloud's own test checks its key.
    for key in ["issuer", "tokens", "aws", "oci", "oci_api"] {
        assert!(d.get(key).is_some(), "{key} missing from {d}");
    }

    let client = client();
    let conf: serde_json::Value = client
        .get(format!("{issuer}/.well-known/openid-configuration"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(conf["issuer"], issuer);
    let jwks: serde_json::Value = client
        .get(conf["jwks_uri"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(jwks, cloud.issuer.jwks());

    let first = std::fs::read_to_string(token_path).unwrap();
    let verified = cloud.issuer.verify(&first, "sts.amazonaws.com").unwrap();
    assert_eq!(verified.subject, "system:serviceaccount:default:app");
    assert_eq!(exchange(&client, sts, &first).await, 200);

    let rotated: serde_json::Value = client
        .post(format!("{issuer}/_fake/rotate"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // Every cloud's projected token volume rotates.
    let volumes = d["tokens"].as_object().unwrap().len();
    assert_eq!(rotated, serde_json::json!({ "rotated": volumes }));
    let second = std::fs::read_to_string(token_path).unwrap();
    assert_ne!(first, second);
    assert_eq!(second, cloud.aws_token.current());
    assert_eq!(exchange(&client, sts, &second).await, 200);
    assert_eq!(cloud.sts.issued_count(), 2);

    let issuer_log: serde_json::Value = client
        .get(format!("{issuer}/_fake/log"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(issuer_log.as_array().unwrap().len(), 2);
    cloud.shutdown().await;
}

#[tokio::test]
async fn cloudscape_with_custom_service_account_and_rotation() {
    let tmp = tempfile::tempdir().unwrap();
    let mut opts = CloudscapeOptions::new(tmp.path());
    opts.service_account = fakecloud::ServiceAccount::new("prod", "billing");
    opts.rotate_every = Some(Duration::from_millis(200));
    opts.token_lifetime = Duration::from_secs(600);
    let cloud = Cloudscape::start(opts).await.unwrap();
    let first = cloud.aws_token.current();
    let claims = fakecloud::issuer::peek_claims(&first).unwrap();
    assert_eq!(claims.sub, "system:serviceaccount:prod:billing");
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_ne!(cloud.aws_token.current(), first);
    let client = client();
    let token = std::fs::read_to_string(cloud.aws_token.path()).unwrap();
    assert_eq!(exchange(&client, &cloud.sts.url(), &token).await, 200);

    // Dropping stops the servers.
    let sts = cloud.sts.url();
    drop(cloud);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(client.get(format!("{sts}/")).send().await.is_err());
}

#[test]
fn binary_writes_ready_file_and_exits_on_sigterm() {
    let tmp = tempfile::tempdir().unwrap();
    let ready = tmp.path().join("ready.json");
    let mut child = Command::new(env!("CARGO_BIN_EXE_fakecloud"))
        .args(["run", "--state-dir"])
        .arg(tmp.path().join("state"))
        .arg("--ready-file")
        .arg(&ready)
        .args(["--rotate-every", "60", "--token-lifetime", "900"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ready.exists() {
        assert!(Instant::now() < deadline, "ready file never appeared");
        assert!(
            child.try_wait().unwrap().is_none(),
            "fakecloud exited early"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let d: serde_json::Value = serde_json::from_slice(&std::fs::read(&ready).unwrap()).unwrap();
    let token = std::fs::read_to_string(d["tokens"]["aws"].as_str().unwrap()).unwrap();
    let claims = fakecloud::issuer::peek_claims(&token).unwrap();
    assert_eq!(claims.iss, d["issuer"].as_str().unwrap());
    assert_eq!(claims.exp.unwrap() - 900, {
        let payload = token.split('.').nth(1).unwrap();
        use base64::Engine as _;
        let v: serde_json::Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload)
                .unwrap(),
        )
        .unwrap();
        v["iat"].as_u64().unwrap()
    });
    assert!(
        d["aws"]["sts_endpoint"]
            .as_str()
            .unwrap()
            .starts_with("http://127.0.0.1:")
    );

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let exit = loop {
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        assert!(Instant::now() < deadline, "fakecloud ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(exit.success(), "{exit:?}");
}

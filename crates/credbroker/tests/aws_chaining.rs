//! Several AWS identities against the emulated STS: a named web-identity role and a role chained
//! from the default one across accounts (AssumeRole, SigV4-signed with the base's credentials and
//! checked by the fake STS's own verifier), its options, its failures and its re-derivation.

mod common;

use std::time::Duration;

use common::*;
use fakecloud::aws::{DEMO_ROLE_ARN, SessionTag};
use fakecloud::sidecar::{AWS_CHAINED_EXTERNAL_ID, AWS_CHAINED_ROLE_ARN, AWS_READER_ROLE_ARN};

fn chain_args(external_id: &str) -> Vec<String> {
    vec![
        "--aws-role".into(),
        format!("reader={AWS_READER_ROLE_ARN}"),
        "--aws-chained-role".into(),
        format!("cross={AWS_CHAINED_ROLE_ARN}@default"),
        "--aws-role-option".into(),
        format!("cross:external-id={external_id}"),
        "--aws-role-option".into(),
        "cross:source-identity=platform-team".into(),
        "--aws-role-option".into(),
        "cross:tag=team=payments".into(),
        "--aws-role-option".into(),
        "cross:transitive-tag=team".into(),
        "--aws-role-option".into(),
        "cross:duration=1800".into(),
    ]
}

async fn creds(broker: &Broker, name: &str) -> Reply {
    let path = if name == "default" {
        "/v1/credentials".to_string()
    } else {
        format!("/v1/credentials/{name}")
    };
    get(
        broker.creds,
        &path,
        &[("Authorization", &broker.auth_token())],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chained_role_is_assumed_with_the_base_roles_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let scape = cloudscape(dir.path()).await;
    let args = chain_args(AWS_CHAINED_EXTERNAL_ID);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let broker = Broker::start(&dir.path().join("b"), &sidecar(&scape, &["aws"]), &args).await;
    broker.wait_ready().await;

    let default = creds(&broker, "default").await;
    let reader = creds(&broker, "reader").await;
    let cross = creds(&broker, "cross").await;
    for r in [&default, &reader, &cross] {
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let key = |r: &Reply| r.json()["AccessKeyId"].as_str().unwrap().to_string();

    // Each key is a session of its own role, as the fake STS itself records it.
    let who = |akid: String| scape.sts.identity(&akid).expect("a key STS issued");
    let (d, r, c) = (who(key(&default)), who(key(&reader)), who(key(&cross)));
    assert_eq!(d.role_arn.as_deref(), Some(DEMO_ROLE_ARN));
    assert_eq!(r.role_arn.as_deref(), Some(AWS_READER_ROLE_ARN));
    assert_eq!(c.role_arn.as_deref(), Some(AWS_CHAINED_ROLE_ARN));
    assert_eq!(c.account, "210987654321");
    assert_eq!(cross.json()["AccountId"], "210987654321");
    assert_eq!(cross.json()["RoleArn"], AWS_CHAINED_ROLE_ARN);
    assert_eq!(c.source_identity.as_deref(), Some("platform-team"));
    assert_eq!(
        c.tags,
        vec![SessionTag {
            key: "team".into(),
            value: "payments".into()
        }]
    );
    assert_eq!(c.transitive_tag_keys, vec!["team".to_string()]);

    // The AssumeRole call was signed with the default role's key and carried the options.
    let assume: Vec<_> = scape
        .sts
        .log()
        .into_iter()
        .filter(|r| r.action.as_deref() == Some("AssumeRole"))
        .collect();
    assert_eq!(assume.len(), 1, "{assume:?}");
    let call = &assume[0];
    assert_eq!(call.outcome, "issued");
    assert_eq!(
        call.caller_access_key_id.as_deref(),
        Some(key(&default).as_str())
    );
    assert_eq!(call.caller_arn.as_deref(), Some(d.arn.as_str()));
    assert_eq!(call.external_id.as_deref(), Some(AWS_CHAINED_EXTERNAL_ID));
    assert_eq!(call.duration_seconds, Some(1800));

    // IMDSv2 lists the three roles by name and serves each.
    let session = broker.imds_session().await;
    let h = [("X-aws-ec2-metadata-token", session.as_str())];
    let list = get(
        broker.creds,
        "/latest/meta-data/iam/security-credentials/",
        &h,
    )
    .await;
    assert_eq!(list.status, 200);
    let names: Vec<&str> = list.body.split('\n').collect();
    assert_eq!(
        names,
        ["credbroker-demo", "cross", "reader"],
        "{}",
        list.body
    );
    let imds = get(
        broker.creds,
        "/latest/meta-data/iam/security-credentials/cross",
        &h,
    )
    .await;
    assert_eq!(imds.json()["AccessKeyId"], key(&cross).as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_chain_is_reported_by_name_and_the_others_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let scape = cloudscape(dir.path()).await;
    let args = chain_args("not-the-external-id");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let broker = Broker::start(&dir.path().join("b"), &sidecar(&scape, &["aws"]), &args).await;
    wait_until(Duration::from_secs(10), || async {
        get(broker.ops, "/readyz/aws", &[])
            .await
            .body
            .contains("AccessDenied")
    })
    .await;
    let ready = get(broker.ops, "/readyz/aws", &[]).await;
    assert_eq!(ready.status, 503);
    assert!(ready.body.contains("cross"), "{}", ready.body);
    assert!(
        ready
            .body
            .starts_with("aws: not ready: cross: last exchange failed: AccessDenied"),
        "only the refused identity is named: {}",
        ready.body
    );
    assert!(!ready.body.contains("reader"), "{}", ready.body);
    assert_eq!(creds(&broker, "default").await.status, 200);
    assert_eq!(creds(&broker, "reader").await.status, 200);
    let cross = creds(&broker, "cross").await;
    assert_eq!(
        (cross.status, cross.json()["Code"].as_str()),
        (403, Some("AccessDenied")),
        "{}",
        cross.body
    );
    // STS's own refusal, with the caller it saw: the default role's session.
    let refused = scape
        .sts
        .log()
        .into_iter()
        .find(|r| r.action.as_deref() == Some("AssumeRole"))
        .unwrap();
    assert_eq!(refused.outcome, "error:AccessDenied");
    assert!(
        refused
            .caller_arn
            .as_deref()
            .unwrap()
            .contains("assumed-role/credbroker-demo/")
    );
    assert!(!broker.logs().contains(&broker.auth_token()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_is_re_derived_when_its_base_is_re_issued() {
    let dir = tempfile::tempdir().unwrap();
    let scape = cloudscape(dir.path()).await;
    // The base role's sessions last 12 s, the chained role's the 1800 s it asks for: every change
    // of the chain's key below is the broker following its base, not the chain's own refresh.
    scape
        .sts
        .set_role_issued_lifetime(DEMO_ROLE_ARN, Some(Duration::from_secs(12)));
    let args = chain_args(AWS_CHAINED_EXTERNAL_ID);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let broker = Broker::start(&dir.path().join("b"), &sidecar(&scape, &["aws"]), &args).await;
    broker.wait_ready().await;
    let key = |r: Reply| r.json()["AccessKeyId"].as_str().unwrap().to_string();
    let first_base = key(creds(&broker, "default").await);
    let first_cross = key(creds(&broker, "cross").await);
    wait_until(Duration::from_secs(20), || async {
        key(creds(&broker, "cross").await) != first_cross
    })
    .await;
    let base = key(creds(&broker, "default").await);
    assert_ne!(base, first_base);
    let assumed: Vec<_> = scape
        .sts
        .log()
        .into_iter()
        .filter(|r| r.action.as_deref() == Some("AssumeRole"))
        .collect();
    // One AssumeRole per base: each signed by the base session current when it was made.
    let web: Vec<String> = scape
        .sts
        .log()
        .into_iter()
        .filter(|r| r.action.as_deref() == Some("AssumeRoleWithWebIdentity"))
        .filter_map(|r| r.credentials.map(|c| c.access_key_id))
        .collect();
    assert_eq!(
        assumed[0].caller_access_key_id.as_deref(),
        Some(first_base.as_str())
    );
    let second = &assumed[1];
    assert_eq!(second.outcome, "issued");
    let signer = second.caller_access_key_id.clone().unwrap();
    assert_ne!(signer, first_base, "re-derived with the new base");
    assert!(web.contains(&signer), "{signer} is a base session");
    let issued = second.credentials.clone().unwrap();
    assert_eq!(issued.expiration.len(), "2026-01-01T00:00:00Z".len());
    assert!(
        assumed.len() <= web.len(),
        "no more chained calls than base sessions: {} > {}",
        assumed.len(),
        web.len()
    );
}

//! Every type that holds a secret redacts it in `Debug` (and `Display` where it has one), alone
//! and nested in the cache's and token source's own types.

use std::path::Path;
use std::time::{Duration, SystemTime};

use credbroker::clock::SystemClock;
use credbroker::clouds::aws::config::RoleArn;
use credbroker::clouds::aws::sts::StsCredentials;
use credbroker::clouds::aws::surface::AwsCredential;
use credbroker::clouds::azure::entra::EntraToken;
use credbroker::clouds::azure::surface::AzureToken;
use credbroker::clouds::gcp::sts::AccessToken;
use credbroker::clouds::oci::key::PodKey;
use credbroker::clouds::oci::proxymux::{Rpst, RpstClaims};
use credbroker::exchange::ExchangeError;
use credbroker::refresh::Issued;
use credbroker::secret::Secret;
use credbroker::token::{Snapshot, parse_token_bytes};

const SECRET_KEY: &str = "wJalrXUtnFEMI-secret-access-key-0001";
const SESSION: &str = "FwoGZXIvYXdzE-session-token-0002";
const ACCESS: &str = "ya29.c.access-token-0003";
const ENTRA: &str = "eyJ0eXAi.entra-access-token.0004";
/// A JWT-shaped service-account token (expires in 2100).
const SA_TOKEN: &str = "eyJhbGciOiAiUlMyNTYiLCAia2lkIjogImsifQ.eyJpc3MiOiAiaHR0cHM6Ly9rOHMiLCAic3ViIjogInN5c3RlbTpzZXJ2aWNlYWNjb3VudDpkZWZhdWx0OmFwcCIsICJhdWQiOiBbInN0cy5hbWF6b25hd3MuY29tIl0sICJleHAiOiA0MTAyNDQ0ODAwLCAiaWF0IjogMTcwMDAwMDAwMH0.c2lnbmF0dXJl";

fn assert_hidden(shown: &str, secrets: &[&str]) {
    for s in secrets {
        assert!(!shown.contains(s), "{s} shown in {shown}");
    }
    assert!(shown.contains("redacted"), "{shown}");
}

fn sts() -> StsCredentials {
    StsCredentials {
        access_key_id: "ASIAEXAMPLE123456789".into(),
        secret_access_key: Secret::new(SECRET_KEY),
        session_token: Secret::new(SESSION),
        expiration: SystemTime::now() + Duration::from_secs(3600),
        assumed_role_arn: "arn:aws:sts::123456789012:assumed-role/r/s".into(),
    }
}

#[test]
fn secret_itself() {
    let s = Secret::new(SECRET_KEY);
    assert_hidden(&format!("{s:?}"), &[SECRET_KEY]);
    assert_hidden(&format!("{s}"), &[SECRET_KEY]);
    assert_hidden(&format!("{:?}", Some(vec![s.clone()])), &[SECRET_KEY]);
}

#[test]
fn aws_credentials() {
    let creds = sts();
    assert_hidden(&format!("{creds:?}"), &[SECRET_KEY, SESSION]);
    let role = RoleArn::parse("arn:aws:iam::123456789012:role/r").unwrap();
    let rendered = AwsCredential::render(sts(), &role, SystemTime::now(), None);
    // The pre-rendered bodies hold the secrets; Debug must not print them.
    assert!(String::from_utf8_lossy(&rendered.container_body).contains(SECRET_KEY));
    let issued = Issued {
        value: rendered,
        issued_at: tokio::time::Instant::now(),
        expires_at: tokio::time::Instant::now() + Duration::from_secs(3600),
        expires_wall: SystemTime::now(),
    };
    assert_hidden(&format!("{issued:?}"), &[SECRET_KEY, SESSION]);
    assert_hidden(&format!("{issued:#?}"), &[SECRET_KEY, SESSION]);
}

#[test]
fn google_and_entra_tokens() {
    let t = AccessToken::new(Secret::new(ACCESS), SystemTime::now());
    assert_hidden(&format!("{t:?}"), &[ACCESS]);
    let e = EntraToken {
        access_token: Secret::new(ENTRA),
        expires_on: SystemTime::now(),
        not_before: SystemTime::now(),
    };
    assert_hidden(&format!("{e:?}"), &[ENTRA]);
    let a = AzureToken::new(Secret::new(ENTRA), 1, 0);
    assert_hidden(&format!("{a:?}"), &[ENTRA]);
}

#[test]
fn service_account_tokens() {
    let token = parse_token_bytes(Path::new("/t"), SA_TOKEN.as_bytes(), &SystemClock).unwrap();
    assert_hidden(&format!("{token:?}"), &[SA_TOKEN, "c2lnbmF0dXJl"]);
    let snap = Snapshot {
        token: Ok(token),
        generation: 1,
    };
    assert_hidden(&format!("{snap:?}"), &[SA_TOKEN]);
    // Errors about a bad file describe it without quoting it.
    let garbage = "secret-looking-but-not-a-jwt-0123456789";
    let err = parse_token_bytes(Path::new("/t"), garbage.as_bytes(), &SystemClock).unwrap_err();
    assert!(!format!("{err} {err:?}").contains(garbage));
    let partial = &SA_TOKEN[..SA_TOKEN.len() / 2];
    let err = parse_token_bytes(Path::new("/t"), partial.as_bytes(), &SystemClock).unwrap_err();
    assert!(!format!("{err} {err:?}").contains(partial));
}

#[test]
fn exchange_errors_truncate_upstream_text() {
    let e = ExchangeError::transient("X", "m".repeat(10_000));
    assert!(e.to_string().chars().count() < 600);
}

#[test]
fn oci_rpst_and_private_key() {
    let rpst = Rpst {
        token: Secret::new(SA_TOKEN),
        claims: RpstClaims {
            exp: 4_102_444_800,
            iat: None,
            sub: Some("ocid1.workload.oc1..x".into()),
            res_tenant: None,
            res_compartment: None,
            jti: Some("jti-1".into()),
        },
    };
    assert_hidden(&format!("{rpst:?}"), &[SA_TOKEN, "c2lnbmF0dXJl"]);
    let key = PodKey::generate().unwrap();
    let pem = key.private_pem().expose().to_string();
    let shown = format!("{key:?}");
    for line in pem.lines().filter(|l| !l.starts_with("-----")) {
        assert!(!shown.contains(line), "a private key line in {shown}");
    }
    assert!(!shown.contains("PRIVATE KEY"), "{shown}");
}

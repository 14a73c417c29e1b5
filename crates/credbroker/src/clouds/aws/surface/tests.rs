use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use super::*;
use crate::clock::TokioClock;
use crate::secret::Secret;

fn role() -> RoleArn {
    RoleArn::parse("arn:aws:iam::123456789012:role/app").unwrap()
}

fn sts() -> StsCredentials {
    StsCredentials {
        access_key_id: "ASIAAAAAAAAAAAAAAAAA".into(),
        secret_access_key: Secret::new("sec\"ret/+"),
        session_token: Secret::new("tok\\en"),
        expiration: UNIX_EPOCH + Duration::from_secs(1_800_000_000),
        assumed_role_arn: "arn:aws:sts::123456789012:assumed-role/app/s".into(),
    }
}

#[test]
fn renders_both_bodies_with_escaping() {
    let c = AwsCredential::render(
        sts(),
        &role(),
        UNIX_EPOCH + Duration::from_secs(1_799_996_400),
        None,
    );
    let container: serde_json::Value = serde_json::from_slice(&c.container_body).unwrap();
    assert_eq!(container["SecretAccessKey"], "sec\"ret/+");
    assert_eq!(container["Token"], "tok\\en");
    assert_eq!(container["Expiration"], "2027-01-15T08:00:00Z");
    assert_eq!(container["AccountId"], "123456789012");
    let imds: serde_json::Value = serde_json::from_slice(&c.imds_body).unwrap();
    assert_eq!(imds["Code"], "Success");
    assert_eq!(imds["Type"], "AWS-HMAC");
    assert_eq!(imds["LastUpdated"], "2027-01-15T07:00:00Z");
    // Field order as the real services send it (some parsers are picky about nothing, but be faithful).
    let text = std::str::from_utf8(&c.imds_body).unwrap();
    assert!(text.starts_with(r#"{"Code":"Success","LastUpdated":"#));
    assert!(!format!("{c:?}").contains("sec\"ret"));
}

#[test]
fn error_statuses() {
    use crate::exchange::ExchangeError;
    assert_eq!(unavailable(&Unavailable::Pending).status(), 503);
    let t = ExchangeError::transient("Throttling", "slow").with_status(400);
    assert_eq!(unavailable(&Unavailable::Failed(t)).status(), 503);
    let p = ExchangeError::permanent("AccessDenied", "no").with_status(403);
    assert_eq!(unavailable(&Unavailable::Failed(p)).status(), 403);
    let p = ExchangeError::permanent("InvalidIdentityToken", "bad").with_status(400);
    assert_eq!(unavailable(&Unavailable::Failed(p)).status(), 400);
    let p = ExchangeError::permanent("HTTP404", "odd").with_status(404);
    assert_eq!(unavailable(&Unavailable::Failed(p)).status(), 404);
    let p = ExchangeError::permanent("X", "no status");
    assert_eq!(unavailable(&Unavailable::Failed(p)).status(), 403);
}

#[tokio::test(start_paused = true)]
async fn imds_session_tokens_expire_and_resist_forgery() {
    let clock = Arc::new(TokioClock::now_wall());
    let sessions = ImdsSessions::new(clock);
    let t = sessions.issue(60);
    assert!(sessions.verify(&t));
    let (payload, tag) = t.rsplit_once('.').unwrap();
    let (exp, nonce) = payload.split_once('.').unwrap();
    let longer = format!("{}.{nonce}.{tag}", exp.parse::<u64>().unwrap() + 3600);
    assert!(!sessions.verify(&longer), "extended expiry accepted");
    assert!(!sessions.verify(""));
    assert!(!sessions.verify(&"a".repeat(200)));
    let other = ImdsSessions::new(Arc::new(TokioClock::now_wall()));
    assert!(!other.verify(&t), "another process's key accepted");
    tokio::time::sleep(Duration::from_secs(61)).await;
    assert!(!sessions.verify(&t), "expired session accepted");
}

#[tokio::test(start_paused = true)]
async fn remembered_session_tokens_still_expire_and_forgeries_still_fail() {
    let clock = Arc::new(TokioClock::now_wall());
    let sessions = ImdsSessions::new(clock);
    let short = sessions.issue(30);
    let long = sessions.issue(21_600);
    // Verified once (HMAC), then from memory.
    for _ in 0..3 {
        assert!(sessions.verify(&short));
        assert!(sessions.verify(&long));
    }
    // A token differing from a remembered one in its last byte is checked, and refused.
    let mut forged = long.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == 'A' { 'B' } else { 'A' });
    assert!(!sessions.verify(&forged));
    // More tokens than slots: the oldest are forgotten, and verify again by HMAC.
    let many: Vec<String> = (0..6).map(|_| sessions.issue(600)).collect();
    for t in &many {
        assert!(sessions.verify(t));
    }
    assert!(sessions.verify(&short) && sessions.verify(&long));
    // A remembered token expires like any other.
    tokio::time::sleep(Duration::from_secs(31)).await;
    assert!(
        !sessions.verify(&short),
        "remembered token outlived its expiry"
    );
    assert!(sessions.verify(&long));
}

//! AWS identities under tokio's paused time, over a scripted STS: named roles, and chained
//! roles following their base (base expiring first, base rotating, the second hop denied).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::{Instant, advance};

use super::auth::{AuthSource, AuthToken};
use super::identity::RoleOptions;
use super::sts::{RoleRequest, StsApi, StsCredentials};
use super::surface::ImdsSessions;
use super::*;
use crate::clock::{Clock, TokioClock};
use crate::exchange::ExchangeError;
use crate::fs::{FileMode, MemFs};
use crate::secret::Secret;
use crate::testing::{parts, route};

const AUTH: &str = "pod-uid-0123456789abcdef";

/// One call STS received: the role, and for `AssumeRole` the calling (base) access key.
#[derive(Debug, Clone)]
struct Call {
    role: String,
    base: Option<String>,
    at: Instant,
}

/// Issues `ASIA…` keys numbered in order; web-identity sessions live `web_life`, chained ones
/// what was asked (STS caps them at an hour, as the broker asks).
struct FakeSts {
    clock: TokioClock,
    n: AtomicUsize,
    web_life: Duration,
    web_fails: Mutex<Option<ExchangeError>>,
    chained_fails: Mutex<Option<ExchangeError>>,
    calls: Mutex<Vec<Call>>,
}

impl FakeSts {
    fn issue(&self, role: &str, life: Duration) -> StsCredentials {
        let n = self.n.fetch_add(1, Ordering::SeqCst) + 1;
        StsCredentials {
            access_key_id: format!("ASIA{n:016}"),
            secret_access_key: Secret::new(format!("secret-{n}")),
            session_token: Secret::new(format!("token-{n}")),
            expiration: self.clock.wall() + life,
            assumed_role_arn: format!("arn:aws:sts::123456789012:assumed-role/{role}/s"),
        }
    }

    fn chained_calls(&self) -> Vec<Call> {
        self.calls
            .lock()
            .iter()
            .filter(|c| c.base.is_some())
            .cloned()
            .collect()
    }
}

#[derive(Clone)]
struct Sts(Arc<FakeSts>);

impl StsApi for Sts {
    async fn web_identity(&self, role: RoleRequest<'_>) -> Result<StsCredentials, ExchangeError> {
        self.0.calls.lock().push(Call {
            role: role.role_arn.into(),
            base: None,
            at: Instant::now(),
        });
        if let Some(e) = self.0.web_fails.lock().clone() {
            return Err(e);
        }
        Ok(self.0.issue(role.role_arn, self.0.web_life))
    }

    async fn chained(
        &self,
        base: &StsCredentials,
        role: RoleRequest<'_>,
        _options: &RoleOptions,
    ) -> Result<StsCredentials, ExchangeError> {
        self.0.calls.lock().push(Call {
            role: role.role_arn.into(),
            base: Some(base.access_key_id.clone()),
            at: Instant::now(),
        });
        if let Some(e) = self.0.chained_fails.lock().clone() {
            return Err(e);
        }
        Ok(self.0.issue(
            role.role_arn,
            Duration::from_secs(role.duration_secs.into()),
        ))
    }
}

struct Rig {
    sts: Arc<FakeSts>,
    runtime: Runtime,
}

fn mins(m: u64) -> Duration {
    Duration::from_secs(m * 60)
}

fn rig(web_life: Duration) -> Rig {
    let clock = TokioClock::now_wall();
    let env = crate::config::Env::from_pairs([
        ("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/app"),
        ("AWS_WEB_IDENTITY_TOKEN_FILE", "/var/run/token"),
        ("AWS_REGION", "us-east-1"),
    ]);
    let flags = Flags {
        aws_role: vec!["reader=arn:aws:iam::123456789012:role/reader".into()],
        aws_chained_role: vec!["audit=arn:aws:iam::210987654321:role/audit@default".into()],
        aws_role_option: vec!["audit:external-id=ext-1".into()],
        ..Flags::default()
    };
    let config = AwsConfig::from_env(&env, &flags).unwrap().unwrap();
    let sts = Arc::new(FakeSts {
        clock,
        n: AtomicUsize::new(0),
        web_life,
        web_fails: Mutex::new(None),
        chained_fails: Mutex::new(None),
        calls: Mutex::new(Vec::new()),
    });
    let source = AuthSource::Value {
        value: Secret::new(AUTH),
        file: None,
    };
    let auth = AuthToken::start(&source, &MemFs::new(), FileMode::new(false)).unwrap();
    let runtime = config.runtime(
        Sts(sts.clone()),
        |e| Aws::cache_builder(e).clock(Arc::new(clock)).build(),
        Arc::new(clock),
        auth,
        ImdsSessions::new(Arc::new(clock)),
    );
    Rig { sts, runtime }
}

impl Rig {
    /// `GET /v1/credentials[/NAME]` through the router: (status, access key or error code).
    async fn get(&self, path: &str) -> (u16, String) {
        let container = self.runtime.surfaces()[0].clone();
        let resp = route(container, parts("GET", path, &[("authorization", AUTH)])).await;
        let status = resp.status().as_u16();
        let body = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .unwrap()
            .to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body)
            .unwrap_or_else(|e| panic!("{path}: {status} {e}: {}", String::from_utf8_lossy(&body)));
        let shown = v["AccessKeyId"]
            .as_str()
            .or(v["Code"].as_str())
            .unwrap_or("");
        (status, shown.to_string())
    }
}

#[tokio::test(start_paused = true)]
async fn each_identity_has_its_own_credential_and_path() {
    let r = rig(mins(60));
    let (s0, default) = r.get("/v1/credentials").await;
    let (s1, reader) = r.get("/v1/credentials/reader").await;
    let (s2, audit) = r.get("/v1/credentials/audit").await;
    assert_eq!((s0, s1, s2), (200, 200, 200));
    assert!(default != reader && reader != audit && default != audit);
    // The chain was signed with the default identity's credential.
    assert_eq!(
        r.sts.chained_calls()[0].base.as_deref(),
        Some(default.as_str())
    );
    let (status, code) = r.get("/v1/credentials/nobody").await;
    assert_eq!((status, code.as_str()), (404, "NotFound"));
    assert!(r.runtime.readiness().is_ok());
}

#[tokio::test(start_paused = true)]
async fn a_chain_is_rederived_when_its_base_rotates() {
    let r = rig(mins(60));
    let (_, first_base) = r.get("/v1/credentials").await;
    let (_, first_chain) = r.get("/v1/credentials/audit").await;
    // The base refreshes at about half its hour (± 10 %); the chain follows within a second.
    advance(mins(35)).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (_, base) = r.get("/v1/credentials").await;
    assert_ne!(base, first_base, "the base did not rotate");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, chain) = r.get("/v1/credentials/audit").await;
    assert_ne!(
        chain, first_chain,
        "the chain still holds what the old base derived"
    );
    let calls = r.sts.chained_calls();
    assert_eq!(calls.last().unwrap().base.as_deref(), Some(base.as_str()));
    // Re-derived because the base changed, not on its own schedule (that is ~30 min away).
    let rotated = r
        .sts
        .calls
        .lock()
        .iter()
        .filter(|c| c.base.is_none() && c.role.ends_with("/app"))
        .nth(1)
        .unwrap()
        .at;
    assert!(calls.last().unwrap().at - rotated <= Duration::from_secs(2));
}

#[tokio::test(start_paused = true)]
async fn a_chain_outlives_its_failing_base_and_never_serves_expired() {
    // The base lives 20 minutes; the chain an hour (the chained cap).
    let r = rig(mins(20));
    let (_, chain) = r.get("/v1/credentials/audit").await;
    *r.sts.web_fails.lock() =
        Some(ExchangeError::transient("ServiceUnavailable", "down").with_status(503));
    advance(mins(25)).await;
    // The base has expired; the chain, an independent session, is still served.
    let (status, _) = r.get("/v1/credentials").await;
    assert_eq!(status, 503);
    assert_eq!(r.get("/v1/credentials/audit").await, (200, chain.clone()));
    let why = r.runtime.readiness().unwrap_err();
    assert!(why.reasons().iter().any(|(k, _)| k.ends_with("role/app")));
    assert!(!why.reasons().iter().any(|(k, _)| k == "audit"), "{why}");
    // Past the chain's refresh point its exchange fails (no base): the old one is still valid.
    advance(mins(10)).await;
    assert_eq!(r.get("/v1/credentials/audit").await, (200, chain.clone()));
    // The base comes back; the chain is re-derived from the new base.
    *r.sts.web_fails.lock() = None;
    advance(mins(2)).await;
    let (status, base) = r.get("/v1/credentials").await;
    assert_eq!(status, 200);
    advance(mins(2)).await;
    let (status, fresh) = r.get("/v1/credentials/audit").await;
    assert_eq!(status, 200);
    assert_ne!(fresh, chain);
    assert_eq!(
        r.sts.chained_calls().last().unwrap().base.as_deref(),
        Some(base.as_str())
    );
    // Never served inside the 5 s floor: an hour on, with the base failing again, the chain is
    // answered 503 rather than with an expired credential.
    *r.sts.web_fails.lock() =
        Some(ExchangeError::transient("ServiceUnavailable", "down").with_status(503));
    *r.sts.chained_fails.lock() =
        Some(ExchangeError::transient("ServiceUnavailable", "down").with_status(503));
    advance(mins(70)).await;
    assert_eq!(r.get("/v1/credentials/audit").await.0, 503);
}

#[tokio::test(start_paused = true)]
async fn a_denied_second_hop_is_that_identitys_failure_alone() {
    let r = rig(mins(60));
    *r.sts.chained_fails.lock() = Some(
        ExchangeError::permanent("AccessDenied", "not authorized to perform sts:AssumeRole")
            .with_status(403),
    );
    assert_eq!(r.get("/v1/credentials").await.0, 200);
    assert_eq!(r.get("/v1/credentials/reader").await.0, 200);
    let (status, code) = r.get("/v1/credentials/audit").await;
    assert_eq!((status, code.as_str()), (403, "AccessDenied"));
    let why = r.runtime.readiness().unwrap_err();
    let labels: Vec<&str> = why.reasons().iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(labels, ["audit"], "{why}");
    assert!(why.to_string().contains("AccessDenied"));
}

#[tokio::test(start_paused = true)]
async fn a_chain_as_long_lived_as_its_base_is_derived_once_per_base_session() {
    // Base and chain both live an hour and both refresh at about half-life: whichever refresh
    // comes first, each base session signs one chained call (fresh_base, follow_base).
    let r = rig(mins(60));
    r.get("/v1/credentials/audit").await;
    for _ in 0..(10 * 60) {
        advance(mins(1)).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let bases: Vec<String> = r
        .sts
        .calls
        .lock()
        .iter()
        .filter(|c| c.base.is_none() && c.role.ends_with("/app"))
        .map(|c| c.role.clone())
        .collect();
    let chained = r.sts.chained_calls();
    let signers: std::collections::BTreeSet<_> =
        chained.iter().filter_map(|c| c.base.clone()).collect();
    assert!(
        bases.len() >= 18,
        "ten hours of half-hour refreshes: {}",
        bases.len()
    );
    assert_eq!(
        signers.len(),
        chained.len(),
        "a base session signed two chained calls: {chained:?}"
    );
    assert!(
        chained.len() <= bases.len(),
        "{} chained calls for {} base sessions",
        chained.len(),
        bases.len()
    );
}

/// What the AWS surfaces answer without waiting is what `handle` answers; a credential request
/// waits (`None`) only while its credential is not held.
#[tokio::test(start_paused = true)]
async fn answers_without_waiting_are_the_answers_after_waiting() {
    use crate::testing::answers_now_as_handle;
    let r = rig(mins(60));
    let container = r.runtime.surfaces()[0].clone();
    let imds = r.runtime.surfaces()[1].clone();
    assert_eq!(
        (container.name(), imds.name()),
        ("aws-container", "aws-imds")
    );
    let creds = parts("GET", "/v1/credentials", &[("authorization", AUTH)]);
    assert!(
        !answers_now_as_handle(container.as_ref(), &creds, false).await,
        "nothing held yet: the request waits"
    );
    let refused = parts("GET", "/v1/credentials", &[("authorization", "wrong")]);
    assert!(answers_now_as_handle(container.as_ref(), &refused, false).await);
    for path in [
        "/v1/credentials",
        "/v1/credentials/reader",
        "/v1/credentials/audit",
    ] {
        assert_eq!(r.get(path).await.0, 200, "{path}");
    }
    for (req, now) in [
        (creds, true),
        (
            parts("HEAD", "/v1/credentials/", &[("authorization", AUTH)]),
            true,
        ),
        (
            parts("GET", "/v1/credentials/reader", &[("authorization", AUTH)]),
            true,
        ),
        (
            parts("GET", "/v1/credentials/audit/", &[("authorization", AUTH)]),
            true,
        ),
        (
            parts("GET", "/v1/credentials/nobody", &[("authorization", AUTH)]),
            true,
        ),
        (parts("GET", "/v1/credentials", &[]), true),
        (
            parts("POST", "/v1/credentials", &[("authorization", AUTH)]),
            true,
        ),
    ] {
        let what = format!("{} {}", req.method, req.uri);
        assert_eq!(
            answers_now_as_handle(container.as_ref(), &req, false).await,
            now,
            "{what}"
        );
    }
    let put = parts(
        "PUT",
        "/latest/api/token",
        &[("x-aws-ec2-metadata-token-ttl-seconds", "60")],
    );
    assert!(answers_now_as_handle(imds.as_ref(), &put, true).await);
    let session = imds.answer_now(&put).unwrap();
    let session = http_body_util::BodyExt::collect(session.into_body())
        .await
        .unwrap()
        .to_bytes();
    let session = std::str::from_utf8(&session).unwrap().to_string();
    let with =
        |method: &str, path: &str| parts(method, path, &[("x-aws-ec2-metadata-token", &session)]);
    for (req, now) in [
        (
            with("GET", "/latest/meta-data/iam/security-credentials/"),
            true,
        ),
        (
            with("GET", "/latest/meta-data/iam/security-credentials/app"),
            true,
        ),
        (
            with("GET", "//latest/meta-data/iam/security-credentials/reader"),
            true,
        ),
        (
            with("GET", "/latest/meta-data/iam/security-credentials/nobody"),
            true,
        ),
        (with("GET", "/latest/meta-data/placement/region"), true),
        (
            with("GET", "/latest/dynamic/instance-identity/document"),
            true,
        ),
        (
            with("POST", "/latest/meta-data/iam/security-credentials/app"),
            true,
        ),
        (with("GET", "/latest/meta-data/iam/info"), false),
        (
            parts("GET", "/latest/meta-data/iam/security-credentials/app", &[]),
            true,
        ),
        (parts("GET", "/latest/api/token", &[]), true),
    ] {
        let what = format!("{} {}", req.method, req.uri);
        assert_eq!(
            answers_now_as_handle(imds.as_ref(), &req, false).await,
            now,
            "{what}"
        );
    }
}

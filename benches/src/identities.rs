//! Several identities per pod over refresh cycles (issue 13's figures): the real binary holding
//! two AWS roles and a role chained from the default, two Azure managed identities and two Google
//! service accounts, against the emulated clouds with short credential lifetimes. From the
//! emulators' own logs:
//!
//! - upstream exchanges per identity per credential lifetime (a refresh cycle);
//! - for the chained role, which exchanges followed a new base session (re-derivation) and how
//!   long after STS issued that base session the chained `AssumeRole` reached STS;
//! - GCP: STS exchanges against impersonations (one federated token serves every account).

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use fakecloud::aws::DEMO_ROLE_ARN;
use fakecloud::sidecar::{
    AWS_CHAINED_EXTERNAL_ID, AWS_CHAINED_ROLE_ARN, AWS_READER_ROLE_ARN, AZURE_SECOND_CLIENT_ID,
    GCP_SECOND_SERVICE_ACCOUNT,
};
use serde::Serialize;

use crate::procs::{Proc, addr_of};
use crate::setup::{Clouds, sidecar_env};
use crate::stats::Spread;

#[derive(Debug, Clone)]
pub struct IdentitiesConfig {
    pub broker: std::path::PathBuf,
    /// Lifetime of every issued credential, seconds (the refresh cycle).
    pub lifetime: u64,
    /// How long the broker runs, seconds.
    pub seconds: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct IdentityCount {
    pub cloud: &'static str,
    pub identity: String,
    pub how: &'static str,
    pub exchanges: usize,
    pub per_cycle: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct IdentitiesReport {
    pub lifetime_s: u64,
    pub seconds: u64,
    pub cycles: f64,
    pub counts: Vec<IdentityCount>,
    /// Chained `AssumeRole` calls signed with a base session other than the one before (the
    /// chain following its base) and the others (its own refresh).
    pub chained_rederived: usize,
    pub chained_own_refresh: usize,
    /// Milliseconds from STS issuing a base session to the chained call signed with it.
    pub rederive_ms: Option<Spread>,
    /// Chained calls refused or failed (must be 0).
    pub chained_failed: usize,
    /// GCP: STS exchanges and impersonations.
    pub gcp_sts: usize,
    pub gcp_impersonations: usize,
}

pub async fn run(cfg: &IdentitiesConfig) -> Result<IdentitiesReport, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let scape =
        fakecloud::Cloudscape::start(fakecloud::CloudscapeOptions::new(dir.path().join("cloud")))
            .await
            .map_err(|e| format!("fakecloud: {e}"))?;
    let life = Duration::from_secs(cfg.lifetime);
    scape.sts.set_issued_lifetime(Some(life));
    scape.gcp.set_issued_lifetime(Some(life));
    scape.entra.set_token_lifetime(cfg.lifetime);
    let desc = scape.describe();
    let files = dir.path().join("files");
    std::fs::create_dir_all(&files).map_err(|e| e.to_string())?;
    let env = sidecar_env(&desc, Clouds::ALL, &files);
    let addr_file = dir.path().join("addrs");
    let mut cmd = Command::new(&cfg.broker);
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env)
        .args([
            "--log-level",
            "warn",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--ops-listen",
            "127.0.0.1:0",
        ])
        .arg("--addr-file")
        .arg(&addr_file)
        .arg("--aws-role")
        .arg(format!("reader={AWS_READER_ROLE_ARN}"))
        .arg("--aws-chained-role")
        .arg(format!("cross={AWS_CHAINED_ROLE_ARN}@default"))
        .arg("--aws-role-option")
        .arg(format!("cross:external-id={AWS_CHAINED_EXTERNAL_ID}"))
        .arg("--azure-identity")
        .arg(AZURE_SECOND_CLIENT_ID)
        .arg("--gcp-service-account")
        .arg(GCP_SECOND_SERVICE_ACCOUNT);
    let mut proc_ = Proc::spawn("credbroker", cmd, &dir.path().join("broker.log"))?;
    let addrs = proc_.wait_for_file(&addr_file, Duration::from_secs(30))?;
    addr_of(&addrs, "credentials").ok_or("no credentials= in --addr-file")?;
    tokio::time::sleep(Duration::from_secs(cfg.seconds)).await;
    proc_.alive()?;
    drop(proc_);

    let cycles = cfg.seconds as f64 / cfg.lifetime as f64;
    let mut counts = Vec::new();
    let mut count = |cloud, identity: &str, how, n: usize| {
        counts.push(IdentityCount {
            cloud,
            identity: identity.to_string(),
            how,
            exchanges: n,
            per_cycle: n as f64 / cycles,
        })
    };

    // AWS, from the fake STS's log.
    let sts = scape.sts.log();
    let issued_for = |action: &str, role: &str| {
        sts.iter()
            .filter(|r| r.action.as_deref() == Some(action) && r.role_arn.as_deref() == Some(role))
            .filter(|r| r.outcome == "issued")
            .count()
    };
    count(
        "aws",
        "default",
        "AssumeRoleWithWebIdentity",
        issued_for("AssumeRoleWithWebIdentity", DEMO_ROLE_ARN),
    );
    count(
        "aws",
        "reader",
        "AssumeRoleWithWebIdentity",
        issued_for("AssumeRoleWithWebIdentity", AWS_READER_ROLE_ARN),
    );
    count(
        "aws",
        "cross",
        "AssumeRole from default",
        issued_for("AssumeRole", AWS_CHAINED_ROLE_ARN),
    );
    // Each base session: when STS issued it.
    let base_issued: BTreeMap<String, f64> = sts
        .iter()
        .filter(|r| r.role_arn.as_deref() == Some(DEMO_ROLE_ARN))
        .filter_map(|r| {
            r.credentials
                .as_ref()
                .map(|c| (c.access_key_id.clone(), r.at))
        })
        .collect();
    let chained: Vec<_> = sts
        .iter()
        .filter(|r| r.action.as_deref() == Some("AssumeRole"))
        .collect();
    let chained_failed = chained.iter().filter(|r| r.outcome != "issued").count();
    let (mut rederived, mut own) = (0, 0);
    let mut rederive_ms = Vec::new();
    let mut last_signer: Option<&str> = None;
    for call in &chained {
        let signer = call.caller_access_key_id.as_deref();
        if last_signer.is_some() && signer != last_signer {
            rederived += 1;
            if let Some(at) = signer.and_then(|s| base_issued.get(s)) {
                rederive_ms.push((call.at - at) * 1000.0);
            }
        } else if last_signer.is_some() {
            own += 1;
        }
        last_signer = signer;
    }

    // Azure, from the fake Entra's log: one token per identity and scope.
    let entra = scape.entra.log();
    let default_client = desc["azure"]["client_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    for (name, client) in [
        ("default", default_client.as_str()),
        ("second", AZURE_SECOND_CLIENT_ID),
    ] {
        let n = entra
            .iter()
            .filter(|r| r.client_id.as_deref() == Some(client) && r.outcome == "issued")
            .count();
        count(
            "azure",
            name,
            "client assertion (per identity and resource)",
            n,
        );
    }

    // GCP, from the fake Google's log.
    let gcp = scape.gcp.log();
    let gcp_sts = gcp
        .iter()
        .filter(|r| r.api == "sts" && r.status == 200)
        .count();
    let gcp_impersonations = gcp
        .iter()
        .filter(|r| r.api == "generateAccessToken" && r.status == 200)
        .count();
    let default_sa = desc["gcp"]["service_account"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    for (name, email) in [
        ("default", default_sa.as_str()),
        ("second", GCP_SECOND_SERVICE_ACCOUNT),
    ] {
        let n = gcp
            .iter()
            .filter(|r| {
                r.api == "generateAccessToken"
                    && r.status == 200
                    && r.service_account.as_deref() == Some(email)
            })
            .count();
        count("gcp", name, "generateAccessToken", n);
    }
    count("gcp", "(shared)", "STS token exchange", gcp_sts);
    scape.shutdown().await;
    Ok(IdentitiesReport {
        lifetime_s: cfg.lifetime,
        seconds: cfg.seconds,
        cycles,
        counts,
        chained_rederived: rederived,
        chained_own_refresh: own,
        rederive_ms: Spread::of(&rederive_ms),
        chained_failed,
        gcp_sts,
        gcp_impersonations,
    })
}

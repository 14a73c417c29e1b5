//! No secret in any output: every cloud's scenario at `--log-level trace` (successes, refreshes,
//! rotations, upstream errors, a token file holding a secret-looking garbage value, refused
//! requests, dynamic keys, `credbroker check`), then every secret value that existed is
//! searched for in everything the broker printed and every error body it answered.
//! Also: the files holding secrets (the AWS auth token, OCI's rpst and private.pem) are 0600
//! (0640 with --group-readable-files).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::*;
use fakecloud::Cloudscape;
use fakecloud::faults::Fault;

/// Collects secrets from 200 bodies and every byte of error output.
#[derive(Default)]
struct Seen {
    secrets: Vec<String>,
    output: String,
}

impl Seen {
    fn secret(&mut self, s: impl Into<String>) {
        let s = s.into();
        if s.len() >= 16 && !self.secrets.contains(&s) {
            self.secrets.push(s);
        }
    }

    /// Takes the credentials from a 200, or the body of anything else as output to search.
    fn reply(&mut self, r: &Reply) {
        if r.status == 200 {
            if let Ok(doc) = serde_json::from_str::<serde_json::Value>(&r.body) {
                for key in ["SecretAccessKey", "Token", "access_token"] {
                    if let Some(v) = doc[key].as_str() {
                        self.secret(v);
                    }
                }
            } else if r.body.split('.').count() == 3 {
                self.secret(r.body.trim()); // an ID token
            }
        } else {
            self.output.push_str(&r.body);
            self.output.push('\n');
        }
    }

    fn tokens(&mut self, scape: &Cloudscape) {
        for t in [
            &scape.aws_token,
            &scape.gcp_token,
            &scape.azure_token,
            &scape.oci_token,
        ] {
            self.secret(t.current());
        }
    }

    /// OCI's surface is files: the RPST, and every base64 line of the private key.
    fn oci_files(&mut self, broker: &Broker) {
        let dir = broker.dir.join("oci");
        if let Ok(rpst) = std::fs::read_to_string(dir.join("rpst")) {
            self.secret(rpst);
        }
        let pem = std::fs::read_to_string(dir.join("private.pem")).unwrap_or_default();
        for line in pem
            .lines()
            .filter(|l| !l.starts_with("-----") && l.len() >= 40)
        {
            self.secret(line);
        }
    }
}

/// Every cloud's further identities, as `fakecloud`'s sidecar seeds them.
fn identity_args() -> Vec<&'static str> {
    use fakecloud::sidecar::*;
    static ARGS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    ARGS.get_or_init(|| {
        vec![
            "--aws-role".into(),
            format!("reader={AWS_READER_ROLE_ARN}"),
            "--aws-chained-role".into(),
            format!("cross={AWS_CHAINED_ROLE_ARN}@default"),
            "--aws-role-option".into(),
            format!("cross:external-id={AWS_CHAINED_EXTERNAL_ID}"),
            "--aws-role-option".into(),
            "cross:tag=team=payments".into(),
            "--azure-identity".into(),
            AZURE_SECOND_CLIENT_ID.into(),
            "--gcp-service-account".into(),
            GCP_SECOND_SERVICE_ACCOUNT.into(),
        ]
    })
    .iter()
    .map(String::as_str)
    .collect()
}

async fn exercise(broker: &Broker, seen: &mut Seen) {
    let a = broker.creds;
    let auth = broker.auth_token();
    let session = broker.imds_session().await;
    seen.secret(session.clone());
    let imds = [("X-aws-ec2-metadata-token", session.as_str())];
    let flavor = [("Metadata-Flavor", "Google")];
    let second_sa = fakecloud::sidecar::GCP_SECOND_SERVICE_ACCOUNT;
    let gcp_second_token =
        format!("/computeMetadata/v1/instance/service-accounts/{second_sa}/token");
    let gcp_second_identity = format!(
        "/computeMetadata/v1/instance/service-accounts/{second_sa}/identity?audience=https://secrets.test"
    );
    let second_client = fakecloud::sidecar::AZURE_SECOND_CLIENT_ID;
    let azure_second_imds = format!(
        "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://vault.azure.net&client_id={second_client}"
    );
    let azure_second_app_service = format!(
        "/msi/token?api-version=2019-08-01&resource=https://storage.azure.com/&client_id={second_client}"
    );
    let requests: Vec<(&str, Vec<(&str, &str)>)> = vec![
        ("/v1/credentials", vec![("Authorization", auth.as_str())]),
        ("/v1/credentials", vec![("Authorization", "wrong")]),
        ("/v1/credentials", vec![]),
        (
            "/latest/meta-data/iam/security-credentials/credbroker-demo",
            imds.to_vec(),
        ),
        ("/latest/meta-data/iam/info", imds.to_vec()),
        (
            "/latest/meta-data/iam/security-credentials/credbroker-demo",
            vec![("X-aws-ec2-metadata-token", "forged")],
        ),
        (
            "/computeMetadata/v1/instance/service-accounts/default/token",
            flavor.to_vec(),
        ),
        (
            "/computeMetadata/v1/instance/service-accounts/default/token?scopes=https://www.googleapis.com/auth/devstorage.read_only",
            flavor.to_vec(),
        ),
        (
            "/computeMetadata/v1/instance/service-accounts/default/identity?audience=https://secrets.test&format=full",
            flavor.to_vec(),
        ),
        (
            "/computeMetadata/v1/instance/service-accounts/default/identity?audience=https://secrets.test",
            flavor.to_vec(),
        ),
        (
            "/computeMetadata/v1/instance/service-accounts/default/?recursive=true",
            flavor.to_vec(),
        ),
        (
            "/computeMetadata/v1/instance/service-accounts/default/token",
            vec![],
        ),
        (
            "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://management.azure.com/",
            vec![("Metadata", "true")],
        ),
        (
            "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://vault.azure.net",
            vec![("Metadata", "true")],
        ),
        (
            "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://vault.azure.net",
            vec![],
        ),
        (
            "/msi/token?api-version=2019-08-01&resource=https://storage.azure.com/",
            vec![("X-IDENTITY-HEADER", AZURE_IDENTITY_HEADER)],
        ),
        (
            "/msi/token?api-version=2019-08-01&resource=https://storage.azure.com/",
            vec![(
                "X-IDENTITY-HEADER",
                "itest-identity-header-wrong-wrong-wrong",
            )],
        ),
        (
            "/v1/credentials",
            vec![
                ("Authorization", auth.as_str()),
                ("X-Forwarded-For", "10.1.1.1"),
            ],
        ),
        // The other identities (several identities per pod): named, chained, unknown.
        (
            "/v1/credentials/reader",
            vec![("Authorization", auth.as_str())],
        ),
        (
            "/v1/credentials/cross",
            vec![("Authorization", auth.as_str())],
        ),
        (
            "/v1/credentials/nobody",
            vec![("Authorization", auth.as_str())],
        ),
        ("/v1/credentials/cross", vec![("Authorization", "wrong")]),
        (
            "/latest/meta-data/iam/security-credentials/cross",
            imds.to_vec(),
        ),
        (
            "/latest/meta-data/iam/security-credentials/reader",
            imds.to_vec(),
        ),
        (&gcp_second_token, flavor.to_vec()),
        (&gcp_second_identity, flavor.to_vec()),
        (
            "/computeMetadata/v1/instance/service-accounts/nobody@x.iam.gserviceaccount.com/token",
            flavor.to_vec(),
        ),
        (&azure_second_imds, vec![("Metadata", "true")]),
        (
            &azure_second_app_service,
            vec![("X-IDENTITY-HEADER", AZURE_IDENTITY_HEADER)],
        ),
        (
            "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://vault.azure.net&client_id=00000000-0000-0000-0000-000000000000",
            vec![("Metadata", "true")],
        ),
    ];
    for (path, headers) in &requests {
        let r = get(a, path, headers).await;
        seen.reply(&r);
    }
    for path in [
        "/readyz",
        "/readyz/aws",
        "/readyz/gcp",
        "/readyz/azure",
        "/metrics",
    ] {
        let r = get(broker.ops, path, &[]).await;
        seen.output.push_str(&r.body);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_in_any_output_at_trace_level() {
    let dir = tempfile::tempdir().unwrap();
    let scape = cloudscape(dir.path()).await;
    // Short lifetimes: several refreshes during the test.
    scape.sts.set_issued_lifetime(Some(Duration::from_secs(12)));
    scape.gcp.set_issued_lifetime(Some(Duration::from_secs(12)));
    scape.entra.set_token_lifetime(12);
    scape.proxymux.set_rpst_lifetime(Duration::from_secs(12));
    let mut seen = Seen::default();
    seen.tokens(&scape);
    let env = all_clouds(&scape);
    let broker =
        Broker::start_at_level(&dir.path().join("b"), &env, &identity_args(), "trace").await;
    broker.wait_ready().await;
    seen.secret(broker.auth_token());
    seen.secret(AZURE_IDENTITY_HEADER);
    seen.oci_files(&broker);
    assert!(seen.secrets.len() >= 30, "the OCI key was not found");

    // Healthy, then rotated, then failing upstream (transient and permanent), then a token
    // file holding a secret-looking non-JWT, then healthy again.
    exercise(&broker, &mut seen).await;
    scape.rotate_tokens().unwrap();
    seen.tokens(&scape);
    tokio::time::sleep(Duration::from_secs(7)).await;
    exercise(&broker, &mut seen).await;
    seen.oci_files(&broker);
    for faults in [
        scape.sts.faults(),
        scape.gcp.faults(),
        scape.entra.faults(),
        scape.proxymux.faults(),
    ] {
        faults.set(Fault::Status {
            status: 503,
            count: Some(1),
            retry_after: None,
        });
        faults.set(Fault::Garbage { count: Some(1) });
    }
    scape.sts.faults().set(Fault::Error {
        code: "AccessDenied".into(),
        count: Some(1),
    });
    let marker = "credbroker-secret-marker-do-not-log-0123456789";
    for t in [
        &scape.aws_token,
        &scape.gcp_token,
        &scape.azure_token,
        &scape.oci_token,
    ] {
        t.write_raw(marker.as_bytes()).unwrap();
    }
    seen.secret(marker);
    tokio::time::sleep(Duration::from_secs(8)).await;
    exercise(&broker, &mut seen).await;
    scape.rotate_tokens().unwrap();
    seen.tokens(&scape);
    for faults in [
        scape.sts.faults(),
        scape.gcp.faults(),
        scape.entra.faults(),
        scape.proxymux.faults(),
    ] {
        faults.clear();
    }
    broker.wait_ready().await;
    exercise(&broker, &mut seen).await;
    seen.oci_files(&broker);

    // `credbroker check` at trace, with the same configuration.
    let check_dir = dir.path().join("check");
    let out = std::process::Command::new(BIN)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().cloned())
        .args(["--log-level", "trace", "check", "--aws-auth-token-file"])
        .arg(broker.dir.join("aws-auth-token"))
        .arg("--oci-output-dir")
        .arg(&check_dir)
        .output()
        .unwrap();
    let check = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{check}");
    if let Ok(rpst) = std::fs::read_to_string(check_dir.join("rpst")) {
        seen.secret(rpst);
    }
    for cloud in ["aws: ok", "gcp: ok", "azure: ok", "oci: ok"] {
        assert!(check.contains(cloud), "{check}");
    }

    // Everything upstream ever issued, as the fakes recorded it.
    for r in scape.sts.log() {
        if let Some(c) = r.credentials {
            seen.secret(c.secret_access_key);
            seen.secret(c.session_token);
        }
    }
    for r in scape.gcp.log() {
        if let Some(t) = r.token {
            seen.secret(t);
        }
    }
    for r in scape.entra.log() {
        if let Some(t) = r.access_token {
            seen.secret(t);
        }
    }

    let mut broker = broker;
    assert_eq!(broker.terminate(), Some(0));
    let stdout = std::fs::read_to_string(broker.dir.join("broker.out")).unwrap_or_default();
    let logs = broker.logs();
    assert!(
        logs.contains("TRACE") || logs.contains("DEBUG"),
        "not verbose"
    );
    assert!(
        logs.contains("is not a JWT"),
        "the bad token file was not reported"
    );
    let all = format!("{logs}\n{stdout}\n{check}\n{}", seen.output);
    let mut hits = Vec::new();
    for s in &seen.secrets {
        // The whole value, and its last 20 characters (a token's signature, a key's random
        // tail): a secret cut short is still a leak.
        let tail = &s[s.len() - 20..];
        if all.contains(s.as_str()) || all.contains(tail) {
            hits.push(format!("{}…", &s[..8.min(s.len())]));
        }
    }
    eprintln!(
        "searched {} bytes of output ({} log lines) for {} secret values: {} hits",
        all.len(),
        logs.lines().count(),
        seen.secrets.len(),
        hits.len()
    );
    assert!(
        seen.secrets.len() >= 20,
        "too few secrets collected: {}",
        seen.secrets.len()
    );
    assert!(hits.is_empty(), "secrets found in output: {hits:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_holding_secrets_are_private() {
    let dir = tempfile::tempdir().unwrap();
    let scape = cloudscape(dir.path()).await;
    for (sub, extra, mode) in [
        ("private", &[][..], 0o600),
        ("group", &["--group-readable-files"][..], 0o640),
    ] {
        let env = sidecar(&scape, &["aws", "oci"]);
        let broker = Broker::start(&dir.path().join(sub), &env, extra).await;
        broker.wait_ready().await;
        for file in ["aws-auth-token", "oci/rpst", "oci/private.pem"] {
            let meta = std::fs::metadata(broker.dir.join(file)).unwrap();
            assert_eq!(meta.permissions().mode() & 0o777, mode, "{sub}: {file}");
        }
    }
}

//! The command line: configuration errors, `env`, `check`, `demo`.

mod common;

use std::process::Command;

use common::*;
use fakecloud::faults::Fault;

fn run(env: &[(String, String)], args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .env_clear()
        .envs(env.iter().cloned())
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// (sidecar environment, arguments, the text the one error line must contain)
type Case<'a> = (Vec<(String, String)>, Vec<&'a str>, &'a str);

fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
    p.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn configuration_errors_exit_2_naming_the_variable() {
    let cases: Vec<Case> = vec![
        (vec![], vec!["serve"], "no cloud is enabled"),
        (
            pairs(&[("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/r")]),
            vec!["serve"],
            "AWS_WEB_IDENTITY_TOKEN_FILE: is not set",
        ),
        (
            pairs(&[
                ("AWS_ROLE_ARN", "not-an-arn"),
                ("AWS_WEB_IDENTITY_TOKEN_FILE", "/x"),
            ]),
            vec!["serve", "--aws-auth-token-file", "/tmp/x"],
            "AWS_ROLE_ARN",
        ),
        (
            pairs(&[
                ("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/r"),
                ("AWS_WEB_IDENTITY_TOKEN_FILE", "/nonexistent/token"),
            ]),
            vec![
                "serve",
                "--aws-auth-token-file",
                "/tmp/credbroker-cli-test-token",
            ],
            "AWS_WEB_IDENTITY_TOKEN_FILE: token file /nonexistent/token: cannot be read",
        ),
        (
            pairs(&[
                ("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/r"),
                ("AWS_WEB_IDENTITY_TOKEN_FILE", "/x"),
                ("AWS_ENDPOINT_URL_STS", "http://sts.example.com"),
            ]),
            vec!["serve", "--aws-auth-token-file", "/tmp/x"],
            "AWS_ENDPOINT_URL_STS",
        ),
        (
            pairs(&[
                ("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/r"),
                ("AWS_WEB_IDENTITY_TOKEN_FILE", "/x"),
            ]),
            vec![
                "serve",
                "--aws-auth-token-file",
                "/tmp/x",
                "--listen",
                "0.0.0.0:8189",
            ],
            "--listen",
        ),
        (
            pairs(&[
                ("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/r"),
                ("AWS_WEB_IDENTITY_TOKEN_FILE", "/x"),
                ("CREDBROKER_UPSTREAM_CA_FILE", "/nonexistent.pem"),
            ]),
            vec!["serve", "--aws-auth-token-file", "/tmp/x"],
            "--upstream-ca-file",
        ),
    ];
    for (env, args, expected) in cases {
        let (code, _out, err) = run(&env, &args);
        assert_eq!(code, 2, "{args:?}: {err}");
        let lines: Vec<&str> = err
            .lines()
            .filter(|l| l.starts_with("credbroker:"))
            .collect();
        assert_eq!(lines.len(), 1, "{err}");
        assert!(
            lines[0].contains(expected),
            "{:?} lacks {expected:?}",
            lines[0]
        );
    }
    // Unknown flags are clap's exit 2 as well.
    assert_eq!(run(&[], &["serve", "--no-such-flag"]).0, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_prints_the_app_environment_and_the_forbidden_variables() {
    let dir = tempfile::tempdir().unwrap();
    let scape = cloudscape(dir.path()).await;
    let auth = dir.path().join("auth");
    let env = sidecar(&scape, &["aws"]);
    let (code, out, err) = run(
        &env,
        &[
            "env",
            "--listen",
            "127.0.0.1:9999",
            "--aws-auth-token-file",
            auth.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(
            "export AWS_CONTAINER_CREDENTIALS_FULL_URI=http://127.0.0.1:9999/v1/credentials\n"
        ),
        "{out}"
    );
    assert!(out.contains(&format!(
        "export AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE={}\n",
        auth.display()
    )));
    assert!(out.contains("export AWS_EC2_METADATA_SERVICE_ENDPOINT=http://127.0.0.1:9999\n"));
    assert!(out.contains("export AWS_METADATA_ENDPOINT=http://127.0.0.1:9999\n"));
    assert!(out.contains("export AWS_REGION=us-east-1\n"));
    let forbidden = out.lines().find(|l| l.contains("must NOT be set")).unwrap();
    assert!(
        forbidden.contains("AWS_ROLE_ARN") && forbidden.contains("AWS_WEB_IDENTITY_TOKEN_FILE")
    );
    assert!(!out.lines().any(|l| l.starts_with("export AWS_ROLE_ARN")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_summarises_and_fails_on_denial() {
    let dir = tempfile::tempdir().unwrap();
    let scape = cloudscape(dir.path()).await;
    let mut env = sidecar(&scape, &["aws"]);
    env.push(("AWS_ROLE_SESSION_NAME".into(), "itest".into()));
    let auth = dir.path().join("auth");
    let args: Vec<String> = vec![
        "check".into(),
        "--aws-auth-token-file".into(),
        auth.display().to_string(),
    ];
    let (code, out, err) = tokio::task::spawn_blocking({
        let (env, args) = (env.clone(), args.clone());
        move || run(&env, &args.iter().map(String::as_str).collect::<Vec<_>>())
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{out}{err}");
    let issued = scape.sts.log().last().unwrap().credentials.clone().unwrap();
    assert!(
        out.starts_with(
            "aws: ok: assumed arn:aws:sts::123456789012:assumed-role/credbroker-demo/itest"
        ),
        "{out}"
    );
    assert!(
        !out.contains(&issued.access_key_id),
        "full access key printed"
    );
    assert!(!out.contains(&issued.secret_access_key) && !out.contains(&issued.session_token));

    scape.sts.faults().set(Fault::Error {
        code: "AccessDenied".into(),
        count: None,
    });
    let (code, out, _) = tokio::task::spawn_blocking(move || {
        run(&env, &args.iter().map(String::as_str).collect::<Vec<_>>())
    })
    .await
    .unwrap();
    assert_eq!(code, 1);
    assert!(
        out.contains("aws: FAILED") && out.contains("AccessDenied"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_runs_on_its_embedded_default_and_serves() {
    let dir = tempfile::tempdir().unwrap();
    let child = Command::new(BIN)
        .args([
            "demo",
            "--listen",
            "127.0.0.1:0",
            "--ops-listen",
            "127.0.0.1:0",
            "--exit-after",
            "4",
        ])
        .arg("--state-dir")
        .arg(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    // The banner names the ports actually bound, not :0.
    let uri = stdout
        .lines()
        .find_map(|l| l.strip_prefix("export AWS_CONTAINER_CREDENTIALS_FULL_URI="))
        .expect(&stdout);
    assert!(
        uri.starts_with("http://127.0.0.1:") && !uri.starts_with("http://127.0.0.1:0/"),
        "{uri}"
    );
    assert!(dir.path().join("aws-auth-token").exists());
    assert!(dir.path().join("cloud").exists() || dir.path().join("tokens").exists());
}

//! Shared harness for integration tests: the emulated clouds in-process, the real binary as a
//! child process (as in a pod), and a raw HTTP/1.1 client that sends exactly the bytes we say.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use fakecloud::{Cloudscape, CloudscapeOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const BIN: &str = env!("CARGO_BIN_EXE_credbroker");

pub async fn cloudscape(dir: &Path) -> Cloudscape {
    Cloudscape::start(CloudscapeOptions::new(dir.join("cloud")))
        .await
        .expect("start emulated clouds")
}

/// The sidecar's environment for AWS, as the EKS webhook would inject it.
pub fn aws_env(scape: &Cloudscape) -> Vec<(String, String)> {
    vec![
        ("AWS_ROLE_ARN".into(), fakecloud::aws::DEMO_ROLE_ARN.into()),
        (
            "AWS_WEB_IDENTITY_TOKEN_FILE".into(),
            scape.aws_token.path().display().to_string(),
        ),
        ("AWS_ENDPOINT_URL_STS".into(), scape.sts.url()),
        ("AWS_REGION".into(), "us-east-1".into()),
        ("AWS_ROLE_SESSION_NAME".into(), "itest".into()),
    ]
}

/// The sidecar's environment for GCP: the `external_account` file (impersonating the demo
/// service account) and the project.
pub fn gcp_env(scape: &Cloudscape) -> Vec<(String, String)> {
    vec![
        (
            "GOOGLE_APPLICATION_CREDENTIALS".into(),
            scape.gcp_credentials.display().to_string(),
        ),
        (
            "GOOGLE_CLOUD_PROJECT".into(),
            fakecloud::gcp::DEMO_PROJECT_ID.into(),
        ),
    ]
}

/// The App Service shared header the Azure tests start the broker with.
pub const AZURE_IDENTITY_HEADER: &str = "itest-identity-header-0123456789abcdef";

/// The sidecar's environment for Azure, as the workload identity webhook would inject it, plus
/// the App Service shared header.
pub fn azure_env(scape: &Cloudscape) -> Vec<(String, String)> {
    vec![
        (
            "AZURE_CLIENT_ID".into(),
            fakecloud::azure::DEMO_CLIENT_ID.into(),
        ),
        (
            "AZURE_TENANT_ID".into(),
            fakecloud::azure::DEMO_TENANT_ID.into(),
        ),
        (
            "AZURE_FEDERATED_TOKEN_FILE".into(),
            scape.azure_token.path().display().to_string(),
        ),
        (
            "AZURE_AUTHORITY_HOST".into(),
            format!("{}/", scape.entra.url()),
        ),
        (
            "CREDBROKER_AZURE_IDENTITY_HEADER".into(),
            AZURE_IDENTITY_HEADER.into(),
        ),
    ]
}

/// The sidecar's environment for OCI: kubelet's service variables pointing at the fake
/// proxymux, the cluster CA, the region and the projected token. [`Broker::start`] adds
/// `--oci-output-dir DIR/oci` when OCI is enabled.
pub fn oci_env(scape: &Cloudscape) -> Vec<(String, String)> {
    vec![
        (
            "OCI_RESOURCE_PRINCIPAL_REGION".into(),
            fakecloud::oci::DEFAULT_REGION.into(),
        ),
        (
            "KUBERNETES_SERVICE_HOST".into(),
            scape.proxymux.host().to_string(),
        ),
        (
            "KUBERNETES_SERVICE_PORT_PROXYMUX".into(),
            scape.proxymux.port().to_string(),
        ),
        (
            "OCI_KUBERNETES_SERVICE_ACCOUNT_CERT_PATH".into(),
            scape.oci_ca_path.display().to_string(),
        ),
        (
            "CREDBROKER_OCI_TOKEN_FILE".into(),
            scape.oci_token.path().display().to_string(),
        ),
    ]
}

/// Every cloud the emulated cloudscape offers, enabled together.
pub fn all_env(scape: &Cloudscape) -> Vec<(String, String)> {
    let mut env = aws_env(scape);
    env.extend(gcp_env(scape));
    env.extend(azure_env(scape));
    env.extend(oci_env(scape));
    env
}

pub struct Broker {
    pub child: Child,
    pub creds: SocketAddr,
    pub ops: SocketAddr,
    pub dir: PathBuf,
    pub log: PathBuf,
}

impl Broker {
    /// Starts `credbroker serve` on ephemeral loopback ports and waits for it to bind.
    pub async fn start(dir: &Path, env: &[(String, String)], extra: &[&str]) -> Broker {
        Self::start_at_level(dir, env, extra, "debug").await
    }

    /// [`Broker::start`] with a given `--log-level`.
    pub async fn start_at_level(
        dir: &Path,
        env: &[(String, String)],
        extra: &[&str],
        level: &str,
    ) -> Broker {
        std::fs::create_dir_all(dir).unwrap();
        let addr_file = dir.join("addrs");
        let _ = std::fs::remove_file(&addr_file);
        let log = dir.join("broker.log");
        let mut cmd = Command::new(BIN);
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(env.iter().cloned())
            .args([
                "--log-level",
                level,
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--ops-listen",
                "127.0.0.1:0",
            ])
            .arg("--addr-file")
            .arg(&addr_file)
            .arg("--aws-auth-token-file")
            .arg(dir.join("aws-auth-token"))
            .args(extra)
            .stdout(std::fs::File::create(dir.join("broker.out")).unwrap())
            .stderr(std::fs::File::create(&log).unwrap());
        if env
            .iter()
            .any(|(k, _)| k == "OCI_RESOURCE_PRINCIPAL_REGION")
        {
            cmd.arg("--oci-output-dir").arg(dir.join("oci"));
        }
        let mut child = cmd.spawn().expect("spawn credbroker");
        let deadline = Instant::now() + Duration::from_secs(15);
        let addrs = loop {
            if let Ok(text) = std::fs::read_to_string(&addr_file) {
                let map: HashMap<&str, &str> =
                    text.lines().filter_map(|l| l.split_once('=')).collect();
                break (
                    map["credentials"].parse().unwrap(),
                    map["ops"].parse().unwrap(),
                );
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "broker exited {status}: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            assert!(Instant::now() < deadline, "broker did not bind");
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        Broker {
            child,
            creds: addrs.0,
            ops: addrs.1,
            dir: dir.to_path_buf(),
            log,
        }
    }

    pub async fn wait_ready(&self) {
        wait_until(Duration::from_secs(15), || async {
            get(self.ops, "/readyz", &[]).await.status == 200
        })
        .await;
    }

    pub fn auth_token(&self) -> String {
        std::fs::read_to_string(self.dir.join("aws-auth-token")).unwrap()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// An IMDSv2 session token.
    pub async fn imds_session(&self) -> String {
        let r = request(
            self.creds,
            "PUT",
            "/latest/api/token",
            &[("X-aws-ec2-metadata-token-ttl-seconds", "21600")],
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.body);
        r.body
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: HashMap<String, String>,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }
}

/// Sends raw bytes, reads the whole response (the request must ask for `Connection: close`).
pub async fn raw(addr: SocketAddr, request: &[u8]) -> Reply {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    parse(&buf)
}

pub fn parse(buf: &[u8]) -> Reply {
    let text = String::from_utf8_lossy(buf);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Reply {
        status,
        headers,
        body: body.to_string(),
    }
}

pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Reply {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    raw(addr, req.as_bytes()).await
}

pub async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Reply {
    request(addr, "GET", path, headers).await
}

pub async fn wait_until<F, Fut>(timeout: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !f().await {
        assert!(
            Instant::now() < deadline,
            "condition not reached within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

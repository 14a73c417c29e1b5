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

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_credbroker");

pub(crate) async fn cloudscape(dir: &Path) -> Cloudscape {
    Cloudscape::start(CloudscapeOptions::new(dir.join("cloud")))
        .await
        .expect("start emulated clouds")
}

/// Stands for the broker's own directory in a [`sidecar`] environment; [`Broker::start`]
/// replaces it (the AWS `Authorization` file and OCI's files are written there).
pub(crate) const FILES: &str = "{files}";

/// The sidecar's environment for `clouds` (registry names: `aws`, `gcp`, `azure`, `oci`), as
/// the clouds' webhooks would inject it against the emulated clouds, with credbroker's settings.
pub(crate) fn sidecar(scape: &Cloudscape, clouds: &[&str]) -> Vec<(String, String)> {
    scape
        .sidecar(clouds, Path::new(FILES))
        .expect("clouds the emulators know")
}

/// Every cloud the emulated cloudscape offers, enabled together.
pub(crate) fn all_clouds(scape: &Cloudscape) -> Vec<(String, String)> {
    sidecar(scape, &fakecloud::sidecar::CLOUDS)
}

/// The App Service shared header the sidecar environment sets.
pub(crate) const AZURE_IDENTITY_HEADER: &str = fakecloud::sidecar::AZURE_IDENTITY_HEADER;

pub(crate) struct Broker {
    pub child: Child,
    pub creds: SocketAddr,
    pub ops: SocketAddr,
    pub dir: PathBuf,
    pub log: PathBuf,
}

impl Broker {
    /// Starts `credbroker serve` on ephemeral loopback ports and waits for it to bind.
    pub(crate) async fn start(dir: &Path, env: &[(String, String)], extra: &[&str]) -> Broker {
        Self::start_at_level(dir, env, extra, "debug").await
    }

    /// [`Broker::start`] with a given `--log-level`.
    pub(crate) async fn start_at_level(
        dir: &Path,
        env: &[(String, String)],
        extra: &[&str],
        level: &str,
    ) -> Broker {
        std::fs::create_dir_all(dir).unwrap();
        let addr_file = dir.join("addrs");
        let _ = std::fs::remove_file(&addr_file);
        let log = dir.join("broker.log");
        let files = dir.display().to_string();
        let mut cmd = Command::new(BIN);
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(env.iter().map(|(k, v)| (k, v.replace(FILES, &files))))
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
            .args(extra)
            .stdout(std::fs::File::create(dir.join("broker.out")).unwrap())
            .stderr(std::fs::File::create(&log).unwrap());
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

    pub(crate) async fn wait_ready(&self) {
        wait_until(Duration::from_secs(15), || async {
            get(self.ops, "/readyz", &[]).await.status == 200
        })
        .await;
    }

    pub(crate) fn auth_token(&self) -> String {
        std::fs::read_to_string(self.dir.join("aws-auth-token")).unwrap()
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// An IMDSv2 session token.
    pub(crate) async fn imds_session(&self) -> String {
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

    pub(crate) fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then the exit code.
    pub(crate) fn terminate(&mut self) -> Option<i32> {
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
pub(crate) struct Reply {
    pub status: u16,
    pub headers: HashMap<String, String>,
    pub body: String,
}

impl Reply {
    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }
}

/// Sends raw bytes, reads the whole response (the request must ask for `Connection: close`).
pub(crate) async fn raw(addr: SocketAddr, request: &[u8]) -> Reply {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    parse(&buf)
}

pub(crate) fn parse(buf: &[u8]) -> Reply {
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

pub(crate) async fn request(
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

pub(crate) async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Reply {
    request(addr, "GET", path, headers).await
}

pub(crate) async fn wait_until<F, Fut>(timeout: Duration, mut f: F)
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

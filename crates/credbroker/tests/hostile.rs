//! Hostile input on the credential listener, against the binary with every cloud enabled:
//! missing and wrong metadata headers, proxy headers, foreign Host names (DNS rebinding),
//! absolute-form targets, path traversal, wrong methods, huge heads, malformed requests,
//! pipelining, slow clients, idle keep-alive connections, a flood of connections beyond the cap,
//! and SIGTERM with a slow request in flight. Each refusal must be in its cloud's own shape; the
//! process must neither panic nor grow without bound.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use fakecloud::Cloudscape;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How a surface renders errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// `{"Code":…,"Message":…}` as `application/json` (container credentials).
    AwsJson,
    /// Plain text (IMDS).
    AwsText,
    /// Plain text as `application/text`, with `Metadata-Flavor: Google` on every answer.
    Gcp,
    /// `{"error":…,"error_description":…}` as `application/json`.
    Azure,
}

/// One credential-serving route and the statuses its cloud answers with.
struct Route {
    name: &'static str,
    target: String,
    /// The metadata header that authorises the request.
    auth: (&'static str, String),
    wrong: &'static str,
    shape: Shape,
    missing_status: u16,
    wrong_status: u16,
    /// Proxied request or foreign Host.
    refusal_status: u16,
}

fn routes(broker: &Broker, imds_session: &str) -> Vec<Route> {
    vec![
        Route {
            name: "aws-container",
            target: "/v1/credentials".into(),
            auth: ("Authorization", broker.auth_token()),
            wrong: "not-the-token",
            shape: Shape::AwsJson,
            missing_status: 401,
            wrong_status: 403,
            refusal_status: 403,
        },
        Route {
            name: "aws-imds",
            target: "/latest/meta-data/iam/security-credentials/credbroker-demo".into(),
            auth: ("X-aws-ec2-metadata-token", imds_session.to_string()),
            wrong: "1.forged.token",
            shape: Shape::AwsText,
            missing_status: 401,
            wrong_status: 401,
            refusal_status: 403,
        },
        Route {
            name: "gcp-metadata",
            target: "/computeMetadata/v1/instance/service-accounts/default/token".into(),
            auth: ("Metadata-Flavor", "Google".into()),
            wrong: "google",
            shape: Shape::Gcp,
            missing_status: 403,
            wrong_status: 403,
            refusal_status: 403,
        },
        Route {
            name: "azure-imds",
            target: "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://management.azure.com/".into(),
            auth: ("Metadata", "true".into()),
            wrong: "false",
            shape: Shape::Azure,
            missing_status: 400,
            wrong_status: 400,
            refusal_status: 400,
        },
        Route {
            name: "azure-app-service",
            target: "/msi/token?api-version=2019-08-01&resource=https://management.azure.com/".into(),
            auth: ("X-IDENTITY-HEADER", AZURE_IDENTITY_HEADER.into()),
            wrong: "itest-identity-header-0123456789abcdeX",
            shape: Shape::Azure,
            missing_status: 400,
            wrong_status: 401,
            refusal_status: 400,
        },
    ]
}

/// Checks an error answer's shape; `what` names the case in failure messages.
fn assert_shape(shape: Shape, r: &Reply, what: &str) {
    match shape {
        Shape::AwsJson => {
            assert_eq!(r.header("content-type"), Some("application/json"), "{what}");
            let doc = r.json();
            assert!(
                doc["Code"].is_string() && doc["Message"].is_string(),
                "{what}: {doc}"
            );
        }
        Shape::AwsText => {
            assert!(
                r.header("content-type")
                    .is_some_and(|c| c.starts_with("text/plain")),
                "{what}: {:?}",
                r.headers
            );
            assert!(!r.body.is_empty(), "{what}");
        }
        Shape::Gcp => {
            assert_eq!(r.header("metadata-flavor"), Some("Google"), "{what}");
            assert_eq!(r.header("content-type"), Some("application/text"), "{what}");
        }
        Shape::Azure => {
            assert!(
                r.header("content-type")
                    .is_some_and(|c| c.starts_with("application/json")),
                "{what}"
            );
            let doc = r.json();
            assert!(
                doc["error"].is_string() && doc["error_description"].is_string(),
                "{what}: {doc}"
            );
        }
    }
}

/// Sends one request with exactly these headers (`host: None` sends no Host at all).
async fn send(
    addr: SocketAddr,
    method: &str,
    target: &str,
    host: Option<&str>,
    headers: &[(&str, &str)],
) -> Reply {
    let mut req = format!("{method} {target} HTTP/1.1\r\nConnection: close\r\n");
    if let Some(h) = host {
        req.push_str(&format!("Host: {h}\r\n"));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    raw(addr, req.as_bytes()).await
}

/// Every secret a 200 carried, to check no refusal leaks one.
fn secrets_in(body: &str) -> Vec<String> {
    let Ok(doc) = serde_json::from_str::<serde_json::Value>(body) else {
        return Vec::new();
    };
    ["SecretAccessKey", "Token", "access_token"]
        .iter()
        .filter_map(|k| doc[*k].as_str().map(str::to_string))
        .collect()
}

async fn ready_broker(dir: &std::path::Path, scape: &Cloudscape, extra: &[&str]) -> Broker {
    let broker = Broker::start(&dir.join("b"), &all_clouds(scape), extra).await;
    broker.wait_ready().await;
    broker
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_in_each_clouds_shape() {
    let dir = tempfile::tempdir().unwrap();
    let scape = cloudscape(dir.path()).await;
    let broker = ready_broker(dir.path(), &scape, &[]).await;
    let a = broker.creds;
    let host = a.to_string();
    let session = broker.imds_session().await;
    let mut secrets = Vec::new();
    let mut cases = 0;

    for route in routes(&broker, &session) {
        let (auth_name, auth_value) = (route.auth.0, route.auth.1.as_str());
        let good = send(
            a,
            "GET",
            &route.target,
            Some(&host),
            &[(auth_name, auth_value)],
        )
        .await;
        assert_eq!(good.status, 200, "{}: {}", route.name, good.body);
        secrets.extend(secrets_in(&good.body));

        let mut expect = |r: Reply, status: u16, what: String| {
            assert_eq!(r.status, status, "{}: {what}: {}", route.name, r.body);
            assert_shape(route.shape, &r, &format!("{}: {what}", route.name));
            cases += 1;
            r
        };
        // The metadata header: missing, wrong, or in the wrong case where the value matters.
        let r = send(a, "GET", &route.target, Some(&host), &[]).await;
        expect(r, route.missing_status, "no metadata header".into());
        let r = send(
            a,
            "GET",
            &route.target,
            Some(&host),
            &[(auth_name, route.wrong)],
        )
        .await;
        expect(r, route.wrong_status, "wrong metadata header".into());
        let r = send(a, "GET", &route.target, Some(&host), &[(auth_name, "")]).await;
        assert!(r.status >= 400, "{}: empty header", route.name);

        // Relayed requests: every proxy header, with a valid metadata header.
        for proxy in [
            "X-Forwarded-For",
            "Forwarded",
            "Via",
            "X-Real-IP",
            "X-Forwarded-Host",
        ] {
            let r = send(
                a,
                "GET",
                &route.target,
                Some(&host),
                &[(auth_name, auth_value), (proxy, "203.0.113.9")],
            )
            .await;
            expect(r, route.refusal_status, format!("proxy header {proxy}"));
        }
        // DNS rebinding: a page on evil.example.com resolving to 127.0.0.1.
        for foreign in [
            "evil.example.com",
            "evil.example.com:8189",
            "127.0.0.1.nip.io",
            "[::1]evil.example.com",
            "10.0.0.1",
        ] {
            let r = send(
                a,
                "GET",
                &route.target,
                Some(foreign),
                &[(auth_name, auth_value)],
            )
            .await;
            expect(r, route.refusal_status, format!("Host {foreign}"));
        }
        let twice = format!(
            "GET {} HTTP/1.1\r\nHost: {host}\r\nHost: evil.example.com\r\n{auth_name}: {auth_value}\r\nConnection: close\r\n\r\n",
            route.target
        );
        let r = raw(a, twice.as_bytes()).await;
        // hyper may refuse a second Host itself (400); if it passes it on, the guard refuses.
        assert!(
            r.status == route.refusal_status || r.status == 400,
            "{}: two Host headers: {}",
            route.name,
            r.status
        );
        let absolute = format!("http://evil.example.com{}", route.target);
        let r = send(a, "GET", &absolute, Some(&host), &[(auth_name, auth_value)]).await;
        expect(r, route.refusal_status, "absolute-form target".into());

        // Wrong methods, with every header right.
        for method in ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE"] {
            let r = send(
                a,
                method,
                &route.target,
                Some(&host),
                &[(auth_name, auth_value)],
            )
            .await;
            expect(r, 405, format!("method {method}"));
        }
    }

    // Traversal and unknown paths never reach a credential, whatever headers come along.
    let auth = broker.auth_token();
    let all_headers = [
        ("Authorization", auth.as_str()),
        ("X-aws-ec2-metadata-token", session.as_str()),
        ("Metadata-Flavor", "Google"),
        ("Metadata", "true"),
        ("X-IDENTITY-HEADER", AZURE_IDENTITY_HEADER),
    ];
    for target in [
        "/latest/../v1/credentials",
        "/latest/%2e%2e/v1/credentials",
        "/latest/%2E%2E%2Fv1%2Fcredentials",
        "/v1/credentials/..",
        "/v1/credentials/../credentials",
        "/v1/%63redentials",
        "//v1/credentials",
        "/V1/credentials",
        "/latest/meta-data/iam/security-credentials/../security-credentials/credbroker-demo",
        "/latest/meta-data/iam/security-credentials/credbroker-demo/..",
        "/latest/meta-data/iam/security-credentials/%63redbroker-demo",
        "/computeMetadata/v1/instance/service-accounts/default/token/..",
        "/computeMetadata/v1/instance/service-accounts/default/../default/token",
        "/computeMetadata/v1/instance/service-accounts/default/%74oken",
        "/computeMetadata/v1/instance/service-accounts/default%2ftoken",
        "/computeMetadata/v1beta1/instance/service-accounts/default/token",
        "/metadata/identity/oauth2/token/../token?api-version=2018-02-01&resource=https://management.azure.com/",
        "/metadata/identity/oauth2/%74oken?api-version=2018-02-01&resource=https://management.azure.com/",
        "/msi/token/..?api-version=2019-08-01&resource=https://management.azure.com/",
        "/msi/%74oken?api-version=2019-08-01&resource=https://management.azure.com/",
        "/nothing-here",
        "/.env",
        "/metrics",
        "/healthz",
        "*",
    ] {
        let r = send(a, "GET", target, Some(&host), &all_headers).await;
        assert!(
            r.status == 404 || r.status == 400,
            "{target}: {} {}",
            r.status,
            r.body
        );
        for s in &secrets {
            assert!(!r.body.contains(s.as_str()), "{target} leaked a credential");
        }
        cases += 1;
    }
    assert!(cases >= 120, "only {cases} cases ran");
    assert!(!broker.logs().contains("panicked"), "{}", broker.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_malformed_and_pipelined_requests() {
    let dir = tempfile::tempdir().unwrap();
    let scape = cloudscape(dir.path()).await;
    let broker = ready_broker(dir.path(), &scape, &[]).await;
    let a = broker.creds;
    let host = a.to_string();
    let auth = broker.auth_token();

    // Heads past the 16 KiB cap: answered 431 (or 414), never read into unbounded memory.
    let big_value = "a".repeat(20 * 1024);
    let r = send(
        a,
        "GET",
        "/v1/credentials",
        Some(&host),
        &[("X-Big", &big_value)],
    )
    .await;
    assert_eq!(r.status, 431, "huge header");
    let many: Vec<(String, String)> = (0..150).map(|i| (format!("X-H{i}"), "v".into())).collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let r = send(a, "GET", "/v1/credentials", Some(&host), &many).await;
    assert_eq!(r.status, 431, "150 headers");
    for len in [20 * 1024, 70 * 1024] {
        let target = format!("/v1/credentials?{}", "q".repeat(len));
        let r = send(a, "GET", &target, Some(&host), &[("Authorization", &auth)]).await;
        assert!(
            r.status == 431 || r.status == 414,
            "URI of {len}: {}",
            r.status
        );
    }

    // Malformed request lines and heads: 400 (or a closed connection), never a credential.
    let cases: [&[u8]; 8] = [
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage-tls-client-hello\r\n\r\n",
        b"GET /v1/credentials HTTP/9.9\r\nHost: 127.0.0.1\r\n\r\n",
        b"GET\r\n\r\n",
        b"GET /v1/credentials HTTP/1.1\r\nHost: 127.0.0.1\r\nBad Header Name: x\r\n\r\n",
        b"GET /v1/credentials HTTP/1.1\r\nHost: 127.0.0.1\r\nX: a\x00b\r\n\r\n",
        b"GET /v1/cred entials HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        b"\r\n\r\n\r\n",
        b"GET /v1/credentials HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ];
    for bytes in cases {
        let r = raw(a, bytes).await;
        assert_ne!(r.status, 200, "{:?}", String::from_utf8_lossy(bytes));
    }
    // A Host header that is not text, and an Authorization that is not text.
    let r = raw(
        a,
        format!("GET /v1/credentials HTTP/1.1\r\nHost: evil\u{ff}.example\r\nAuthorization: {auth}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(r.status, 403);
    let mut bytes = b"GET /v1/credentials HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nAuthorization: \xff\xfe\r\n\r\n".to_vec();
    let r = raw(a, &bytes).await;
    assert_eq!(r.status, 403);
    // A request announcing a huge body is answered without reading it.
    bytes = format!(
        "POST /v1/credentials HTTP/1.1\r\nHost: {host}\r\nAuthorization: {auth}\r\nContent-Length: 1000000000\r\n\r\n"
    )
    .into_bytes();
    let r = raw(a, &bytes).await;
    assert_eq!(r.status, 405);

    // Pipelining: three requests in one write, three answers in order on one connection.
    let pipelined = format!(
        "GET /v1/credentials HTTP/1.1\r\nHost: {host}\r\nAuthorization: {auth}\r\n\r\n\
         GET /nothing HTTP/1.1\r\nHost: {host}\r\n\r\n\
         GET /computeMetadata/v1/project/project-id HTTP/1.1\r\nHost: {host}\r\nMetadata-Flavor: Google\r\nConnection: close\r\n\r\n"
    );
    let mut s = TcpStream::connect(a).await.unwrap();
    s.write_all(pipelined.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .expect("pipelined answers")
        .unwrap();
    let statuses = split_responses(&buf);
    assert_eq!(
        statuses,
        vec![200, 404, 200],
        "{}",
        String::from_utf8_lossy(&buf)
    );

    // Still serving, nothing panicked.
    let r = get(a, "/v1/credentials", &[("Authorization", &auth)]).await;
    assert_eq!(r.status, 200);
    assert!(!broker.logs().contains("panicked"));
}

/// Statuses of consecutive HTTP/1.1 responses (each with a Content-Length).
fn split_responses(mut buf: &[u8]) -> Vec<u16> {
    let mut out = Vec::new();
    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
        let head = String::from_utf8_lossy(&buf[..end]).to_string();
        let reply = parse(head.as_bytes());
        let len: usize = reply
            .header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        out.push(reply.status);
        buf = &buf[(end + 4 + len).min(buf.len())..];
    }
    out
}

/// Whether the server closed the connection within `within` (EOF or reset while reading).
async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_idle_clients_are_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let scape = cloudscape(dir.path()).await;
    let broker = ready_broker(dir.path(), &scape, &["--header-read-timeout-ms", "500"]).await;
    let a = broker.creds;

    // Connects and sends nothing.
    let mut s = TcpStream::connect(a).await.unwrap();
    let t = Instant::now();
    assert!(
        closed_within(&mut s, Duration::from_secs(3)).await,
        "silent client kept"
    );
    assert!(
        t.elapsed() >= Duration::from_millis(400),
        "closed too early"
    );

    // Slowloris: a byte every 100 ms never completes a head; the deadline is for the whole head.
    let mut s = TcpStream::connect(a).await.unwrap();
    let t = Instant::now();
    let drip = b"GET /v1/credentials HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let mut cut = false;
    for byte in drip {
        if s.write_all(&[*byte]).await.is_err() {
            cut = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        if t.elapsed() > Duration::from_secs(3) {
            break;
        }
    }
    assert!(
        cut || closed_within(&mut s, Duration::from_millis(100)).await,
        "a dripping client was kept {:?}",
        t.elapsed()
    );
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());

    // An idle keep-alive connection is closed after the same timeout.
    let mut s = TcpStream::connect(a).await.unwrap();
    let req = format!("GET /healthz-nope HTTP/1.1\r\nHost: {a}\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 404"));
    assert!(
        closed_within(&mut s, Duration::from_secs(3)).await,
        "idle keep-alive kept"
    );

    // A busy keep-alive connection is not quiet: a request every 100 ms for 2 s (four times
    // the timeout) is answered on one connection throughout. Fails if the service stops
    // reporting its requests to the per-connection deadline (`http::idle`).
    let mut s = TcpStream::connect(a).await.unwrap();
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(2) {
        s.write_all(req.as_bytes()).await.unwrap();
        let n = s.read(&mut buf).await.unwrap();
        assert!(
            String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 404"),
            "a busy keep-alive connection was cut after {:?}",
            t.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A client that pipelines requests and never reads the answers is dropped once the
    // server's writes stall, instead of holding a connection (and a slot) forever. Judged by
    // the broker's open descriptors: reading the socket here would unblock the server.
    let pid = broker.pid();
    let fds_before = open_fds(pid);
    let mut s = TcpStream::connect(a).await.unwrap();
    let one = format!(
        "GET /computeMetadata/v1/project/project-id HTTP/1.1\r\nHost: {a}\r\nMetadata-Flavor: Google\r\n\r\n"
    );
    let batch = one.repeat(50);
    let t = Instant::now();
    // Write until our own send buffer is full: the server stopped reading because its answers
    // filled the socket and it is stuck writing them.
    loop {
        match tokio::time::timeout(Duration::from_secs(1), s.write_all(batch.as_bytes())).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) | Err(_) => break,
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "the server kept reading"
        );
    }
    let blocked = t.elapsed();
    wait_until(Duration::from_secs(5), || async {
        open_fds(pid) <= fds_before
    })
    .await;
    eprintln!(
        "never-reading client: writes blocked after {blocked:?}, dropped after {:?}",
        t.elapsed()
    );
    drop(s);
    let r = get(
        a,
        "/computeMetadata/v1/project/project-id",
        &[("Metadata-Flavor", "Google")],
    )
    .await;
    assert_eq!(r.status, 200);
}

fn proc_status(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// 600 connections each holding 8 KiB of unfinished head against a cap of 256: the broker
/// accepts 256 (file descriptors prove it), the rest wait in the kernel's backlog, resident
/// memory stays bounded, and once the slow clients time out, a real request is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_cap_bounds_what_a_flood_costs() {
    const CAP: usize = 256;
    const FLOOD: usize = 600;
    let dir = tempfile::tempdir().unwrap();
    let scape = cloudscape(dir.path()).await;
    let broker = ready_broker(
        dir.path(),
        &scape,
        &[
            "--max-connections",
            "256",
            "--header-read-timeout-ms",
            "2500",
        ],
    )
    .await;
    let a = broker.creds;
    let pid = broker.pid();
    // Warm up allocator and runtime, then take the baseline.
    for _ in 0..20 {
        get(
            a,
            "/computeMetadata/v1/project/project-id",
            &[("Metadata-Flavor", "Google")],
        )
        .await;
    }
    let fds_before = open_fds(pid);
    let rss_before = proc_status(pid, "VmRSS:");

    let partial = format!(
        "GET /v1/credentials HTTP/1.1\r\nHost: {a}\r\nX-Pad: {}\r\n",
        "p".repeat(8 * 1024)
    );
    let mut flood = Vec::with_capacity(FLOOD);
    let flood_start = Instant::now();
    for _ in 0..FLOOD {
        let mut s = TcpStream::connect(a).await.unwrap();
        let _ = s.write_all(partial.as_bytes()).await;
        flood.push(s);
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    let fds_during = open_fds(pid);
    let rss_during = proc_status(pid, "VmRSS:");
    let accepted = fds_during.saturating_sub(fds_before);
    eprintln!(
        "flood of {FLOOD}: broker fds {fds_before} -> {fds_during}, VmRSS {rss_before} -> {rss_during} KiB"
    );
    assert!(
        accepted <= CAP + 2,
        "{accepted} connections accepted, cap {CAP}"
    );
    assert!(
        accepted >= CAP - 8,
        "only {accepted} accepted: the flood did not reach the cap"
    );
    assert!(
        rss_during.saturating_sub(rss_before) < 32 * 1024,
        "resident memory grew by {} KiB",
        rss_during - rss_before
    );

    // While the cap is full, a complete request waits (in the backlog), then is served once
    // the slow clients have been cut off: not before the first of them reaches its 2.5 s
    // header-read timeout, counted from the flood's start (how long the flood itself took
    // depends on the machine's load, so the bound is not counted from the request).
    let auth = broker.auth_token();
    let r = tokio::time::timeout(
        Duration::from_secs(15),
        get(a, "/v1/credentials", &[("Authorization", &auth)]),
    )
    .await
    .expect("served after the flood timed out");
    assert_eq!(r.status, 200);
    assert!(
        flood_start.elapsed() >= Duration::from_millis(2300),
        "the cap let it through before any slow client timed out ({:?} after the flood began)",
        flood_start.elapsed()
    );
    drop(flood);
    wait_until(Duration::from_secs(10), || async {
        open_fds(pid) <= fds_before + 4
    })
    .await;
    assert!(!broker.logs().contains("panicked"));
}

/// SIGTERM while a request waits on a slow upstream: the listener closes at once, the in-flight
/// request is answered, and the process exits 0 within 5 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_a_slow_in_flight_request() {
    let dir = tempfile::tempdir().unwrap();
    let scape = cloudscape(dir.path()).await;
    let mut broker = ready_broker(dir.path(), &scape, &[]).await;
    let a = broker.creds;
    // A resource nobody asked for yet: its first exchange takes 2 s.
    scape.entra.faults().set_latency(Duration::from_secs(2));
    let in_flight = tokio::spawn(async move {
        get(
            a,
            "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://vault.azure.net",
            &[("Metadata", "true")],
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    let t = Instant::now();
    let pid = broker.pid();
    let waiter = std::thread::spawn(move || {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
    });
    waiter.join().unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        TcpStream::connect(a).await.is_err(),
        "still accepting after SIGTERM"
    );
    let r = in_flight.await.unwrap();
    assert_eq!(
        r.status, 200,
        "the in-flight request was dropped: {}",
        r.body
    );
    assert_eq!(r.json()["resource"], "https://vault.azure.net");
    let code = broker.terminate();
    assert_eq!(code, Some(0), "{}", broker.logs());
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "exit took {:?}",
        t.elapsed()
    );
}

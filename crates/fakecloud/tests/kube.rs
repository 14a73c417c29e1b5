//! The emulated API server against real clients: kubectl (must be installed; these tests fail,
//! never skip, without it) and raw HTTPS for the exact wire shapes, faults and outages.

use fakecloud::kube::object::ObjectMeta;
use fakecloud::kube::{Down, FakeKube, FakeKubeHandle, Kubeconfig, ServiceAccount, Token};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

/// kubectl, from `$KUBECTL` or the PATH. Missing kubectl is a failure: the proofs need it.
fn kubectl_path() -> PathBuf {
    if let Some(path) = std::env::var_os("KUBECTL") {
        return PathBuf::from(path);
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("kubectl"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "kubectl is not on the PATH: these tests prove the emulated API server with real \
                 kubectl (written against 1.32). Install kubectl or set KUBECTL=/path/to/kubectl"
            )
        })
}

struct Cluster {
    kube: FakeKubeHandle,
    dir: tempfile::TempDir,
    kubeconfig: PathBuf,
}

async fn cluster() -> Cluster {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let kube = FakeKube::start_local().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    kube.write_kubeconfig(&kubeconfig, "default").unwrap();
    Cluster {
        kube,
        dir,
        kubeconfig,
    }
}

impl Cluster {
    /// Runs kubectl with this cluster's kubeconfig, an empty HOME and its own discovery cache.
    async fn kubectl(&self, kubeconfig: &Path, args: &[&str]) -> Output {
        let exe = kubectl_path();
        let home = self.dir.path().to_path_buf();
        let mut cmd = std::process::Command::new(&exe);
        cmd.arg("--kubeconfig")
            .arg(kubeconfig)
            .arg("--cache-dir")
            .arg(home.join("cache"))
            .arg("--request-timeout=10s")
            .args(args)
            .env_clear()
            .env("HOME", &home)
            .env("PATH", "/usr/bin:/bin");
        tokio::task::spawn_blocking(move || cmd.output())
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", exe.display()))
    }

    async fn ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(&self.kubeconfig, args).await;
        assert!(
            out.status.success(),
            "kubectl {args:?} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    async fn fails(&self, kubeconfig: &Path, args: &[&str]) -> String {
        let out = self.kubectl(kubeconfig, args).await;
        assert!(
            !out.status.success(),
            "kubectl {args:?} succeeded unexpectedly"
        );
        String::from_utf8(out.stderr).unwrap()
    }

    fn https(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .tls_certs_only([
                reqwest::Certificate::from_pem(self.kube.ca_pem().as_bytes()).unwrap(),
            ])
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap()
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.kube.url())
    }
}

fn sa(namespace: &str, name: &str, annotations: &[(&str, &str)]) -> ServiceAccount {
    ServiceAccount {
        metadata: ObjectMeta {
            name: name.into(),
            namespace: namespace.into(),
            annotations: annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            labels: BTreeMap::from([("team".to_string(), "payments".to_string())]),
            ..ObjectMeta::default()
        },
        automount_service_account_token: Some(false),
        ..ServiceAccount::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_get_returns_exactly_the_stored_object() {
    let c = cluster().await;
    c.kube
        .seed(sa(
            "shop",
            "checkout",
            &[(
                "eks.amazonaws.com/role-arn",
                "arn:aws:iam::111122223333:role/checkout",
            )],
        ))
        .unwrap();
    let out = c
        .ok(&[
            "get",
            "serviceaccount",
            "checkout",
            "-n",
            "shop",
            "-o",
            "json",
        ])
        .await;
    let got: Value = serde_json::from_str(&out).unwrap();
    let held = serde_json::to_value(c.kube.service_account("shop", "checkout").unwrap()).unwrap();
    assert_eq!(got, held);
    assert_eq!(got["metadata"]["uid"].as_str().unwrap().len(), 36);
    assert!(got["metadata"]["creationTimestamp"].is_string());

    // The short name from discovery works too.
    let out = c
        .ok(&["get", "sa", "checkout", "-n", "shop", "-o", "json"])
        .await;
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap(), held);

    // What kubectl asked: aggregated discovery first, then (answered in the legacy format)
    // the core group's resource list.
    let log = c.kube.log();
    let api = log
        .iter()
        .find(|r| r.path == "/api")
        .expect("kubectl asked /api");
    assert!(
        api.accept
            .as_deref()
            .unwrap()
            .starts_with("application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"),
        "{:?}",
        api.accept
    );
    assert!(log.iter().any(|r| r.path == "/apis"));
    assert!(log.iter().any(|r| r.path == "/api/v1" && r.status == 200));
    let get = log
        .iter()
        .find(|r| r.path == "/api/v1/namespaces/shop/serviceaccounts/checkout")
        .unwrap();
    assert_eq!((get.verb.as_deref(), get.status), (Some("get"), 200));
    assert_eq!(get.user.as_deref(), Some(fakecloud::kube::ADMIN_USER));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_create_annotate_label_then_get() {
    let c = cluster().await;
    let out = c
        .ok(&["create", "serviceaccount", "web", "-n", "team"])
        .await;
    assert_eq!(out.trim(), "serviceaccount/web created");
    let create = c
        .kube
        .log()
        .into_iter()
        .find(|r| r.method == "POST")
        .unwrap();
    // kubectl's typed client sends protobuf.
    assert_eq!(
        create.content_type.as_deref(),
        Some("application/vnd.kubernetes.protobuf")
    );
    assert_eq!(create.status, 201);

    let role = "eks.amazonaws.com/role-arn=arn:aws:iam::111122223333:role/web";
    let out = c
        .ok(&["annotate", "serviceaccount", "web", "-n", "team", role])
        .await;
    assert_eq!(out.trim(), "serviceaccount/web annotated");
    let out = c.ok(&["label", "sa", "web", "-n", "team", "app=web"]).await;
    assert_eq!(out.trim(), "serviceaccount/web labeled");
    let patches: Vec<_> = c
        .kube
        .log()
        .into_iter()
        .filter(|r| r.method == "PATCH")
        .map(|r| (r.content_type.unwrap_or_default(), r.status))
        .collect();
    assert_eq!(
        patches,
        vec![
            ("application/merge-patch+json".to_string(), 200),
            ("application/merge-patch+json".to_string(), 200)
        ]
    );

    let got: Value = serde_json::from_str(
        &c.ok(&["get", "sa", "web", "-n", "team", "-o", "json"])
            .await,
    )
    .unwrap();
    assert_eq!(
        got["metadata"]["annotations"]["eks.amazonaws.com/role-arn"],
        "arn:aws:iam::111122223333:role/web"
    );
    assert_eq!(got["metadata"]["labels"]["app"], "web");
    assert_eq!(
        got,
        serde_json::to_value(c.kube.service_account("team", "web").unwrap()).unwrap()
    );

    // A second create is the real AlreadyExists.
    let err = c
        .fails(
            &c.kubeconfig,
            &["create", "serviceaccount", "web", "-n", "team"],
        )
        .await;
    assert!(
        err.contains("serviceaccounts \"web\" already exists"),
        "{err}"
    );

    // A stale --resource-version is a Conflict.
    let err = c
        .fails(
            &c.kubeconfig,
            &[
                "annotate",
                "sa",
                "web",
                "-n",
                "team",
                "--resource-version=1",
                "x=y",
            ],
        )
        .await;
    assert!(
        err.starts_with(
            "Error from server (Conflict): Operation cannot be fulfilled on serviceaccounts \"web\""
        ),
        "{err}"
    );

    let out = c.ok(&["delete", "sa", "web", "-n", "team"]).await;
    assert_eq!(out.trim(), "serviceaccount \"web\" deleted");
    assert!(c.kube.service_account("team", "web").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_reports_not_found_and_unauthorized() {
    let c = cluster().await;
    let err = c
        .fails(
            &c.kubeconfig,
            &[
                "get",
                "serviceaccount",
                "missing",
                "-n",
                "team",
                "-o",
                "json",
            ],
        )
        .await;
    assert_eq!(
        err.trim(),
        "Error from server (NotFound): serviceaccounts \"missing\" not found"
    );

    let wrong = c.dir.path().join("wrong-token");
    let url = c.kube.url();
    Kubeconfig {
        server: &url,
        ca_pem: c.kube.ca_pem(),
        user: "intruder",
        token: "not-a-token-the-server-knows",
        namespace: "default",
    }
    .write(&wrong)
    .unwrap();
    let err = c
        .fails(
            &wrong,
            &[
                "get",
                "serviceaccount",
                "missing",
                "-n",
                "team",
                "-o",
                "json",
            ],
        )
        .await;
    assert!(
        err.lines()
            .any(|l| l == "error: You must be logged in to the server (Unauthorized)"),
        "{err}"
    );
    assert!(
        c.kube
            .log()
            .iter()
            .any(|r| r.status == 401 && r.user.is_none())
    );
}

#[tokio::test]
async fn errors_are_real_status_objects() {
    let c = cluster().await;
    let http = c.https();
    let path = "/api/v1/namespaces/team/serviceaccounts/x";

    let resp = http.get(c.url(path)).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(
        resp.json::<Value>().await.unwrap(),
        json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",
               "message":"Unauthorized","reason":"Unauthorized","code":401})
    );
    let resp = http
        .get(c.url(path))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);

    let token = c.kube.token();
    let resp = http
        .get(c.url(path))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(
        resp.json::<Value>().await.unwrap(),
        json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",
               "message":"serviceaccounts \"x\" not found","reason":"NotFound",
               "details":{"name":"x","kind":"serviceaccounts"},"code":404})
    );

    let collection = c.url("/api/v1/namespaces/team/serviceaccounts");
    let body = json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "x"}});
    let resp = http
        .post(&collection)
        .bearer_auth(&token)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let created: Value = resp.json().await.unwrap();
    assert_eq!(created["metadata"]["namespace"], "team");
    let resp = http
        .post(&collection)
        .bearer_auth(&token)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 409);
    assert_eq!(
        resp.json::<Value>().await.unwrap(),
        json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",
               "message":"serviceaccounts \"x\" already exists","reason":"AlreadyExists",
               "details":{"name":"x","kind":"serviceaccounts"},"code":409})
    );

    // Strict field validation, invalid names, unknown paths, wrong patch types.
    let resp = http
        .post(format!("{collection}?fieldValidation=Strict"))
        .bearer_auth(&token)
        .json(&json!({"metadata": {"name": "y"}, "spec": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert!(
        resp.text()
            .await
            .unwrap()
            .contains("unknown field \\\"spec\\\"")
    );
    let resp = http
        .post(&collection)
        .bearer_auth(&token)
        .json(&json!({"metadata": {"name": "Not_Valid"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 422);
    assert_eq!(resp.json::<Value>().await.unwrap()["reason"], "Invalid");
    let resp = http
        .get(c.url("/api/v1/pods"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let resp = http
        .patch(c.url(path))
        .bearer_auth(&token)
        .header("content-type", "application/apply-patch+yaml")
        .body("metadata: {}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 415);
    let resp = http
        .patch(c.url(path))
        .bearer_auth(&token)
        .header("content-type", "application/json-patch+json")
        .body(r#"[{"op":"test","path":"/metadata/name","value":"other"}]"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 422);
}

#[tokio::test]
async fn verb_limited_tokens_get_forbidden() {
    let c = cluster().await;
    c.kube.seed(sa("default", "app", &[])).unwrap();
    c.kube.add_token(Token {
        token: "injector-token".into(),
        user: "system:serviceaccount:credbroker-system:credbroker-injector".into(),
        verbs: Some(vec!["get".into()]),
    });
    let http = c.https();
    let resp = http
        .get(c.url("/api/v1/namespaces/default/serviceaccounts/app"))
        .bearer_auth("injector-token")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = http
        .get(c.url("/api/v1/namespaces/default/serviceaccounts"))
        .bearer_auth("injector-token")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(
        resp.json::<Value>().await.unwrap(),
        json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",
               "message":"serviceaccounts is forbidden: User \"system:serviceaccount:credbroker-system:credbroker-injector\" cannot list resource \"serviceaccounts\" in API group \"\" in the namespace \"default\"",
               "reason":"Forbidden","details":{"kind":"serviceaccounts"},"code":403})
    );
}

#[tokio::test]
async fn admin_seeds_faults_and_outages() {
    let c = cluster().await;
    let admin = reqwest::Client::new();
    let http = c.https();
    let token = c.kube.token();
    let get = || {
        http.get(c.url("/api/v1/namespaces/ns/serviceaccounts/a"))
            .bearer_auth(&token)
            .send()
    };

    // Seeding: POST adds, PUT replaces the whole set.
    let resp = admin
        .post(format!("{}/serviceaccounts", c.kube.admin_url()))
        .json(&json!([{"metadata": {"name": "a", "namespace": "ns"}}, {"metadata": {"name": "b"}}]))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(get().await.unwrap().status(), 200);
    assert!(c.kube.service_account("default", "b").is_some());
    let resp = admin
        .put(format!("{}/serviceaccounts", c.kube.admin_url()))
        .json(&json!({"metadata": {"name": "a", "namespace": "ns", "annotations": {"k": "v"}}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(c.kube.service_account("default", "b").is_none());
    let held: Value = get().await.unwrap().json().await.unwrap();
    assert_eq!(held["metadata"]["annotations"]["k"], "v");

    // Faults: a 503 Status, then a reset connection, then normal service.
    let resp = admin
        .post(format!("{}/faults", c.kube.admin_url()))
        .json(
            &json!([{"kind": "status", "status": 503, "count": 1}, {"kind": "reset", "count": 1}]),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = get().await.unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(
        resp.json::<Value>().await.unwrap()["reason"],
        "ServiceUnavailable"
    );
    assert!(get().await.is_err(), "a reset connection is an error");
    assert_eq!(get().await.unwrap().status(), 200);

    // Down, refusing: connections are refused until the server is back on the same port.
    let addr = c.kube.addr();
    let resp = admin
        .post(format!("{}/down", c.kube.admin_url()))
        .json(&json!({"mode": "refuse"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let refused = tokio::net::TcpStream::connect(addr).await.unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
    let err = get().await.unwrap_err();
    assert!(err.is_connect(), "{err:?}");
    admin
        .delete(format!("{}/down", c.kube.admin_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(get().await.unwrap().status(), 200);

    // Down, hanging: requests get no answer (the client times out) until released.
    c.kube.set_down(Down::Hang).await.unwrap();
    let quick = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(c.kube.ca_pem().as_bytes()).unwrap()])
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let err = quick
        .get(c.url("/api/v1/namespaces/ns/serviceaccounts/a"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    c.kube.set_down(Down::Up).await.unwrap();
    assert_eq!(get().await.unwrap().status(), 200);
    let outcomes: Vec<String> = c.kube.log().into_iter().map(|r| r.outcome).collect();
    assert!(outcomes.contains(&"fault:status".to_string()));
    assert!(outcomes.contains(&"fault:reset".to_string()));
    assert!(outcomes.contains(&"down:hang".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloudscape_serves_the_demo_service_account_to_kubectl() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let cloud = fakecloud::Cloudscape::start(fakecloud::CloudscapeOptions::new(dir.path()))
        .await
        .unwrap();
    let described = cloud.describe();
    let kube = &described["kube"];
    for key in ["server", "kubeconfig", "ca_path", "token", "admin"] {
        assert!(
            kube[key].is_string(),
            "describe().kube.{key} missing: {kube}"
        );
    }
    assert_eq!(kube["server"], cloud.kube.url());
    let ca = std::fs::read_to_string(kube["ca_path"].as_str().unwrap()).unwrap();
    assert_eq!(ca, cloud.kube.ca_pem());

    let out = tokio::task::spawn_blocking({
        let kubeconfig = PathBuf::from(kube["kubeconfig"].as_str().unwrap());
        let home = dir.path().to_path_buf();
        move || {
            std::process::Command::new(kubectl_path())
                .arg("--kubeconfig")
                .arg(kubeconfig)
                .arg("--cache-dir")
                .arg(home.join("cache"))
                .args(["get", "serviceaccount", "app", "-o", "json"])
                .env_clear()
                .env("HOME", home)
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(got["metadata"]["namespace"], "default");
    assert_eq!(
        got["metadata"]["annotations"]["eks.amazonaws.com/role-arn"],
        fakecloud::aws::DEMO_ROLE_ARN
    );
    assert_eq!(got["metadata"]["annotations"]["credbroker.io/oci"], "true");
    cloud.shutdown().await;
}

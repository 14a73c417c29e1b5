//! The webhook without a socket: AdmissionReviews in, reviews out, patches applied with a real
//! JSON Patch implementation (the `json-patch` crate) and checked.

use std::collections::BTreeMap;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use serde_json::{Value, json};

use super::accounts::{Accounts, LookupError};
use super::metrics::InjectMetrics;
use super::mutate::Sidecar;
use super::part::ServiceAccount;
use super::review::Webhook;
use crate::clouds::InjectFlags;
use crate::http::server::BodyError;

const PROVIDER: &str = "//iam.googleapis.com/projects/314159/locations/global/workloadIdentityPools/pool/providers/k8s";

/// ServiceAccounts held in memory.
struct Held(BTreeMap<String, BTreeMap<String, String>>);

impl Accounts for Held {
    async fn get(&self, namespace: &str, name: &str) -> Result<ServiceAccount, LookupError> {
        let id = format!("{namespace}/{name}");
        match self.0.get(&id) {
            Some(annotations) => Ok(ServiceAccount {
                namespace: namespace.into(),
                name: name.into(),
                annotations: annotations.clone(),
            }),
            None => Err(LookupError::NotFound(id)),
        }
    }
}

fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

const AWS: (&str, &str) = (
    "eks.amazonaws.com/role-arn",
    "arn:aws:iam::123456789012:role/app",
);
const AZURE: (&str, &str) = (
    "azure.workload.identity/client-id",
    "3f9a1c2e-7b4d-4e8f-a1b2-c3d4e5f60718",
);
const GCP: (&str, &str) = (
    "iam.gke.io/gcp-service-account",
    "app@my-project.iam.gserviceaccount.com",
);
const OCI: (&str, &str) = ("credbroker.io/oci", "true");

fn webhook() -> Webhook<Held> {
    let accounts = Held(BTreeMap::from([
        ("team/aws".to_string(), annotations(&[AWS])),
        ("team/azure".to_string(), annotations(&[AZURE])),
        ("team/gcp".to_string(), annotations(&[GCP])),
        ("team/oci".to_string(), annotations(&[OCI])),
        ("team/all".to_string(), annotations(&[AWS, AZURE, GCP, OCI])),
        ("team/plain".to_string(), annotations(&[("team", "x")])),
        (
            "team/multi".to_string(),
            annotations(&[
                AWS,
                (
                    "credbroker.io/aws-roles",
                    "reader=arn:aws:iam::123456789012:role/reader",
                ),
                (
                    "credbroker.io/aws-chained-roles",
                    "audit=arn:aws:iam::210987654321:role/audit@reader",
                ),
                ("credbroker.io/aws-role-options", "audit:external-id=ext-1"),
                AZURE,
                (
                    "credbroker.io/azure-identities",
                    "0b6c1f4e-2d3a-4b5c-8d9e-0f1a2b3c4d5e",
                ),
                GCP,
                (
                    "credbroker.io/gcp-service-accounts",
                    "reports@my-project.iam.gserviceaccount.com",
                ),
            ]),
        ),
    ]));
    let flags = InjectFlags::parse_from([
        "--aws-region",
        "eu-west-1",
        "--azure-tenant-id",
        "72f988bf-86f1-41af-91ab-2d7cd011db47",
        "--gcp-workload-identity-provider",
        PROVIDER,
        "--gcp-project-id",
        "my-project",
        "--oci-region",
        "us-ashburn-1",
    ])
    .unwrap();
    Webhook {
        accounts,
        sidecar: Sidecar {
            image: "ghcr.io/credbroker/credbroker:0.1.0".into(),
        },
        flags,
        metrics: Arc::new(InjectMetrics::default()),
    }
}

fn pod(service_account: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"generateName": "web-", "labels": {"credbroker.io/inject": "true"}},
        "spec": {
            "serviceAccountName": service_account,
            "initContainers": [{"name": "migrate", "image": "migrate:1"}],
            "containers": [
                {"name": "web", "image": "web:1", "env": [
                    {"name": "KEEP", "value": "1"},
                    // What another webhook (IRSA) might have added: must go.
                    {"name": "AWS_ROLE_ARN", "value": "arn:aws:iam::123456789012:role/app"},
                ]},
                {"name": "logs", "image": "fluent-bit:3"}
            ]
        }
    })
}

fn review_of(object: Value) -> Bytes {
    Bytes::from(
        json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
                "requestResource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": "team",
                "operation": "CREATE",
                "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
                "object": object,
                "dryRun": false
            }
        })
        .to_string(),
    )
}

/// The review's response, and the pod with its patch applied.
async fn admit(object: Value) -> (Value, Value) {
    let review = webhook().review(Ok(review_of(object.clone()))).await;
    let response = review["response"].clone();
    let mut pod = object;
    if let Some(patch) = response["patch"].as_str() {
        assert_eq!(response["patchType"], "JSONPatch");
        let ops: json_patch::Patch =
            serde_json::from_slice(&STANDARD.decode(patch).unwrap()).unwrap();
        json_patch::patch(&mut pod, &ops).unwrap();
    }
    (response, pod)
}

fn env_of(container: &Value) -> BTreeMap<String, Value> {
    container["env"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            let v = e
                .get("value")
                .cloned()
                .unwrap_or_else(|| e["valueFrom"].clone());
            (e["name"].as_str().unwrap().to_string(), v)
        })
        .collect()
}

#[tokio::test]
async fn every_cloud_alone_and_together_gets_the_sidecar_and_the_app_env() {
    for (sa, expect) in [
        ("aws", &["AWS_CONTAINER_CREDENTIALS_FULL_URI"][..]),
        (
            "azure",
            &["AZURE_POD_IDENTITY_AUTHORITY_HOST", "IDENTITY_HEADER"][..],
        ),
        ("gcp", &["GCE_METADATA_HOST"][..]),
        ("oci", &["OCI_RESOURCE_PRINCIPAL_RPST"][..]),
        (
            "all",
            &[
                "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                "GCE_METADATA_HOST",
                "IDENTITY_ENDPOINT",
                "OCI_RESOURCE_PRINCIPAL_RPST",
            ][..],
        ),
    ] {
        let (response, pod) = admit(pod(sa)).await;
        assert_eq!(response["allowed"], true, "{sa}: {response}");
        assert_eq!(response["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
        let inits = pod["spec"]["initContainers"].as_array().unwrap();
        assert_eq!(
            inits[0]["name"], "credbroker",
            "{sa}: the sidecar comes first"
        );
        assert_eq!(inits[0]["restartPolicy"], "Always");
        assert_eq!(inits[0]["startupProbe"]["httpGet"]["path"], "/readyz");
        assert_eq!(inits[1]["name"], "migrate");
        for c in [
            &pod["spec"]["containers"][0],
            &pod["spec"]["containers"][1],
            &inits[1],
        ] {
            let env = env_of(c);
            for name in expect {
                assert!(
                    env.contains_key(*name),
                    "{sa}: {} lacks {name}: {env:?}",
                    c["name"]
                );
            }
            // Another webhook's bypass variable goes where AWS is injected; other clouds'
            // injections leave other clouds' variables alone.
            let aws = sa == "aws" || sa == "all";
            assert_eq!(
                env.contains_key("AWS_ROLE_ARN"),
                !aws && c["name"] == "web",
                "{sa}"
            );
            let mounts = c["volumeMounts"].as_array().unwrap();
            assert!(
                mounts
                    .iter()
                    .any(|m| m["mountPath"] == "/var/run/credbroker" && m["readOnly"] == true)
            );
        }
        assert_eq!(env_of(&pod["spec"]["containers"][0])["KEEP"], "1");
        assert_eq!(pod["spec"]["securityContext"]["fsGroup"], 65532);
        // A second admission of the injected pod (reinvocation) changes nothing.
        let (again, same) = admit(pod.clone()).await;
        assert_eq!(again["allowed"], true);
        assert!(
            again.get("patch").is_none(),
            "{sa}: not idempotent: {again}"
        );
        assert_eq!(same, pod);
    }
}

#[tokio::test]
async fn downward_api_values_are_shared_by_reference() {
    let (_, pod) = admit(pod("all")).await;
    let sidecar = env_of(&pod["spec"]["initContainers"][0]);
    let app = env_of(&pod["spec"]["containers"][0]);
    let uid = json!({"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.uid"}});
    assert_eq!(sidecar["CREDBROKER_AZURE_IDENTITY_HEADER"], uid);
    assert_eq!(app["IDENTITY_HEADER"], uid);
    assert_eq!(sidecar["CREDBROKER_AWS_AUTH_TOKEN"], uid);
    assert_eq!(app["AWS_CONTAINER_AUTHORIZATION_TOKEN"], uid);
    // GCP's configuration is an annotation the downward API projects as a file.
    let config: Value = serde_json::from_str(
        pod["metadata"]["annotations"]["credbroker.io/gcp-credential-configuration"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(config["audience"], PROVIDER);
    assert!(
        config["service_account_impersonation_url"]
            .as_str()
            .unwrap()
            .contains(GCP.1)
    );
}

#[tokio::test]
async fn skip_containers_are_left_alone() {
    let mut p = pod("aws");
    p["metadata"]["annotations"] = json!({"credbroker.io/skip-containers": "logs"});
    let (_, pod) = admit(p).await;
    assert!(pod["spec"]["containers"][1].get("env").is_none());
    assert!(
        env_of(&pod["spec"]["containers"][0]).contains_key("AWS_CONTAINER_CREDENTIALS_FULL_URI")
    );
}

#[tokio::test]
async fn a_service_account_without_identity_or_missing_is_refused_with_the_reason() {
    let (response, _) = admit(pod("plain")).await;
    assert_eq!(response["allowed"], false);
    let message = response["status"]["message"].as_str().unwrap();
    assert!(
        message.contains("team/plain names no identity"),
        "{message}"
    );
    assert!(message.contains("eks.amazonaws.com/role-arn"), "{message}");
    let (response, _) = admit(pod("nobody")).await;
    assert_eq!(response["allowed"], false);
    assert!(
        response["status"]["message"]
            .as_str()
            .unwrap()
            .contains("ServiceAccount team/nobody does not exist")
    );
}

#[tokio::test]
async fn unlabelled_pods_and_other_operations_pass_untouched() {
    let mut p = pod("aws");
    p["metadata"]["labels"] = json!({});
    let (response, after) = admit(p.clone()).await;
    assert_eq!(response["allowed"], true);
    assert!(response.get("patch").is_none());
    assert_eq!(after, p);
}

#[tokio::test]
async fn malformed_oversized_and_non_pod_reviews_get_error_reviews() {
    let w = webhook();
    for body in [
        Ok(Bytes::from_static(b"garbage")),
        Ok(Bytes::from_static(b"{}")),
        Ok(Bytes::from_static(b"{\"request\": 7}")),
        Err(BodyError::TooLarge(4 << 20)),
    ] {
        let review = w.review(body).await;
        assert_eq!(review["kind"], "AdmissionReview");
        assert_eq!(review["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(review["response"]["allowed"], false, "{review}");
        assert!(
            !review["response"]["status"]["message"]
                .as_str()
                .unwrap()
                .is_empty()
        );
    }
    let mut other: Value = serde_json::from_slice(&review_of(json!({
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}
    })))
    .unwrap();
    other["request"]["kind"] = json!({"group": "", "version": "v1", "kind": "ConfigMap"});
    let review = w.review(Ok(Bytes::from(other.to_string()))).await;
    assert_eq!(review["response"]["allowed"], false, "{review}");
    assert_eq!(
        review["response"]["uid"], other["request"]["uid"],
        "{review}"
    );
    assert!(
        review["response"]["status"]["message"]
            .as_str()
            .unwrap()
            .contains("Pods only")
    );
    let text = w.metrics.render();
    assert!(
        text.contains(r#"credbroker_admission_reviews_total{outcome="malformed"} 5"#),
        "{text}"
    );
}

/// Found by fuzz/fuzz_targets/admission.rs: a Pod review whose unknown field holds bytes that are
/// not UTF-8 was parsed (serde_json skips ignored strings without checking them) and patched.
#[tokio::test]
async fn a_review_that_is_not_utf8_is_malformed() {
    let w = webhook();
    let mut review: Value = serde_json::from_slice(&review_of(pod("aws"))).unwrap();
    review["request"]["object"]["spec"]["unknownField"] = json!("PLACEHOLDER");
    let text = review.to_string();
    let mut body = Vec::new();
    let (before, after) = text.split_once("PLACEHOLDER").unwrap();
    body.extend_from_slice(before.as_bytes());
    body.extend_from_slice(&[0xff, 0xfe]);
    body.extend_from_slice(after.as_bytes());
    assert!(std::str::from_utf8(&body).is_err());
    let review = w.review(Ok(Bytes::from(body))).await;
    assert_eq!(review["response"]["allowed"], false, "{review}");
    assert!(
        review["response"]["status"]["message"]
            .as_str()
            .unwrap()
            .contains("not UTF-8"),
        "{review}"
    );
    let replayed = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../fuzz/regressions/admission/invalid-utf8-in-unknown-field"
    ))
    .unwrap();
    let review = w.review(Ok(Bytes::from(replayed))).await;
    assert_eq!(review["response"]["allowed"], false, "{review}");
}

#[tokio::test]
async fn extra_identities_from_the_service_account_and_a_role_per_container() {
    let mut p = pod("multi");
    p["metadata"]["annotations"] = json!({"credbroker.io/container-identities": "logs=audit"});
    let (response, injected) = admit(p).await;
    assert_eq!(response["allowed"], true, "{response}");
    let sidecar = env_of(&injected["spec"]["initContainers"][0]);
    assert_eq!(
        sidecar["CREDBROKER_AWS_ROLE"],
        "reader=arn:aws:iam::123456789012:role/reader"
    );
    assert_eq!(
        sidecar["CREDBROKER_AWS_CHAINED_ROLE"],
        "audit=arn:aws:iam::210987654321:role/audit@reader"
    );
    assert_eq!(
        sidecar["CREDBROKER_AZURE_IDENTITY"],
        "0b6c1f4e-2d3a-4b5c-8d9e-0f1a2b3c4d5e"
    );
    assert_eq!(
        sidecar["CREDBROKER_GCP_SERVICE_ACCOUNT"],
        "reports@my-project.iam.gserviceaccount.com"
    );
    let web = env_of(&injected["spec"]["containers"][0]);
    let logs = env_of(&injected["spec"]["containers"][1]);
    assert_eq!(
        web["AWS_CONTAINER_CREDENTIALS_FULL_URI"],
        "http://127.0.0.1:8189/v1/credentials"
    );
    assert_eq!(
        logs["AWS_CONTAINER_CREDENTIALS_FULL_URI"],
        "http://127.0.0.1:8189/v1/credentials/audit"
    );
    // A bad identity option is the sidecar's configuration error, refused at admission.
    let mut bad = pod("multi");
    bad["metadata"]["annotations"] = json!({"credbroker.io/container-identities": "logs=nobody"});
    let (response, _) = admit(bad).await;
    assert_eq!(response["allowed"], false);
    assert!(
        response["status"]["message"]
            .as_str()
            .unwrap()
            .contains("nobody")
    );
}

#[tokio::test]
async fn a_review_of_another_version_is_refused_not_answered_in_it() {
    // kube-core would answer in whatever apiVersion came in; the API server reads only the
    // versions the configuration lists (v1), so a v0 review is malformed, and so is v1beta1.
    let w = webhook();
    for (version, kind) in [
        ("admission.k8s.io/v0", "AdmissionReview"),
        ("admission.k8s.io/v1beta1", "AdmissionReview"),
        ("admission.k8s.io/v1", "AdmissionReviewList"),
    ] {
        let mut review: Value = serde_json::from_slice(&review_of(pod("aws"))).unwrap();
        review["apiVersion"] = json!(version);
        review["kind"] = json!(kind);
        let uid = review["request"]["uid"].clone();
        let answer = w.review(Ok(Bytes::from(review.to_string()))).await;
        assert_eq!(answer["apiVersion"], "admission.k8s.io/v1", "{answer}");
        assert_eq!(answer["kind"], "AdmissionReview", "{answer}");
        assert_eq!(answer["response"]["uid"], uid, "{answer}");
        assert_eq!(answer["response"]["allowed"], false, "{answer}");
        assert!(answer["response"].get("patch").is_none(), "{answer}");
        let message = answer["response"]["status"]["message"].as_str().unwrap();
        assert!(message.contains(version), "{message}");
    }
    let replayed = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../fuzz/regressions/admission/review-api-version-v0"
    ))
    .unwrap();
    let answer = w.review(Ok(Bytes::from(replayed))).await;
    assert_eq!(answer["apiVersion"], "admission.k8s.io/v1", "{answer}");
    assert_eq!(answer["response"]["allowed"], false, "{answer}");
}

#[tokio::test]
async fn a_long_foreign_api_version_is_quoted_only_in_part() {
    let w = webhook();
    let mut review: Value = serde_json::from_slice(&review_of(pod("aws"))).unwrap();
    let long = "v".repeat(10_000);
    review["apiVersion"] = json!(long);
    let answer = w.review(Ok(Bytes::from(review.to_string()))).await;
    let message = answer["response"]["status"]["message"].as_str().unwrap();
    assert_eq!(answer["response"]["allowed"], false, "{answer}");
    assert!(message.contains(&"v".repeat(64)), "{message}");
    assert!(!message.contains(&"v".repeat(65)), "{message}");
}

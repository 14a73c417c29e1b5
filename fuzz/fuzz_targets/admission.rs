//! Arbitrary bytes as the body of an AdmissionReview sent to `credbroker inject`: parsing (kube's
//! AdmissionReview of a k8s-openapi Pod), the ServiceAccount's annotations, the mutation and the
//! answer. Every input must be answered with a well-formed `admission.k8s.io/v1`
//! AdmissionReview; a patch must apply to the pod it was made for, and the patched pod must
//! then be left alone (idempotence).
#![no_main]

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use credbroker::clouds::InjectFlags;
use credbroker::inject::accounts::{Accounts, LookupError};
use credbroker::inject::metrics::InjectMetrics;
use credbroker::inject::mutate::Sidecar;
use credbroker::inject::part::ServiceAccount;
use credbroker::inject::review::Webhook;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

/// Every ServiceAccount exists and names an identity in every cloud (and further identities),
/// so a pod that parses goes through every cloud's part; `plain` names none.
struct Everyone;

impl Accounts for Everyone {
    async fn get(&self, namespace: &str, name: &str) -> Result<ServiceAccount, LookupError> {
        let pairs: &[(&str, &str)] = match name {
            "missing" => return Err(LookupError::NotFound(format!("{namespace}/{name}"))),
            "plain" => &[("team", "x")],
            _ => &[
                ("eks.amazonaws.com/role-arn", "arn:aws:iam::123456789012:role/app"),
                ("credbroker.io/aws-roles", "reader=arn:aws:iam::123456789012:role/reader"),
                ("credbroker.io/aws-chained-roles", "audit=arn:aws:iam::210987654321:role/audit@reader"),
                ("azure.workload.identity/client-id", "3f9a1c2e-7b4d-4e8f-a1b2-c3d4e5f60718"),
                ("iam.gke.io/gcp-service-account", "app@my-project.iam.gserviceaccount.com"),
                ("credbroker.io/oci", "true"),
            ],
        };
        Ok(ServiceAccount {
            namespace: namespace.into(),
            name: name.into(),
            annotations: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
        })
    }
}

struct World {
    runtime: tokio::runtime::Runtime,
    webhook: Webhook<Everyone>,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| World {
        runtime: tokio::runtime::Builder::new_current_thread().build().unwrap(),
        webhook: Webhook {
            accounts: Everyone,
            sidecar: Sidecar {
                image: "ghcr.io/credbroker/credbroker:0.1.0".into(),
            },
            flags: InjectFlags::parse_from([
                "--aws-region",
                "eu-west-1",
                "--azure-tenant-id",
                "72f988bf-86f1-41af-91ab-2d7cd011db47",
                "--gcp-workload-identity-provider",
                "//iam.googleapis.com/projects/314159/locations/global/workloadIdentityPools/pool/providers/k8s",
                "--gcp-project-id",
                "my-project",
                "--oci-region",
                "us-ashburn-1",
            ])
            .unwrap(),
            metrics: Arc::new(InjectMetrics::default()),
        },
    })
}

fn review(body: &[u8]) -> Value {
    let w = world();
    w.runtime
        .block_on(w.webhook.review(Ok(Bytes::copy_from_slice(body))))
}

fuzz_target!(|data: &[u8]| {
    let answer = review(data);
    assert_eq!(answer["apiVersion"], "admission.k8s.io/v1", "{answer}");
    assert_eq!(answer["kind"], "AdmissionReview", "{answer}");
    let response = &answer["response"];
    assert!(response["uid"].is_string(), "{answer}");
    let allowed = response["allowed"].as_bool().expect("allowed is a boolean");
    if !allowed {
        let message = response["status"]["message"].as_str().unwrap_or_default();
        assert!(!message.is_empty(), "a refusal says why: {answer}");
    }
    let Some(patch) = response["patch"].as_str() else {
        return;
    };
    assert!(allowed);
    assert_eq!(response["patchType"], "JSONPatch");
    let patch: json_patch::Patch =
        serde_json::from_slice(&STANDARD.decode(patch).expect("base64")).expect("a JSON Patch");
    // The patch applies to the object that was sent ...
    let request: Value = serde_json::from_slice(data).expect("a patched review parsed");
    let mut pod = request["request"]["object"].clone();
    json_patch::patch(&mut pod, &patch).expect("the patch applies to the pod it was made for");
    // ... and the patched pod, reviewed again (reinvocation), is left as it is.
    let mut again = request.clone();
    again["request"]["object"] = pod;
    let second = review(&serde_json::to_vec(&again).unwrap());
    assert_eq!(second["response"]["allowed"], true, "{second}");
    assert!(
        second["response"]["patch"].is_null(),
        "reinvocation must not patch again: {second}"
    );
});

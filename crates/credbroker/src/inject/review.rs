//! One AdmissionReview in, one out: parse (a malformed, oversized or non-Pod request gets a
//! well-formed error review, never a panic), read the ServiceAccount, ask each cloud for its
//! part, patch, answer with the request's `uid`.

use std::sync::Arc;
use std::time::Instant;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http::request::Parts;
use k8s_openapi::api::core::v1::Pod;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use serde_json::Value;

use super::accounts::{Accounts, LookupError};
use super::metrics::{InjectMetrics, Outcome};
use super::mutate::{self, Parts as CloudParts, Sidecar};
use super::part::{Refusal, ServiceAccount};
use crate::clouds::{CLOUDS, InjectFlags};
use crate::http::server::{BodyError, BodyHandler, Resp, json, text};

/// The label that asks for injection (the webhook configuration's objectSelector).
pub const LABEL: &str = "credbroker.io/inject";
/// An AdmissionReview of a pod is well under a megabyte; the API server caps requests at 3 MiB.
const MAX_REVIEW_BYTES: usize = 4 * 1024 * 1024;

/// The webhook: where ServiceAccounts come from, what the sidecar is, the clouds' settings.
pub struct Webhook<A: Accounts> {
    pub accounts: A,
    pub sidecar: Sidecar,
    pub flags: InjectFlags,
    pub metrics: Arc<InjectMetrics>,
}

/// The only AdmissionReview version answered.
const REVIEW_API_VERSION: &str = "admission.k8s.io/v1";

/// What became of one review.
enum Verdict {
    Patched(json_patch::Patch),
    Unchanged,
    Refused(Refusal),
}

impl<A: Accounts> Webhook<A> {
    /// The AdmissionReview answering `body`.
    pub async fn review(&self, body: Result<Bytes, BodyError>) -> Value {
        let started = Instant::now();
        let (response, outcome) = match body {
            Err(e) => (invalid(&e.to_string()), Outcome::Malformed),
            Ok(body) => self.answer(&body).await,
        };
        self.metrics.observe(outcome, started.elapsed());
        response
    }

    async fn answer(&self, body: &[u8]) -> (Value, Outcome) {
        // JSON is UTF-8 (RFC 8259 §8.1), and the API server sends nothing else; serde_json checks
        // only the strings it keeps, so an unknown field's invalid bytes would otherwise pass
        // (found by fuzz/fuzz_targets/admission.rs; fuzz/regressions/admission/).
        if let Err(e) = std::str::from_utf8(body) {
            return (
                invalid(&format!(
                    "not an admission.k8s.io/v1 AdmissionReview: the body is not UTF-8 (byte {})",
                    e.valid_up_to()
                )),
                Outcome::Malformed,
            );
        }
        let review: AdmissionReview<Pod> = match serde_json::from_slice(body) {
            Ok(r) => r,
            Err(e) => {
                let why = if is_other_kind(body) {
                    "credbroker inject mutates Pods only; the webhook configuration sends it something else".to_string()
                } else {
                    format!("not an admission.k8s.io/v1 AdmissionReview of a Pod: {e}")
                };
                return (invalid_request(body, &why), Outcome::Malformed);
            }
        };
        // kube-core answers with the request's own apiVersion, whatever it is; the API server
        // sends v1 (the configuration lists admissionReviewVersions ["v1"]), so anything else
        // is not a review this webhook can answer (found by fuzz/fuzz_targets/admission.rs).
        if review.types.api_version != REVIEW_API_VERSION || review.types.kind != "AdmissionReview"
        {
            // Quoted, but bounded: the body is up to 4 MiB of someone else's text.
            let shown = |s: &str| s.chars().take(64).collect::<String>();
            let why = format!(
                "not an {REVIEW_API_VERSION} AdmissionReview (apiVersion {:?}, kind {:?}); the webhook configuration must list admissionReviewVersions [\"v1\"]",
                shown(&review.types.api_version),
                shown(&review.types.kind)
            );
            return (invalid_request(body, &why), Outcome::Malformed);
        }
        let request: AdmissionRequest<Pod> = match review.try_into() {
            Ok(r) => r,
            Err(e) => {
                return (
                    invalid(&format!("no request in the review: {e}")),
                    Outcome::Malformed,
                );
            }
        };
        let base = AdmissionResponse::from(&request);
        let verdict = self.decide(&request).await;
        let (response, outcome) = match verdict {
            Ok(Verdict::Patched(patch)) => match base.with_patch(patch) {
                Ok(r) => (r, Outcome::Injected),
                Err(e) => (
                    AdmissionResponse::from(&request).deny(format!("cannot encode the patch: {e}")),
                    Outcome::Error,
                ),
            },
            Ok(Verdict::Unchanged) => (base, Outcome::Unchanged),
            Ok(Verdict::Refused(why)) => (base.deny(why), Outcome::Refused),
            Err(why) => (base.deny(why), Outcome::Malformed),
        };
        (to_json(response), outcome)
    }

    async fn decide(&self, request: &AdmissionRequest<Pod>) -> Result<Verdict, String> {
        let kind = &request.kind;
        if !kind.group.is_empty() || kind.version != "v1" || kind.kind != "Pod" {
            return Err(format!(
                "credbroker inject mutates v1 Pods only, not {}/{} {}",
                kind.group, kind.version, kind.kind
            ));
        }
        if !matches!(request.operation, Operation::Create) {
            return Ok(Verdict::Unchanged);
        }
        let pod = request
            .object
            .as_ref()
            .ok_or("the review carries no Pod object")?;
        let asked = pod
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(LABEL))
            .is_some_and(|v| v == "true");
        if !asked {
            // The objectSelector sends only labelled pods; anything else is left as it is.
            return Ok(Verdict::Unchanged);
        }
        let namespace = request
            .namespace
            .clone()
            .or_else(|| pod.metadata.namespace.clone())
            .unwrap_or_else(|| "default".into());
        let name = pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "default".into());
        let read = Instant::now();
        let account = self.accounts.get(&namespace, &name).await;
        self.metrics.observe_read(read.elapsed(), account.is_ok());
        let account = match account {
            Ok(a) => a,
            Err(e) => return Ok(Verdict::Refused(refusal_for(e))),
        };
        let parts = match parts(&account, &self.flags) {
            Ok(p) => p,
            Err(why) => return Ok(Verdict::Refused(why)),
        };
        match mutate::patch(pod, &parts, &self.sidecar) {
            Ok(patch) if patch.0.is_empty() => Ok(Verdict::Unchanged),
            Ok(patch) => Ok(Verdict::Patched(patch)),
            Err(why) => Ok(Verdict::Refused(why)),
        }
    }
}

/// Each cloud's part for this ServiceAccount; a refusal when it names no identity at all.
pub fn parts(account: &ServiceAccount, flags: &InjectFlags) -> Result<CloudParts, Refusal> {
    let mut parts = Vec::new();
    for cloud in CLOUDS {
        if let Some(part) = cloud.inject(account, flags)? {
            parts.push((cloud.name(), part));
        }
    }
    if parts.is_empty() {
        let names: Vec<&str> = CLOUDS.iter().map(|c| c.identity_annotation()).collect();
        return Err(Refusal(format!(
            "the pod asks for credentials ({LABEL}: \"true\") but its ServiceAccount {} names no identity: annotate it with one of {}",
            account.id(),
            crate::config::and_list(&names)
        )));
    }
    Ok(parts)
}

fn refusal_for(e: LookupError) -> Refusal {
    let hint = match &e {
        LookupError::NotFound(_) => {
            "; create the ServiceAccount (with its cloud annotations) before the pod"
        }
        _ => "",
    };
    Refusal(format!("{e}{hint}"))
}

/// A review whose request is not a Pod review at all (the configuration sent another kind).
fn is_other_kind(body: &[u8]) -> bool {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v["request"]["kind"]["kind"].as_str().map(|k| k != "Pod"))
        .unwrap_or(false)
}

/// An error review for a request that could not be read (no `uid` to answer with).
fn invalid(why: &str) -> Value {
    to_json(AdmissionResponse::invalid(why))
}

/// An error review for a review that is not one of a Pod, with its `uid` when it has one: the
/// API server takes a response with another `uid` for a failed call and reports that instead.
fn invalid_request(body: &[u8], why: &str) -> Value {
    let mut response = AdmissionResponse::invalid(why);
    if let Some(uid) = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v["request"]["uid"].as_str().map(str::to_string))
    {
        response.uid = uid;
    }
    to_json(response)
}

/// The review as the API server reads it. kube-core keeps the patch as bytes and serialises
/// them as a JSON array of numbers (kube-rs/kube#1781); `patch` is a Go `[]byte`, which the
/// API's JSON carries base64-encoded, so it is written that way here.
fn to_json(response: AdmissionResponse) -> Value {
    let patch = response.patch.clone();
    let mut review = serde_json::to_value(response.into_review()).unwrap_or(Value::Null);
    if let Some(bytes) = patch {
        review["response"]["patch"] = Value::String(STANDARD.encode(bytes));
    }
    review
}

impl<A: Accounts> BodyHandler for Webhook<A> {
    const MAX_BODY: usize = MAX_REVIEW_BYTES;

    async fn call(&self, req: Parts, body: Result<Bytes, BodyError>) -> Resp {
        if req.uri.path() != "/mutate" {
            return text(404, "only /mutate is served here\n");
        }
        if req.method != http::Method::POST {
            return text(405, "use POST\n");
        }
        json(200, self.review(body).await.to_string())
    }
}

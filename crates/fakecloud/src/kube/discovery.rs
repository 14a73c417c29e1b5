//! Discovery documents: `/version`, `/api`, `/api/v1`, `/apis`, and the `Accept` negotiation
//! around them.
//!
//! client-go's discovery (kubectl 1.32, `staging/src/k8s.io/client-go/discovery/discovery_client.go`)
//! asks `/api` and `/apis` first for the aggregated format
//! (`application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList`, then `v2beta1`),
//! with plain `application/json` last in the same `Accept`. It switches on the response's
//! `Content-Type`: a plain `application/json` answer is read as the legacy `APIVersions` /
//! `APIGroupList`, after which it fetches `/api/v1` (an `APIResourceList`) itself. This server
//! answers in the legacy format only.

use serde_json::{Value, json};
use std::net::SocketAddr;

/// What `/version` reports: the newest minor kubectl 1.32 is documented to be within skew of.
pub const GIT_VERSION: &str = "v1.32.0";

pub fn version() -> Value {
    json!({
        "major": "1",
        "minor": "32",
        "gitVersion": GIT_VERSION,
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2024-12-11T00:00:00Z",
        "goVersion": "go1.23.3",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}

/// `/api`: the legacy core group's versions.
pub fn api_versions(addr: SocketAddr) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": addr.to_string()}],
    })
}

/// `/api/v1`: the resources this server serves (namespaces only as far as kubectl reads them), with the verbs it implements (no `watch`,
/// no `deletecollection`) and the short name `sa` (`pkg/registry/core/serviceaccount/storage/storage.go`).
pub fn core_v1_resources() -> Value {
    json!({
        "kind": "APIResourceList",
        "groupVersion": "v1",
        "resources": [{
            "name": "namespaces",
            "singularName": "namespace",
            "namespaced": false,
            "kind": "Namespace",
            "verbs": ["get"],
            "shortNames": ["ns"],
        }, {
            "name": "serviceaccounts",
            "singularName": "serviceaccount",
            "namespaced": true,
            "kind": "ServiceAccount",
            "verbs": ["create", "delete", "get", "list", "patch", "update"],
            "shortNames": ["sa"],
        }],
    })
}

/// `/apis`: no named groups.
pub fn api_groups() -> Value {
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": []})
}

/// Whether an `Accept` header admits a plain JSON answer: a missing header, `*/*`,
/// `application/*`, or `application/json` without an `as=` (aggregated discovery, Table)
/// parameter. kubectl and client-go always list plain JSON last as the fallback.
pub fn accepts_plain_json(accept: Option<&str>) -> bool {
    let Some(accept) = accept else {
        return true;
    };
    if accept.trim().is_empty() {
        return true;
    }
    accept.split(',').any(|part| {
        let mut pieces = part.split(';').map(str::trim);
        let essence = pieces.next().unwrap_or("").to_ascii_lowercase();
        let plain = pieces.all(|p| !p.to_ascii_lowercase().starts_with("as="));
        plain
            && matches!(
                essence.as_str(),
                "application/json" | "*/*" | "application/*"
            )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_negotiation() {
        // What kubectl 1.32 sends to /api and /apis.
        let kubectl = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,\
                       application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,\
                       application/json";
        assert!(accepts_plain_json(Some(kubectl)));
        assert!(accepts_plain_json(None));
        assert!(accepts_plain_json(Some("*/*")));
        assert!(accepts_plain_json(Some(
            "application/vnd.kubernetes.protobuf, application/json"
        )));
        assert!(!accepts_plain_json(Some(
            "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
        )));
        assert!(!accepts_plain_json(Some(
            "application/vnd.kubernetes.protobuf"
        )));
        assert!(!accepts_plain_json(Some(
            "application/json;as=Table;v=v1;g=meta.k8s.io"
        )));
    }
}

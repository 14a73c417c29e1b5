//! The `v1` ServiceAccount object as the API server stores and serialises it: fields in the
//! Go struct's order (kubernetes `staging/src/k8s.io/api/core/v1/types.go`, `ServiceAccount`;
//! `staging/src/k8s.io/apimachinery/pkg/apis/meta/v1/types.go`, `ObjectMeta`), `omitempty`
//! fields left out when empty, unknown fields dropped (or refused under
//! `fieldValidation=Strict`).

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

use super::status::ApiError;

/// `metadata` of a stored object. Fields the fake never sets itself (`generation`,
/// `deletionTimestamp`, `managedFields`, ...) are kept as the client sent them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub generate_name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uid: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub resource_version: String,
    /// Go's `int64` with `omitempty`: zero is absent.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub generation: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_timestamp: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_grace_period_seconds: Option<i64>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub owner_references: Vec<Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub finalizers: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub managed_fields: Vec<Value>,
}

/// `core/v1` `ObjectReference` (a ServiceAccount's `secrets`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectReference {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uid: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub api_version: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub resource_version: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub field_path: String,
}

/// `core/v1` `LocalObjectReference` (`imagePullSecrets`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LocalObjectReference {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
}

/// A `v1` ServiceAccount. `kind`/`apiVersion` are always `ServiceAccount`/`v1` when served
/// on its own; list items carry neither, as the real server's lists.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceAccount {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub api_version: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<ObjectReference>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_pull_secrets: Vec<LocalObjectReference>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub automount_service_account_token: Option<bool>,
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

pub const KIND: &str = "ServiceAccount";
pub const API_VERSION: &str = "v1";

const SA_FIELDS: &[&str] = &[
    "kind",
    "apiVersion",
    "metadata",
    "secrets",
    "imagePullSecrets",
    "automountServiceAccountToken",
];
const META_FIELDS: &[&str] = &[
    "name",
    "generateName",
    "namespace",
    "selfLink",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "labels",
    "annotations",
    "ownerReferences",
    "finalizers",
    "managedFields",
];
const REF_FIELDS: &[&str] = &[
    "kind",
    "namespace",
    "name",
    "uid",
    "apiVersion",
    "resourceVersion",
    "fieldPath",
];
const LOCAL_REF_FIELDS: &[&str] = &["name"];

/// How unknown fields are treated (`?fieldValidation=`, kubernetes
/// `staging/src/k8s.io/apimachinery/pkg/apis/meta/v1/types.go` `CreateOptions.FieldValidation`;
/// the server's default is `Warn`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldValidation {
    Ignore,
    Warn,
    Strict,
}

impl FieldValidation {
    pub fn from_query(value: Option<&str>) -> Result<FieldValidation, ApiError> {
        match value {
            None | Some("") | Some("Warn") => Ok(FieldValidation::Warn),
            Some("Ignore") => Ok(FieldValidation::Ignore),
            Some("Strict") => Ok(FieldValidation::Strict),
            Some(other) => Err(ApiError::BadRequest(format!(
                "fieldValidation must be one of Ignore, Warn, Strict; got {other:?}"
            ))),
        }
    }
}

/// Field paths in `value` that a ServiceAccount does not have (`.spec`, `.metadata.foo`, ...).
pub fn unknown_fields(value: &Value) -> Vec<String> {
    let mut out = Vec::new();
    collect_unknown(value, SA_FIELDS, "", &mut out);
    if let Some(meta) = value.get("metadata") {
        collect_unknown(meta, META_FIELDS, ".metadata", &mut out);
    }
    for (list, fields) in [
        ("secrets", REF_FIELDS),
        ("imagePullSecrets", LOCAL_REF_FIELDS),
    ] {
        if let Some(Value::Array(items)) = value.get(list) {
            for (i, item) in items.iter().enumerate() {
                collect_unknown(item, fields, &format!(".{list}[{i}]"), &mut out);
            }
        }
    }
    out
}

fn collect_unknown(value: &Value, known: &[&str], prefix: &str, out: &mut Vec<String>) {
    if let Value::Object(map) = value {
        for key in map.keys() {
            if !known.contains(&key.as_str()) {
                out.push(format!("{prefix}.{key}"));
            }
        }
    }
}

/// Decodes a request body into a ServiceAccount, applying `validation` to unknown fields.
/// Returns the object and the warnings to send (`Warning: 299 - "unknown field ..."`).
pub fn decode(
    value: Value,
    validation: FieldValidation,
) -> Result<(ServiceAccount, Vec<String>), ApiError> {
    if !value.is_object() {
        return Err(ApiError::BadRequest(
            "the request body is not a JSON object".to_string(),
        ));
    }
    let unknown = unknown_fields(&value);
    let warnings = match validation {
        FieldValidation::Strict if !unknown.is_empty() => {
            let fields: Vec<String> = unknown
                .iter()
                .map(|f| format!("unknown field \"{}\"", f.trim_start_matches('.')))
                .collect();
            return Err(ApiError::BadRequest(format!(
                "strict decoding error: {}",
                fields.join(", ")
            )));
        }
        FieldValidation::Warn => unknown
            .iter()
            .map(|f| format!("unknown field \"{}\"", f.trim_start_matches('.')))
            .collect(),
        _ => Vec::new(),
    };
    let sa: ServiceAccount = serde_json::from_value(value)
        .map_err(|e| ApiError::BadRequest(format!("unable to decode the ServiceAccount: {e}")))?;
    check_type(&sa)?;
    Ok((sa, warnings))
}

/// A body's `kind` and `apiVersion`, when given, must be `ServiceAccount` and `v1`.
pub fn check_type(sa: &ServiceAccount) -> Result<(), ApiError> {
    if !sa.kind.is_empty() && sa.kind != KIND {
        return Err(ApiError::BadRequest(format!(
            "the kind in the data ({}) does not match the expected kind ({KIND})",
            sa.kind
        )));
    }
    if !sa.api_version.is_empty() && sa.api_version != API_VERSION {
        return Err(ApiError::BadRequest(format!(
            "the API version in the data ({}) does not match the expected API version ({API_VERSION})",
            sa.api_version
        )));
    }
    Ok(())
}

/// A DNS-1123 subdomain (kubernetes
/// `staging/src/k8s.io/apimachinery/pkg/util/validation/validation.go`, `IsDNS1123Subdomain`):
/// at most 253 characters, lower-case alphanumerics, `-` and `.`, each dot-separated label
/// starting and ending with an alphanumeric. `None` when valid, else why not.
pub fn invalid_name(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("name or generateName is required".to_string());
    }
    if name.len() > 253 {
        return Some("must be no more than 253 characters".to_string());
    }
    let label_ok = |label: &str| {
        let bytes = label.as_bytes();
        !bytes.is_empty()
            && bytes[0].is_ascii_alphanumeric()
            && bytes[bytes.len() - 1].is_ascii_alphanumeric()
            && bytes
                .iter()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
    };
    if name.split('.').all(label_ok) {
        None
    } else {
        Some(
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, \
             '-' or '.', and must start and end with an alphanumeric character"
                .to_string(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn serialises_in_go_field_order_and_omits_empty() {
        let sa = ServiceAccount {
            kind: KIND.into(),
            api_version: API_VERSION.into(),
            metadata: ObjectMeta {
                name: "app".into(),
                namespace: "default".into(),
                uid: "u".into(),
                resource_version: "7".into(),
                creation_timestamp: Some("2025-01-01T00:00:00Z".into()),
                ..ObjectMeta::default()
            },
            ..ServiceAccount::default()
        };
        assert_eq!(
            serde_json::to_string(&sa).unwrap(),
            r#"{"kind":"ServiceAccount","apiVersion":"v1","metadata":{"name":"app","namespace":"default","uid":"u","resourceVersion":"7","creationTimestamp":"2025-01-01T00:00:00Z"}}"#
        );
    }

    #[test]
    fn unknown_fields_follow_field_validation() {
        let body = json!({"metadata": {"name": "a", "colour": "red"}, "spec": {}});
        let err = decode(body.clone(), FieldValidation::Strict).unwrap_err();
        assert_eq!(err.code(), 400);
        assert!(
            err.to_string()
                .contains("unknown field \"metadata.colour\""),
            "{err}"
        );
        let (sa, warnings) = decode(body.clone(), FieldValidation::Warn).unwrap();
        assert_eq!(sa.metadata.name, "a");
        assert_eq!(warnings.len(), 2);
        let (_, warnings) = decode(body, FieldValidation::Ignore).unwrap();
        assert!(warnings.is_empty());
        let err = decode(json!({"kind": "Pod"}), FieldValidation::Warn).unwrap_err();
        assert_eq!(err.code(), 400);
        let err = decode(
            json!({"metadata": {"labels": {"a": 1}}}),
            FieldValidation::Warn,
        )
        .unwrap_err();
        assert_eq!(err.code(), 400);
    }

    #[test]
    fn names_are_dns_subdomains() {
        assert_eq!(invalid_name("credbroker-injector"), None);
        assert_eq!(invalid_name("a.b-c.d"), None);
        for bad in ["", "App", "-a", "a-", "a..b", "a_b", &"a".repeat(254)] {
            assert!(invalid_name(bad).is_some(), "{bad:?}");
        }
    }
}

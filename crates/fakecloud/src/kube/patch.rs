//! The three patch types kube-apiserver accepts on a built-in object
//! (kubernetes `staging/src/k8s.io/apiserver/pkg/endpoints/handlers/patch.go`):
//!
//! - `application/merge-patch+json`: RFC 7386 JSON merge patch (what `kubectl annotate` and
//!   `kubectl label` send, `staging/src/k8s.io/kubectl/pkg/cmd/annotate/annotate.go`).
//! - `application/strategic-merge-patch+json`: a merge patch whose lists with a patch merge key
//!   are merged by it. On a ServiceAccount that is `secrets` (merge key `name`,
//!   `staging/src/k8s.io/api/core/v1/types.go`); the `$patch: delete` list directive and
//!   `$setElementOrder/` keys are understood, and every other list is replaced.
//! - `application/json-patch+json`: RFC 6902 operations with RFC 6901 pointers.
//!
//! Server-side apply (`application/apply-patch+yaml`) is not emulated: it is answered 415.

use serde_json::{Map, Value};

use super::status::ApiError;

/// The `Content-Type` values this server accepts on PATCH, as its 415 lists them.
pub const ACCEPTED: &str = "application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    Json,
    Merge,
    StrategicMerge,
}

impl PatchType {
    /// The patch type a `Content-Type` names (parameters such as `charset` ignored).
    pub fn from_content_type(content_type: Option<&str>) -> Result<PatchType, ApiError> {
        let essence = content_type
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match essence.as_str() {
            "application/json-patch+json" => Ok(PatchType::Json),
            "application/merge-patch+json" => Ok(PatchType::Merge),
            "application/strategic-merge-patch+json" => Ok(PatchType::StrategicMerge),
            _ => Err(ApiError::UnsupportedMediaType(ACCEPTED)),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            PatchType::Json => "json",
            PatchType::Merge => "merge",
            PatchType::StrategicMerge => "strategic",
        }
    }
}

/// Applies `patch` (the raw request body) of type `kind` to `target`.
pub fn apply(kind: PatchType, target: &Value, patch: &[u8]) -> Result<Value, ApiError> {
    let patch: Value = serde_json::from_slice(patch)
        .map_err(|e| ApiError::BadRequest(format!("error decoding patch: {e}")))?;
    match kind {
        PatchType::Merge => Ok(merge_patch(target, &patch)),
        PatchType::StrategicMerge => {
            if !patch.is_object() {
                return Err(ApiError::BadRequest(
                    "a strategic merge patch must be a JSON object".to_string(),
                ));
            }
            Ok(strategic_merge(target, &patch, ""))
        }
        PatchType::Json => json_patch(target, &patch),
    }
}

/// RFC 7386 §2: objects merge key by key, `null` removes, anything else replaces.
pub fn merge_patch(target: &Value, patch: &Value) -> Value {
    let Value::Object(patch) = patch else {
        return patch.clone();
    };
    let mut out = match target {
        Value::Object(map) => map.clone(),
        _ => Map::new(),
    };
    for (key, value) in patch {
        if value.is_null() {
            out.remove(key);
        } else {
            let merged = merge_patch(out.get(key).unwrap_or(&Value::Null), value);
            out.insert(key.clone(), merged);
        }
    }
    Value::Object(out)
}

/// Lists of a ServiceAccount merged by a key under a strategic merge patch.
fn merge_key(path: &str) -> Option<&'static str> {
    (path == ".secrets").then_some("name")
}

fn strategic_merge(target: &Value, patch: &Value, path: &str) -> Value {
    let Value::Object(patch) = patch else {
        return patch.clone();
    };
    let mut out = match target {
        Value::Object(map) => map.clone(),
        _ => Map::new(),
    };
    for (key, value) in patch {
        if key.starts_with("$setElementOrder/") || key.starts_with("$retainKeys") {
            continue;
        }
        let child = format!("{path}.{key}");
        match (value, merge_key(&child)) {
            (Value::Null, _) => {
                out.remove(key);
            }
            (Value::Array(items), Some(merge_key)) => {
                let current = match out.get(key) {
                    Some(Value::Array(current)) => current.clone(),
                    _ => Vec::new(),
                };
                let merged = merge_list(current, items, merge_key, &child);
                if merged.is_empty() {
                    out.remove(key);
                } else {
                    out.insert(key.clone(), Value::Array(merged));
                }
            }
            _ => {
                let merged = strategic_merge(out.get(key).unwrap_or(&Value::Null), value, &child);
                out.insert(key.clone(), merged);
            }
        }
    }
    Value::Object(out)
}

fn merge_list(mut current: Vec<Value>, patch: &[Value], key: &str, path: &str) -> Vec<Value> {
    for item in patch {
        let id = item.get(key).cloned();
        let position = id
            .as_ref()
            .and_then(|id| current.iter().position(|c| c.get(key) == Some(id)));
        let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
        match (position, delete) {
            (Some(i), true) => {
                current.remove(i);
            }
            (None, true) => {}
            (Some(i), false) => current[i] = strategic_merge(&current[i], item, path),
            (None, false) => current.push(item.clone()),
        }
    }
    current
}

/// RFC 6902. A malformed operation is a 400; one that does not apply (a missing path, a
/// failed `test`) is a 422, as kube-apiserver answers them.
pub fn json_patch(target: &Value, patch: &Value) -> Result<Value, ApiError> {
    let Value::Array(ops) = patch else {
        return Err(ApiError::BadRequest(
            "a JSON patch must be an array of operations".to_string(),
        ));
    };
    let mut doc = target.clone();
    for (i, op) in ops.iter().enumerate() {
        let field = |name: &str| -> Result<&str, ApiError> {
            op.get(name).and_then(Value::as_str).ok_or_else(|| {
                ApiError::BadRequest(format!("JSON patch operation {i} has no string \"{name}\""))
            })
        };
        let value = || -> Result<Value, ApiError> {
            op.get("value").cloned().ok_or_else(|| {
                ApiError::BadRequest(format!("JSON patch operation {i} has no \"value\""))
            })
        };
        let path = parse_pointer(field("path")?)?;
        match field("op")? {
            "add" => add(&mut doc, &path, value()?)?,
            "remove" => {
                remove(&mut doc, &path)?;
            }
            "replace" => {
                remove(&mut doc, &path)?;
                add(&mut doc, &path, value()?)?;
            }
            "move" => {
                let from = parse_pointer(field("from")?)?;
                if path.len() > from.len() && path[..from.len()] == from[..] {
                    return Err(ApiError::Unprocessable(format!(
                        "JSON patch operation {i}: cannot move a value into itself"
                    )));
                }
                let moved = remove(&mut doc, &from)?;
                add(&mut doc, &path, moved)?;
            }
            "copy" => {
                let from = parse_pointer(field("from")?)?;
                let copied = resolve(&doc, &from)?.clone();
                add(&mut doc, &path, copied)?;
            }
            "test" => {
                let expected = value()?;
                if resolve(&doc, &path)? != &expected {
                    return Err(ApiError::Unprocessable(format!(
                        "testing value {} failed: test failed",
                        pointer_text(&path)
                    )));
                }
            }
            other => {
                return Err(ApiError::BadRequest(format!(
                    "JSON patch operation {i}: unknown op {other:?}"
                )));
            }
        }
    }
    Ok(doc)
}

/// RFC 6901 reference tokens (`~1` is `/`, `~0` is `~`).
fn parse_pointer(pointer: &str) -> Result<Vec<String>, ApiError> {
    if pointer.is_empty() {
        return Ok(Vec::new());
    }
    let Some(rest) = pointer.strip_prefix('/') else {
        return Err(ApiError::BadRequest(format!(
            "JSON pointer {pointer:?} does not start with '/'"
        )));
    };
    Ok(rest
        .split('/')
        .map(|t| t.replace("~1", "/").replace("~0", "~"))
        .collect())
}

fn pointer_text(path: &[String]) -> String {
    path.iter()
        .map(|t| format!("/{}", t.replace('~', "~0").replace('/', "~1")))
        .collect()
}

fn missing(path: &[String]) -> ApiError {
    ApiError::Unprocessable(format!(
        "doc is missing path: \"{}\": missing value",
        pointer_text(path)
    ))
}

fn resolve<'a>(doc: &'a Value, path: &[String]) -> Result<&'a Value, ApiError> {
    let mut cur = doc;
    for token in path {
        cur = match cur {
            Value::Object(map) => map.get(token),
            Value::Array(items) => token.parse::<usize>().ok().and_then(|i| items.get(i)),
            _ => None,
        }
        .ok_or_else(|| missing(path))?;
    }
    Ok(cur)
}

fn parent_mut<'a>(doc: &'a mut Value, path: &[String]) -> Result<&'a mut Value, ApiError> {
    let mut cur = doc;
    for token in &path[..path.len() - 1] {
        cur = match cur {
            Value::Object(map) => map.get_mut(token),
            Value::Array(items) => token.parse::<usize>().ok().and_then(|i| items.get_mut(i)),
            _ => None,
        }
        .ok_or_else(|| missing(path))?;
    }
    Ok(cur)
}

fn add(doc: &mut Value, path: &[String], value: Value) -> Result<(), ApiError> {
    let Some(last) = path.last() else {
        *doc = value;
        return Ok(());
    };
    match parent_mut(doc, path)? {
        Value::Object(map) => {
            map.insert(last.clone(), value);
            Ok(())
        }
        Value::Array(items) => {
            let index = if last == "-" {
                items.len()
            } else {
                last.parse::<usize>()
                    .ok()
                    .filter(|i| *i <= items.len())
                    .ok_or_else(|| missing(path))?
            };
            items.insert(index, value);
            Ok(())
        }
        _ => Err(missing(path)),
    }
}

fn remove(doc: &mut Value, path: &[String]) -> Result<Value, ApiError> {
    let Some(last) = path.last() else {
        return Err(ApiError::Unprocessable(
            "cannot remove the whole document".to_string(),
        ));
    };
    match parent_mut(doc, path)? {
        Value::Object(map) => map.remove(last).ok_or_else(|| missing(path)),
        Value::Array(items) => last
            .parse::<usize>()
            .ok()
            .filter(|i| *i < items.len())
            .map(|i| items.remove(i))
            .ok_or_else(|| missing(path)),
        _ => Err(missing(path)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_follows_rfc7386_examples() {
        // RFC 7386 appendix A, a selection.
        let cases = [
            (json!({"a": "b"}), json!({"a": "c"}), json!({"a": "c"})),
            (
                json!({"a": "b"}),
                json!({"b": "c"}),
                json!({"a": "b", "b": "c"}),
            ),
            (json!({"a": "b"}), json!({"a": null}), json!({})),
            (
                json!({"a": [{"b": "c"}]}),
                json!({"a": [1]}),
                json!({"a": [1]}),
            ),
            (json!(["a", "b"]), json!({"a": "c"}), json!({"a": "c"})),
            (
                json!({"e": null}),
                json!({"a": 1}),
                json!({"e": null, "a": 1}),
            ),
            (
                json!({}),
                json!({"a": {"bb": {"ccc": null}}}),
                json!({"a": {"bb": {}}}),
            ),
        ];
        for (target, patch, expected) in cases {
            assert_eq!(merge_patch(&target, &patch), expected, "{patch}");
        }
    }

    #[test]
    fn strategic_merge_merges_secrets_by_name() {
        let target =
            json!({"secrets": [{"name": "a"}, {"name": "b"}], "imagePullSecrets": [{"name": "x"}]});
        let patch = json!({
            "$setElementOrder/secrets": [{"name": "a"}, {"name": "c"}],
            "secrets": [{"name": "c"}, {"name": "b", "$patch": "delete"}],
            "imagePullSecrets": [{"name": "y"}],
            "metadata": {"annotations": {"k": "v"}},
        });
        let out = apply(
            PatchType::StrategicMerge,
            &target,
            patch.to_string().as_bytes(),
        )
        .unwrap();
        assert_eq!(
            out,
            json!({"secrets": [{"name": "a"}, {"name": "c"}], "imagePullSecrets": [{"name": "y"}],
                   "metadata": {"annotations": {"k": "v"}}})
        );
    }

    #[test]
    fn json_patch_operations() {
        let target = json!({"metadata": {"annotations": {"a/b": "1"}}, "list": [1, 2]});
        let patch = json!([
            {"op": "test", "path": "/metadata/annotations/a~1b", "value": "1"},
            {"op": "add", "path": "/metadata/labels", "value": {"x": "y"}},
            {"op": "replace", "path": "/metadata/annotations/a~1b", "value": "2"},
            {"op": "add", "path": "/list/-", "value": 3},
            {"op": "add", "path": "/list/0", "value": 0},
            {"op": "remove", "path": "/list/1"},
            {"op": "copy", "from": "/metadata/labels", "path": "/copied"},
            {"op": "move", "from": "/copied", "path": "/moved"},
        ]);
        let out = json_patch(&target, &patch).unwrap();
        assert_eq!(
            out,
            json!({"metadata": {"annotations": {"a/b": "2"}, "labels": {"x": "y"}},
                   "list": [0, 2, 3], "moved": {"x": "y"}})
        );
        let err = json_patch(&target, &json!([{"op": "remove", "path": "/nope"}])).unwrap_err();
        assert_eq!(err.code(), 422);
        let err = json_patch(
            &target,
            &json!([{"op": "test", "path": "/list/0", "value": 9}]),
        )
        .unwrap_err();
        assert_eq!(err.code(), 422);
        let err = json_patch(&target, &json!([{"op": "jump", "path": "/x"}])).unwrap_err();
        assert_eq!(err.code(), 400);
        let err = json_patch(&target, &json!({"op": "add"})).unwrap_err();
        assert_eq!(err.code(), 400);
    }

    #[test]
    fn patch_types_come_from_content_type() {
        assert_eq!(
            PatchType::from_content_type(Some("application/merge-patch+json; charset=utf-8"))
                .unwrap(),
            PatchType::Merge
        );
        let err = PatchType::from_content_type(Some("application/apply-patch+yaml")).unwrap_err();
        assert_eq!(err.code(), 415);
        assert_eq!(PatchType::from_content_type(None).unwrap_err().code(), 415);
    }
}

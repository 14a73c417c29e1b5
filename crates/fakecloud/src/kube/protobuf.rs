//! Decoding a ServiceAccount sent as `application/vnd.kubernetes.protobuf`, which client-go's
//! typed clients use for request bodies: `kubectl create serviceaccount` POSTs one (seen in this
//! server's request log with kubectl 1.32).
//!
//! The encoding (kubernetes `staging/src/k8s.io/apimachinery/pkg/runtime/serializer/protobuf/protobuf.go`):
//! the 4-byte magic `k8s\0`, then a `runtime.Unknown` message
//! (`staging/src/k8s.io/apimachinery/pkg/runtime/generated.proto`: `typeMeta` = 1 holding
//! `apiVersion` = 1 and `kind` = 2, `raw` = 2, `contentEncoding` = 3, `contentType` = 4) whose
//! `raw` is the object. Field numbers of the object: `staging/src/k8s.io/api/core/v1/generated.proto`
//! (`ServiceAccount`: metadata 1, secrets 2, imagePullSecrets 3, automountServiceAccountToken 4;
//! `ObjectReference`: kind 1, namespace 2, name 3, uid 4, apiVersion 5, resourceVersion 6,
//! fieldPath 7; `LocalObjectReference`: name 1) and
//! `staging/src/k8s.io/apimachinery/pkg/apis/meta/v1/generated.proto` (`ObjectMeta`: name 1,
//! generateName 2, namespace 3, selfLink 4, uid 5, resourceVersion 6, generation 7,
//! creationTimestamp 8, deletionTimestamp 9, deletionGracePeriodSeconds 10, labels 11,
//! annotations 12, ownerReferences 13, finalizers 14, managedFields 17; `OwnerReference`: kind 1,
//! name 3, uid 4, apiVersion 5, controller 6, blockOwnerDeletion 7). Fields this decoder does
//! not know are skipped, as a protobuf decoder does.

use serde_json::{Map, Value, json};
use std::collections::BTreeMap;

use super::object::{LocalObjectReference, ObjectMeta, ObjectReference, ServiceAccount};
use super::status::ApiError;

/// The media type.
pub const CONTENT_TYPE: &str = "application/vnd.kubernetes.protobuf";
const MAGIC: &[u8] = b"k8s\0";

/// One field of a message: its number and its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wire<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    /// Fixed 32- and 64-bit values: no field used here has them; skipped.
    Fixed,
}

fn malformed(what: &str) -> ApiError {
    ApiError::BadRequest(format!("unable to decode the protobuf body: {what}"))
}

fn varint(buf: &mut &[u8]) -> Result<u64, ApiError> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = buf
            .split_first()
            .ok_or_else(|| malformed("truncated varint"))?;
        *buf = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(malformed("varint longer than 10 bytes"))
}

fn take<'a>(buf: &mut &'a [u8], n: usize) -> Result<&'a [u8], ApiError> {
    if buf.len() < n {
        return Err(malformed("truncated field"));
    }
    let (head, rest) = buf.split_at(n);
    *buf = rest;
    Ok(head)
}

/// Every field of a message, in order.
fn fields(mut buf: &[u8]) -> Result<Vec<(u64, Wire<'_>)>, ApiError> {
    let mut out = Vec::new();
    while !buf.is_empty() {
        let key = varint(&mut buf)?;
        let (number, wire_type) = (key >> 3, key & 7);
        let value = match wire_type {
            0 => Wire::Varint(varint(&mut buf)?),
            1 => {
                take(&mut buf, 8)?;
                Wire::Fixed
            }
            2 => {
                let len = usize::try_from(varint(&mut buf)?)
                    .map_err(|_| malformed("length out of range"))?;
                Wire::Bytes(take(&mut buf, len)?)
            }
            5 => {
                take(&mut buf, 4)?;
                Wire::Fixed
            }
            other => return Err(malformed(&format!("unsupported wire type {other}"))),
        };
        out.push((number, value));
    }
    Ok(out)
}

fn text(value: Wire<'_>) -> Result<String, ApiError> {
    match value {
        Wire::Bytes(b) => {
            String::from_utf8(b.to_vec()).map_err(|_| malformed("string is not UTF-8"))
        }
        _ => Err(malformed("expected a length-delimited string")),
    }
}

fn message(value: Wire<'_>) -> Result<&[u8], ApiError> {
    match value {
        Wire::Bytes(b) => Ok(b),
        _ => Err(malformed("expected an embedded message")),
    }
}

fn int(value: Wire<'_>) -> Result<i64, ApiError> {
    match value {
        // Two's complement for negative int64, as protobuf encodes them.
        Wire::Varint(v) => Ok(v as i64),
        _ => Err(malformed("expected a varint")),
    }
}

/// A `map<string, string>` entry (key 1, value 2).
fn map_entry(value: Wire<'_>) -> Result<(String, String), ApiError> {
    let (mut key, mut val) = (String::new(), String::new());
    for (n, v) in fields(message(value)?)? {
        match n {
            1 => key = text(v)?,
            2 => val = text(v)?,
            _ => {}
        }
    }
    Ok((key, val))
}

/// `metav1.Time` (seconds 1, nanos 2) as RFC 3339 seconds, the JSON form.
fn time(value: Wire<'_>) -> Result<String, ApiError> {
    let mut seconds = 0i64;
    for (n, v) in fields(message(value)?)? {
        if n == 1 {
            seconds = int(v)?;
        }
    }
    Ok(crate::timefmt::iso8601(seconds.max(0) as u64))
}

fn owner_reference(value: Wire<'_>) -> Result<Value, ApiError> {
    let mut out = Map::new();
    for (n, v) in fields(message(value)?)? {
        let (key, val) = match n {
            1 => ("kind", json!(text(v)?)),
            3 => ("name", json!(text(v)?)),
            4 => ("uid", json!(text(v)?)),
            5 => ("apiVersion", json!(text(v)?)),
            6 => ("controller", json!(int(v)? != 0)),
            7 => ("blockOwnerDeletion", json!(int(v)? != 0)),
            _ => continue,
        };
        out.insert(key.to_string(), val);
    }
    Ok(Value::Object(out))
}

fn object_meta(buf: &[u8]) -> Result<ObjectMeta, ApiError> {
    let mut meta = ObjectMeta::default();
    let mut labels = BTreeMap::new();
    let mut annotations = BTreeMap::new();
    for (n, v) in fields(buf)? {
        match n {
            1 => meta.name = text(v)?,
            2 => meta.generate_name = text(v)?,
            3 => meta.namespace = text(v)?,
            5 => meta.uid = text(v)?,
            6 => meta.resource_version = text(v)?,
            7 => meta.generation = int(v)?,
            8 => meta.creation_timestamp = Some(time(v)?),
            9 => meta.deletion_timestamp = Some(time(v)?),
            10 => meta.deletion_grace_period_seconds = Some(int(v)?),
            11 => {
                let (k, val) = map_entry(v)?;
                labels.insert(k, val);
            }
            12 => {
                let (k, val) = map_entry(v)?;
                annotations.insert(k, val);
            }
            13 => meta.owner_references.push(owner_reference(v)?),
            14 => meta.finalizers.push(text(v)?),
            _ => {}
        }
    }
    meta.labels = labels;
    meta.annotations = annotations;
    // A zero `metav1.Time` is how Go encodes "unset".
    if meta.creation_timestamp.as_deref() == Some("1970-01-01T00:00:00Z") {
        meta.creation_timestamp = None;
    }
    Ok(meta)
}

fn object_reference(buf: &[u8]) -> Result<ObjectReference, ApiError> {
    let mut r = ObjectReference::default();
    for (n, v) in fields(buf)? {
        match n {
            1 => r.kind = text(v)?,
            2 => r.namespace = text(v)?,
            3 => r.name = text(v)?,
            4 => r.uid = text(v)?,
            5 => r.api_version = text(v)?,
            6 => r.resource_version = text(v)?,
            7 => r.field_path = text(v)?,
            _ => {}
        }
    }
    Ok(r)
}

/// Decodes a `k8s\0`-framed ServiceAccount.
pub fn decode_service_account(body: &[u8]) -> Result<ServiceAccount, ApiError> {
    let unknown = body
        .strip_prefix(MAGIC)
        .ok_or_else(|| malformed("missing the k8s\\0 prefix"))?;
    let (mut api_version, mut kind, mut raw) = (String::new(), String::new(), None);
    for (n, v) in fields(unknown)? {
        match n {
            1 => {
                for (tn, tv) in fields(message(v)?)? {
                    match tn {
                        1 => api_version = text(tv)?,
                        2 => kind = text(tv)?,
                        _ => {}
                    }
                }
            }
            2 => raw = Some(message(v)?),
            3 if !text(v)?.is_empty() => {
                return Err(malformed("content encodings are not supported"));
            }
            _ => {}
        }
    }
    let raw = raw.ok_or_else(|| malformed("no object in the envelope"))?;
    let mut sa = ServiceAccount {
        kind,
        api_version,
        ..ServiceAccount::default()
    };
    for (n, v) in fields(raw)? {
        match n {
            1 => sa.metadata = object_meta(message(v)?)?,
            2 => sa.secrets.push(object_reference(message(v)?)?),
            3 => {
                let mut r = LocalObjectReference::default();
                for (rn, rv) in fields(message(v)?)? {
                    if rn == 1 {
                        r.name = text(rv)?;
                    }
                }
                sa.image_pull_secrets.push(r);
            }
            4 => sa.automount_service_account_token = Some(int(v)? != 0),
            _ => {}
        }
    }
    Ok(sa)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(number: u64, bytes: &[u8]) -> Vec<u8> {
        let mut out = vec![((number << 3) | 2) as u8, bytes.len() as u8];
        out.extend_from_slice(bytes);
        out
    }

    #[test]
    fn decodes_an_enveloped_service_account() {
        let type_meta = [field(1, b"v1"), field(2, b"ServiceAccount")].concat();
        let label = [field(1, b"app"), field(2, b"web")].concat();
        let meta = [field(1, b"web"), field(3, b"team"), field(11, &label)].concat();
        let pull = field(1, b"regcred");
        let raw = [field(1, &meta), field(3, &pull), vec![(4 << 3), 1]].concat();
        let body = [MAGIC.to_vec(), field(1, &type_meta), field(2, &raw)].concat();
        let sa = decode_service_account(&body).unwrap();
        assert_eq!(sa.kind, "ServiceAccount");
        assert_eq!(sa.api_version, "v1");
        assert_eq!(sa.metadata.name, "web");
        assert_eq!(sa.metadata.namespace, "team");
        assert_eq!(sa.metadata.labels["app"], "web");
        assert_eq!(sa.image_pull_secrets[0].name, "regcred");
        assert_eq!(sa.automount_service_account_token, Some(true));
    }

    #[test]
    fn refuses_malformed_bodies() {
        assert_eq!(decode_service_account(b"{}").unwrap_err().code(), 400);
        assert_eq!(
            decode_service_account(b"k8s\0\x0a\x05ab")
                .unwrap_err()
                .code(),
            400
        );
        assert_eq!(decode_service_account(b"k8s\0").unwrap_err().code(), 400);
    }
}

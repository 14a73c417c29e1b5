//! The ServiceAccounts the emulated API server holds, with the bookkeeping the real registry
//! does (kubernetes `staging/src/k8s.io/apiserver/pkg/registry/rest/create.go` `BeforeCreate`,
//! `update.go` `BeforeUpdate`, `staging/src/k8s.io/apiserver/pkg/registry/generic/registry/store.go`):
//! a server-assigned `uid` and `creationTimestamp`, one cluster-wide `resourceVersion` counter
//! bumped by every write (and not by a write that changes nothing), optimistic concurrency on a
//! client-sent `resourceVersion`, `generateName`, and the deleted object returned by DELETE
//! (the ServiceAccount registry sets `ReturnDeletedObject`,
//! `pkg/registry/core/serviceaccount/storage/storage.go`).
//!
//! Namespaces are not modelled: every namespace exists.

use std::collections::BTreeMap;

use super::object::{self, API_VERSION, KIND, ServiceAccount};
use super::status::ApiError;
use crate::issuer::random_uuid;
use crate::timefmt::{iso8601, unix_now};

/// Characters `generateName` suffixes are drawn from (no vowels, no confusable digits;
/// `staging/src/k8s.io/apimachinery/pkg/util/rand/rand.go`).
const SUFFIX_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

#[derive(Debug, Clone)]
pub struct Store {
    /// The last resourceVersion handed out.
    revision: u64,
    items: BTreeMap<(String, String), ServiceAccount>,
}

impl Default for Store {
    fn default() -> Self {
        // A fresh etcd is never at revision 0; start somewhere plausible.
        Store {
            revision: 100,
            items: BTreeMap::new(),
        }
    }
}

/// Preconditions a DELETE may carry (`DeleteOptions.preconditions`).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Preconditions {
    pub uid: Option<String>,
    pub resource_version: Option<String>,
}

/// Which objects a list returns.
#[derive(Debug, Default, Clone)]
pub struct ListFilter {
    pub namespace: Option<String>,
    pub fields: super::selector::FieldSelector,
    pub labels: super::selector::LabelSelector,
}

impl Store {
    /// The current (latest) resourceVersion, as a list reports it.
    pub fn revision(&self) -> String {
        self.revision.to_string()
    }

    fn next_revision(&mut self) -> String {
        self.revision += 1;
        self.revision.to_string()
    }

    /// The object as served on its own (with `kind` and `apiVersion`).
    fn served(sa: &ServiceAccount) -> ServiceAccount {
        let mut sa = sa.clone();
        sa.kind = KIND.to_string();
        sa.api_version = API_VERSION.to_string();
        sa
    }

    pub fn get(&self, namespace: &str, name: &str) -> Result<ServiceAccount, ApiError> {
        self.items
            .get(&(namespace.to_string(), name.to_string()))
            .map(Self::served)
            .ok_or_else(|| ApiError::NotFound(name.to_string()))
    }

    /// The matching objects in key order, as list items (no `kind`/`apiVersion`).
    pub fn list(&self, filter: &ListFilter) -> Vec<ServiceAccount> {
        self.items
            .values()
            .filter(|sa| {
                filter
                    .namespace
                    .as_deref()
                    .is_none_or(|ns| sa.metadata.namespace == ns)
                    && filter.fields.matches(&sa.metadata)
                    && filter.labels.matches(&sa.metadata.labels)
            })
            .map(|sa| {
                let mut item = sa.clone();
                item.kind.clear();
                item.api_version.clear();
                item
            })
            .collect()
    }

    /// Every object, as stored (for the admin API).
    pub fn all(&self) -> Vec<ServiceAccount> {
        self.items.values().map(Self::served).collect()
    }

    /// `POST .../namespaces/{namespace}/serviceaccounts`.
    pub fn create(
        &mut self,
        namespace: &str,
        mut sa: ServiceAccount,
    ) -> Result<ServiceAccount, ApiError> {
        if !sa.metadata.namespace.is_empty() && sa.metadata.namespace != namespace {
            return Err(ApiError::BadRequest(
                "the namespace of the provided object does not match the namespace sent on the request"
                    .to_string(),
            ));
        }
        if !sa.metadata.resource_version.is_empty() {
            return Err(ApiError::BadRequest(
                "resourceVersion should not be set on objects to be created".to_string(),
            ));
        }
        if sa.metadata.name.is_empty() && !sa.metadata.generate_name.is_empty() {
            sa.metadata.name = format!("{}{}", sa.metadata.generate_name, random_suffix());
        }
        let name = sa.metadata.name.clone();
        if let Some(detail) = object::invalid_name(&name) {
            let (field, shown) = if name.is_empty() {
                ("metadata.name", "Required value".to_string())
            } else {
                (
                    "metadata.name",
                    format!("Invalid value: \"{name}\": {detail}"),
                )
            };
            return Err(ApiError::Invalid {
                name,
                field: field.to_string(),
                detail: shown,
            });
        }
        let key = (namespace.to_string(), name.clone());
        if self.items.contains_key(&key) {
            return Err(ApiError::AlreadyExists(name));
        }
        sa.metadata.namespace = namespace.to_string();
        sa.metadata.uid = random_uuid();
        sa.metadata.creation_timestamp = Some(iso8601(unix_now()));
        sa.metadata.deletion_timestamp = None;
        sa.metadata.deletion_grace_period_seconds = None;
        sa.metadata.resource_version = self.next_revision();
        sa.kind = KIND.to_string();
        sa.api_version = API_VERSION.to_string();
        self.items.insert(key, sa.clone());
        Ok(sa)
    }

    /// `PUT .../serviceaccounts/{name}`, and the write behind every PATCH: `sa` replaces the
    /// stored object. A non-empty `metadata.resourceVersion` must be the stored one.
    pub fn update(
        &mut self,
        namespace: &str,
        name: &str,
        mut sa: ServiceAccount,
    ) -> Result<ServiceAccount, ApiError> {
        if sa.metadata.name != name {
            return Err(ApiError::BadRequest(format!(
                "the name of the object ({}) does not match the name on the URL ({name})",
                sa.metadata.name
            )));
        }
        if !sa.metadata.namespace.is_empty() && sa.metadata.namespace != namespace {
            return Err(ApiError::BadRequest(
                "the namespace of the provided object does not match the namespace sent on the request"
                    .to_string(),
            ));
        }
        let key = (namespace.to_string(), name.to_string());
        let Some(current) = self.items.get(&key) else {
            return Err(ApiError::NotFound(name.to_string()));
        };
        if !sa.metadata.resource_version.is_empty()
            && sa.metadata.resource_version != current.metadata.resource_version
        {
            return Err(ApiError::Conflict(name.to_string()));
        }
        if !sa.metadata.uid.is_empty() && sa.metadata.uid != current.metadata.uid {
            return Err(ApiError::Invalid {
                name: name.to_string(),
                field: "metadata.uid".to_string(),
                detail: format!("Invalid value: \"{}\": field is immutable", sa.metadata.uid),
            });
        }
        // Server-owned fields keep their stored values.
        sa.metadata.namespace = namespace.to_string();
        sa.metadata.uid = current.metadata.uid.clone();
        sa.metadata.creation_timestamp = current.metadata.creation_timestamp.clone();
        sa.metadata.resource_version = current.metadata.resource_version.clone();
        sa.kind = KIND.to_string();
        sa.api_version = API_VERSION.to_string();
        if sa == *current {
            // A no-op write is not persisted and does not move resourceVersion.
            return Ok(sa);
        }
        sa.metadata.resource_version = self.next_revision();
        self.items.insert(key, sa.clone());
        Ok(sa)
    }

    /// `DELETE .../serviceaccounts/{name}`: the deleted object.
    pub fn delete(
        &mut self,
        namespace: &str,
        name: &str,
        preconditions: &Preconditions,
    ) -> Result<ServiceAccount, ApiError> {
        let key = (namespace.to_string(), name.to_string());
        let Some(current) = self.items.get(&key) else {
            return Err(ApiError::NotFound(name.to_string()));
        };
        if let Some(uid) = &preconditions.uid
            && *uid != current.metadata.uid
        {
            return Err(ApiError::Conflict(name.to_string()));
        }
        if let Some(rv) = &preconditions.resource_version
            && *rv != current.metadata.resource_version
        {
            return Err(ApiError::Conflict(name.to_string()));
        }
        let deleted = self.items.remove(&key).map(|sa| Self::served(&sa));
        self.next_revision();
        deleted.ok_or_else(|| ApiError::NotFound(name.to_string()))
    }

    /// Puts `sa` in place as the admin API seeds it: namespace `default` unless set, a `uid`
    /// and `creationTimestamp` unless given, always a new resourceVersion. Replaces any object
    /// of the same name.
    pub fn seed(&mut self, mut sa: ServiceAccount) -> Result<ServiceAccount, ApiError> {
        if sa.metadata.namespace.is_empty() {
            sa.metadata.namespace = "default".to_string();
        }
        if let Some(detail) = object::invalid_name(&sa.metadata.name) {
            return Err(ApiError::Invalid {
                name: sa.metadata.name.clone(),
                field: "metadata.name".to_string(),
                detail,
            });
        }
        if sa.metadata.uid.is_empty() {
            sa.metadata.uid = random_uuid();
        }
        if sa.metadata.creation_timestamp.is_none() {
            sa.metadata.creation_timestamp = Some(iso8601(unix_now()));
        }
        sa.metadata.resource_version = self.next_revision();
        sa.kind = KIND.to_string();
        sa.api_version = API_VERSION.to_string();
        let key = (sa.metadata.namespace.clone(), sa.metadata.name.clone());
        self.items.insert(key, sa.clone());
        Ok(sa)
    }

    /// Removes every object.
    pub fn clear(&mut self) {
        self.items.clear();
        self.next_revision();
    }
}

fn random_suffix() -> String {
    (0..5)
        .map(|_| SUFFIX_ALPHABET[rand::random_range(0..SUFFIX_ALPHABET.len())] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kube::object::ObjectMeta;

    fn sa(name: &str) -> ServiceAccount {
        ServiceAccount {
            metadata: ObjectMeta {
                name: name.into(),
                ..ObjectMeta::default()
            },
            ..ServiceAccount::default()
        }
    }

    #[test]
    fn create_assigns_server_fields_and_refuses_duplicates() {
        let mut store = Store::default();
        let created = store.create("ns", sa("app")).unwrap();
        assert_eq!(created.metadata.namespace, "ns");
        assert_eq!(created.metadata.uid.len(), 36);
        assert!(created.metadata.creation_timestamp.is_some());
        assert_eq!(created.metadata.resource_version, store.revision());
        assert_eq!(store.get("ns", "app").unwrap(), created);
        assert_eq!(
            store.create("ns", sa("app")).unwrap_err(),
            ApiError::AlreadyExists("app".into())
        );
        assert_eq!(store.create("ns", sa("Bad")).unwrap_err().code(), 422);
        let mut generated = sa("");
        generated.metadata.generate_name = "app-".into();
        let created = store.create("ns", generated).unwrap();
        assert!(created.metadata.name.starts_with("app-") && created.metadata.name.len() == 9);
    }

    #[test]
    fn update_checks_resource_version_and_skips_no_ops() {
        let mut store = Store::default();
        let created = store.create("ns", sa("app")).unwrap();
        let same = store.update("ns", "app", created.clone()).unwrap();
        assert_eq!(
            same.metadata.resource_version,
            created.metadata.resource_version
        );
        let mut changed = created.clone();
        changed.metadata.labels.insert("a".into(), "b".into());
        let updated = store.update("ns", "app", changed.clone()).unwrap();
        assert_ne!(
            updated.metadata.resource_version,
            created.metadata.resource_version
        );
        // `changed` still carries the old resourceVersion: a stale write.
        changed.metadata.labels.insert("c".into(), "d".into());
        assert_eq!(
            store.update("ns", "app", changed).unwrap_err(),
            ApiError::Conflict("app".into())
        );
        assert_eq!(
            store.update("ns", "nope", sa("nope")).unwrap_err(),
            ApiError::NotFound("nope".into())
        );
        assert_eq!(
            store.update("ns", "app", sa("other")).unwrap_err().code(),
            400
        );
    }

    #[test]
    fn delete_returns_the_object_and_honours_preconditions() {
        let mut store = Store::default();
        let created = store.create("ns", sa("app")).unwrap();
        let wrong = Preconditions {
            uid: Some("other".into()),
            resource_version: None,
        };
        assert_eq!(store.delete("ns", "app", &wrong).unwrap_err().code(), 409);
        let deleted = store
            .delete("ns", "app", &Preconditions::default())
            .unwrap();
        assert_eq!(deleted, created);
        assert_eq!(store.get("ns", "app").unwrap_err().code(), 404);
    }
}

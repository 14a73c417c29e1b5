//! `labelSelector` and `fieldSelector` query parameters of a list, in their equality-based
//! forms (kubernetes `staging/src/k8s.io/apimachinery/pkg/labels/selector.go`,
//! `staging/src/k8s.io/apimachinery/pkg/fields/selector.go`): comma-separated requirements
//! `k=v`, `k==v`, `k!=v`, and for labels also `k` (exists) and `!k` (does not exist).
//! Set-based label requirements (`in`, `notin`) are refused with a 400 rather than
//! misread. ServiceAccounts support the field labels `metadata.name` and `metadata.namespace`
//! (`pkg/registry/core/serviceaccount/strategy.go` `SelectableFields`).

use std::collections::BTreeMap;

use super::object::ObjectMeta;
use super::status::ApiError;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    Exists(String),
    NotExists(String),
}

fn parse(text: &str, what: &str, allow_existence: bool) -> Result<Vec<Requirement>, ApiError> {
    let mut out = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let requirement = if let Some((k, v)) = part.split_once("!=") {
            Requirement::NotEquals(k.trim().to_string(), v.trim().to_string())
        } else if let Some((k, v)) = part.split_once("==") {
            Requirement::Equals(k.trim().to_string(), v.trim().to_string())
        } else if let Some((k, v)) = part.split_once('=') {
            Requirement::Equals(k.trim().to_string(), v.trim().to_string())
        } else if part.contains(' ') || part.contains('(') {
            return Err(ApiError::BadRequest(format!(
                "unable to parse requirement {part:?} in {what}: set-based requirements are not emulated by fakecloud"
            )));
        } else if !allow_existence {
            return Err(ApiError::BadRequest(format!(
                "invalid selector: '{part}'; can't understand '{part}'"
            )));
        } else if let Some(k) = part.strip_prefix('!') {
            Requirement::NotExists(k.to_string())
        } else {
            Requirement::Exists(part.to_string())
        };
        out.push(requirement);
    }
    Ok(out)
}

/// A `labelSelector`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LabelSelector(Vec<Requirement>);

impl LabelSelector {
    pub fn parse(text: &str) -> Result<LabelSelector, ApiError> {
        parse(text, "labelSelector", true).map(LabelSelector)
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|r| match r {
            Requirement::Equals(k, v) => labels.get(k) == Some(v),
            Requirement::NotEquals(k, v) => labels.get(k) != Some(v),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::NotExists(k) => !labels.contains_key(k),
        })
    }
}

/// A `fieldSelector` over `metadata.name` and `metadata.namespace`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FieldSelector(Vec<Requirement>);

impl FieldSelector {
    pub fn parse(text: &str) -> Result<FieldSelector, ApiError> {
        let requirements = parse(text, "fieldSelector", false)?;
        for r in &requirements {
            let (Requirement::Equals(k, _) | Requirement::NotEquals(k, _)) = r else {
                unreachable!("parse refuses existence requirements for fields");
            };
            if k != "metadata.name" && k != "metadata.namespace" {
                return Err(ApiError::BadRequest(format!(
                    "field label not supported: {k}"
                )));
            }
        }
        Ok(FieldSelector(requirements))
    }

    pub fn matches(&self, meta: &ObjectMeta) -> bool {
        let field = |k: &str| match k {
            "metadata.name" => meta.name.as_str(),
            _ => meta.namespace.as_str(),
        };
        self.0.iter().all(|r| match r {
            Requirement::Equals(k, v) => field(k) == v,
            Requirement::NotEquals(k, v) => field(k) != v,
            Requirement::Exists(_) | Requirement::NotExists(_) => true,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_requirements() {
        let labels: BTreeMap<String, String> = [("app".to_string(), "web".to_string())]
            .into_iter()
            .collect();
        for (text, expected) in [
            ("", true),
            ("app=web", true),
            ("app==web", true),
            ("app!=web", false),
            ("app", true),
            ("!app", false),
            ("app=web,tier", false),
            ("tier!=db", true),
        ] {
            assert_eq!(
                LabelSelector::parse(text).unwrap().matches(&labels),
                expected,
                "{text}"
            );
        }
        assert_eq!(
            LabelSelector::parse("app in (a,b)").unwrap_err().code(),
            400
        );
    }

    #[test]
    fn field_requirements() {
        let meta = ObjectMeta {
            name: "a".into(),
            namespace: "ns".into(),
            ..ObjectMeta::default()
        };
        assert!(
            FieldSelector::parse("metadata.name=a")
                .unwrap()
                .matches(&meta)
        );
        assert!(
            !FieldSelector::parse("metadata.name=b")
                .unwrap()
                .matches(&meta)
        );
        assert!(
            FieldSelector::parse("metadata.namespace!=x")
                .unwrap()
                .matches(&meta)
        );
        assert_eq!(FieldSelector::parse("spec.x=1").unwrap_err().code(), 400);
        assert_eq!(
            FieldSelector::parse("metadata.name").unwrap_err().code(),
            400
        );
    }
}

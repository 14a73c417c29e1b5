//! Routing and the REST handlers of the emulated API server (authenticated requests only; see
//! [`super::FakeKube`] for authentication).
//!
//! Served paths (kubernetes `staging/src/k8s.io/apiserver/pkg/endpoints/installer.go` lays out
//! the same ones for a namespaced resource):
//! - `GET /version`, `/api`, `/api/v1`, `/apis`; `GET /healthz`, `/livez`, `/readyz`.
//! - `GET /api/v1/serviceaccounts` (every namespace), `GET|POST /api/v1/namespaces/{ns}/serviceaccounts`.
//! - `GET|PUT|PATCH|DELETE /api/v1/namespaces/{ns}/serviceaccounts/{name}`.
//!
//! Query parameters honoured: `fieldValidation` (create, update, patch), `dryRun=All`,
//! `labelSelector` and `fieldSelector` (list). `watch=true` is refused (watches are not
//! emulated); `limit` is ignored (lists are never paged).

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use serde::Serialize;
use serde_json::{Value, json};
use std::collections::HashMap;

use super::discovery::{self, accepts_plain_json};
use super::object::{self, FieldValidation, ServiceAccount};
use super::patch::{self, PatchType};
use super::protobuf;
use super::selector::{FieldSelector, LabelSelector};
use super::status::ApiError;
use super::store::{ListFilter, Preconditions, Store};
use super::{FakeKube, Token};
use crate::http::{HttpResponse, set_content_type};

/// A response and what the request log says of it.
#[derive(Debug)]
pub struct Served {
    pub response: HttpResponse,
    /// The Kubernetes verb, for serviceaccount requests.
    pub verb: Option<&'static str>,
    /// The `Status` reason when the request was refused.
    pub error_reason: Option<String>,
}

impl Served {
    pub fn error(verb: Option<&'static str>, error: ApiError) -> Served {
        Served {
            error_reason: Some(error.reason().to_string()),
            response: error.into_response(),
            verb,
        }
    }

    fn json(verb: Option<&'static str>, status: StatusCode, body: &impl Serialize) -> Served {
        let text = serde_json::to_string(body).unwrap_or_default();
        let mut response = Response::new(Full::new(Bytes::from(text)));
        *response.status_mut() = status;
        set_content_type(&mut response, "application/json");
        Served {
            response,
            verb,
            error_reason: None,
        }
    }

    /// Adds `Warning: 299 - "<text>"` headers, as the server does for dropped unknown fields.
    fn with_warnings(mut self, warnings: &[String]) -> Served {
        for warning in warnings {
            let text = format!("299 - {}", Value::String(warning.clone()));
            if let Ok(value) = HeaderValue::from_str(&text) {
                self.response.headers_mut().append(header::WARNING, value);
            }
        }
        self
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route<'a> {
    Version,
    Api,
    ApiV1,
    Apis,
    Health,
    /// `GET /api/v1/namespaces/{ns}`: kubectl asks it after a NotFound, to tell a missing
    /// namespace from a missing object (every namespace exists here).
    Namespace(&'a str),
    /// `serviceaccounts` in one namespace, or in all (`None`).
    Collection(Option<&'a str>),
    Object(&'a str, &'a str),
}

fn route(path: &str) -> Option<Route<'_>> {
    let trimmed = path.trim_end_matches('/');
    let segments: Vec<&str> = trimmed.split('/').skip(1).collect();
    Some(match segments.as_slice() {
        ["version"] => Route::Version,
        ["api"] => Route::Api,
        ["api", "v1"] => Route::ApiV1,
        ["apis"] => Route::Apis,
        ["healthz" | "livez" | "readyz"] => Route::Health,
        ["api", "v1", "serviceaccounts"] => Route::Collection(None),
        ["api", "v1", "namespaces", ns] if !ns.is_empty() => Route::Namespace(ns),
        ["api", "v1", "namespaces", ns, "serviceaccounts"] if !ns.is_empty() => {
            Route::Collection(Some(ns))
        }
        ["api", "v1", "namespaces", ns, "serviceaccounts", name]
            if !ns.is_empty() && !name.is_empty() =>
        {
            Route::Object(ns, name)
        }
        _ => return None,
    })
}

fn header(req: &Request<Bytes>, name: header::HeaderName) -> Option<&str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

/// Serves one authenticated request.
pub fn serve(kube: &FakeKube, token: &Token, req: &Request<Bytes>) -> Served {
    let query: HashMap<String, String> = req
        .uri()
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    let Some(route) = route(req.uri().path()) else {
        return Served::error(None, ApiError::NoRoute);
    };
    let accept = header(req, header::ACCEPT);
    let method = req.method();
    let discovery_doc = match route {
        Route::Version => Some(discovery::version()),
        Route::Api => Some(discovery::api_versions(
            (*kube.addr.lock()).unwrap_or_else(|| ([127, 0, 0, 1], 0).into()),
        )),
        Route::ApiV1 => Some(discovery::core_v1_resources()),
        Route::Apis => Some(discovery::api_groups()),
        // Verb limits apply to serviceaccounts only; a namespace is shown to every user.
        Route::Namespace(ns) => Some(namespace_object(ns)),
        Route::Health => {
            let mut response = Response::new(Full::new(Bytes::from_static(b"ok")));
            set_content_type(&mut response, "text/plain; charset=utf-8");
            return Served {
                response,
                verb: None,
                error_reason: None,
            };
        }
        _ => None,
    };
    if let Some(doc) = discovery_doc {
        if method != Method::GET {
            return Served::error(None, ApiError::MethodNotAllowed);
        }
        if !accepts_plain_json(accept) {
            return Served::error(None, ApiError::NotAcceptable);
        }
        return Served::json(None, StatusCode::OK, &doc);
    }

    let (verb, namespace, name) = match (route, method) {
        (Route::Collection(ns), &Method::GET) => {
            let watch = matches!(query.get("watch").map(String::as_str), Some("true" | "1"));
            (if watch { "watch" } else { "list" }, ns, None)
        }
        (Route::Collection(Some(ns)), &Method::POST) => ("create", Some(ns), None),
        (Route::Object(ns, name), &Method::GET) => ("get", Some(ns), Some(name)),
        (Route::Object(ns, name), &Method::PUT) => ("update", Some(ns), Some(name)),
        (Route::Object(ns, name), &Method::PATCH) => ("patch", Some(ns), Some(name)),
        (Route::Object(ns, name), &Method::DELETE) => ("delete", Some(ns), Some(name)),
        _ => return Served::error(None, ApiError::MethodNotAllowed),
    };
    if let Some(verbs) = &token.verbs
        && !verbs.iter().any(|v| v == verb || v == "*")
    {
        return Served::error(
            Some(verb),
            ApiError::Forbidden {
                user: token.user.clone(),
                verb: verb.to_string(),
                name: name.map(str::to_string),
                namespace: namespace.map(str::to_string),
            },
        );
    }
    if !accepts_plain_json(accept) {
        return Served::error(Some(verb), ApiError::NotAcceptable);
    }
    let result =
        match (verb, namespace, name) {
            ("watch", _, _) => Err(ApiError::BadRequest(
                "watch is not emulated by fakecloud's API server".to_string(),
            )),
            ("list", ns, _) => list(&kube.store.lock(), ns, &query),
            ("get", Some(ns), Some(name)) => kube
                .store
                .lock()
                .get(ns, name)
                .map(|sa| Served::json(Some("get"), StatusCode::OK, &sa)),
            ("create", Some(ns), _) => write(kube, &query, |store| {
                let (sa, warnings) = decode_body(req, &query)?;
                let created = store.create(ns, sa)?;
                Ok(Served::json(Some("create"), StatusCode::CREATED, &created)
                    .with_warnings(&warnings))
            }),
            ("update", Some(ns), Some(name)) => write(kube, &query, |store| {
                let (sa, warnings) = decode_body(req, &query)?;
                let updated = store.update(ns, name, sa)?;
                Ok(Served::json(Some("update"), StatusCode::OK, &updated).with_warnings(&warnings))
            }),
            ("patch", Some(ns), Some(name)) => write(kube, &query, |store| {
                let kind = PatchType::from_content_type(header(req, header::CONTENT_TYPE))?;
                let current = serde_json::to_value(store.get(ns, name)?)
                    .map_err(|e| ApiError::internal(e.to_string()))?;
                let patched = patch::apply(kind, &current, req.body())?;
                let (sa, warnings) = object::decode(patched, field_validation(&query)?)?;
                let updated = store.update(ns, name, sa)?;
                Ok(Served::json(Some("patch"), StatusCode::OK, &updated).with_warnings(&warnings))
            }),
            ("delete", Some(ns), Some(name)) => write(kube, &query, |store| {
                let preconditions = delete_preconditions(req.body())?;
                let deleted = store.delete(ns, name, &preconditions)?;
                Ok(Served::json(Some("delete"), StatusCode::OK, &deleted))
            }),
            _ => Err(ApiError::MethodNotAllowed),
        };
    result.unwrap_or_else(|e| Served::error(Some(verb), e))
}

fn field_validation(query: &HashMap<String, String>) -> Result<FieldValidation, ApiError> {
    FieldValidation::from_query(query.get("fieldValidation").map(String::as_str))
}

/// Runs a write against the store, or against a copy of it under `dryRun=All`.
fn write(
    kube: &FakeKube,
    query: &HashMap<String, String>,
    op: impl FnOnce(&mut Store) -> Result<Served, ApiError>,
) -> Result<Served, ApiError> {
    let dry_run = match query.get("dryRun").map(String::as_str) {
        None | Some("") => false,
        Some("All") => true,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "dryRun may only be All; got {other:?}"
            )));
        }
    };
    let mut store = kube.store.lock();
    if dry_run {
        let mut scratch = store.clone();
        op(&mut scratch)
    } else {
        op(&mut store)
    }
}

/// A create or update body: JSON or protobuf (the real server also takes YAML).
fn decode_body(
    req: &Request<Bytes>,
    query: &HashMap<String, String>,
) -> Result<(ServiceAccount, Vec<String>), ApiError> {
    let content_type = header(req, header::CONTENT_TYPE).unwrap_or("application/json");
    let essence = content_type.split(';').next().unwrap_or("").trim();
    if essence.eq_ignore_ascii_case(protobuf::CONTENT_TYPE) {
        // Protobuf has no unknown-field reporting: unknown fields are skipped.
        let sa = protobuf::decode_service_account(req.body())?;
        object::check_type(&sa)?;
        return Ok((sa, Vec::new()));
    }
    if !essence.eq_ignore_ascii_case("application/json") {
        return Err(ApiError::UnsupportedMediaType(
            "application/json, application/vnd.kubernetes.protobuf",
        ));
    }
    let value: Value = serde_json::from_slice(req.body())
        .map_err(|e| ApiError::BadRequest(format!("error decoding the request body: {e}")))?;
    object::decode(value, field_validation(query)?)
}

fn list(
    store: &Store,
    namespace: Option<&str>,
    query: &HashMap<String, String>,
) -> Result<Served, ApiError> {
    let filter = ListFilter {
        namespace: namespace.map(str::to_string),
        fields: FieldSelector::parse(query.get("fieldSelector").map_or("", String::as_str))?,
        labels: LabelSelector::parse(query.get("labelSelector").map_or("", String::as_str))?,
    };
    let body = json!({
        "kind": "ServiceAccountList",
        "apiVersion": "v1",
        "metadata": {"resourceVersion": store.revision()},
        "items": store.list(&filter),
    });
    Ok(Served::json(Some("list"), StatusCode::OK, &body))
}

/// A Namespace as the server shows an active one
/// (`staging/src/k8s.io/api/core/v1/types.go` `Namespace`; the `kubernetes.io/metadata.name`
/// label is set by the API server on every namespace since 1.21).
fn namespace_object(name: &str) -> Value {
    json!({
        "kind": "Namespace",
        "apiVersion": "v1",
        "metadata": {
            "name": name,
            "labels": {"kubernetes.io/metadata.name": name},
        },
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": "Active"},
    })
}

/// `DeleteOptions.preconditions` from an optional DELETE body.
fn delete_preconditions(body: &[u8]) -> Result<Preconditions, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Preconditions::default());
    }
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("error decoding DeleteOptions: {e}")))?;
    let field = |name: &str| {
        value
            .get("preconditions")
            .and_then(|p| p.get(name))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    Ok(Preconditions {
        uid: field("uid"),
        resource_version: field("resourceVersion"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(route("/api/"), Some(Route::Api));
        assert_eq!(route("/api/v1"), Some(Route::ApiV1));
        assert_eq!(
            route("/api/v1/namespaces/ns/serviceaccounts"),
            Some(Route::Collection(Some("ns")))
        );
        assert_eq!(
            route("/api/v1/namespaces/ns/serviceaccounts/app"),
            Some(Route::Object("ns", "app"))
        );
        assert_eq!(
            route("/api/v1/serviceaccounts"),
            Some(Route::Collection(None))
        );
        assert_eq!(route("/api/v1/namespaces/ns/pods/app"), None);
        assert_eq!(route("/api/v1/namespaces//serviceaccounts"), None);
        assert_eq!(route("/openapi/v3"), None);
    }

    #[test]
    fn delete_options() {
        assert_eq!(delete_preconditions(b"").unwrap(), Preconditions::default());
        let p = delete_preconditions(
            br#"{"kind":"DeleteOptions","apiVersion":"v1","preconditions":{"uid":"u"}}"#,
        )
        .unwrap();
        assert_eq!(p.uid.as_deref(), Some("u"));
        assert_eq!(delete_preconditions(b"{").unwrap_err().code(), 400);
    }
}

//! The API server's error shape: a `meta.k8s.io/v1` `Status` object with the HTTP status in
//! `code` and a machine-readable `reason`.
//!
//! Messages and reasons follow what kube-apiserver's constructors produce
//! (kubernetes `staging/src/k8s.io/apimachinery/pkg/api/errors/errors.go`: `NewNotFound`,
//! `NewAlreadyExists`, `NewConflict`, `NewInvalid`, `NewForbidden`, `NewUnauthorized`,
//! `NewTooManyRequests`, `NewMethodNotSupported`, `NewGenericServerResponse`), so client-go's
//! `errors.Is*` helpers and kubectl's error printer classify them as they would the real ones.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;
use serde_json::{Value, json};

use crate::http::{HttpResponse, set_content_type};

/// The resource this server serves, as error details name it (`details.kind`).
pub const SERVICEACCOUNTS: &str = "serviceaccounts";

/// One request the API server refuses; [`ApiError::into_response`] renders it as a `Status`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ApiError {
    /// 401: no bearer token, or one the server does not know.
    #[error("Unauthorized")]
    Unauthorized,
    /// 403: the token's user may not use `verb` on this resource.
    #[error("{resource} is forbidden: User \"{user}\" cannot {verb} resource \"{resource}\" in API group \"\" {scope}", resource = describe(SERVICEACCOUNTS, .name.as_deref()), scope = scope(.namespace.as_deref()))]
    Forbidden {
        user: String,
        verb: String,
        name: Option<String>,
        namespace: Option<String>,
    },
    /// 404 for a named service account.
    #[error("serviceaccounts \"{0}\" not found")]
    NotFound(String),
    /// 404 for a path the server does not serve.
    #[error("the server could not find the requested resource")]
    NoRoute,
    /// 405: the path exists but not with this method.
    #[error("the server does not allow this method on the requested resource")]
    MethodNotAllowed,
    /// 409 on create.
    #[error("serviceaccounts \"{0}\" already exists")]
    AlreadyExists(String),
    /// 409 on a stale `metadata.resourceVersion` (optimistic concurrency).
    #[error(
        "Operation cannot be fulfilled on serviceaccounts \"{0}\": the object has been modified; please apply your changes to the latest version and try again"
    )]
    Conflict(String),
    /// 400: a body the server cannot decode, or a request that contradicts its URL.
    #[error("{0}")]
    BadRequest(String),
    /// 422: a field whose value is not allowed.
    #[error("ServiceAccount \"{name}\" is invalid: {field}: {detail}")]
    Invalid {
        name: String,
        field: String,
        detail: String,
    },
    /// 422 without a field: a JSON patch that does not apply.
    #[error("{0}")]
    Unprocessable(String),
    /// 415: a `Content-Type` this endpoint does not take.
    #[error("the body of the request was in an unknown format - accepted media types include: {0}")]
    UnsupportedMediaType(&'static str),
    /// 406: an `Accept` this endpoint cannot answer.
    #[error("only the following media types are accepted: application/json")]
    NotAcceptable,
    /// An injected or emulated server-side failure: status, reason, message, `Retry-After`.
    #[error("{message}")]
    Server {
        status: u16,
        reason: String,
        message: String,
        retry_after: Option<u64>,
    },
}

/// `serviceaccounts "x"` or `serviceaccounts`, as the forbidden message names its target.
fn describe(resource: &str, name: Option<&str>) -> String {
    match name {
        Some(name) => format!("{resource} \"{name}\""),
        None => resource.to_string(),
    }
}

fn scope(namespace: Option<&str>) -> String {
    match namespace {
        Some(ns) => format!("in the namespace \"{ns}\""),
        None => "at the cluster scope".to_string(),
    }
}

impl ApiError {
    pub fn code(&self) -> u16 {
        match self {
            ApiError::Unauthorized => 401,
            ApiError::Forbidden { .. } => 403,
            ApiError::NotFound(_) | ApiError::NoRoute => 404,
            ApiError::MethodNotAllowed => 405,
            ApiError::NotAcceptable => 406,
            ApiError::AlreadyExists(_) | ApiError::Conflict(_) => 409,
            ApiError::BadRequest(_) => 400,
            ApiError::UnsupportedMediaType(_) => 415,
            ApiError::Invalid { .. } | ApiError::Unprocessable(_) => 422,
            ApiError::Server { status, .. } => *status,
        }
    }

    /// The `reason` (`metav1.StatusReason`).
    pub fn reason(&self) -> &str {
        match self {
            ApiError::Unauthorized => "Unauthorized",
            ApiError::Forbidden { .. } => "Forbidden",
            ApiError::NotFound(_) | ApiError::NoRoute => "NotFound",
            ApiError::MethodNotAllowed => "MethodNotAllowed",
            ApiError::NotAcceptable => "NotAcceptable",
            ApiError::AlreadyExists(_) => "AlreadyExists",
            ApiError::Conflict(_) => "Conflict",
            ApiError::BadRequest(_) => "BadRequest",
            ApiError::UnsupportedMediaType(_) => "UnsupportedMediaType",
            ApiError::Invalid { .. } | ApiError::Unprocessable(_) => "Invalid",
            ApiError::Server { reason, .. } => reason,
        }
    }

    fn details(&self) -> Option<Value> {
        match self {
            ApiError::NotFound(name) | ApiError::AlreadyExists(name) | ApiError::Conflict(name) => {
                Some(json!({"name": name, "kind": SERVICEACCOUNTS}))
            }
            ApiError::Forbidden { name, .. } => Some(match name {
                Some(name) => json!({"name": name, "kind": SERVICEACCOUNTS}),
                None => json!({"kind": SERVICEACCOUNTS}),
            }),
            ApiError::Invalid {
                name,
                field,
                detail,
            } => Some(json!({
                "name": name,
                "kind": "ServiceAccount",
                "causes": [{"reason": "FieldValueInvalid", "message": detail, "field": field}],
            })),
            ApiError::NoRoute => Some(json!({})),
            ApiError::Server {
                retry_after: Some(secs),
                ..
            } => Some(json!({"retryAfterSeconds": secs})),
            _ => None,
        }
    }

    /// The `Status` object.
    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.to_string(),
            "reason": self.reason(),
        });
        if let Some(details) = self.details() {
            status["details"] = details;
        }
        status["code"] = json!(self.code());
        status
    }

    /// The response: `Status` body, `application/json`, and `Retry-After` when set.
    pub fn into_response(self) -> HttpResponse {
        let mut resp = Response::new(Full::new(Bytes::from(self.to_status().to_string())));
        *resp.status_mut() =
            StatusCode::from_u16(self.code()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        set_content_type(&mut resp, "application/json");
        if let ApiError::Server {
            retry_after: Some(secs),
            ..
        } = self
        {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }

    /// A server-side failure for a bare HTTP status, with the reason kube-apiserver gives it
    /// (`NewGenericServerResponse`).
    pub fn for_status(status: u16, retry_after: Option<u64>) -> ApiError {
        let (reason, message) = match status {
            429 => (
                "TooManyRequests",
                "Too many requests, please try again later.",
            ),
            500 => (
                "InternalError",
                "Internal error occurred: injected by fakecloud",
            ),
            503 => (
                "ServiceUnavailable",
                "the server is currently unable to handle the request",
            ),
            504 => (
                "Timeout",
                "the server was unable to return a response in the time allotted, but may still be processing the request",
            ),
            s if s >= 500 => (
                "InternalError",
                "an error on the server has prevented the request from succeeding",
            ),
            _ => (
                "BadRequest",
                "the server rejected our request for an unknown reason",
            ),
        };
        ApiError::Server {
            status,
            reason: reason.to_string(),
            message: message.to_string(),
            retry_after,
        }
    }

    /// `500 InternalError` with `message`.
    pub fn internal(message: String) -> ApiError {
        ApiError::Server {
            status: 500,
            reason: "InternalError".to_string(),
            message: format!("Internal error occurred: {message}"),
            retry_after: None,
        }
    }

    /// A server-side failure named by its `reason` (for `{"kind":"error","code":...}` faults).
    pub fn for_reason(reason: &str) -> ApiError {
        let status = match reason {
            "Unauthorized" => return ApiError::Unauthorized,
            "BadRequest" => 400,
            "Forbidden" => 403,
            "NotFound" => 404,
            "Conflict" | "AlreadyExists" => 409,
            "Invalid" => 422,
            "TooManyRequests" => 429,
            "ServiceUnavailable" => 503,
            "Timeout" => 504,
            _ => 500,
        };
        let mut error = ApiError::for_status(status, None);
        if let ApiError::Server {
            reason: r, message, ..
        } = &mut error
        {
            *r = reason.to_string();
            *message = format!("{reason} (injected by fakecloud)");
        }
        error
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_found_is_the_real_status() {
        assert_eq!(
            ApiError::NotFound("x".into()).to_status(),
            json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",
                   "message":"serviceaccounts \"x\" not found","reason":"NotFound",
                   "details":{"name":"x","kind":"serviceaccounts"},"code":404})
        );
        assert_eq!(
            ApiError::Unauthorized.to_status(),
            json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",
                   "message":"Unauthorized","reason":"Unauthorized","code":401})
        );
    }

    #[test]
    fn forbidden_names_user_verb_and_scope() {
        let err = ApiError::Forbidden {
            user: "system:serviceaccount:ns:me".into(),
            verb: "list".into(),
            name: None,
            namespace: None,
        };
        assert_eq!(
            err.to_string(),
            "serviceaccounts is forbidden: User \"system:serviceaccount:ns:me\" cannot list \
             resource \"serviceaccounts\" in API group \"\" at the cluster scope"
        );
        let err = ApiError::Forbidden {
            user: "u".into(),
            verb: "get".into(),
            name: Some("app".into()),
            namespace: Some("default".into()),
        };
        assert!(
            err.to_string()
                .starts_with("serviceaccounts \"app\" is forbidden")
        );
        assert!(err.to_string().ends_with("in the namespace \"default\""));
    }

    #[test]
    fn throttling_carries_retry_after() {
        let resp = ApiError::for_status(429, Some(2)).into_response();
        assert_eq!(resp.status(), 429);
        assert_eq!(resp.headers()[header::RETRY_AFTER], "2");
        assert_eq!(ApiError::for_reason("Timeout").code(), 504);
    }
}

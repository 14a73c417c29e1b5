//! Emulated Oracle Cloud for OKE workload identity (docs/oci.md, "Protocol facts"):
//!
//! - [`proxymux`]: the cluster's proxymux endpoint over HTTPS (a generated CA, an IP SAN),
//!   exchanging a service-account token and a `podKey` for a resource principal session token
//!   (RPST) bound to that key, with faithful errors and fault injection.
//! - [`api`]: an OCI API that verifies request signatures (docs/oci.md, "Request signing") and
//!   answers `401 NotAuthenticated` for expired, foreign or mismatched RPSTs.
//! - [`signing`]: the signature algorithm both sides use; [`Pki`] (from [`crate::pki`]): the
//!   generated cluster CA.

pub mod api;
pub mod proxymux;
pub mod signing;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};
use http_body_util::Full;
use serde_json::json;

use crate::http::{HttpResponse, set_content_type};
use crate::issuer::random_uuid;

pub use crate::pki::Pki;
pub use api::{ApiRecord, FakeOciApi, FakeOciApiHandle};
pub use proxymux::{FakeProxymux, FakeProxymuxHandle, ProxymuxRecord, ProxymuxSettings};

/// The region the fakes claim to be.
pub const DEFAULT_REGION: &str = "us-ashburn-1";
/// The tenancy of every minted RPST.
pub const DEMO_TENANCY: &str =
    "ocid1.tenancy.oc1..aaaaaaaacredbrokerdemotenancy0000000000000000000000000000";
/// The compartment of every minted RPST.
pub const DEMO_COMPARTMENT: &str =
    "ocid1.compartment.oc1..aaaaaaaacredbrokerdemocompartment000000000000000000000000";
/// The OKE cluster whose proxymux the fake plays.
pub const DEMO_CLUSTER: &str =
    "ocid1.cluster.oc1.iad.aaaaaaaacredbrokerdemocluster00000000000000000000000000000";
/// `iss` of RPSTs (Go test RPST, `resource_principal_key_provider_test.go`).
pub const RPST_ISSUER: &str = "authService.oracle.com";
/// `aud` of RPSTs.
pub const RPST_AUDIENCE: &str = "oci";
/// The audience of the service-account token the pod presents: the default token's, the API
/// server's own (proxymux sits on the API server endpoint).
pub const SA_AUDIENCE: &str = "https://kubernetes.default.svc.cluster.local";
/// The Object Storage namespace `GET /n/` answers with.
pub const DEMO_NAMESPACE: &str = "credbrokerdemo";

/// HTTP status OCI uses for an error code; unknown codes are client errors.
pub fn status_for_code(code: &str) -> u16 {
    match code {
        "NotAuthenticated" => 401,
        "NotAuthorized" | "Forbidden" => 403,
        "NotAuthorizedOrNotFound" | "NotFound" => 404,
        "MethodNotAllowed" => 405,
        "TooManyRequests" => 429,
        "InternalServerError" => 500,
        "ServiceUnavailable" => 503,
        _ => 400,
    }
}

/// The code OCI uses for a bare status.
pub fn code_for_status(status: u16) -> &'static str {
    match status {
        401 => "NotAuthenticated",
        403 => "NotAuthorized",
        404 => "NotAuthorizedOrNotFound",
        405 => "MethodNotAllowed",
        429 => "TooManyRequests",
        503 => "ServiceUnavailable",
        s if s >= 500 => "InternalServerError",
        _ => "InvalidParameter",
    }
}

/// The message OCI services send with `code`.
pub fn default_message(code: &str) -> &'static str {
    match code {
        "NotAuthenticated" => {
            "The required information to complete authentication was not provided or was incorrect."
        }
        "NotAuthorized" | "Forbidden" => "The principal is not authorized to perform this request.",
        "NotAuthorizedOrNotFound" => "Authorization failed or requested resource not found.",
        "TooManyRequests" => "Too many requests for the user.",
        "InternalServerError" => "Internal server error.",
        "ServiceUnavailable" => "The service is currently unavailable.",
        "MethodNotAllowed" => "Method not allowed.",
        _ => "Injected error",
    }
}

/// OCI's error document `{"code","message"}` with `opc-request-id`, at `status`.
pub fn error_response(
    status: u16,
    code: &str,
    message: &str,
    retry_after: Option<u64>,
) -> HttpResponse {
    let body = json!({"code": code, "message": message}).to_string();
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    set_content_type(&mut resp, "application/json");
    set_request_id(&mut resp);
    if let Some(secs) = retry_after {
        resp.headers_mut()
            .insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
    }
    resp
}

/// An OCI error with the status its code implies.
pub fn error_for_code(code: &str, message: &str) -> HttpResponse {
    error_response(status_for_code(code), code, message, None)
}

/// A 200 with a JSON body and `opc-request-id`.
pub fn ok_json(body: String) -> HttpResponse {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    set_content_type(&mut resp, "application/json");
    set_request_id(&mut resp);
    resp
}

fn set_request_id(resp: &mut HttpResponse) {
    let id = random_uuid().replace('-', "").to_ascii_uppercase();
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert("opc-request-id", v);
    }
}

/// Lower-case hex SHA-256, for logging tokens and keys without storing them.
pub use crate::sha256_hex;

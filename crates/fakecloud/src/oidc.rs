//! The issuer's HTTP face, as kube-apiserver serves it: the OIDC discovery document and
//! the JWKS, plus `POST /_fake/rotate` to rotate every registered projected token now.

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use parking_lot::Mutex;
use serde::Serialize;
use serde_json::json;
use std::sync::Arc;

use crate::faults::{Fault, Faults};
use crate::http::{Fake, HttpResponse, json_response};
use crate::issuer::Issuer;
use crate::kubelet::ProjectedToken;
use crate::timefmt::unix_now_f64;

/// Discovery path, relative to the issuer URL.
pub const DISCOVERY_PATH: &str = "/.well-known/openid-configuration";
/// JWKS path kube-apiserver uses.
pub const JWKS_PATH: &str = "/openid/v1/jwks";

/// One request to the issuer endpoints.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IssuerRecord {
    pub at: f64,
    pub method: String,
    pub path: String,
    /// HTTP status, or `fault:<kind>`.
    pub outcome: String,
}

/// Serves an [`Issuer`]'s discovery document and keys.
#[derive(Debug)]
pub struct IssuerServer {
    issuer: Arc<Issuer>,
    faults: Faults,
    tokens: Mutex<Vec<Arc<ProjectedToken>>>,
    log: Mutex<Vec<IssuerRecord>>,
}

impl IssuerServer {
    pub fn new(issuer: Arc<Issuer>) -> IssuerServer {
        IssuerServer {
            issuer,
            faults: Faults::new(),
            tokens: Mutex::new(Vec::new()),
            log: Mutex::new(Vec::new()),
        }
    }

    /// Adds a token that `POST /_fake/rotate` rotates.
    pub fn register(&self, token: Arc<ProjectedToken>) {
        self.tokens.lock().push(token);
    }

    /// Rotates every registered token; returns how many were rotated.
    pub fn rotate_all(&self) -> std::io::Result<usize> {
        let tokens = self.tokens.lock().clone();
        for token in &tokens {
            token.rotate()?;
        }
        Ok(tokens.len())
    }

    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    fn record(&self, req: &Request<Bytes>, outcome: String) {
        self.log.lock().push(IssuerRecord {
            at: unix_now_f64(),
            method: req.method().to_string(),
            path: req.uri().path().to_string(),
            outcome,
        });
    }
}

impl Fake for IssuerServer {
    fn faults(&self) -> &Faults {
        &self.faults
    }

    async fn handle(&self, req: Request<Bytes>) -> HttpResponse {
        let resp = match (req.method(), req.uri().path()) {
            (&Method::GET, DISCOVERY_PATH) => {
                json_response(StatusCode::OK, &self.issuer.openid_configuration())
            }
            (&Method::GET, JWKS_PATH) => json_response(StatusCode::OK, &self.issuer.jwks()),
            _ => json_response(StatusCode::NOT_FOUND, &json!({"error": "not found"})),
        };
        self.record(&req, resp.status().as_u16().to_string());
        resp
    }

    fn render_error(&self, code: &str) -> HttpResponse {
        // kube-apiserver's `Status` object.
        json_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                    "message": code, "reason": code, "code": 500}),
        )
    }

    fn render_status(&self, status: u16, retry_after: Option<u64>) -> HttpResponse {
        let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut resp = json_response(
            code,
            &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                    "message": code.canonical_reason().unwrap_or("injected"), "code": status}),
        );
        if let Some(secs) = retry_after {
            resp.headers_mut()
                .insert(http::header::RETRY_AFTER, http::HeaderValue::from(secs));
        }
        resp
    }

    fn log_json(&self) -> serde_json::Value {
        serde_json::to_value(&*self.log.lock()).unwrap_or_default()
    }

    fn record_fault(&self, req: &Request<Bytes>, fault: &Fault) {
        self.record(req, format!("fault:{}", fault.kind()));
    }

    fn admin(&self, req: &Request<Bytes>) -> Option<HttpResponse> {
        if req.method() != Method::POST || req.uri().path() != "/_fake/rotate" {
            return None;
        }
        Some(match self.rotate_all() {
            Ok(n) => json_response(StatusCode::OK, &json!({"rotated": n})),
            Err(err) => json_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                &json!({"error": err.to_string()}),
            ),
        })
    }
}

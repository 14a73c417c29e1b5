//! An OCI API that authenticates requests the way OCI services do for resource principals
//! (docs/oci.md, "Request signing"): the `Signature` header's `keyId` is `ST$<RPST>`; the RPST must
//! be one the fake proxymux signed and unexpired; the request must be signed over the required
//! headers with the key the RPST's `jwk` names. Anything else is `401 NotAuthenticated`, which
//! is what makes the SDKs reload their resource principal files.
//!
//! Answers: `GET /n` and `/n/` (Object Storage `GetNamespace`) with the namespace as a JSON
//! string; any other path with a small JSON object naming the authenticated principal.

use crate::http::Running;
use bytes::Bytes;
use http::Request;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use super::signing::{
    BODY_HEADERS, GENERIC_HEADERS, content_sha256, decode_any_base64, parse_authorization,
    signing_string, signs_body, strip_leading_zeros, verify,
};
use super::{
    DEMO_NAMESPACE, RPST_AUDIENCE, code_for_status, default_message, error_for_code,
    error_response, ok_json, sha256_hex,
};
use crate::faults::{Fault, Faults};
use crate::http::{Fake, HttpResponse, ServeOptions, serve};
use crate::issuer::{Issuer, VerifyError};
use crate::timefmt::unix_now_f64;

/// OCI rejects a `date` header further than this from its own clock.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);
const LOG_CAPACITY: usize = 10_000;

/// One request as seen by the fake API.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ApiRecord {
    pub at: f64,
    pub method: String,
    pub path: String,
    /// `ok`, `error:NotAuthenticated` or `fault:<kind>`.
    pub outcome: String,
    /// Why authentication failed (the response body carries OCI's generic message only).
    pub reason: Option<String>,
    pub rpst_jti: Option<String>,
    /// Hex SHA-256 of the RPST in `keyId`.
    pub rpst_sha256: Option<String>,
}

/// The RPST claims the API reads.
#[derive(Debug, Clone, Deserialize)]
struct RpstClaims {
    #[serde(default)]
    sub: String,
    #[serde(default)]
    jti: String,
    #[serde(default)]
    res_tenant: String,
    #[serde(default)]
    res_compartment: String,
    jwk: serde_json::Value,
}

#[derive(Debug, Deserialize)]
struct Jwk {
    n: String,
    e: String,
}

/// The fake API. Use [`FakeOciApi::start`] to serve it.
#[derive(Debug)]
pub struct FakeOciApi {
    rpst_verifier: Arc<Issuer>,
    faults: Faults,
    log: Mutex<Vec<ApiRecord>>,
    accepted: AtomicUsize,
}

/// A running [`FakeOciApi`]; derefs to it. Dropping it stops the server.
pub type FakeOciApiHandle = Running<FakeOciApi>;

impl FakeOciApi {
    /// An API trusting RPSTs signed by `rpst_verifier` (the proxymux's RPST signer).
    pub fn new(rpst_verifier: Arc<Issuer>) -> FakeOciApi {
        FakeOciApi {
            rpst_verifier,
            faults: Faults::new(),
            log: Mutex::new(Vec::new()),
            accepted: AtomicUsize::new(0),
        }
    }

    /// Serves a new fake API over plain HTTP on `addr` (loopback in tests and the demo).
    pub async fn start(
        rpst_verifier: Arc<Issuer>,
        addr: SocketAddr,
    ) -> io::Result<FakeOciApiHandle> {
        let api = Arc::new(FakeOciApi::new(rpst_verifier));
        let server = serve(api.clone(), addr, ServeOptions::default()).await?;
        Ok(Running::new(api, server))
    }

    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    pub fn log(&self) -> Vec<ApiRecord> {
        self.log.lock().clone()
    }

    /// Requests authenticated so far.
    pub fn accepted_count(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    fn push(&self, record: ApiRecord) {
        let mut log = self.log.lock();
        if log.len() >= LOG_CAPACITY {
            log.remove(0);
        }
        log.push(record);
    }

    /// Authenticates one request; `Err` carries the reason for the log.
    fn authenticate(
        &self,
        req: &Request<Bytes>,
        record: &mut ApiRecord,
    ) -> Result<RpstClaims, String> {
        let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
        let params =
            parse_authorization(header("authorization").ok_or("no Authorization header")?)?;
        if params.algorithm != "rsa-sha256" {
            return Err(format!("unsupported algorithm {:?}", params.algorithm));
        }
        if params.version.as_deref().is_some_and(|v| v != "1") {
            return Err(format!(
                "unsupported signature version {:?}",
                params.version
            ));
        }
        let rpst = params
            .key_id
            .strip_prefix("ST$")
            .ok_or("keyId is not a security token (ST$<token>)")?;
        record.rpst_sha256 = Some(sha256_hex(rpst.as_bytes()));
        let claims: Option<RpstClaims> = jsonwebtoken::dangerous::insecure_decode_claims(rpst).ok();
        record.rpst_jti = claims.as_ref().map(|c| c.jti.clone());
        self.rpst_verifier
            .verify(rpst, RPST_AUDIENCE)
            .map_err(|e| match e {
                VerifyError::Expired => "the RPST has expired".to_string(),
                other => format!("the RPST is not valid: {other}"),
            })?;
        let claims = claims.ok_or("the RPST has no jwk claim")?;
        let jwk: Jwk = match &claims.jwk {
            serde_json::Value::String(text) => serde_json::from_str(text),
            other => serde_json::from_value(other.clone()),
        }
        .map_err(|_| "the RPST's jwk is not an RSA JWK")?;
        let (n, e) = (
            decode_any_base64(&jwk.n).ok_or("the RPST's jwk.n is not base64")?,
            decode_any_base64(&jwk.e).ok_or("the RPST's jwk.e is not base64")?,
        );

        let method = req.method().as_str();
        let mut required: Vec<&str> = GENERIC_HEADERS.to_vec();
        if signs_body(method) {
            required.extend_from_slice(BODY_HEADERS);
        }
        // OCI accepts x-date in place of date (the TypeScript SDK signs x-date: browsers and
        // node's fetch cannot set Date).
        let covers = |h: &str| params.headers.iter().any(|s| s == h);
        if let Some(missing) = required
            .iter()
            .find(|h| !(covers(h) || (**h == "date" && covers("x-date"))))
        {
            return Err(format!("the signature does not cover {missing}"));
        }
        let target = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let text = signing_string(method, target, &params.headers, header)?;
        if !verify(
            strip_leading_zeros(&n),
            strip_leading_zeros(&e),
            text.as_bytes(),
            &params.signature,
        ) {
            return Err("the signature does not verify with the RPST's key".into());
        }
        let date = header("date")
            .or_else(|| header("x-date"))
            .unwrap_or_default();
        let date =
            httpdate::parse_http_date(date).map_err(|_| "the date header is not an HTTP date")?;
        let skew = match date.duration_since(SystemTime::now()) {
            Ok(ahead) => ahead,
            Err(behind) => behind.duration(),
        };
        if skew > MAX_CLOCK_SKEW {
            return Err(format!("the date header is {} s off", skew.as_secs()));
        }
        if signs_body(method) {
            if header("x-content-sha256") != Some(content_sha256(req.body()).as_str()) {
                return Err("x-content-sha256 does not match the body".into());
            }
            if header("content-length") != Some(req.body().len().to_string().as_str()) {
                return Err("content-length does not match the body".into());
            }
        }
        Ok(claims)
    }
}

impl Fake for FakeOciApi {
    fn faults(&self) -> &Faults {
        &self.faults
    }

    async fn handle(&self, req: Request<Bytes>) -> HttpResponse {
        let path = req.uri().path().to_string();
        let mut record = ApiRecord {
            at: unix_now_f64(),
            method: req.method().to_string(),
            path: path.clone(),
            outcome: String::new(),
            reason: None,
            rpst_jti: None,
            rpst_sha256: None,
        };
        let response = match self.authenticate(&req, &mut record) {
            Ok(claims) => {
                self.accepted.fetch_add(1, Ordering::SeqCst);
                record.outcome = "ok".into();
                if path == "/n" || path == "/n/" {
                    ok_json(json!(DEMO_NAMESPACE).to_string())
                } else {
                    ok_json(
                        json!({
                            "authenticated": true,
                            "method": req.method().as_str(),
                            "path": path,
                            "principal": {
                                "sub": claims.sub,
                                "tenant": claims.res_tenant,
                                "compartment": claims.res_compartment,
                            },
                        })
                        .to_string(),
                    )
                }
            }
            Err(reason) => {
                record.outcome = "error:NotAuthenticated".into();
                record.reason = Some(reason);
                error_for_code("NotAuthenticated", default_message("NotAuthenticated"))
            }
        };
        self.push(record);
        response
    }

    fn render_error(&self, code: &str) -> HttpResponse {
        error_for_code(code, default_message(code))
    }

    fn render_status(&self, status: u16, retry_after: Option<u64>) -> HttpResponse {
        let code = code_for_status(status);
        error_response(status, code, default_message(code), retry_after)
    }

    fn log_json(&self) -> serde_json::Value {
        serde_json::to_value(&*self.log.lock()).unwrap_or_default()
    }

    fn record_fault(&self, req: &Request<Bytes>, fault: &Fault) {
        self.push(ApiRecord {
            at: unix_now_f64(),
            method: req.method().to_string(),
            path: req.uri().path().to_string(),
            outcome: format!("fault:{}", fault.kind()),
            reason: None,
            rpst_jti: None,
            rpst_sha256: None,
        });
    }
}

//! The OKE proxymux endpoint (docs/oci.md, "Proxymux exchange"):
//! `POST /resourcePrincipalSessionTokens` with `Authorization: Bearer <service-account token>` and
//! `{"podKey": "<base64 SPKI DER>"}`, answered with a JSON string literal holding base64 of
//! `{"token":"ST$<RPST>"}`.
//!
//! Served over HTTPS with a certificate for `127.0.0.1` signed by a generated cluster CA; the
//! admin API (`/_fake/...`) is served on a second, plain-HTTP loopback listener so test
//! harnesses need no CA. Admin routes beyond the common ones:
//! - `GET /_fake/settings`, `POST /_fake/settings` with any of
//!   `{"rpst_lifetime_secs": N, "foreign_jwk": N}` (see [`ProxymuxSettings`]).

use aws_lc_rs::rsa::PublicKey;
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use parking_lot::Mutex;
use rustls::pki_types::SubjectPublicKeyInfoDer;
use rustls::pki_types::pem::PemObject;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::{
    DEMO_CLUSTER, DEMO_COMPARTMENT, DEMO_TENANCY, RPST_AUDIENCE, RPST_ISSUER, code_for_status,
    default_message, error_for_code, error_response, ok_json, sha256_hex,
};
use crate::faults::{Fault, Faults};
use crate::http::{Fake, HttpResponse, ServeOptions, ServerHandle, json_response, serve};
use crate::issuer::{Issuer, VerifyError, peek_claims, random_uuid};
use crate::pki::Pki;
use crate::timefmt::{unix_now, unix_now_f64};

/// The exchange's path (Py/Go/Java/TS all use it).
pub const PATH: &str = "/resourcePrincipalSessionTokens";
/// The port the SDKs hard-code (Py, Go, Java); the kubelet-injected variable is
/// `KUBERNETES_SERVICE_PORT_PROXYMUX`.
pub const DEFAULT_PORT: u16 = 12250;
/// RPST lifetime when not told otherwise. The real lifetime is undocumented
/// (docs/oci.md, "RPST claims"); an hour keeps refreshes visible in a demo.
pub const DEFAULT_RPST_LIFETIME: Duration = Duration::from_secs(3600);
/// Keys below this many modulus bits are refused, as the SDKs never generate them.
const MIN_KEY_BITS: usize = 2048;
const LOG_CAPACITY: usize = 10_000;
/// What proxymux says with its 403: workload identity needs an enhanced cluster (Py/Go map the
/// status to "Please ensure the cluster type is enhanced").
pub const NOT_ENHANCED_MESSAGE: &str =
    "Workload identity is not supported for this cluster: the cluster type must be enhanced.";

/// Proxymux's message for an error code.
fn message_for(code: &str) -> &'static str {
    match code {
        "NotAuthorized" | "Forbidden" => NOT_ENHANCED_MESSAGE,
        other => default_message(other),
    }
}

/// Run-time knobs, readable and settable through `/_fake/settings`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxymuxSettings {
    /// Lifetime of minted RPSTs (`exp - iat`), seconds.
    pub rpst_lifetime_secs: u64,
    /// The next this-many RPSTs carry a `jwk` that is not the caller's `podKey`, as a
    /// misbehaving or caching proxy would return.
    pub foreign_jwk: u32,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SettingsPatch {
    rpst_lifetime_secs: Option<u64>,
    foreign_jwk: Option<u32>,
}

/// One request as seen by the fake (rejected and faulted ones included).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProxymuxRecord {
    /// Unix seconds.
    pub at: f64,
    /// The service-account token's `sub`, when it had one.
    pub subject: Option<String>,
    pub opc_request_id: Option<String>,
    /// `spki` (armour-less base64 DER, Py/TS/Java) or `pem` (Go).
    pub pod_key_form: Option<String>,
    /// Hex SHA-256 of the `podKey`'s SubjectPublicKeyInfo DER.
    pub pod_key_sha256: Option<String>,
    /// `issued`, `error:<Code>` or `fault:<kind>`.
    pub outcome: String,
    pub rpst_jti: Option<String>,
    /// Hex SHA-256 of the RPST (the token itself is never stored).
    pub rpst_sha256: Option<String>,
    pub rpst_exp: Option<u64>,
    /// Whether this RPST's `jwk` was deliberately not the `podKey`.
    pub foreign_jwk: bool,
}

/// An RSA public key as the RPST's `jwk` states it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RsaComponents {
    n: Vec<u8>,
    e: Vec<u8>,
}

/// The fake proxymux. Use [`FakeProxymux::start`] to serve it.
#[derive(Debug)]
pub struct FakeProxymux {
    sa_issuer: Arc<Issuer>,
    rpst_signer: Arc<Issuer>,
    audience: String,
    faults: Faults,
    settings: Mutex<ProxymuxSettings>,
    log: Mutex<Vec<ProxymuxRecord>>,
    issued: AtomicUsize,
    /// A key nobody holds, for `foreign_jwk`.
    foreign: RsaComponents,
}

/// A running [`FakeProxymux`]; derefs to it. Dropping it stops both listeners.
#[derive(Debug)]
pub struct FakeProxymuxHandle {
    proxymux: Arc<FakeProxymux>,
    server: ServerHandle,
    admin: ServerHandle,
    ca_pem: String,
}

impl Deref for FakeProxymuxHandle {
    type Target = FakeProxymux;
    fn deref(&self) -> &FakeProxymux {
        &self.proxymux
    }
}

impl FakeProxymuxHandle {
    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// `https://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// The IP a pod sees in `KUBERNETES_SERVICE_HOST`.
    pub fn host(&self) -> IpAddr {
        self.server.addr().ip()
    }

    /// What a pod sees in `KUBERNETES_SERVICE_PORT_PROXYMUX`.
    pub fn port(&self) -> u16 {
        self.server.addr().port()
    }

    /// The plain-HTTP admin API, `http://127.0.0.1:PORT/_fake`.
    pub fn admin_url(&self) -> String {
        self.admin.admin_url()
    }

    /// The cluster CA (PEM) that signed the server certificate.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    pub fn proxymux(&self) -> &Arc<FakeProxymux> {
        &self.proxymux
    }

    pub async fn shutdown(self) {
        self.server.shutdown().await;
        self.admin.shutdown().await;
    }
}

/// What the exchange rejected, as OCI renders it.
struct Rejection {
    code: &'static str,
    message: String,
}

impl Rejection {
    fn new(code: &'static str, message: impl Into<String>) -> Rejection {
        Rejection {
            code,
            message: message.into(),
        }
    }
}

impl FakeProxymux {
    /// A proxymux accepting service-account tokens from `sa_issuer` for `audience`, minting
    /// RPSTs signed by `rpst_signer` (whose URL should be [`RPST_ISSUER`]).
    pub fn new(sa_issuer: Arc<Issuer>, rpst_signer: Arc<Issuer>, audience: &str) -> FakeProxymux {
        let foreign = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
            .expect("RSA-2048 key generation");
        let public = aws_lc_rs::signature::KeyPair::public_key(&foreign);
        FakeProxymux {
            sa_issuer,
            rpst_signer,
            audience: audience.to_string(),
            faults: Faults::new(),
            settings: Mutex::new(ProxymuxSettings {
                rpst_lifetime_secs: DEFAULT_RPST_LIFETIME.as_secs(),
                foreign_jwk: 0,
            }),
            log: Mutex::new(Vec::new()),
            issued: AtomicUsize::new(0),
            foreign: RsaComponents {
                n: public.modulus().big_endian_without_leading_zero().to_vec(),
                e: public.exponent().big_endian_without_leading_zero().to_vec(),
            },
        }
    }

    /// Serves a new proxymux over HTTPS on `addr` with `pki`'s server certificate, and its
    /// admin API over plain HTTP on an ephemeral loopback port.
    pub async fn start(
        sa_issuer: Arc<Issuer>,
        rpst_signer: Arc<Issuer>,
        audience: &str,
        pki: &Pki,
        addr: SocketAddr,
    ) -> io::Result<FakeProxymuxHandle> {
        let proxymux = Arc::new(FakeProxymux::new(sa_issuer, rpst_signer, audience));
        let server = serve(
            proxymux.clone(),
            addr,
            ServeOptions {
                tls: Some(pki.server_config()),
            },
        )
        .await?;
        let admin_addr = SocketAddr::new(addr.ip(), 0);
        let admin = serve(
            Arc::new(AdminOnly(proxymux.clone())),
            admin_addr,
            ServeOptions::default(),
        )
        .await?;
        Ok(FakeProxymuxHandle {
            proxymux,
            server,
            admin,
            ca_pem: pki.ca_pem().to_string(),
        })
    }

    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    pub fn settings(&self) -> ProxymuxSettings {
        *self.settings.lock()
    }

    /// Lifetime of RPSTs minted from now on.
    pub fn set_rpst_lifetime(&self, lifetime: Duration) {
        self.settings.lock().rpst_lifetime_secs = lifetime.as_secs().max(1);
    }

    /// The next `count` RPSTs carry a `jwk` that is not the caller's key.
    pub fn set_foreign_jwk(&self, count: u32) {
        self.settings.lock().foreign_jwk = count;
    }

    /// Every recorded request, oldest first.
    pub fn log(&self) -> Vec<ProxymuxRecord> {
        self.log.lock().clone()
    }

    /// RPSTs issued so far.
    pub fn issued_count(&self) -> usize {
        self.issued.load(Ordering::SeqCst)
    }

    /// Mints an RPST for `subject` (a `system:serviceaccount:NS:NAME`) bound to the public key
    /// `pod_key` (SubjectPublicKeyInfo DER), with explicit times (tests mint expired ones).
    pub fn mint_rpst_for_key(
        &self,
        subject: &str,
        pod_key: &[u8],
        iat: u64,
        exp: u64,
    ) -> Result<String, String> {
        let key = PublicKey::from_der(pod_key).map_err(|e| format!("not an RSA key: {e}"))?;
        Ok(self.mint(subject, &components(&key), iat, exp).0)
    }

    fn push(&self, record: ProxymuxRecord) {
        let mut log = self.log.lock();
        if log.len() >= LOG_CAPACITY {
            log.remove(0);
        }
        log.push(record);
    }

    /// The RPST and its `jti`.
    fn mint(&self, subject: &str, key: &RsaComponents, iat: u64, exp: u64) -> (String, String) {
        let mut parts = subject.splitn(4, ':').skip(2);
        let (namespace, account) = (
            parts.next().unwrap_or_default(),
            parts.next().unwrap_or_default(),
        );
        let workload = format!(
            "ocid1.workload.oc1.iad.{}",
            &sha256_hex(format!("{DEMO_CLUSTER}|{subject}").as_bytes())[..60]
        );
        // `jwk` is a JSON *string* in real RPSTs (docs/oci.md, "RPST claims"); `n` in base64url.
        let jwk = json!({
            "kid": format!("podkey-{}", &sha256_hex(&key.n)[..16]),
            "n": URL_SAFE_NO_PAD.encode(&key.n),
            "e": URL_SAFE_NO_PAD.encode(&key.e),
            "kty": "RSA",
            "alg": "RS256",
            "use": "sig",
        })
        .to_string();
        let jti = random_uuid();
        let claims = json!({
            "sub": workload,
            "iss": RPST_ISSUER,
            "aud": RPST_AUDIENCE,
            "ptype": "resource",
            "ttype": "res",
            "jti": jti,
            "iat": iat,
            "exp": exp,
            "res_id": workload,
            "res_type": "workload",
            "res_tenant": DEMO_TENANCY,
            "res_compartment": DEMO_COMPARTMENT,
            "res_tag": "",
            "tenant": DEMO_TENANCY,
            "opc-tag": format!("V3,{DEMO_TENANCY},AAAAAQAAAAAAAAAA"),
            "opc-tenant": DEMO_TENANCY,
            "opc-compartment": DEMO_COMPARTMENT,
            "opc-instance": workload,
            "opc-bump": "",
            "cluster_id": DEMO_CLUSTER,
            "var_namespace": namespace,
            "var_service_account": account,
            "jwk": jwk,
        });
        (self.rpst_signer.sign(&claims), jti)
    }

    fn exchange(
        &self,
        req: &Request<Bytes>,
        record: &mut ProxymuxRecord,
    ) -> Result<String, Rejection> {
        if req.uri().path() != PATH {
            return Err(Rejection::new(
                "NotAuthorizedOrNotFound",
                format!("no route {}", req.uri().path()),
            ));
        }
        if req.method() != Method::POST {
            return Err(Rejection::new(
                "MethodNotAllowed",
                format!("{} is not allowed on {PATH}", req.method()),
            ));
        }
        let token = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                Rejection::new(
                    "NotAuthenticated",
                    "Missing or malformed Authorization header: expected a Bearer service account token",
                )
            })?;
        record.subject = peek_claims(token).map(|c| c.sub).filter(|s| !s.is_empty());
        let verified = self
            .sa_issuer
            .verify(token, &self.audience)
            .map_err(|err| {
                let why = match err {
                    VerifyError::Expired => "the service account token has expired",
                    VerifyError::WrongAudience => {
                        "the service account token has the wrong audience"
                    }
                    VerifyError::WrongIssuer => {
                        "the service account token was not issued by this cluster"
                    }
                    VerifyError::BadSignature | VerifyError::Malformed => {
                        "the service account token could not be validated"
                    }
                };
                Rejection::new("NotAuthenticated", why)
            })?;

        #[derive(Deserialize)]
        struct Body {
            #[serde(rename = "podKey")]
            pod_key: String,
        }
        let body: Body = serde_json::from_slice(req.body()).map_err(|_| {
            Rejection::new(
                "InvalidParameter",
                "The request body must be a JSON object with a podKey string",
            )
        })?;
        let text = body.pod_key.trim();
        let (form, der) = if text.starts_with("-----BEGIN") {
            let der = SubjectPublicKeyInfoDer::from_pem_slice(text.as_bytes()).map_err(|_| {
                Rejection::new("InvalidParameter", "podKey is not a PEM public key")
            })?;
            ("pem", der.as_ref().to_vec())
        } else {
            let der = STANDARD.decode(text).map_err(|_| {
                Rejection::new("InvalidParameter", "podKey is neither base64 DER nor PEM")
            })?;
            ("spki", der)
        };
        record.pod_key_form = Some(form.into());
        record.pod_key_sha256 = Some(sha256_hex(&der));
        let key = PublicKey::from_der(&der)
            .map_err(|_| Rejection::new("InvalidParameter", "podKey is not an RSA public key"))?;
        if key.modulus_len() * 8 < MIN_KEY_BITS {
            return Err(Rejection::new(
                "InvalidParameter",
                format!("podKey must be at least {MIN_KEY_BITS} bits"),
            ));
        }

        let (lifetime, foreign) = {
            let mut settings = self.settings.lock();
            let foreign = settings.foreign_jwk > 0;
            if foreign {
                settings.foreign_jwk -= 1;
            }
            (settings.rpst_lifetime_secs, foreign)
        };
        let bound = if foreign {
            self.foreign.clone()
        } else {
            components(&key)
        };
        let now = unix_now();
        let (rpst, jti) = self.mint(&verified.subject, &bound, now, now + lifetime);
        record.rpst_jti = Some(jti);
        record.rpst_sha256 = Some(sha256_hex(rpst.as_bytes()));
        record.rpst_exp = Some(now + lifetime);
        record.foreign_jwk = foreign;
        let inner = json!({"token": format!("ST${rpst}")}).to_string();
        // A JSON string literal of base64 (Go's test server: `fmt.Fprintf(w, "%q", b64)`).
        Ok(format!("\"{}\"", STANDARD.encode(inner)))
    }

    fn record_of(req: &Request<Bytes>) -> ProxymuxRecord {
        ProxymuxRecord {
            at: unix_now_f64(),
            subject: None,
            opc_request_id: req
                .headers()
                .get("opc-request-id")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
            pod_key_form: None,
            pod_key_sha256: None,
            outcome: String::new(),
            rpst_jti: None,
            rpst_sha256: None,
            rpst_exp: None,
            foreign_jwk: false,
        }
    }

    fn settings_admin(&self, req: &Request<Bytes>) -> HttpResponse {
        if req.method() == Method::POST {
            let patch: SettingsPatch = match serde_json::from_slice(req.body()) {
                Ok(p) => p,
                Err(e) => {
                    return json_response(
                        StatusCode::BAD_REQUEST,
                        &json!({"error": e.to_string()}),
                    );
                }
            };
            if let Some(secs) = patch.rpst_lifetime_secs {
                self.set_rpst_lifetime(Duration::from_secs(secs));
            }
            if let Some(n) = patch.foreign_jwk {
                self.set_foreign_jwk(n);
            }
        }
        json_response(
            StatusCode::OK,
            &serde_json::to_value(self.settings()).unwrap_or_default(),
        )
    }
}

fn components(key: &PublicKey) -> RsaComponents {
    RsaComponents {
        n: key.modulus().big_endian_without_leading_zero().to_vec(),
        e: key.exponent().big_endian_without_leading_zero().to_vec(),
    }
}

impl Fake for FakeProxymux {
    fn faults(&self) -> &Faults {
        &self.faults
    }

    async fn handle(&self, req: Request<Bytes>) -> HttpResponse {
        let mut record = Self::record_of(&req);
        let response = match self.exchange(&req, &mut record) {
            Ok(body) => {
                self.issued.fetch_add(1, Ordering::SeqCst);
                record.outcome = "issued".into();
                ok_json(body)
            }
            Err(rejection) => {
                record.outcome = format!("error:{}", rejection.code);
                error_for_code(rejection.code, &rejection.message)
            }
        };
        self.push(record);
        response
    }

    fn render_error(&self, code: &str) -> HttpResponse {
        error_for_code(code, message_for(code))
    }

    fn render_status(&self, status: u16, retry_after: Option<u64>) -> HttpResponse {
        let code = code_for_status(status);
        error_response(status, code, message_for(code), retry_after)
    }

    fn log_json(&self) -> serde_json::Value {
        serde_json::to_value(&*self.log.lock()).unwrap_or_default()
    }

    fn record_fault(&self, req: &Request<Bytes>, fault: &Fault) {
        let mut record = Self::record_of(req);
        record.outcome = format!("fault:{}", fault.kind());
        self.push(record);
    }

    fn admin(&self, req: &Request<Bytes>) -> Option<HttpResponse> {
        (req.uri().path() == "/_fake/settings").then(|| self.settings_admin(req))
    }
}

/// The proxymux's admin API on a plain listener: `/_fake/...` only.
struct AdminOnly(Arc<FakeProxymux>);

impl Fake for AdminOnly {
    fn faults(&self) -> &Faults {
        &self.0.faults
    }

    async fn handle(&self, req: Request<Bytes>) -> HttpResponse {
        error_for_code(
            "NotAuthorizedOrNotFound",
            &format!(
                "{} is served over HTTPS only; this listener has the admin API",
                req.uri().path()
            ),
        )
    }

    fn render_error(&self, code: &str) -> HttpResponse {
        self.0.render_error(code)
    }

    fn render_status(&self, status: u16, retry_after: Option<u64>) -> HttpResponse {
        self.0.render_status(status, retry_after)
    }

    fn log_json(&self) -> serde_json::Value {
        self.0.log_json()
    }

    fn admin(&self, req: &Request<Bytes>) -> Option<HttpResponse> {
        self.0.admin(req)
    }
}

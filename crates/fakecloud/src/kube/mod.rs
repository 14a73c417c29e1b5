//! An emulated Kubernetes API server for ServiceAccounts, faithful enough for real kubectl and
//! the Rust `kube` client: HTTPS with a generated cluster CA, bearer-token authentication,
//! legacy discovery, and get / list / create / update / patch / delete of `v1` ServiceAccounts
//! with the real server's `Status` errors.
//!
//! - [`api`]: routing and the REST handlers; [`store`]: the objects and their bookkeeping;
//!   [`object`]: the ServiceAccount type; [`patch`]: merge, strategic-merge and JSON patches;
//!   [`selector`]: label and field selectors; [`discovery`]: `/version`, `/api`, `/apis`;
//!   [`status`]: `Status` errors; [`kubeconfig`]: a kubeconfig for clients.
//!
//! Authentication is as with `--anonymous-auth=false`: every request without a known bearer
//! token is `401 Unauthorized`. A token may be limited to some verbs, so a client holding only
//! `get` (the injector's ClusterRole) is refused anything else with the real `403 Forbidden`.
//!
//! The admin API is served over plain HTTP on its own loopback listener (test harnesses need no
//! CA). Beyond the common routes (`/_fake/log`, `/_fake/faults`, see [`crate::http`]):
//! - `GET /_fake/serviceaccounts`: every stored object.
//! - `POST /_fake/serviceaccounts`: one object or an array, stored as given (namespace
//!   `default` unless set; `uid`/`creationTimestamp` filled in unless given; a new
//!   `resourceVersion`), replacing objects of the same name. `PUT` first removes every object;
//!   `DELETE` removes every object.
//! - `POST /_fake/tokens` `{"token": T, "user": U, "verbs": ["get"]}` (`verbs` optional: all);
//!   `GET /_fake/tokens` lists them.
//! - `GET /_fake/down`; `POST /_fake/down` `{"mode": "refuse"}` closes the API listener
//!   (connections are refused, open ones closed) or `{"mode": "hang"}` (requests are read and
//!   never answered); `DELETE /_fake/down` brings the server back on the same address.
//! - `DELETE /_fake/log` empties the request log.

pub mod api;
pub mod discovery;
pub mod kubeconfig;
pub mod object;
pub mod patch;
pub mod protobuf;
pub mod selector;
pub mod status;
pub mod store;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Weak};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::faults::{Fault, Faults};
use crate::http::{
    Fake, HttpResponse, ServeOptions, ServerHandle, json_response, serve, serve_listener,
};
use crate::pki::Pki;
use crate::timefmt::unix_now_f64;
pub use kubeconfig::Kubeconfig;
pub use object::ServiceAccount;
use status::ApiError;
use store::Store;

/// The user the default token authenticates as.
pub const ADMIN_USER: &str = "fakecloud-admin";
/// The request log keeps at most this many records (the oldest are dropped).
const LOG_CAPACITY: usize = 10_000;

/// A bearer token the server accepts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Token {
    pub token: String,
    /// The user it authenticates as (named in `403` messages and the request log).
    pub user: String,
    /// The verbs it may use on serviceaccounts (`get`, `list`, `create`, `update`, `patch`,
    /// `delete`); `None` allows all. Discovery is open to every authenticated user.
    #[serde(default)]
    pub verbs: Option<Vec<String>>,
}

/// How the server is unreachable, if it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Down {
    /// Serving.
    Up,
    /// The listener is closed: connections are refused.
    Refuse,
    /// Connections and TLS complete, requests are read and never answered (until the server is
    /// brought back, or [`crate::faults::TIMEOUT_HOLD`] passes; then `503` with `Connection: close`).
    Hang,
}

/// One request as the server saw it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KubeRecord {
    /// Unix seconds.
    pub at: f64,
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub accept: Option<String>,
    pub content_type: Option<String>,
    pub user_agent: Option<String>,
    /// The authenticated user, when the token was known.
    pub user: Option<String>,
    /// The Kubernetes verb (`get`, `list`, `create`, `update`, `patch`, `delete`), for
    /// serviceaccount requests.
    pub verb: Option<String>,
    /// `0` when no response was written.
    pub status: u16,
    /// `ok`, `error:<Reason>`, `fault:<kind>` or `down:hang`.
    pub outcome: String,
}

/// The emulated API server. Use [`FakeKube::start`] to serve it.
#[derive(Debug)]
pub struct FakeKube {
    me: Weak<FakeKube>,
    faults: Faults,
    store: Mutex<Store>,
    tokens: Mutex<Vec<Token>>,
    log: Mutex<Vec<KubeRecord>>,
    down: watch::Sender<Down>,
    /// The HTTPS listener's address (kept across a `refuse` outage) and TLS configuration.
    addr: Mutex<Option<SocketAddr>>,
    tls: Arc<rustls::ServerConfig>,
    /// The HTTPS server, `None` while refusing.
    server: Mutex<Option<ServerHandle>>,
    ca_pem: String,
}

/// A running [`FakeKube`]; derefs to it. Dropping it stops both listeners.
#[derive(Debug)]
pub struct FakeKubeHandle {
    kube: Arc<FakeKube>,
    addr: SocketAddr,
    admin: Option<ServerHandle>,
}

impl std::ops::Deref for FakeKubeHandle {
    type Target = FakeKube;
    fn deref(&self) -> &FakeKube {
        &self.kube
    }
}

impl Drop for FakeKubeHandle {
    fn drop(&mut self) {
        // The HTTPS server's task holds the fake; dropping its handle stops it.
        drop(self.kube.server.lock().take());
    }
}

impl FakeKubeHandle {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `https://127.0.0.1:PORT`: the kubeconfig's `server`.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// The plain-HTTP admin API, `http://127.0.0.1:PORT/_fake`.
    pub fn admin_url(&self) -> String {
        self.admin
            .as_ref()
            .map(ServerHandle::admin_url)
            .unwrap_or_default()
    }

    pub fn fake(&self) -> &Arc<FakeKube> {
        &self.kube
    }

    /// A kubeconfig for this server authenticating with the default token as [`ADMIN_USER`].
    pub fn kubeconfig(&self, namespace: &str) -> String {
        self.with_kubeconfig(namespace, |k| k.to_yaml())
    }

    /// Writes [`FakeKubeHandle::kubeconfig`] (mode 0600).
    pub fn write_kubeconfig(&self, path: &Path, namespace: &str) -> io::Result<()> {
        self.with_kubeconfig(namespace, |k| k.write(path))
    }

    fn with_kubeconfig<T>(&self, namespace: &str, f: impl FnOnce(&Kubeconfig<'_>) -> T) -> T {
        let (url, token) = (self.url(), self.token());
        f(&Kubeconfig {
            server: &url,
            ca_pem: &self.ca_pem,
            user: ADMIN_USER,
            token: &token,
            namespace,
        })
    }

    /// Stops both listeners and waits for their accept loops to end.
    pub async fn shutdown(mut self) {
        let server = self.kube.server.lock().take();
        if let Some(server) = server {
            server.shutdown().await;
        }
        if let Some(admin) = self.admin.take() {
            admin.shutdown().await;
        }
    }
}

impl FakeKube {
    /// Serves a new API server over HTTPS on `addr` with `pki`'s server certificate (give it
    /// IP SAN `127.0.0.1` and DNS `localhost`, `kubernetes.default.svc`), and its admin API over
    /// plain HTTP on an ephemeral port of the same IP. One token, for [`ADMIN_USER`] with every
    /// verb, is accepted from the start.
    pub async fn start(pki: &Pki, addr: SocketAddr) -> io::Result<FakeKubeHandle> {
        let (down, _) = watch::channel(Down::Up);
        let kube = Arc::new_cyclic(|me| FakeKube {
            me: me.clone(),
            faults: Faults::new(),
            store: Mutex::new(Store::default()),
            tokens: Mutex::new(vec![Token {
                token: random_token(),
                user: ADMIN_USER.to_string(),
                verbs: None,
            }]),
            log: Mutex::new(Vec::new()),
            down,
            addr: Mutex::new(None),
            tls: pki.server_config(),
            server: Mutex::new(None),
            ca_pem: pki.ca_pem().to_string(),
        });
        let listener = TcpListener::bind(addr).await?;
        let bound = listener.local_addr()?;
        kube.open(listener)?;
        let admin = serve(
            Arc::new(AdminOnly(kube.clone())),
            SocketAddr::new(bound.ip(), 0),
            ServeOptions::default(),
        )
        .await?;
        Ok(FakeKubeHandle {
            kube,
            addr: bound,
            admin: Some(admin),
        })
    }

    /// As [`FakeKube::start`] on `127.0.0.1:0` with a CA of its own.
    pub async fn start_local() -> io::Result<FakeKubeHandle> {
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        let pki = Pki::generate(
            "fakecloud cluster CA",
            &[loopback.ip()],
            &["localhost", "kubernetes.default.svc"],
        )?;
        FakeKube::start(&pki, loopback).await
    }

    fn open(&self, listener: TcpListener) -> io::Result<()> {
        let me = self
            .me
            .upgrade()
            .ok_or_else(|| io::Error::other("the API server is shutting down"))?;
        *self.addr.lock() = Some(listener.local_addr()?);
        let server = serve_listener(
            me,
            listener,
            ServeOptions {
                tls: Some(self.tls.clone()),
            },
        )?;
        *self.server.lock() = Some(server);
        Ok(())
    }

    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    /// The CA (PEM) that signed the server certificate.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The first accepted token (the one kubeconfigs are written with).
    pub fn token(&self) -> String {
        self.tokens
            .lock()
            .first()
            .map(|t| t.token.clone())
            .unwrap_or_default()
    }

    /// Accepts one more token.
    pub fn add_token(&self, token: Token) {
        self.tokens.lock().push(token);
    }

    fn authenticate(&self, token: &str) -> Option<Token> {
        self.tokens
            .lock()
            .iter()
            .find(|t| t.token == token)
            .cloned()
    }

    /// Stores `sa` as the admin API's `POST /_fake/serviceaccounts` does; returns what is stored.
    pub fn seed(&self, sa: ServiceAccount) -> Result<ServiceAccount, ApiError> {
        self.store.lock().seed(sa)
    }

    /// The stored object, with `kind` and `apiVersion`.
    pub fn service_account(&self, namespace: &str, name: &str) -> Option<ServiceAccount> {
        self.store.lock().get(namespace, name).ok()
    }

    /// Every stored object.
    pub fn service_accounts(&self) -> Vec<ServiceAccount> {
        self.store.lock().all()
    }

    pub fn down_state(&self) -> Down {
        *self.down.borrow()
    }

    /// Makes the server unreachable (`Refuse`, `Hang`) or brings it back (`Up`, on the same
    /// address). Returns once the change is in effect.
    pub async fn set_down(&self, mode: Down) -> io::Result<()> {
        self.down.send_replace(mode);
        match mode {
            Down::Refuse => {
                let server = self.server.lock().take();
                if let Some(server) = server {
                    server.shutdown().await;
                }
            }
            Down::Up | Down::Hang => {
                if self.server.lock().is_none() {
                    let addr = (*self.addr.lock())
                        .ok_or_else(|| io::Error::other("the API server never listened"))?;
                    let listener = TcpListener::bind(addr).await?;
                    self.open(listener)?;
                }
            }
        }
        Ok(())
    }

    /// The request log.
    pub fn log(&self) -> Vec<KubeRecord> {
        self.log.lock().clone()
    }

    pub fn clear_log(&self) {
        self.log.lock().clear();
    }

    fn push(&self, record: KubeRecord) {
        let mut log = self.log.lock();
        if log.len() >= LOG_CAPACITY {
            log.remove(0);
        }
        log.push(record);
    }

    fn record_of(req: &Request<Bytes>) -> KubeRecord {
        let header = |name: http::header::HeaderName| {
            req.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        KubeRecord {
            at: unix_now_f64(),
            method: req.method().to_string(),
            path: req.uri().path().to_string(),
            query: req.uri().query().map(str::to_string),
            accept: header(http::header::ACCEPT),
            content_type: header(http::header::CONTENT_TYPE),
            user_agent: header(http::header::USER_AGENT),
            user: None,
            verb: None,
            status: 0,
            outcome: String::new(),
        }
    }

    /// Holds a request while the server hangs (logged as `down:hang`, status 0, when it
    /// arrives); `Some` with the answer once it is released.
    async fn hold_while_hanging(&self, req: &Request<Bytes>) -> Option<HttpResponse> {
        let mut rx = self.down.subscribe();
        if *rx.borrow_and_update() != Down::Hang {
            return None;
        }
        let mut record = Self::record_of(req);
        record.outcome = "down:hang".to_string();
        self.push(record);
        let _ = tokio::time::timeout(
            crate::faults::TIMEOUT_HOLD,
            rx.wait_for(|d| *d != Down::Hang),
        )
        .await;
        let mut resp = ApiError::for_status(503, None).into_response();
        resp.headers_mut().insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("close"),
        );
        Some(resp)
    }

    async fn admin_routes(&self, req: &Request<Bytes>) -> Option<HttpResponse> {
        let resp = match (req.method(), req.uri().path()) {
            (&Method::GET, "/_fake/serviceaccounts") => {
                json_response(StatusCode::OK, &json!(self.service_accounts()))
            }
            (&Method::POST | &Method::PUT, "/_fake/serviceaccounts") => {
                self.seed_admin(req.method() == Method::PUT, req.body())
            }
            (&Method::DELETE, "/_fake/serviceaccounts") => {
                self.store.lock().clear();
                json_response(StatusCode::OK, &json!([]))
            }
            (&Method::GET, "/_fake/tokens") => {
                json_response(StatusCode::OK, &json!(*self.tokens.lock()))
            }
            (&Method::POST, "/_fake/tokens") => match serde_json::from_slice::<Token>(req.body()) {
                Ok(token) => {
                    self.add_token(token);
                    json_response(StatusCode::OK, &json!(*self.tokens.lock()))
                }
                Err(e) => json_response(StatusCode::BAD_REQUEST, &json!({"error": e.to_string()})),
            },
            (&Method::GET, "/_fake/down") => {
                json_response(StatusCode::OK, &json!({"mode": self.down_state()}))
            }
            (&Method::POST | &Method::DELETE, "/_fake/down") => {
                let mode = if req.method() == Method::DELETE {
                    Ok(Down::Up)
                } else {
                    #[derive(Deserialize)]
                    #[serde(deny_unknown_fields)]
                    struct Body {
                        mode: Down,
                    }
                    serde_json::from_slice::<Body>(req.body()).map(|b| b.mode)
                };
                match mode {
                    Ok(mode) => match self.set_down(mode).await {
                        Ok(()) => json_response(StatusCode::OK, &json!({"mode": mode})),
                        Err(e) => json_response(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            &json!({"error": e.to_string()}),
                        ),
                    },
                    Err(e) => json_response(
                        StatusCode::BAD_REQUEST,
                        &json!({"error": format!("{e}; expected {{\"mode\": \"refuse\"|\"hang\"|\"up\"}}")}),
                    ),
                }
            }
            (&Method::DELETE, "/_fake/log") => {
                self.clear_log();
                json_response(StatusCode::OK, &json!([]))
            }
            _ => return None,
        };
        Some(resp)
    }

    fn seed_admin(&self, replace: bool, body: &[u8]) -> HttpResponse {
        let items = match serde_json::from_slice::<Value>(body) {
            Ok(Value::Array(items)) => items,
            Ok(item @ Value::Object(_)) => vec![item],
            Ok(_) => {
                return json_response(
                    StatusCode::BAD_REQUEST,
                    &json!({"error": "expected a ServiceAccount object or an array of them"}),
                );
            }
            Err(e) => {
                return json_response(StatusCode::BAD_REQUEST, &json!({"error": e.to_string()}));
            }
        };
        let mut parsed = Vec::with_capacity(items.len());
        for item in items {
            match object::decode(item, object::FieldValidation::Strict) {
                Ok((sa, _)) => parsed.push(sa),
                Err(e) => return e.into_response(),
            }
        }
        let mut store = self.store.lock();
        if replace {
            store.clear();
        }
        let mut stored = Vec::with_capacity(parsed.len());
        for sa in parsed {
            match store.seed(sa) {
                Ok(sa) => stored.push(sa),
                Err(e) => return e.into_response(),
            }
        }
        json_response(StatusCode::OK, &json!(stored))
    }
}

fn random_token() -> String {
    let bytes: [u8; 24] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Fake for FakeKube {
    fn faults(&self) -> &Faults {
        &self.faults
    }

    async fn handle(&self, req: Request<Bytes>) -> HttpResponse {
        if let Some(resp) = self.hold_while_hanging(&req).await {
            return resp;
        }
        let mut record = Self::record_of(&req);
        let bearer = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        let token = bearer.and_then(|t| self.authenticate(t));
        record.user = token.as_ref().map(|t| t.user.clone());
        let served = match token {
            None => api::Served::error(None, ApiError::Unauthorized),
            Some(token) => api::serve(self, &token, &req),
        };
        record.verb = served.verb.map(str::to_string);
        record.status = served.response.status().as_u16();
        record.outcome = match served.error_reason {
            None => "ok".to_string(),
            Some(reason) => format!("error:{reason}"),
        };
        let resp = served.response;
        self.push(record);
        resp
    }

    fn render_error(&self, code: &str) -> HttpResponse {
        ApiError::for_reason(code).into_response()
    }

    fn render_status(&self, status: u16, retry_after: Option<u64>) -> HttpResponse {
        ApiError::for_status(status, retry_after).into_response()
    }

    fn log_json(&self) -> Value {
        serde_json::to_value(&*self.log.lock()).unwrap_or_default()
    }

    fn record_fault(&self, req: &Request<Bytes>, fault: &Fault) {
        let mut record = Self::record_of(req);
        record.outcome = format!("fault:{}", fault.kind());
        self.push(record);
    }

    async fn admin_async(&self, req: &Request<Bytes>) -> Option<HttpResponse> {
        self.admin_routes(req).await
    }
}

/// The admin API on a plain listener: `/_fake/...` only.
struct AdminOnly(Arc<FakeKube>);

impl Fake for AdminOnly {
    fn faults(&self) -> &Faults {
        &self.0.faults
    }

    async fn handle(&self, req: Request<Bytes>) -> HttpResponse {
        ApiError::BadRequest(format!(
            "{} is served over HTTPS only; this listener has the admin API",
            req.uri().path()
        ))
        .into_response()
    }

    fn render_error(&self, code: &str) -> HttpResponse {
        self.0.render_error(code)
    }

    fn render_status(&self, status: u16, retry_after: Option<u64>) -> HttpResponse {
        self.0.render_status(status, retry_after)
    }

    fn log_json(&self) -> Value {
        self.0.log_json()
    }

    async fn admin_async(&self, req: &Request<Bytes>) -> Option<HttpResponse> {
        self.0.admin_routes(req).await
    }
}

//! The small hyper 1 server every fake runs on: HTTP/1.1 keep-alive (optionally over
//! rustls), fault injection in front of the fake's handler, and the `/_fake/` admin API.
//!
//! Admin routes (never delayed or faulted):
//! - `GET /_fake/log`: the fake's request log ([`Fake::log_json`]).
//! - `GET /_fake/faults`: `{"latency_ms":..,"pending":[..]}`.
//! - `POST /_fake/faults`: one fault command object or an array of them (see [`crate::faults::Fault`]).
//! - `DELETE /_fake/faults`: clear latency and every pending fault.
//! - anything else under `/_fake/` goes to [`Fake::admin`].

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::json;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::faults::{Fault, FaultCommand, Faults, OVERSIZED_BODY, TIMEOUT_HOLD};

/// Responses are always fully buffered.
pub type HttpResponse = Response<Full<Bytes>>;

/// Largest request body a fake reads; larger bodies get `413`. Real token requests are a
/// few KiB (STS caps `WebIdentityToken` at 20 000 chars), so 1 MiB only stops abuse.
pub const MAX_REQUEST_BODY: usize = 1024 * 1024;

/// Admin path prefix.
pub const ADMIN_PREFIX: &str = "/_fake/";

/// How long a TLS handshake may take before the connection is dropped.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// One emulated upstream. The server applies latency and faults, then calls [`Fake::handle`].
pub trait Fake: Send + Sync + 'static {
    /// The fault state the server consults before every non-admin request.
    fn faults(&self) -> &Faults;

    /// Serves one request (body already read, at most [`MAX_REQUEST_BODY`] bytes).
    fn handle(&self, req: Request<Bytes>) -> impl Future<Output = HttpResponse> + Send;

    /// Renders an injected `error` fault: `code` in this cloud's error shape and status.
    fn render_error(&self, code: &str) -> HttpResponse;

    /// Renders an injected `status` fault in this cloud's error shape.
    fn render_status(&self, status: u16, retry_after: Option<u64>) -> HttpResponse;

    /// The request log served at `GET /_fake/log`.
    fn log_json(&self) -> serde_json::Value;

    /// Content type of successful responses; used for `garbage` and `oversized` faults so
    /// the client tries to parse them.
    fn content_type(&self) -> &'static str {
        "application/json"
    }

    /// Called when a fault replaces the handler, so the fake can still log the request.
    fn record_fault(&self, _req: &Request<Bytes>, _fault: &Fault) {}

    /// Extra admin routes under `/_fake/`; `None` means 404.
    fn admin(&self, _req: &Request<Bytes>) -> Option<HttpResponse> {
        None
    }

    /// Extra admin routes that must wait for something (a listener closing or reopening);
    /// by default [`Fake::admin`].
    fn admin_async(
        &self,
        req: &Request<Bytes>,
    ) -> impl Future<Output = Option<HttpResponse>> + Send {
        let resp = self.admin(req);
        async move { resp }
    }

    /// `200 OK` whose body no parser accepts.
    fn render_garbage(&self) -> HttpResponse {
        let mut resp = Response::new(Full::new(Bytes::from_static(
            b"\x00\x1f\x8b<<<not a credential response {\"\xff\xfe",
        )));
        set_content_type(&mut resp, self.content_type());
        resp
    }

    /// `200 OK` with an [`OVERSIZED_BODY`] body.
    fn render_oversized(&self) -> HttpResponse {
        let mut resp = Response::new(Full::new(Bytes::from(vec![b'x'; OVERSIZED_BODY])));
        set_content_type(&mut resp, self.content_type());
        resp
    }
}

/// Server options. `tls` serves HTTPS on the same listener (the caller sets ALPN
/// `http/1.1` on the config if it wants it advertised).
#[derive(Clone, Default)]
pub struct ServeOptions {
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// A running server. Dropping it (or [`ServerHandle::shutdown`]) closes the listener and
/// every open connection.
#[derive(Debug)]
pub struct ServerHandle {
    addr: SocketAddr,
    scheme: &'static str,
    shutdown: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl ServerHandle {
    /// The bound address (the real port when bound to port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT` (or `https://`); an unspecified bind address maps to loopback.
    pub fn url(&self) -> String {
        let ip = match self.addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        format!(
            "{}://{}",
            self.scheme,
            SocketAddr::new(ip, self.addr.port())
        )
    }

    /// `<url>/_fake`.
    pub fn admin_url(&self) -> String {
        format!("{}/_fake", self.url())
    }

    /// Stops accepting, closes open connections and waits for the accept loop to end.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

/// Binds `addr` (port 0 allowed) and serves `fake` on it.
pub async fn serve<F: Fake>(
    fake: Arc<F>,
    addr: SocketAddr,
    opts: ServeOptions,
) -> io::Result<ServerHandle> {
    let listener = TcpListener::bind(addr).await?;
    serve_listener(fake, listener, opts)
}

/// Serves `fake` on an already bound listener (useful when the URL must be known before
/// the fake is built, as for an OIDC issuer). Must run inside a Tokio runtime.
pub fn serve_listener<F: Fake>(
    fake: Arc<F>,
    listener: TcpListener,
    opts: ServeOptions,
) -> io::Result<ServerHandle> {
    let addr = listener.local_addr()?;
    let (shutdown, rx) = watch::channel(false);
    let acceptor = opts.tls.map(tokio_rustls::TlsAcceptor::from);
    let scheme = if acceptor.is_some() { "https" } else { "http" };
    let task = tokio::spawn(accept_loop(fake, listener, acceptor, rx));
    Ok(ServerHandle {
        addr,
        scheme,
        shutdown,
        task: Some(task),
    })
}

async fn accept_loop<F: Fake>(
    fake: Arc<F>,
    listener: TcpListener,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let stream = tokio::select! {
            _ = stopped(&mut shutdown) => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    // Typically EMFILE; back off instead of spinning.
                    tracing::warn!(%err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        tokio::spawn(connection(
            fake.clone(),
            stream,
            acceptor.clone(),
            shutdown.clone(),
        ));
    }
}

async fn connection<F: Fake>(
    fake: Arc<F>,
    stream: TcpStream,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    shutdown: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    match acceptor {
        None => serve_connection(fake, stream, shutdown).await,
        Some(acceptor) => {
            match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => serve_connection(fake, tls, shutdown).await,
                Ok(Err(err)) => tracing::debug!(%err, "TLS handshake failed"),
                Err(_) => tracing::debug!("TLS handshake timed out"),
            }
        }
    }
}

async fn serve_connection<F, IO>(fake: Arc<F>, io: IO, mut shutdown: watch::Receiver<bool>)
where
    F: Fake,
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |req| dispatch(fake.clone(), req));
    let conn = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(io), svc);
    tokio::select! {
        res = conn => {
            if let Err(err) = res {
                tracing::debug!(%err, "connection ended with error");
            }
        }
        _ = stopped(&mut shutdown) => {}
    }
}

/// Resolves once shutdown was requested or the handle is gone.
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not `Send`; drop it here.
    let _ = shutdown.wait_for(|stop| *stop).await.map(|_| ());
}

/// Returned from the service to make hyper drop the connection without a response.
#[derive(Debug, thiserror::Error)]
#[error("connection dropped by fault injection")]
struct DropConnection;

async fn dispatch<F: Fake>(
    fake: Arc<F>,
    req: Request<Incoming>,
) -> Result<HttpResponse, DropConnection> {
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, MAX_REQUEST_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(err) if err.is::<http_body_util::LengthLimitError>() => {
            return Ok(json_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                &json!({"error": format!("request body over {MAX_REQUEST_BODY} bytes")}),
            ));
        }
        Err(_) => return Err(DropConnection),
    };
    let req = Request::from_parts(parts, body);

    if req.uri().path().starts_with(ADMIN_PREFIX) {
        return Ok(admin(&*fake, &req).await);
    }

    let latency = fake.faults().latency();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }

    let Some(fault) = fake.faults().take() else {
        return Ok(fake.handle(req).await);
    };
    fake.record_fault(&req, &fault);
    match fault {
        Fault::Error { code, .. } => Ok(fake.render_error(&code)),
        Fault::Status {
            status,
            retry_after,
            ..
        } => Ok(fake.render_status(status, retry_after)),
        Fault::Garbage { .. } => Ok(fake.render_garbage()),
        Fault::Oversized { .. } => Ok(fake.render_oversized()),
        Fault::Timeout { .. } => {
            tokio::time::sleep(TIMEOUT_HOLD).await;
            Err(DropConnection)
        }
        Fault::Reset { .. } => Err(DropConnection),
    }
}

async fn admin<F: Fake>(fake: &F, req: &Request<Bytes>) -> HttpResponse {
    let path = req.uri().path();
    match (req.method(), path) {
        (&Method::GET, "/_fake/log") => json_response(StatusCode::OK, &fake.log_json()),
        (&Method::GET, "/_fake/faults") => json_response(StatusCode::OK, &fake.faults().to_json()),
        (&Method::DELETE, "/_fake/faults") => {
            fake.faults().clear();
            json_response(StatusCode::OK, &fake.faults().to_json())
        }
        (&Method::POST, "/_fake/faults") => match parse_fault_commands(req.body()) {
            Ok(commands) => {
                for command in commands {
                    fake.faults().apply(command);
                }
                json_response(StatusCode::OK, &fake.faults().to_json())
            }
            Err(err) => json_response(StatusCode::BAD_REQUEST, &json!({"error": err})),
        },
        _ => fake.admin_async(req).await.unwrap_or_else(|| {
            json_response(
                StatusCode::NOT_FOUND,
                &json!({"error": format!("no admin route {} {path}", req.method())}),
            )
        }),
    }
}

fn parse_fault_commands(body: &[u8]) -> Result<Vec<FaultCommand>, String> {
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let items = match value {
        serde_json::Value::Array(items) => items,
        other => vec![other],
    };
    items
        .into_iter()
        .map(|v| FaultCommand::from_json(v).map_err(|e| e.to_string()))
        .collect()
}

/// A JSON response with `Content-Type: application/json`.
pub fn json_response(status: StatusCode, value: &serde_json::Value) -> HttpResponse {
    let mut resp = Response::new(Full::new(Bytes::from(value.to_string())));
    *resp.status_mut() = status;
    set_content_type(&mut resp, "application/json");
    resp
}

/// Sets `Content-Type`, ignoring values that are not valid header text.
pub fn set_content_type(resp: &mut HttpResponse, content_type: &str) {
    if let Ok(v) = HeaderValue::from_str(content_type) {
        resp.headers_mut().insert(header::CONTENT_TYPE, v);
    }
}

/// A fake and the server serving it; derefs to the fake. Dropping it stops the server.
#[derive(Debug)]
pub struct Running<F> {
    fake: Arc<F>,
    server: ServerHandle,
}

impl<F> std::ops::Deref for Running<F> {
    type Target = F;
    fn deref(&self) -> &F {
        &self.fake
    }
}

impl<F> Running<F> {
    pub fn new(fake: Arc<F>, server: ServerHandle) -> Self {
        Running { fake, server }
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// `http://127.0.0.1:PORT/_fake`.
    pub fn admin_url(&self) -> String {
        self.server.admin_url()
    }

    /// The shared fake, for tasks that outlive a borrow of the handle.
    pub fn fake(&self) -> &Arc<F> {
        &self.fake
    }

    /// Stops accepting, closes open connections and waits for the accept loop to end.
    pub async fn shutdown(self) {
        self.server.shutdown().await;
    }
}

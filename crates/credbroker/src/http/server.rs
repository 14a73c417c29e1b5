//! The HTTP/1.1 server both listeners use: keep-alive, a header-read timeout (slow clients and
//! idle keep-alive connections), a write-stall timeout (clients that do not read their answers),
//! a header-size cap, a cap on concurrent connections, and graceful drain on shutdown.
//!
//! Memory per connection is bounded by the read buffer (`max_header_bytes`: request bodies are
//! never read) plus one small response, so `max_connections` bounds the whole listener; further
//! connections wait in the kernel's accept backlog, which costs this process nothing.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::request::Parts;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};

use super::drain::Drain;
use super::idle::{Activity, IdleDeadline};

pub type Resp = Response<Full<Bytes>>;

/// Handles a request head; bodies are never read (no credential request has one).
pub trait Handler: Send + Sync + 'static {
    /// The answer when it needs no waiting; `None` leaves the request to [`Handler::call`].
    /// Called when hyper hands over the request, before any future exists, so the request head
    /// is dropped before hyper reads from the connection again. A head kept alive into the
    /// response future pins hyper's read buffer (header values and the path are slices of it):
    /// hyper's keep-alive read while the response is pending then found the buffer shared and
    /// allocated a new one, and the next head's split promoted it again, two allocations per
    /// request the floor does not make (callgrind: `BytesMut::reserve_inner`, `split_to`). The
    /// head is lent, not given: moving it (and the answer) through the layers cost a `memcpy`
    /// per move.
    fn call_now(&self, req: &Parts) -> Option<Resp> {
        let _ = req;
        None
    }

    fn call(&self, req: Parts) -> impl Future<Output = Resp> + Send;
}

#[derive(Debug, Clone)]
pub struct ServerLimits {
    /// How long a connection may be quiet — no request head completed, none in flight: a
    /// silent or dripping client, an idle keep-alive connection — before it is closed (within
    /// a quarter more: `http::idle`); also how long a response write may stall on a client
    /// that does not read.
    pub header_read_timeout: Duration,
    /// Bytes of request line plus headers (hyper's read buffer).
    pub max_header_bytes: usize,
    pub max_connections: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 16 * 1024,
            max_connections: 1024,
        }
    }
}

/// How long in-flight requests get to finish after shutdown begins.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(4);

/// Serves until `shutdown` turns true, then stops accepting and drains in-flight connections.
pub async fn serve<H: Handler>(
    listener: TcpListener,
    handler: Arc<H>,
    limits: ServerLimits,
    shutdown: watch::Receiver<bool>,
) {
    serve_conns(listener, Plain, HeadOnly(handler), limits, shutdown).await
}

/// Handles a request with its body (read up to [`BodyHandler::MAX_BODY`] bytes).
pub trait BodyHandler: Send + Sync + 'static {
    const MAX_BODY: usize;
    /// `body` is `Err` when the client sent more than `MAX_BODY` bytes or the body broke off.
    fn call(&self, req: Parts, body: Result<Bytes, BodyError>)
    -> impl Future<Output = Resp> + Send;
}

/// A request body that could not be read whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("the request body is larger than {0} bytes")]
    TooLarge(usize),
    #[error("the request body could not be read: {0}")]
    Broken(String),
}

/// Turns an accepted TCP connection into the stream HTTP is spoken on (TLS, or nothing).
pub trait Accept: Send + Sync + 'static {
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    fn accept(&self, tcp: TcpStream) -> impl Future<Output = std::io::Result<Self::Io>> + Send;
}

/// Plain HTTP.
pub struct Plain;

impl Accept for Plain {
    type Io = TcpStream;

    async fn accept(&self, tcp: TcpStream) -> std::io::Result<TcpStream> {
        Ok(tcp)
    }
}

/// Serves `handler` over HTTPS: each connection is handshaken by `accept` (within the header
/// timeout), each request's body read up to the handler's cap.
pub async fn serve_tls<H: BodyHandler, A: Accept>(
    listener: TcpListener,
    accept: A,
    handler: Arc<H>,
    limits: ServerLimits,
    shutdown: watch::Receiver<bool>,
) {
    serve_conns(listener, accept, WithBody(handler), limits, shutdown).await
}

/// What the connection loop calls: a head-only [`Handler`] (the credential hot path reads no
/// body) or a [`BodyHandler`].
trait Serve: Send + Sync + 'static {
    /// The answer when it needs no waiting ([`Handler::call_now`]), else the request back.
    fn serve_now(&self, req: Request<Incoming>) -> Result<Resp, Box<Request<Incoming>>> {
        Err(Box::new(req))
    }

    fn serve(&self, req: Request<Incoming>) -> impl Future<Output = Resp> + Send;
}

struct HeadOnly<H>(Arc<H>);

impl<H: Handler> Serve for HeadOnly<H> {
    fn serve_now(&self, req: Request<Incoming>) -> Result<Resp, Box<Request<Incoming>>> {
        let (parts, body) = req.into_parts();
        match self.0.call_now(&parts) {
            Some(resp) => Ok(resp),
            None => Err(Box::new(Request::from_parts(parts, body))),
        }
    }

    async fn serve(&self, req: Request<Incoming>) -> Resp {
        let (parts, _body) = req.into_parts();
        self.0.call(parts).await
    }
}

struct WithBody<H>(Arc<H>);

impl<H: BodyHandler> Serve for WithBody<H> {
    async fn serve(&self, req: Request<Incoming>) -> Resp {
        use http_body_util::BodyExt;
        let (parts, body) = req.into_parts();
        let body = match http_body_util::Limited::new(body, H::MAX_BODY)
            .collect()
            .await
        {
            Ok(collected) => Ok(collected.to_bytes()),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                Err(BodyError::TooLarge(H::MAX_BODY))
            }
            Err(e) => Err(BodyError::Broken(e.to_string())),
        };
        self.0.call(parts, body).await
    }
}

async fn serve_conns<S: Serve, A: Accept>(
    listener: TcpListener,
    accept: A,
    service: S,
    limits: ServerLimits,
    mut shutdown: watch::Receiver<bool>,
) {
    let (accept, service) = (Arc::new(accept), Arc::new(service));
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let drain = Arc::new(Drain::default());
    let mut builder = hyper::server::conn::http1::Builder::new();
    // No hyper timer: its header-read timeout is a timer per request; the same protection is
    // kept per connection by `IdleDeadline` (see `http::idle`).
    builder
        .header_read_timeout(None)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .keep_alive(true);
    loop {
        // Connections past the cap wait in the kernel's backlog instead of costing memory here.
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = stopped(&mut shutdown) => break,
        };
        let (stream, _peer): (TcpStream, SocketAddr) = tokio::select! {
            r = listener.accept() => match r {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped(&mut shutdown) => break,
        };
        let _ = stream.set_nodelay(true);
        let (accept, service, builder) = (accept.clone(), service.clone(), builder.clone());
        let drain = drain.clone();
        let timeout = limits.header_read_timeout;
        tokio::spawn(async move {
            let io = match tokio::time::timeout(timeout, accept.accept(stream)).await {
                Ok(Ok(io)) => io,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "connection set-up failed");
                    return;
                }
                Err(_) => return,
            };
            let activity = Arc::new(Activity::default());
            let seen = activity.clone();
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                // Answered here when it can be, so the request is gone before the future is;
                // the service is cloned (a shared count, touched from every core) only to wait.
                let pending = match service.serve_now(req) {
                    Ok(resp) => {
                        activity.answered();
                        Ok(resp)
                    }
                    Err(req) => {
                        activity.begin();
                        Err((service.clone(), req, activity.clone()))
                    }
                };
                async move {
                    Ok::<_, Infallible>(match pending {
                        Ok(resp) => resp,
                        Err((service, req, activity)) => {
                            let resp = service.serve(*req).await;
                            activity.end();
                            resp
                        }
                    })
                }
            });
            let conn = builder.serve_connection(TokioIo::new(WriteDeadline::new(io, timeout)), svc);
            let _ = IdleDeadline::new(drain.watch(conn), seen, timeout).await;
            drop(permit);
        });
    }
    drop(listener);
    drain.start();
    // Every connection holds a permit until its task ends (TLS handshakes in progress too):
    // all of them back means all connections are done.
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    if tokio::time::timeout(DRAIN_TIMEOUT, permits.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the drain timeout; closing them");
    }
}

/// A stream whose writes fail once they have been blocked for `limit`: a client that pipelines
/// requests and never reads the answers would otherwise hold its connection (and a slot under
/// `max_connections`) forever, since hyper waits on the write before reading the next head.
struct WriteDeadline<S> {
    inner: S,
    limit: Duration,
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> WriteDeadline<S> {
    fn new(inner: S, limit: Duration) -> Self {
        WriteDeadline {
            inner,
            limit,
            stalled: None,
        }
    }

    /// Called when a write is pending: starts the stall clock, or fails once it has run out.
    fn pending<T>(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<T>> {
        let limit = self.limit;
        let stalled = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match stalled.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client stopped reading",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteDeadline<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, buf) {
            Poll::Pending => self.pending(cx),
            ready => {
                self.stalled = None;
                ready
            }
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match Pin::new(&mut self.inner).poll_flush(cx) {
            Poll::Pending => self.pending(cx),
            ready => {
                self.stalled = None;
                ready
            }
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write_vectored(cx, bufs) {
            Poll::Pending => self.pending(cx),
            ready => {
                self.stalled = None;
                ready
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// A response with a body and content type.
pub fn respond(status: u16, content_type: &'static str, body: impl Into<Bytes>) -> Resp {
    let mut resp = with_status(status, body);
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    resp
}

pub const JSON_TYPE: &str = "application/json";
pub const TEXT_TYPE: &str = "text/plain; charset=utf-8";

fn with_status(status: u16, body: impl Into<Bytes>) -> Resp {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() =
        http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    resp
}

/// Several constant response headers, as a map built once and copied into each response.
///
/// Copying is two allocations and two copies; inserting hashes each name and grows the map
/// from empty: for GCE's three headers (~1.6k instructions per token, callgrind) copying won.
/// For one header it does not: hyper reuses each response's map for the next request's
/// headers, and a copy has no spare room (`Vec` clones at its length), so the next parse grew
/// it again, which cost more than one insert ([`respond`] inserts).
pub struct HeaderSet(http::HeaderMap);

impl HeaderSet {
    /// `pairs` are constants: a value that is not valid header text panics at first use.
    pub fn new(pairs: &[(http::HeaderName, &'static str)]) -> HeaderSet {
        let mut map = http::HeaderMap::with_capacity(pairs.len());
        for (name, value) in pairs {
            map.insert(name.clone(), http::HeaderValue::from_static(value));
        }
        HeaderSet(map)
    }

    pub fn respond(&self, status: u16, body: impl Into<Bytes>) -> Resp {
        let mut resp = with_status(status, body);
        *resp.headers_mut() = self.0.clone();
        resp
    }
}

/// Appends the decimal digits of `n` (what `write!(buf, "{n}")` writes), two digits per
/// division: the one-digit loop was ~150 instructions for a 10-digit expiry (callgrind).
pub fn push_u64(buf: &mut Vec<u8>, mut n: u64) {
    const PAIRS: [u8; 200] = {
        let mut t = [0u8; 200];
        let mut i = 0;
        while i < 100 {
            t[2 * i] = b'0' + (i / 10) as u8;
            t[2 * i + 1] = b'0' + (i % 10) as u8;
            i += 1;
        }
        t
    };
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    while n >= 100 {
        let pair = (n % 100) as usize * 2;
        n /= 100;
        i -= 2;
        digits[i..i + 2].copy_from_slice(&PAIRS[pair..pair + 2]);
    }
    if n >= 10 {
        let pair = n as usize * 2;
        i -= 2;
        digits[i..i + 2].copy_from_slice(&PAIRS[pair..pair + 2]);
    } else {
        i -= 1;
        digits[i] = b'0' + n as u8;
    }
    buf.extend_from_slice(&digits[i..]);
}

pub fn text(status: u16, body: impl Into<Bytes>) -> Resp {
    respond(status, TEXT_TYPE, body)
}

pub fn json(status: u16, body: impl Into<Bytes>) -> Resp {
    respond(status, JSON_TYPE, body)
}

/// Resolves once `rx` reads true (or its sender is gone).
pub async fn stopped(rx: &mut watch::Receiver<bool>) {
    while !*rx.borrow_and_update() {
        if rx.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_carry_their_content_type_whichever_way_they_are_built() {
        for (ct, resp) in [
            (JSON_TYPE, json(200, "{}")),
            (TEXT_TYPE, text(404, "no\n")),
            ("text/plain", respond(200, "text/plain", "x")),
            ("application/xml", respond(500, "application/xml", "<x/>")),
        ] {
            assert_eq!(resp.headers().len(), 1);
            assert_eq!(resp.headers()[http::header::CONTENT_TYPE], ct);
        }
        assert_eq!(json(42, "").status(), 500, "an invalid status is a 500");
        let set = HeaderSet::new(&[
            (http::header::CONTENT_TYPE, JSON_TYPE),
            (http::header::SERVER, "x"),
        ]);
        let resp = set.respond(201, "b");
        assert_eq!(resp.status(), 201);
        let names: Vec<_> = resp.headers().keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["content-type", "server"], "in the order given");
    }

    #[test]
    fn push_u64_writes_what_display_does() {
        let mut cases = vec![
            0,
            1,
            9,
            10,
            11,
            99,
            100,
            101,
            999,
            1000,
            1_765_000_000,
            u64::MAX,
        ];
        cases.extend((0..64).map(|b| 1u64 << b));
        cases.extend((1..20).map(|e| 10u64.pow(e) - 1));
        for n in cases {
            let mut buf = b"x".to_vec();
            push_u64(&mut buf, n);
            assert_eq!(buf, format!("x{n}").into_bytes(), "{n}");
        }
    }
}

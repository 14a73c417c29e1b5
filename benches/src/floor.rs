//! The floor: a bare hyper HTTP/1.1 server answering every request with a fixed response of the
//! same status, headers and body size as the broker's — what serving costs with no routing, no
//! guard, no cache, no metrics. It is configured like the broker's listener (same hyper builder
//! settings, `TCP_NODELAY`, one task per connection) and runs as its own process with its runtime
//! sized as the broker's (`credbroker::cpus`), so the two differ only by what the broker does per
//! request.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

/// The response the floor serves.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Shape {
    pub status: u16,
    /// Response headers other than the ones hyper adds itself (`content-length`, `date`).
    pub headers: Vec<(String, String)>,
    pub body_len: usize,
}

impl Shape {
    /// The shape of a real response (its body is never kept).
    pub fn of(status: u16, headers: &http::HeaderMap, body_len: usize) -> Shape {
        let headers = headers
            .iter()
            .filter(|(k, _)| *k != http::header::CONTENT_LENGTH && *k != http::header::DATE)
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        Shape {
            status,
            headers,
            body_len,
        }
    }
}

struct Fixed {
    status: StatusCode,
    headers: Vec<(HeaderName, HeaderValue)>,
    body: Bytes,
}

/// Serves `shape` on `listener` forever, with hyper's header-read timeout (as the broker's
/// listener: 10 s) or, for `None`, without one.
pub async fn serve(
    listener: TcpListener,
    shape: &Shape,
    header_read_timeout: Option<Duration>,
) -> Result<(), String> {
    let fixed = Arc::new(Fixed {
        status: StatusCode::from_u16(shape.status).map_err(|e| e.to_string())?,
        headers: shape
            .headers
            .iter()
            .map(|(k, v)| {
                Ok((
                    HeaderName::try_from(k.as_str()).map_err(|e| e.to_string())?,
                    HeaderValue::try_from(v.as_str()).map_err(|e| e.to_string())?,
                ))
            })
            .collect::<Result<_, String>>()?,
        body: Bytes::from(vec![b'x'; shape.body_len]),
    });
    // The broker's listener settings (credbroker::http::server::serve).
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .max_buf_size(16 * 1024)
        .keep_alive(true);
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(c) => c,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let fixed = fixed.clone();
        let service = hyper::service::service_fn(move |_req: http::Request<Incoming>| {
            let fixed = fixed.clone();
            async move {
                let mut resp = Response::new(Full::new(fixed.body.clone()));
                *resp.status_mut() = fixed.status;
                let h = resp.headers_mut();
                for (k, v) in &fixed.headers {
                    h.insert(k.clone(), v.clone());
                }
                Ok::<_, Infallible>(resp)
            }
        });
        let conn = builder.serve_connection(TokioIo::new(stream), service);
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
}

//! The one outbound HTTP client: rustls with the system roots plus an optional extra CA bundle,
//! connect/read timeouts, and a cap on response size.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use reqwest::Url;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::clock::Clock;
use crate::config::{ConfigError, Env};
use crate::exchange::ExchangeError;

/// Upstream answers are a few KiB; a megabyte is already suspicious.
pub const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub total_timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            connect_timeout: Duration::from_secs(3),
            read_timeout: Duration::from_secs(10),
            total_timeout: Duration::from_secs(20),
        }
    }
}

/// CA bundles are a few hundred KiB (Debian's is ~220 KiB); refuse anything absurd.
const MAX_BUNDLE_BYTES: u64 = 16 * 1024 * 1024;

/// Reads PEM certificates from `path`, through the configuration's file system.
pub fn load_pem_certs(
    env: &Env,
    subject: &str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let bytes = env.fs().read(path, MAX_BUNDLE_BYTES).map_err(|e| {
        ConfigError::new(
            subject,
            format!("cannot read {}: {}", path.display(), e.kind()),
        )
    })?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<_, _>>()
        .map_err(|e| {
            ConfigError::new(
                subject,
                format!("{}: not PEM certificates: {e}", path.display()),
            )
        })?;
    if certs.is_empty() {
        return Err(ConfigError::new(
            subject,
            format!("{}: contains no PEM certificate", path.display()),
        ));
    }
    Ok(certs)
}

/// A rustls client configuration trusting exactly `extra`, plus the system's roots when
/// `system` gives the environment to find them in.
pub fn tls_config(
    system: Option<&Env>,
    extra: &[CertificateDer<'static>],
) -> Result<rustls::ClientConfig, ConfigError> {
    let mut roots = rustls::RootCertStore::empty();
    if let Some(env) = system {
        let (added, _ignored) = roots.add_parsable_certificates(system_certs(env));
        if added == 0 {
            tracing::warn!("no system CA certificates found; only --upstream-ca-file is trusted");
        }
    }
    for cert in extra {
        roots.add(cert.clone()).map_err(|e| {
            ConfigError::new("--upstream-ca-file", format!("unusable certificate: {e}"))
        })?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError::new("tls", e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

/// Distribution CA bundles, in the order they are looked for (Debian/Ubuntu/Alpine, RHEL, others).
const BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
    "/etc/ssl/ca-bundle.pem",
];

/// The system's trusted roots. One bundle file when there is one (`SSL_CERT_FILE` first): reading
/// the hashed certificate directory as well, as `rustls-native-certs` does, parses every root twice
/// and opens ~300 files, which was most of the start-up time.
fn system_certs(env: &Env) -> Vec<CertificateDer<'static>> {
    let from_env = env.get("SSL_CERT_FILE").map(std::path::PathBuf::from);
    let bundle = from_env
        .into_iter()
        .chain(BUNDLES.iter().map(std::path::PathBuf::from))
        .find(|p| env.fs().is_file(p));
    if let Some(bytes) = bundle.and_then(|path| env.fs().read(&path, MAX_BUNDLE_BYTES).ok()) {
        let certs: Vec<_> = CertificateDer::pem_slice_iter(&bytes)
            .filter_map(Result::ok)
            .collect();
        if !certs.is_empty() {
            return certs;
        }
    }
    rustls_native_certs::load_native_certs().certs
}

pub fn build_client(
    tls: rustls::ClientConfig,
    options: &ClientOptions,
) -> Result<reqwest::Client, ConfigError> {
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .connect_timeout(options.connect_timeout)
        .read_timeout(options.read_timeout)
        .timeout(options.total_timeout)
        .pool_idle_timeout(Duration::from_secs(60))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("credbroker/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| ConfigError::new("http client", e.to_string()))
}

/// Parses an upstream endpoint: `https://` anywhere, `http://` only to a loopback host.
pub fn endpoint(subject: &str, value: &str) -> Result<Url, ConfigError> {
    let url = Url::parse(value.trim())
        .map_err(|e| ConfigError::new(subject, format!("{value:?} is not a URL: {e}")))?;
    match url.scheme() {
        "https" => {}
        "http" if is_loopback_host(&url) => {}
        "http" => {
            return Err(ConfigError::new(
                subject,
                format!("{value:?}: plain http is allowed only to a loopback address; use https"),
            ));
        }
        other => {
            return Err(ConfigError::new(
                subject,
                format!("{value:?}: unsupported scheme {other:?}"),
            ));
        }
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(ConfigError::new(subject, format!("{value:?} has no host")));
    }
    Ok(url)
}

fn is_loopback_host(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

/// Classifies a transport failure (no HTTP answer) as a transient exchange error.
pub fn transport_error(err: &reqwest::Error) -> ExchangeError {
    let code = if err.is_timeout() {
        "UpstreamTimeout"
    } else if err.is_connect() {
        "UpstreamUnreachable"
    } else {
        "UpstreamTransport"
    };
    // reqwest errors carry the URL; ours never contain secrets (tokens go in bodies or headers).
    let mut message = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    ExchangeError::transient(code, message)
}

/// Reads a response body, failing once it passes `cap` bytes.
pub async fn read_capped(mut resp: reqwest::Response, cap: usize) -> Result<Bytes, ExchangeError> {
    if resp.content_length().is_some_and(|n| n > cap as u64) {
        return Err(too_large(cap));
    }
    let mut buf = BytesMut::new();
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                if buf.len() + chunk.len() > cap {
                    return Err(too_large(cap));
                }
                buf.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(buf.freeze()),
            Err(e) => return Err(transport_error(&e)),
        }
    }
}

fn too_large(cap: usize) -> ExchangeError {
    ExchangeError::transient(
        "ResponseTooLarge",
        format!("upstream response exceeds {cap} bytes"),
    )
}

/// `Retry-After` as seconds or an HTTP date (read against `clock`).
pub fn retry_after(headers: &reqwest::header::HeaderMap, clock: &dyn Clock) -> Option<Duration> {
    let value = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(clock.wall()).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_require_https_except_loopback() {
        assert!(endpoint("X", "https://sts.us-east-1.amazonaws.com").is_ok());
        assert!(endpoint("X", "http://127.0.0.1:4566/").is_ok());
        assert!(endpoint("X", "http://[::1]:1/").is_ok());
        assert!(endpoint("X", "http://localhost:1/").is_ok());
        let e = endpoint("AWS_ENDPOINT_URL_STS", "http://sts.example.com").unwrap_err();
        assert_eq!(e.subject, "AWS_ENDPOINT_URL_STS");
        assert!(e.problem.contains("loopback"));
        assert!(endpoint("X", "ftp://x").is_err());
        assert!(endpoint("X", "not a url").is_err());
    }

    #[test]
    fn retry_after_forms() {
        // 2015-10-21T07:27:30Z, thirty seconds before the date below.
        let clock = crate::testing::FixedClock(crate::clock::from_unix(1_445_412_450));
        let mut h = reqwest::header::HeaderMap::new();
        h.insert("retry-after", "7".parse().unwrap());
        assert_eq!(retry_after(&h, &clock), Some(Duration::from_secs(7)));
        h.insert(
            "retry-after",
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&h, &clock), Some(Duration::from_secs(30)));
        let later = crate::testing::FixedClock(crate::clock::from_unix(1_445_412_500));
        assert_eq!(retry_after(&h, &later), Some(Duration::ZERO));
        h.insert("retry-after", "soon".parse().unwrap());
        assert_eq!(retry_after(&h, &clock), None);
    }

    #[test]
    fn system_roots_come_from_the_injected_environment() {
        let ca = rcgen_free_ca_pem();
        let fs = std::sync::Arc::new(crate::fs::MemFs::new().with("/etc/my-ca.pem", ca.clone()));
        let env = Env::from_pairs([("SSL_CERT_FILE", "/etc/my-ca.pem")]).with_fs(fs);
        assert_eq!(system_certs(&env).len(), 1);
        assert_eq!(
            load_pem_certs(&env, "X", Path::new("/etc/my-ca.pem"))
                .unwrap()
                .len(),
            1
        );
        let e = load_pem_certs(&env, "X", Path::new("/etc/none.pem")).unwrap_err();
        assert_eq!(e.subject, "X");
    }

    /// A self-signed certificate in PEM (from the fixtures), to parse without any file.
    fn rcgen_free_ca_pem() -> String {
        crate::testing::TEST_CA_PEM.to_string()
    }
}

//! The webhook's serving certificate, re-read when its files change (cert-manager renewing it,
//! a Secret rotated by hand): the kubelet swaps a Secret volume's `..data` symlink, so the
//! directory is watched, with a backstop re-read. A pair that does not load (a half-written
//! rotation, a key that does not match) keeps the previous one in service.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpStream;
use tokio::sync::Notify;

use crate::config::ConfigError;
use crate::http::server::Accept;

/// How often the files are re-read even when no file event arrives.
const BACKSTOP: Duration = Duration::from_secs(60);

/// The certificate in service, swapped when the files change.
#[derive(Debug)]
pub struct Certificate {
    cert_file: PathBuf,
    key_file: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
}

impl Certificate {
    /// Loads the pair (a start-up error names the file), then follows the files.
    pub fn load(cert_file: &Path, key_file: &Path) -> Result<Arc<Self>, ConfigError> {
        let key = load_pair(cert_file, key_file)?;
        Ok(Arc::new(Certificate {
            cert_file: cert_file.to_path_buf(),
            key_file: key_file.to_path_buf(),
            current: RwLock::new(Arc::new(key)),
        }))
    }

    /// Re-reads on every change in either file's directory, and every minute.
    pub fn follow(self: &Arc<Self>) {
        let wake = Arc::new(Notify::new());
        let watchers = [
            crate::fs::watch_parent(&self.cert_file, wake.clone()),
            crate::fs::watch_parent(&self.key_file, wake.clone()),
        ];
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let _watchers = watchers;
            loop {
                tokio::select! {
                    _ = wake.notified() => tokio::time::sleep(Duration::from_millis(50)).await,
                    _ = tokio::time::sleep(BACKSTOP) => {}
                }
                let Some(cert) = weak.upgrade() else { return };
                cert.reload();
            }
        });
    }

    /// Loads the files again; keeps the current pair if they do not load.
    pub fn reload(&self) -> bool {
        match load_pair(&self.cert_file, &self.key_file) {
            Ok(key) => {
                let changed = self.current.read().cert != key.cert;
                if changed {
                    *self.current.write() = Arc::new(key);
                    tracing::info!(cert = %self.cert_file.display(), "serving certificate reloaded");
                }
                changed
            }
            Err(e) => {
                tracing::warn!(error = %e, "serving certificate not reloaded; keeping the current one");
                false
            }
        }
    }

    /// The TLS acceptor serving whichever certificate is current at each handshake.
    pub fn acceptor(self: &Arc<Self>) -> Tls {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("aws-lc-rs supports the default protocol versions")
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Resolver(self.clone())));
        let mut config = config;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Tls(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
    }
}

#[derive(Debug)]
struct Resolver(Arc<Certificate>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current.read().clone())
    }
}

/// TLS on accepted connections.
pub struct Tls(tokio_rustls::TlsAcceptor);

impl Accept for Tls {
    type Io = tokio_rustls::server::TlsStream<TcpStream>;

    async fn accept(&self, tcp: TcpStream) -> std::io::Result<Self::Io> {
        self.0.accept(tcp).await
    }
}

fn load_pair(cert_file: &Path, key_file: &Path) -> Result<CertifiedKey, ConfigError> {
    const CERT: &str = "--tls-cert-file";
    const KEY: &str = "--tls-key-file";
    let read = |subject: &str, path: &Path| {
        std::fs::read(path).map_err(|e| {
            ConfigError::new(
                subject,
                format!("cannot read {}: {}", path.display(), e.kind()),
            )
        })
    };
    let cert_pem = read(CERT, cert_file)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| ConfigError::new(CERT, format!("{}: not PEM: {e}", cert_file.display())))?;
    if chain.is_empty() {
        return Err(ConfigError::new(
            CERT,
            format!("{} holds no certificate", cert_file.display()),
        ));
    }
    let key_pem = zeroize::Zeroizing::new(read(KEY, key_file)?);
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        ConfigError::new(KEY, format!("{}: no private key: {e}", key_file.display()))
    })?;
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let certified = CertifiedKey::from_der(chain, key, &provider).map_err(|e| {
        ConfigError::new(
            KEY,
            format!(
                "{} does not fit {}: {e}",
                key_file.display(),
                cert_file.display()
            ),
        )
    })?;
    Ok(certified)
}

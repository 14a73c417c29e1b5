//! A generated cluster CA and one server certificate it signed, as a Kubernetes cluster has:
//! clients trust the CA (the service-account `ca.crt`, a kubeconfig's
//! `certificate-authority-data`) and verify the server by IP or DNS name. Used by the OCI
//! proxymux fake and the emulated API server ([`crate::kube`]).

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use std::io;
use std::net::IpAddr;
use std::sync::Arc;

/// The common name of the server certificate [`Pki::generate`] makes.
pub const DEFAULT_SERVER_CN: &str = "kube-apiserver";

/// A CA and a server configuration whose certificate it signed.
#[derive(Clone)]
pub struct Pki {
    ca_pem: String,
    server_cert_pem: String,
    server_key_pem: Arc<str>,
    server: Arc<rustls::ServerConfig>,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki").finish_non_exhaustive()
    }
}

fn other(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

impl Pki {
    /// A new CA named `ca_name`, and a server certificate (CN [`DEFAULT_SERVER_CN`]) for `ips`
    /// (IP SANs) and `dns` names.
    pub fn generate(ca_name: &str, ips: &[IpAddr], dns: &[&str]) -> io::Result<Pki> {
        Pki::generate_for(ca_name, DEFAULT_SERVER_CN, ips, dns)
    }

    /// As [`Pki::generate`], with the server certificate's common name `server_cn`.
    pub fn generate_for(
        ca_name: &str,
        server_cn: &str,
        ips: &[IpAddr],
        dns: &[&str],
    ) -> io::Result<Pki> {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(other)?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, ca_name);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().map_err(other)?)
            .map_err(other)?;

        let names: Vec<String> = ips
            .iter()
            .map(IpAddr::to_string)
            .chain(dns.iter().map(|d| d.to_string()))
            .collect();
        let mut params = CertificateParams::new(names).map_err(other)?;
        params.is_ca = IsCa::ExplicitNoCa;
        params
            .distinguished_name
            .push(DnType::CommonName, server_cn);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate().map_err(other)?;
        let cert = params.signed_by(&key, &ca).map_err(other)?;

        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(other)?
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .map_err(other)?;
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Pki {
            ca_pem: ca.pem(),
            server_cert_pem: cert.pem(),
            server_key_pem: key.serialize_pem().into(),
            server: Arc::new(server),
        })
    }

    /// The CA certificate, PEM (what kubelet mounts as `ca.crt`).
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The server certificate, PEM (for a server that reads `--tls-cert-file`).
    pub fn server_cert_pem(&self) -> &str {
        &self.server_cert_pem
    }

    /// The server certificate's private key, PKCS#8 PEM (for `--tls-key-file`).
    pub fn server_key_pem(&self) -> &str {
        &self.server_key_pem
    }

    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        self.server.clone()
    }
}

//! A generated cluster CA and a proxymux server certificate, as an OKE cluster has: clients
//! trust the CA from the service-account `ca.crt` and verify the IP in `KUBERNETES_SERVICE_HOST`.

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use std::io;
use std::net::IpAddr;
use std::sync::Arc;

/// A CA and a server configuration whose certificate it signed.
#[derive(Clone)]
pub struct Pki {
    ca_pem: String,
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
    /// A new CA named `ca_name`, and a server certificate for `ips` (IP SANs) and `dns` names.
    pub fn generate(ca_name: &str, ips: &[IpAddr], dns: &[&str]) -> io::Result<Pki> {
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
            .push(DnType::CommonName, "kube-apiserver");
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
            server: Arc::new(server),
        })
    }

    /// The CA certificate, PEM (what kubelet mounts as `ca.crt`).
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        self.server.clone()
    }
}

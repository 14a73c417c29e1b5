//! The server's HTTPS hook (the future OCI proxymux fake serves over TLS).

use fakecloud::http::{ServeOptions, serve};
use fakecloud::issuer::Issuer;
use fakecloud::oidc::IssuerServer;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

#[tokio::test]
async fn serves_https_with_a_rustls_config() {
    let tmp = tempfile::tempdir().unwrap();
    let (cert, key) = (tmp.path().join("cert.pem"), tmp.path().join("key.pem"));
    let generated = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args([
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ])
        // webpki refuses a CA certificate as the server's own certificate.
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output();
    match generated {
        Ok(out) if out.status.success() => {}
        _ => {
            eprintln!("skipping: openssl cannot generate a test certificate");
            return;
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from_pem_file(&cert).unwrap()],
            PrivateKeyDer::from_pem_file(&key).unwrap(),
        )
        .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];

    let issuer = Arc::new(Issuer::new("https://issuer.test"));
    let server = serve(
        Arc::new(IssuerServer::new(issuer.clone())),
        "127.0.0.1:0".parse().unwrap(),
        ServeOptions {
            tls: Some(Arc::new(config)),
        },
    )
    .await
    .unwrap();
    assert!(server.url().starts_with("https://127.0.0.1:"));

    let client = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&std::fs::read(&cert).unwrap()).unwrap()])
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let jwks: serde_json::Value = client
        .get(format!("{}/openid/v1/jwks", server.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(jwks, issuer.jwks());
    // Plain HTTP against the TLS port fails instead of hanging.
    let plain = server.url().replacen("https", "http", 1);
    assert!(
        client
            .get(format!("{plain}/openid/v1/jwks"))
            .send()
            .await
            .is_err()
    );
}

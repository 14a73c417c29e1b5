//! The OCI fakes: proxymux over HTTPS minting RPSTs bound to the `podKey`, its errors, and the
//! API's signature verification (docs/oci.md, "Proxymux exchange" and "Request signing").

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::{KeyPair, KeySize};
use aws_lc_rs::signature::KeyPair as _;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use fakecloud::Fault;
use fakecloud::issuer::{Issuer, ServiceAccount};
use fakecloud::oci::signing::RequestSigner;
use fakecloud::oci::{
    self, FakeOciApi, FakeOciApiHandle, FakeProxymux, FakeProxymuxHandle, Pki, RPST_AUDIENCE,
};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

const LOOPBACK: &str = "127.0.0.1:0";

struct Setup {
    sa_issuer: Arc<Issuer>,
    rpst_signer: Arc<Issuer>,
    pki: Pki,
    proxymux: FakeProxymuxHandle,
    api: FakeOciApiHandle,
}

async fn setup() -> Setup {
    // reqwest is built without a default crypto provider.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let sa_issuer = Arc::new(Issuer::new("https://oidc.test"));
    let rpst_signer = Arc::new(Issuer::new(oci::RPST_ISSUER));
    let loopback: SocketAddr = LOOPBACK.parse().unwrap();
    let pki = Pki::generate("test cluster CA", &[loopback.ip()], &["localhost"]).unwrap();
    let proxymux = FakeProxymux::start(
        sa_issuer.clone(),
        rpst_signer.clone(),
        oci::SA_AUDIENCE,
        &pki,
        loopback,
    )
    .await
    .unwrap();
    let api = FakeOciApi::start(rpst_signer.clone(), loopback)
        .await
        .unwrap();
    Setup {
        sa_issuer,
        rpst_signer,
        pki,
        proxymux,
        api,
    }
}

fn client_trusting(ca_pem: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap()])
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

fn sa_token(s: &Setup) -> String {
    s.sa_issuer.mint(
        &ServiceAccount::default(),
        oci::SA_AUDIENCE,
        Duration::from_secs(600),
    )
}

struct PodKey {
    key: KeyPair,
    spki: Vec<u8>,
}

impl PodKey {
    fn new() -> PodKey {
        let key = KeyPair::generate(KeySize::Rsa2048).unwrap();
        let spki = key.public_key().as_der().unwrap().as_ref().to_vec();
        PodKey { key, spki }
    }

    fn b64(&self) -> String {
        STANDARD.encode(&self.spki)
    }

    fn pkcs8_pem(&self) -> String {
        let der = AsDer::<aws_lc_rs::encoding::Pkcs8V1Der>::as_der(&self.key).unwrap();
        pem("PRIVATE KEY", der.as_ref())
    }

    fn modulus(&self) -> Vec<u8> {
        self.key
            .public_key()
            .modulus()
            .big_endian_without_leading_zero()
            .to_vec()
    }
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

async fn exchange(s: &Setup, token: Option<&str>, body: Value) -> (u16, String) {
    let mut req = client_trusting(s.pki.ca_pem())
        .post(format!(
            "{}/resourcePrincipalSessionTokens",
            s.proxymux.url()
        ))
        .header("content-type", "application/json")
        .header("opc-request-id", "A/B/C")
        .body(body.to_string());
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let resp = req.send().await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

/// The proxymux body: a quoted base64 string of `{"token":"ST$<rpst>"}`.
fn decode_rpst(body: &str) -> String {
    assert!(body.starts_with('"') && body.ends_with('"'), "{body}");
    let inner = STANDARD.decode(&body[1..body.len() - 1]).unwrap();
    let doc: Value = serde_json::from_slice(&inner).unwrap();
    doc["token"]
        .as_str()
        .unwrap()
        .strip_prefix("ST$")
        .unwrap()
        .to_string()
}

fn claims(rpst: &str) -> Value {
    jsonwebtoken::dangerous::insecure_decode_claims(rpst).unwrap()
}

fn jwk_n(rpst: &str) -> Vec<u8> {
    let jwk: Value = serde_json::from_str(claims(rpst)["jwk"].as_str().unwrap()).unwrap();
    oci::signing::decode_any_base64(jwk["n"].as_str().unwrap()).unwrap()
}

#[tokio::test]
async fn proxymux_mints_an_rpst_bound_to_the_pod_key() {
    let s = setup().await;
    let key = PodKey::new();
    let (status, body) = exchange(&s, Some(&sa_token(&s)), json!({"podKey": key.b64()})).await;
    assert_eq!(status, 200, "{body}");
    let rpst = decode_rpst(&body);
    s.rpst_signer.verify(&rpst, RPST_AUDIENCE).unwrap();
    let c = claims(&rpst);
    assert_eq!(c["iss"], "authService.oracle.com");
    assert_eq!(c["res_tenant"], oci::DEMO_TENANCY);
    assert_eq!(c["var_namespace"], "default");
    assert_eq!(c["var_service_account"], "app");
    let lifetime = c["exp"].as_u64().unwrap() - c["iat"].as_u64().unwrap();
    assert_eq!(lifetime, 3600);
    assert_eq!(jwk_n(&rpst), key.modulus());

    let log = s.proxymux.log();
    let record = log.last().unwrap();
    assert_eq!(record.outcome, "issued");
    assert_eq!(record.pod_key_form.as_deref(), Some("spki"));
    assert_eq!(record.opc_request_id.as_deref(), Some("A/B/C"));
    assert_eq!(
        record.subject.as_deref(),
        Some("system:serviceaccount:default:app")
    );
    assert_eq!(
        record.rpst_sha256.as_deref(),
        Some(oci::sha256_hex(rpst.as_bytes()).as_str())
    );

    // Go sends the PEM text instead; proxymux accepts both.
    let pem_key = pem("PUBLIC KEY", &key.spki);
    let (status, body) = exchange(&s, Some(&sa_token(&s)), json!({"podKey": pem_key})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(jwk_n(&decode_rpst(&body)), key.modulus());
    assert_eq!(
        s.proxymux.log().last().unwrap().pod_key_form.as_deref(),
        Some("pem")
    );
    assert_eq!(s.proxymux.issued_count(), 2);
}

#[tokio::test]
async fn proxymux_settings_change_lifetime_and_bind_foreign_keys() {
    let s = setup().await;
    let admin = reqwest::Client::new();
    let settings: Value = admin
        .post(format!("{}/settings", s.proxymux.admin_url()))
        .body(r#"{"rpst_lifetime_secs": 20, "foreign_jwk": 1}"#)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        settings,
        json!({"rpst_lifetime_secs": 20, "foreign_jwk": 1})
    );
    let key = PodKey::new();
    let (_, body) = exchange(&s, Some(&sa_token(&s)), json!({"podKey": key.b64()})).await;
    let rpst = decode_rpst(&body);
    let c = claims(&rpst);
    assert_eq!(c["exp"].as_u64().unwrap() - c["iat"].as_u64().unwrap(), 20);
    assert_ne!(jwk_n(&rpst), key.modulus());
    assert!(s.proxymux.log().last().unwrap().foreign_jwk);
    // Only the next one was foreign.
    let (_, body) = exchange(&s, Some(&sa_token(&s)), json!({"podKey": key.b64()})).await;
    assert_eq!(jwk_n(&decode_rpst(&body)), key.modulus());
}

#[tokio::test]
async fn proxymux_errors_are_ocis() {
    let s = setup().await;
    let key = json!({"podKey": PodKey::new().b64()});
    let code = |body: &str| serde_json::from_str::<Value>(body).unwrap()["code"].clone();

    let (status, body) = exchange(&s, None, key.clone()).await;
    assert_eq!((status, code(&body)), (401, json!("NotAuthenticated")));

    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let expired = s.sa_issuer.mint_at(
        &ServiceAccount::default(),
        oci::SA_AUDIENCE,
        now - 7200,
        now - 3600,
    );
    let (status, body) = exchange(&s, Some(&expired), key.clone()).await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("expired"));

    let wrong_aud = s.sa_issuer.mint(
        &ServiceAccount::default(),
        "sts.amazonaws.com",
        Duration::from_secs(60),
    );
    let (status, _) = exchange(&s, Some(&wrong_aud), key.clone()).await;
    assert_eq!(status, 401);

    let (status, body) = exchange(&s, Some(&sa_token(&s)), json!({"podKey": "bm90IGEga2V5"})).await;
    assert_eq!((status, code(&body)), (400, json!("InvalidParameter")));
    let (status, _) = exchange(&s, Some(&sa_token(&s)), json!({"key": "x"})).await;
    assert_eq!(status, 400);

    s.proxymux.faults().set(Fault::Status {
        status: 403,
        count: Some(1),
        retry_after: None,
    });
    let (status, body) = exchange(&s, Some(&sa_token(&s)), key.clone()).await;
    assert_eq!(status, 403);
    assert!(body.contains("enhanced"), "{body}");
    assert_eq!(s.proxymux.log().last().unwrap().outcome, "fault:status");

    let resp = client_trusting(s.pki.ca_pem())
        .get(format!(
            "{}/resourcePrincipalSessionTokens",
            s.proxymux.url()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 405);
    // The admin listener does not serve the exchange.
    let resp = reqwest::Client::new()
        .post(
            s.proxymux
                .admin_url()
                .replace("/_fake", "/resourcePrincipalSessionTokens"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 404);
}

#[tokio::test]
async fn proxymux_refuses_clients_that_do_not_trust_its_ca() {
    let s = setup().await;
    let other = Pki::generate("another CA", &["127.0.0.1".parse().unwrap()], &[]).unwrap();
    let err = client_trusting(other.ca_pem())
        .post(format!(
            "{}/resourcePrincipalSessionTokens",
            s.proxymux.url()
        ))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_connect() || err.is_request(), "{err:?}");
}

async fn call_api(
    s: &Setup,
    signer: &RequestSigner,
    method: &str,
    path: &str,
    body: &[u8],
    tamper: impl Fn(&mut Vec<(String, String)>),
) -> (u16, String) {
    let host = s.api.addr().to_string();
    let mut headers = signer
        .sign(
            method,
            &host,
            path,
            body,
            "application/json",
            SystemTime::now(),
        )
        .unwrap();
    tamper(&mut headers);
    let mut req =
        reqwest::Client::new().request(method.parse().unwrap(), format!("{}{path}", s.api.url()));
    for (k, v) in &headers {
        if k != "host" {
            req = req.header(k.as_str(), v.as_str());
        }
    }
    let resp = req.body(body.to_vec()).send().await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

fn last_reason(s: &Setup) -> String {
    s.api
        .log()
        .last()
        .unwrap()
        .reason
        .clone()
        .unwrap_or_default()
}

#[tokio::test]
async fn api_accepts_requests_signed_with_the_rpst_key() {
    let s = setup().await;
    let key = PodKey::new();
    let subject = ServiceAccount::default().subject();
    let now = issuer_now();
    let rpst = s
        .proxymux
        .mint_rpst_for_key(&subject, &key.spki, now, now + 600)
        .unwrap();
    let signer = RequestSigner::new(&rpst, key.pkcs8_pem().as_bytes()).unwrap();

    let (status, body) = call_api(&s, &signer, "GET", "/n/", b"", |_| {}).await;
    assert_eq!((status, body.as_str()), (200, "\"credbrokerdemo\""));
    let (status, body) = call_api(
        &s,
        &signer,
        "POST",
        "/20160918/things?limit=1",
        br#"{"name":"x"}"#,
        |_| {},
    )
    .await;
    assert_eq!(status, 200, "{body} {}", last_reason(&s));
    let doc: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc["principal"]["tenant"], oci::DEMO_TENANCY);
    assert_eq!(s.api.accepted_count(), 2);
    assert_eq!(
        s.api.log().last().unwrap().rpst_sha256.as_deref(),
        Some(oci::sha256_hex(rpst.as_bytes()).as_str())
    );
}

fn issuer_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn api_rejects_what_oci_rejects() {
    let s = setup().await;
    let key = PodKey::new();
    let subject = ServiceAccount::default().subject();
    let now = issuer_now();
    let good = s
        .proxymux
        .mint_rpst_for_key(&subject, &key.spki, now, now + 600)
        .unwrap();
    let signer = RequestSigner::new(&good, key.pkcs8_pem().as_bytes()).unwrap();
    let not_authenticated = |(status, body): (u16, String)| {
        assert_eq!(status, 401, "{body}");
        assert_eq!(
            serde_json::from_str::<Value>(&body).unwrap()["code"],
            "NotAuthenticated"
        );
    };

    // An expired RPST.
    let expired = s
        .proxymux
        .mint_rpst_for_key(&subject, &key.spki, now - 7200, now - 3600)
        .unwrap();
    let old = RequestSigner::new(&expired, key.pkcs8_pem().as_bytes()).unwrap();
    not_authenticated(call_api(&s, &old, "GET", "/n/", b"", |_| {}).await);
    assert!(last_reason(&s).contains("expired"), "{}", last_reason(&s));

    // An RPST bound to another key, signed with ours.
    let other = PodKey::new();
    let foreign = s
        .proxymux
        .mint_rpst_for_key(&subject, &other.spki, now, now + 600)
        .unwrap();
    let mismatched = RequestSigner::new(&foreign, key.pkcs8_pem().as_bytes()).unwrap();
    not_authenticated(call_api(&s, &mismatched, "GET", "/n/", b"", |_| {}).await);
    assert!(last_reason(&s).contains("does not verify"));

    // An RPST some other signer minted.
    let forger = Issuer::new(oci::RPST_ISSUER);
    let forged = forger.sign(&claims(&good));
    let forged = RequestSigner::new(&forged, key.pkcs8_pem().as_bytes()).unwrap();
    not_authenticated(call_api(&s, &forged, "GET", "/n/", b"", |_| {}).await);

    // A tampered signature, a changed path, a missing body header, a wrong body hash.
    not_authenticated(
        call_api(&s, &signer, "GET", "/n/", b"", |h| {
            let auth = h.iter_mut().find(|(k, _)| k == "authorization").unwrap();
            auth.1 = auth.1.replace("signature=\"", "signature=\"AAAA");
        })
        .await,
    );
    not_authenticated(
        call_api(&s, &signer, "POST", "/a", b"{}", |h| {
            h.retain(|(k, _)| k != "x-content-sha256");
        })
        .await,
    );
    assert!(
        last_reason(&s).contains("x-content-sha256"),
        "{}",
        last_reason(&s)
    );
    not_authenticated(
        call_api(&s, &signer, "GET", "/n/", b"", |h| {
            let auth = h.iter_mut().find(|(k, _)| k == "authorization").unwrap();
            auth.1 = auth.1.replace("keyId=\"ST$", "keyId=\"");
        })
        .await,
    );
    // A stale date.
    let host = s.api.addr().to_string();
    let headers = signer
        .sign(
            "GET",
            &host,
            "/n/",
            b"",
            "application/json",
            SystemTime::now() - Duration::from_secs(3600),
        )
        .unwrap();
    let mut req = reqwest::Client::new().get(format!("{}/n/", s.api.url()));
    for (k, v) in headers.iter().filter(|(k, _)| k != "host") {
        req = req.header(k.as_str(), v.as_str());
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    assert!(last_reason(&s).contains("date"));
    // No signature at all.
    let resp = reqwest::Client::new()
        .get(format!("{}/n/", s.api.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
}

#[tokio::test]
async fn cloudscape_describes_oci() {
    let tmp = tempfile::tempdir().unwrap();
    let cloud = fakecloud::Cloudscape::start(fakecloud::CloudscapeOptions::new(tmp.path()))
        .await
        .unwrap();
    let d = cloud.describe();
    let o = &d["oci"];
    assert_eq!(o["proxymux_host"], "127.0.0.1");
    assert_eq!(o["proxymux_port"], cloud.proxymux.port());
    let ca = std::fs::read_to_string(o["ca_path"].as_str().unwrap()).unwrap();
    assert_eq!(ca, cloud.proxymux.ca_pem());
    assert_eq!(o["api_endpoint"], cloud.oci_api.url());
    assert_eq!(d["oci_api"]["admin"], cloud.oci_api.admin_url());
    assert!(
        d["tokens"]["oci"]
            .as_str()
            .unwrap()
            .ends_with("tokens/oci/token")
    );
    // The projected OCI token is accepted by proxymux over TLS with the written CA.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let token = std::fs::read_to_string(cloud.oci_token.path()).unwrap();
    let resp = client_trusting(&ca)
        .post(format!(
            "{}/resourcePrincipalSessionTokens",
            o["proxymux_url"].as_str().unwrap()
        ))
        .bearer_auth(token)
        .body(json!({"podKey": PodKey::new().b64()}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
}

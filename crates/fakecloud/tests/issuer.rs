mod support;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use fakecloud::issuer::{Issuer, ServiceAccount, VerifyError, peek_claims};
use std::time::Duration;
use support::now;

fn payload(token: &str) -> serde_json::Value {
    let part = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

#[test]
fn mint_has_kubelet_claims_and_round_trips() {
    let issuer = Issuer::new("https://issuer.test");
    let sa = ServiceAccount::default();
    let token = issuer.mint(&sa, "sts.amazonaws.com", Duration::from_secs(3600));

    let header: serde_json::Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(token.split('.').next().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(header["alg"], "RS256");
    assert_eq!(header["kid"], issuer.kid());
    assert!(header.get("typ").is_none());

    let claims = payload(&token);
    assert_eq!(claims["iss"], "https://issuer.test");
    assert_eq!(claims["sub"], "system:serviceaccount:default:app");
    assert_eq!(claims["aud"], serde_json::json!(["sts.amazonaws.com"]));
    let iat = claims["iat"].as_u64().unwrap();
    assert_eq!(claims["nbf"].as_u64().unwrap(), iat);
    assert_eq!(claims["exp"].as_u64().unwrap(), iat + 3600);
    assert_eq!(claims["jti"].as_str().unwrap().len(), 36);
    let k8s = &claims["kubernetes.io"];
    assert_eq!(k8s["namespace"], "default");
    assert_eq!(k8s["serviceaccount"]["name"], "app");
    assert_eq!(k8s["serviceaccount"]["uid"].as_str().unwrap().len(), 36);
    assert!(k8s["pod"]["name"].as_str().unwrap().starts_with("app-"));
    assert_eq!(k8s["pod"]["uid"].as_str().unwrap().len(), 36);

    let verified = issuer.verify(&token, "sts.amazonaws.com").unwrap();
    assert_eq!(verified.subject, sa.subject());
    assert_eq!(verified.jti, claims["jti"].as_str().unwrap());
    assert_eq!(verified.exp, iat + 3600);
    assert_eq!(verified.issued_at, iat);
    assert_eq!(verified.audience, vec!["sts.amazonaws.com".to_string()]);

    // Same pod across rotations, fresh jti.
    let again = payload(&issuer.mint(&sa, "sts.amazonaws.com", Duration::from_secs(60)));
    assert_eq!(again["kubernetes.io"]["pod"], k8s["pod"]);
    assert_ne!(again["jti"], claims["jti"]);
}

#[test]
fn jwks_and_discovery() {
    let issuer = Issuer::new("http://127.0.0.1:1234");
    let jwks = issuer.jwks();
    let key = &jwks["keys"][0];
    assert_eq!(key["kty"], "RSA");
    assert_eq!(key["alg"], "RS256");
    assert_eq!(key["use"], "sig");
    assert_eq!(key["kid"], issuer.kid());
    let n = URL_SAFE_NO_PAD.decode(key["n"].as_str().unwrap()).unwrap();
    assert_eq!(n.len(), 256, "RSA-2048 modulus without sign byte");
    assert_eq!(
        URL_SAFE_NO_PAD.decode(key["e"].as_str().unwrap()).unwrap(),
        vec![1, 0, 1]
    );
    let conf = issuer.openid_configuration();
    assert_eq!(conf["issuer"], "http://127.0.0.1:1234");
    assert_eq!(conf["jwks_uri"], "http://127.0.0.1:1234/openid/v1/jwks");
    assert_eq!(
        conf["id_token_signing_alg_values_supported"],
        serde_json::json!(["RS256"])
    );
}

#[test]
fn verify_errors() {
    let issuer = Issuer::new("https://issuer.test");
    let sa = ServiceAccount::new("ns", "sa");
    let good = issuer.mint(&sa, "aud", Duration::from_secs(600));

    assert_eq!(
        issuer.verify("not a jwt", "aud"),
        Err(VerifyError::Malformed)
    );
    assert_eq!(issuer.verify("", "aud"), Err(VerifyError::Malformed));
    assert_eq!(issuer.verify("a.b.c", "aud"), Err(VerifyError::Malformed));

    let other = Issuer::new("https://issuer.test");
    let foreign = other.mint(&sa, "aud", Duration::from_secs(600));
    assert_eq!(
        issuer.verify(&foreign, "aud"),
        Err(VerifyError::BadSignature)
    );

    // Flip a character inside the signature (not the last one, whose low bits are padding).
    let mut tampered = good.clone().into_bytes();
    let i = tampered.len() - 10;
    tampered[i] = if tampered[i] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    assert_eq!(
        issuer.verify(&tampered, "aud"),
        Err(VerifyError::BadSignature)
    );

    let t = now();
    let expired = issuer.mint_at(&sa, "aud", t - 7200, t - 3600);
    assert_eq!(issuer.verify(&expired, "aud"), Err(VerifyError::Expired));
    // No leeway: one second past exp is expired.
    let just_expired = issuer.mint_at(&sa, "aud", t - 600, t - 1);
    assert_eq!(
        issuer.verify(&just_expired, "aud"),
        Err(VerifyError::Expired)
    );

    assert_eq!(
        issuer.verify(&good, "other-aud"),
        Err(VerifyError::WrongAudience)
    );

    let same_key_other_url = issuer.with_url("https://elsewhere.test");
    let wrong_iss = same_key_other_url.mint(&sa, "aud", Duration::from_secs(60));
    assert!(same_key_other_url.verify(&wrong_iss, "aud").is_ok());
    assert_eq!(
        issuer.verify(&wrong_iss, "aud"),
        Err(VerifyError::WrongIssuer)
    );

    let peeked = peek_claims(&good).unwrap();
    assert_eq!(peeked.sub, "system:serviceaccount:ns:sa");
    assert_eq!(peeked.iss, "https://issuer.test");
    assert!(peek_claims("garbage").is_none());
}

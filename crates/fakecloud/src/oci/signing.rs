//! OCI request signing (docs/oci.md, "Request signing"): draft-cavage HTTP signatures with
//! RSA-SHA256.
//!
//! The fake API verifies with [`parse_authorization`], [`signing_string`] and [`verify`]; tests
//! and the demo sign with [`RequestSigner`], the same algorithm the SDKs implement.

use aws_lc_rs::digest::{SHA256, digest};
use aws_lc_rs::rsa::KeyPair;
use aws_lc_rs::signature::{RSA_PKCS1_2048_8192_SHA256, RSA_PKCS1_SHA256, RsaPublicKeyComponents};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;
use std::time::SystemTime;

/// Headers every SDK signs (Go `http_signer.go`, Py `signer.py`).
pub const GENERIC_HEADERS: &[&str] = &["date", "(request-target)", "host"];
/// Headers PUT, POST and PATCH sign in addition.
pub const BODY_HEADERS: &[&str] = &["content-length", "content-type", "x-content-sha256"];

/// Whether `method` signs the body headers too.
pub fn signs_body(method: &str) -> bool {
    matches!(
        method.to_ascii_uppercase().as_str(),
        "POST" | "PUT" | "PATCH"
    )
}

/// The parameters of `Authorization: Signature k="v",...`, in whatever order they came.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureParams {
    pub version: Option<String>,
    pub key_id: String,
    pub algorithm: String,
    pub headers: Vec<String>,
    pub signature: Vec<u8>,
}

/// Parses an `Authorization` header value. Py orders the parameters differently from Go, so
/// they are read as a list.
pub fn parse_authorization(value: &str) -> Result<SignatureParams, String> {
    let rest = value
        .strip_prefix("Signature ")
        .ok_or("the Authorization header is not a Signature")?;
    let (mut version, mut key_id, mut algorithm, mut headers, mut signature) =
        (None, None, None, None, None);
    for part in rest.split(',') {
        let (name, quoted) = part
            .trim()
            .split_once('=')
            .ok_or_else(|| format!("malformed signature parameter {part:?}"))?;
        let value = quoted
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .ok_or_else(|| format!("signature parameter {name} is not quoted"))?
            .to_string();
        match name {
            "version" => version = Some(value),
            "keyId" => key_id = Some(value),
            "algorithm" => algorithm = Some(value),
            "headers" => headers = Some(value),
            "signature" => signature = Some(value),
            _ => {}
        }
    }
    let signature = STANDARD
        .decode(signature.ok_or("no signature parameter")?)
        .map_err(|_| "the signature is not base64")?;
    Ok(SignatureParams {
        version,
        key_id: key_id.ok_or("no keyId parameter")?,
        algorithm: algorithm.ok_or("no algorithm parameter")?,
        // draft-cavage: absent `headers` means just `date`.
        headers: headers
            .unwrap_or_else(|| "date".into())
            .split_whitespace()
            .map(str::to_ascii_lowercase)
            .collect(),
        signature,
    })
}

/// Lines of `name: value` joined with `\n`, no trailing newline. `(request-target)` is the
/// lower-case method, a space, and the path with its query. `header` looks a header up.
pub fn signing_string<'a>(
    method: &str,
    path_and_query: &str,
    names: &[impl AsRef<str>],
    header: impl Fn(&str) -> Option<&'a str>,
) -> Result<String, String> {
    let mut lines = Vec::with_capacity(names.len());
    for name in names {
        let name = name.as_ref();
        if name == "(request-target)" {
            lines.push(format!(
                "(request-target): {} {path_and_query}",
                method.to_ascii_lowercase()
            ));
        } else {
            let value = header(name).ok_or_else(|| format!("signed header {name} is missing"))?;
            lines.push(format!("{name}: {value}"));
        }
    }
    Ok(lines.join("\n"))
}

/// Verifies an RSASSA-PKCS1-v1_5 SHA-256 signature with the key `(n, e)`.
pub fn verify(n: &[u8], e: &[u8], message: &[u8], signature: &[u8]) -> bool {
    RsaPublicKeyComponents { n, e }
        .verify(&RSA_PKCS1_2048_8192_SHA256, message, signature)
        .is_ok()
}

/// `x-content-sha256`: base64 of the body's SHA-256 (an empty body hashes `""`).
pub fn content_sha256(body: &[u8]) -> String {
    STANDARD.encode(digest(&SHA256, body).as_ref())
}

/// Base64 in either alphabet, padded or not: `jwk.n` has been seen in both
/// (docs/oci.md, "RPST claims").
pub fn decode_any_base64(text: &str) -> Option<Vec<u8>> {
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    let normalised: String = text
        .trim()
        .chars()
        .map(|c| match c {
            '-' => '+',
            '_' => '/',
            c => c,
        })
        .collect();
    LENIENT.decode(normalised).ok()
}

/// Drops leading zero bytes (big-endian integers from JWKs or DER).
pub fn strip_leading_zeros(bytes: &[u8]) -> &[u8] {
    let first = bytes
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(bytes.len().saturating_sub(1));
    &bytes[first..]
}

/// Signs requests the way the SDKs' resource principal signers do: `keyId="ST$<rpst>"`.
pub struct RequestSigner {
    key: KeyPair,
    key_id: String,
}

impl std::fmt::Debug for RequestSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RequestSigner(<redacted>)")
    }
}

impl RequestSigner {
    /// From the resource principal files' contents: an RPST and a PKCS#8 or PKCS#1 PEM key.
    pub fn new(rpst: &str, private_pem: &[u8]) -> Result<RequestSigner, String> {
        let key = match PrivateKeyDer::from_pem_slice(private_pem)
            .map_err(|e| format!("not a PEM private key: {e}"))?
        {
            PrivateKeyDer::Pkcs8(der) => KeyPair::from_pkcs8(der.secret_pkcs8_der()),
            PrivateKeyDer::Pkcs1(der) => KeyPair::from_der(der.secret_pkcs1_der()),
            _ => return Err("not an RSA private key".into()),
        }
        .map_err(|e| format!("unusable RSA key: {e}"))?;
        Ok(RequestSigner {
            key,
            key_id: format!("ST${rpst}"),
        })
    }

    /// The headers to send with a request to `host` (`HOST[:PORT]`), including
    /// `Authorization`. `content_type` is used only for methods that sign the body.
    pub fn sign(
        &self,
        method: &str,
        host: &str,
        path_and_query: &str,
        body: &[u8],
        content_type: &str,
        at: SystemTime,
    ) -> Result<Vec<(String, String)>, String> {
        let mut headers: Vec<(String, String)> = vec![
            ("date".into(), httpdate::fmt_http_date(at)),
            ("host".into(), host.to_string()),
        ];
        let mut names: Vec<&str> = GENERIC_HEADERS.to_vec();
        if signs_body(method) {
            headers.push(("content-length".into(), body.len().to_string()));
            headers.push(("content-type".into(), content_type.to_string()));
            headers.push(("x-content-sha256".into(), content_sha256(body)));
            names.extend_from_slice(BODY_HEADERS);
        }
        let text = signing_string(method, path_and_query, &names, |name| {
            headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        })?;
        let mut signature = vec![0u8; self.key.public_modulus_len()];
        self.key
            .sign(
                &RSA_PKCS1_SHA256,
                &aws_lc_rs::rand::SystemRandom::new(),
                text.as_bytes(),
                &mut signature,
            )
            .map_err(|_| "RSA signing failed".to_string())?;
        headers.push((
            "authorization".into(),
            format!(
                "Signature version=\"1\",keyId=\"{}\",algorithm=\"rsa-sha256\",headers=\"{}\",signature=\"{}\"",
                self.key_id,
                names.join(" "),
                STANDARD.encode(signature)
            ),
        ));
        Ok(headers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_parse_in_any_order() {
        let go = r#"Signature version="1",keyId="ST$abc",algorithm="rsa-sha256",headers="date (request-target) host",signature="c2ln""#;
        let py = r#"Signature algorithm="rsa-sha256",headers="date (request-target) host",keyId="ST$abc",signature="c2ln",version="1""#;
        let a = parse_authorization(go).unwrap();
        assert_eq!(a, parse_authorization(py).unwrap());
        assert_eq!(a.key_id, "ST$abc");
        assert_eq!(a.headers, ["date", "(request-target)", "host"]);
        assert_eq!(a.signature, b"sig");
        assert!(parse_authorization("Bearer x").is_err());
        assert!(parse_authorization("Signature keyId=x").is_err());
    }

    #[test]
    fn signing_string_shape() {
        let s = signing_string(
            "GET",
            "/n/?x=1",
            &["date", "(request-target)", "host"],
            |h| match h {
                "date" => Some("Thu, 05 Jan 2014 21:31:40 GMT"),
                "host" => Some("example.com"),
                _ => None,
            },
        )
        .unwrap();
        assert_eq!(
            s,
            "date: Thu, 05 Jan 2014 21:31:40 GMT\n(request-target): get /n/?x=1\nhost: example.com"
        );
        assert!(signing_string("GET", "/", &["x-missing"], |_| None).is_err());
    }

    #[test]
    fn base64_in_both_alphabets() {
        assert_eq!(decode_any_base64("-_8").unwrap(), [0xfb, 0xff]);
        assert_eq!(decode_any_base64("+/8=").unwrap(), [0xfb, 0xff]);
        assert_eq!(strip_leading_zeros(&[0, 0, 1, 2]), [1, 2]);
        assert_eq!(
            content_sha256(b""),
            "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="
        );
    }
}

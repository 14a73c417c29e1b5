//! AWS Signature Version 4 verification, written by hand from the public description of the
//! algorithm so that it checks the broker independently of the `aws-sigv4` crate the broker signs
//! with: canonical request, string to sign, the HMAC key derivation chain, all with aws-lc-rs.
//!
//! What the algorithm is (AWS General Reference, "Create a signed AWS API request" /
//! "Elements of an AWS API request signature"; the same steps are in the public test suite that
//! ships with the `aws-sigv4` crate, `aws-signing-test-suite/v4`):
//!
//! - canonical request = method `\n` canonical URI `\n` canonical query `\n` canonical headers
//!   (each `name:value\n`, names lower-case, values trimmed with inner runs of spaces collapsed,
//!   repeated headers joined with `,`) `\n` signed header names joined with `;` `\n` hex SHA-256 of
//!   the body. For every service but S3 the URI path is normalized (RFC 3986 dot segments, runs of
//!   `/`) and URI-encoded again (so `%` becomes `%25`); query names and values are URI-encoded
//!   (RFC 3986 unreserved characters kept) and sorted.
//! - string to sign = `AWS4-HMAC-SHA256` `\n` `X-Amz-Date` `\n` `DATE/REGION/SERVICE/aws4_request`
//!   `\n` hex SHA-256 of the canonical request.
//! - signing key = HMAC(HMAC(HMAC(HMAC("AWS4" + secret, DATE), REGION), SERVICE), "aws4_request");
//!   signature = hex HMAC(signing key, string to sign).
//!
//! The checks before the signature, their order and their messages are those real AWS front
//! doors answer (recorded against the live services in dynalite's `index.js` comments, in the
//! order it lists them; the same texts are in scratchstack-aws-signature's `SignatureError` docs
//! and in many user reports): missing authentication, incomplete `Authorization`, the date
//! format, the 15-minute window, `host` signed, the algorithm, the credential's five parts, its
//! scope, then the key, the signature and the session token. In STS's awsQuery protocol the JSON
//! protocols' `InvalidSignatureException` is `SignatureDoesNotMatch` and
//! `UnrecognizedClientException` is `InvalidClientTokenId` (e.g. a real STS body quoted in
//! aws-azure-login#251, and Terraform's `sts:GetCallerIdentity` errors).

use aws_lc_rs::{digest, hmac};
use bytes::Bytes;
use http::Request;
use std::fmt::Write as _;

/// The only algorithm AWS accepts for this signature version.
pub(crate) const ALGORITHM: &str = "AWS4-HMAC-SHA256";
/// How far `X-Amz-Date` may be from the server's clock, either way (15 minutes).
pub(crate) const MAX_SKEW_SECS: u64 = 15 * 60;

/// A refused signature: an STS error code and its message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SigError {
    pub(crate) code: &'static str,
    pub(crate) message: String,
}

fn err(code: &'static str, message: impl Into<String>) -> SigError {
    SigError {
        code,
        message: message.into(),
    }
}

/// `MissingAuthenticationToken`, 403 (AWS "Common Errors"); the message is what STS, API
/// Gateway and DynamoDB answer an unsigned request.
pub(crate) const MISSING_AUTH: &str = "Request is missing Authentication Token";
/// `SignatureDoesNotMatch`, 403, when the signature is wrong (STS' own text, e.g.
/// `aws sts get-caller-identity` with a wrong secret).
pub(crate) const SIGNATURE_MISMATCH: &str = "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details.";
/// `InvalidClientTokenId`, 403, for an access key id AWS does not know (with a full stop).
pub(crate) const UNKNOWN_KEY: &str = "The security token included in the request is invalid.";
/// `InvalidClientTokenId`, 403, for a session token that is missing or does not belong to the
/// access key (no full stop: the raw STS body in aws-azure-login#251; dynalite records both
/// variants, the key check with and the token check without).
pub(crate) const BAD_TOKEN: &str = "The security token included in the request is invalid";
/// `ExpiredToken`, 403, for temporary credentials past their expiration (the STS model's
/// `ExpiredTokenException` shape says 400, but live STS answers `ExpiredToken` with 403:
/// aws-sdk-java-v2#1649, pulumi-aws#2560 `sts:GetCallerIdentity ... StatusCode: 403 ... api error
/// ExpiredToken`, and IAM's XML body in cfn-sphere#55).
pub(crate) const EXPIRED_TOKEN: &str = "The security token included in the request is expired";

/// The parts of a SigV4 `Authorization` header, checked up to (not including) the key lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Authorization {
    pub(crate) access_key_id: String,
    /// `YYYYMMDD` of the credential scope.
    pub(crate) scope_date: String,
    pub(crate) region: String,
    pub(crate) service: String,
    /// Lower-case header names, in the order the header lists them.
    pub(crate) signed_headers: Vec<String>,
    /// Lower-case hex.
    pub(crate) signature: String,
    /// `YYYYMMDDTHHMMSSZ`.
    pub(crate) amz_date: String,
}

impl Authorization {
    /// `DATE/REGION/SERVICE/aws4_request`.
    pub(crate) fn scope(&self) -> String {
        format!(
            "{}/{}/{}/aws4_request",
            self.scope_date, self.region, self.service
        )
    }
}

/// The access key id named in an `Authorization` header, if one can be read at all (for logs).
pub(crate) fn claimed_access_key(req: &Request<Bytes>) -> Option<String> {
    let auth = header_str(req, "authorization")?;
    let (_, params) = auth.trim().split_once(' ')?;
    auth_params(params)
        .into_iter()
        .find(|(k, _)| *k == "Credential")
        .and_then(|(_, v)| v.split('/').next().map(str::to_string))
        .filter(|k| !k.is_empty())
}

/// Parses the `Authorization` header and runs every check that needs no secret: presence, the
/// three parameters and a date, the date format, the 15-minute window around `now` (Unix
/// seconds), `host` among the signed headers, the algorithm, the five-part credential and its
/// scope (`region`, `service`, the terminator, the date).
pub(crate) fn parse(
    req: &Request<Bytes>,
    now: u64,
    region: &str,
    service: &str,
) -> Result<Authorization, SigError> {
    let auth = match header_str(req, "authorization") {
        Some(a) if a.trim_start().starts_with("AWS4-") => a.trim().to_string(),
        _ => return Err(err("MissingAuthenticationToken", MISSING_AUTH)),
    };
    let (algorithm, rest) = auth.split_once(' ').unwrap_or((auth.as_str(), ""));
    let params = auth_params(rest);
    let param = |name: &str| {
        params
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    };
    let (credential, signed_headers, signature) = (
        param("Credential").filter(|v| !v.is_empty()),
        param("SignedHeaders"),
        param("Signature").filter(|v| !v.is_empty()),
    );
    let amz_date = header_str(req, "x-amz-date")
        .map(str::to_string)
        .or_else(|| {
            // Without `X-Amz-Date` the `Date` header (RFC 7231) is the request's time.
            header_str(req, "date").map(|d| {
                httpdate::parse_http_date(d)
                    .map(|t| {
                        basic_format(
                            t.duration_since(std::time::UNIX_EPOCH)
                                .unwrap_or_default()
                                .as_secs(),
                        )
                    })
                    .unwrap_or_else(|_| d.to_string())
            })
        });

    // IncompleteSignature (400, AWS "Common Errors"): every missing part named, then the header.
    let mut missing = String::new();
    for (name, present) in [
        ("Credential", credential.is_some()),
        ("Signature", signature.is_some()),
        ("SignedHeaders", signed_headers.is_some()),
    ] {
        if !present {
            let _ = write!(
                missing,
                "Authorization header requires '{name}' parameter. "
            );
        }
    }
    if amz_date.is_none() {
        missing.push_str(
            "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header. ",
        );
    }
    let (Some(credential), Some(signed_headers), Some(signature), Some(amz_date)) =
        (credential, signed_headers, signature, amz_date)
    else {
        return Err(err(
            "IncompleteSignature",
            format!("{missing}Authorization={auth}"),
        ));
    };

    let Some(request_time) = parse_basic_format(&amz_date) else {
        return Err(err(
            "IncompleteSignature",
            format!(
                "Date must be in ISO-8601 'basic format'. Got '{amz_date}'. See http://en.wikipedia.org/wiki/ISO_8601"
            ),
        ));
    };
    if request_time + MAX_SKEW_SECS < now {
        return Err(err(
            "SignatureDoesNotMatch",
            format!(
                "Signature expired: {amz_date} is now earlier than {} ({} - 15 min.)",
                basic_format(now - MAX_SKEW_SECS),
                basic_format(now)
            ),
        ));
    }
    if request_time > now + MAX_SKEW_SECS {
        return Err(err(
            "SignatureDoesNotMatch",
            format!(
                "Signature not yet current: {amz_date} is still later than {} ({} + 15 min.)",
                basic_format(now + MAX_SKEW_SECS),
                basic_format(now)
            ),
        ));
    }

    let signed_headers: Vec<String> = signed_headers
        .split(';')
        .filter(|h| !h.is_empty())
        .map(str::to_ascii_lowercase)
        .collect();
    if !signed_headers
        .iter()
        .any(|h| h == "host" || h == ":authority")
    {
        // Older front doors said "'Host' must be a 'SignedHeader' in the AWS Authorization."
        // (dynalite); current ones name HTTP/2's `:authority` too.
        return Err(err(
            "SignatureDoesNotMatch",
            "'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization.",
        ));
    }
    if algorithm != ALGORITHM {
        return Err(err(
            "IncompleteSignature",
            format!("Unsupported AWS 'algorithm': '{algorithm}' (only {ALGORITHM} for now). "),
        ));
    }

    // Trailing slashes are ignored; anything but five parts is refused.
    let parts: Vec<&str> = credential.trim_end_matches('/').split('/').collect();
    let [key, date, scope_region, scope_service, terminator] = parts.as_slice() else {
        return Err(err(
            "IncompleteSignature",
            format!(
                "Credential must have exactly 5 slash-delimited elements, e.g. keyid/date/region/service/term, got '{credential}'"
            ),
        ));
    };
    let mut scope_problems = Vec::new();
    if *scope_region != region {
        scope_problems.push(format!(
            "Credential should be scoped to a valid region, not '{scope_region}'."
        ));
    }
    if *scope_service != service {
        scope_problems.push(format!(
            "Credential should be scoped to correct service: '{service}'."
        ));
    }
    if *terminator != "aws4_request" {
        scope_problems.push(format!(
            "Credential should be scoped with a valid terminator: 'aws4_request', not '{terminator}'."
        ));
    }
    if *date != &amz_date[..8] {
        scope_problems.push(format!(
            "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: '{date}' != '{}', from '{amz_date}'.",
            &amz_date[..8]
        ));
    }
    if !scope_problems.is_empty() {
        return Err(err("SignatureDoesNotMatch", scope_problems.join(" ")));
    }
    Ok(Authorization {
        access_key_id: key.to_string(),
        scope_date: date.to_string(),
        region: scope_region.to_string(),
        service: scope_service.to_string(),
        signed_headers,
        signature: signature.to_ascii_lowercase(),
        amz_date,
    })
}

/// Recomputes the signature with `secret` and compares it in constant time.
pub(crate) fn verify(
    req: &Request<Bytes>,
    auth: &Authorization,
    secret: &str,
) -> Result<(), SigError> {
    let mismatch = || err("SignatureDoesNotMatch", SIGNATURE_MISMATCH);
    let given = decode_hex(&auth.signature).ok_or_else(mismatch)?;
    let canonical = canonical_request(req, &auth.signed_headers);
    let to_sign = string_to_sign(&auth.amz_date, &auth.scope(), &canonical);
    let key = signing_key(secret, &auth.scope_date, &auth.region, &auth.service);
    hmac::verify(&key, to_sign.as_bytes(), &given).map_err(|_| mismatch())
}

/// The canonical request of `req` over `signed_headers`.
pub(crate) fn canonical_request(req: &Request<Bytes>, signed_headers: &[String]) -> String {
    let mut out = String::with_capacity(512);
    out.push_str(req.method().as_str());
    out.push('\n');
    out.push_str(&canonical_uri(req.uri().path()));
    out.push('\n');
    out.push_str(&canonical_query(req.uri().query().unwrap_or("")));
    out.push('\n');
    for name in signed_headers {
        let values: Vec<String> = if name == "host" || name == ":authority" {
            // HTTP/1.1 carries the authority in `Host`; fall back to the URI's.
            header_values(req, "host")
                .or_else(|| req.uri().authority().map(|a| vec![a.to_string()]))
                .unwrap_or_default()
        } else {
            header_values(req, name).unwrap_or_default()
        };
        let joined: Vec<String> = values.iter().map(|v| trim_all(v)).collect();
        let _ = writeln!(out, "{name}:{}", joined.join(","));
    }
    out.push('\n');
    out.push_str(&signed_headers.join(";"));
    out.push('\n');
    out.push_str(&hex(digest::digest(&digest::SHA256, req.body()).as_ref()));
    out
}

/// `AWS4-HMAC-SHA256\nAMZDATE\nSCOPE\nhex(sha256(canonical request))`.
pub(crate) fn string_to_sign(amz_date: &str, scope: &str, canonical_request: &str) -> String {
    let hash = digest::digest(&digest::SHA256, canonical_request.as_bytes());
    format!("{ALGORITHM}\n{amz_date}\n{scope}\n{}", hex(hash.as_ref()))
}

/// The signing key: `kDate = HMAC("AWS4" + secret, date)`, then region, service, `aws4_request`.
pub(crate) fn signing_key(secret: &str, date: &str, region: &str, service: &str) -> hmac::Key {
    let step = |key: &[u8], data: &str| {
        hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data.as_bytes())
    };
    let k_date = step(format!("AWS4{secret}").as_bytes(), date);
    let k_region = step(k_date.as_ref(), region);
    let k_service = step(k_region.as_ref(), service);
    let k_signing = step(k_service.as_ref(), "aws4_request");
    hmac::Key::new(hmac::HMAC_SHA256, k_signing.as_ref())
}

/// Hex signature of `string_to_sign` (what a signer would put in `Signature=`).
#[cfg(test)]
pub(crate) fn signature(secret: &str, auth: &Authorization, string_to_sign: &str) -> String {
    let key = signing_key(secret, &auth.scope_date, &auth.region, &auth.service);
    hex(hmac::sign(&key, string_to_sign.as_bytes()).as_ref())
}

/// The canonical URI for every service but S3: the path as sent (already URI-encoded once),
/// normalized (RFC 3986 5.2.4 dot segments, empty segments dropped, a trailing `/` kept), then
/// URI-encoded a second time with `/` kept.
fn canonical_uri(path: &str) -> String {
    let path = if path.is_empty() { "/" } else { path };
    let mut segments: Vec<&str> = Vec::new();
    for segment in path.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let mut normalized = format!("/{}", segments.join("/"));
    let trailing = ["/", "/.", "/..", "/./", "/../"]
        .iter()
        .any(|s| path.ends_with(s));
    if trailing && !normalized.ends_with('/') {
        normalized.push('/');
    }
    uri_encode(&normalized, true)
}

/// Query parameters decoded (form rules, as the SDK signers read them), URI-encoded, sorted by
/// name then value, joined with `&`.
fn canonical_query(query: &str) -> String {
    let mut pairs: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (uri_encode(&k, false), uri_encode(&v, false)))
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// Percent-encodes every byte but RFC 3986 unreserved characters (and `/` when `keep_slash`),
/// upper-case hex.
fn uri_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) || (keep_slash && b == b'/') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Trims a header value and collapses inner runs of spaces into one.
fn trim_all(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for word in value.trim().split(' ').filter(|w| !w.is_empty()) {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    out
}

fn header_str<'a>(req: &'a Request<Bytes>, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

fn header_values(req: &Request<Bytes>, name: &str) -> Option<Vec<String>> {
    let values: Vec<String> = req
        .headers()
        .get_all(name)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect();
    (!values.is_empty()).then_some(values)
}

/// `Credential=..., SignedHeaders=..., Signature=...`: comma-separated `name=value` pairs.
fn auth_params(params: &str) -> Vec<(&str, &str)> {
    params
        .split(',')
        .filter_map(|p| p.trim().split_once('='))
        .map(|(k, v)| (k.trim(), v.trim()))
        .collect()
}

/// `YYYYMMDDTHHMMSSZ` to Unix seconds.
fn parse_basic_format(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| -> Option<u64> {
        let part = s.get(r)?;
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let (y, mo, d) = (digits(0..4)?, digits(4..6)?, digits(6..8)?);
    let (h, mi, sec) = (digits(9..11)?, digits(11..13)?, digits(13..15)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    // days_from_civil (Howard Hinnant), valid for years after 1970.
    let (y, m) = (y as i64, mo as i64);
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400)
        .ok()
        .map(|t| t + h * 3600 + mi * 60 + sec)
}

/// Unix seconds to `YYYYMMDDTHHMMSSZ`.
pub(crate) fn basic_format(secs: u64) -> String {
    crate::timefmt::iso8601(secs).replace(['-', ':'], "")
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut out, b| {
            let _ = write!(out, "{b:02x}");
            out
        })
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    // Inputs and expected signatures of the public SigV4 test suite (`aws-signing-test-suite/v4`,
    // also in the old `aws4_testsuite`): key AKIDEXAMPLE, region us-east-1, service `service`,
    // 2015-08-30T12:36:00Z.
    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
    const WHEN: u64 = 1_440_938_160;

    fn request(method: &str, uri: &str, headers: &[(&str, &str)], body: &str) -> Request<Bytes> {
        let mut builder = Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        builder.body(Bytes::from(body.to_string())).unwrap()
    }

    fn authorization(signed: &str, signature: &str) -> String {
        format!(
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders={signed}, Signature={signature}"
        )
    }

    fn check(req: &Request<Bytes>) {
        let auth = parse(req, WHEN, "us-east-1", "service").unwrap();
        verify(req, &auth, SECRET).unwrap();
        // One flipped secret character breaks it.
        let wrong = verify(req, &auth, &SECRET.replace('w', "W")).unwrap_err();
        assert_eq!(wrong.code, "SignatureDoesNotMatch");
    }

    #[test]
    fn key_derivation_and_vanilla_get() {
        let sig = "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31";
        let req = request(
            "GET",
            "/",
            &[
                ("host", "example.amazonaws.com"),
                ("x-amz-date", "20150830T123600Z"),
                ("authorization", &authorization("host;x-amz-date", sig)),
            ],
            "",
        );
        let auth = parse(&req, WHEN, "us-east-1", "service").unwrap();
        let canonical = canonical_request(&req, &auth.signed_headers);
        assert_eq!(
            canonical,
            "GET\n/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let to_sign = string_to_sign(&auth.amz_date, &auth.scope(), &canonical);
        assert_eq!(
            to_sign,
            "AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/service/aws4_request\nbb579772317eb040ac9ed261061d46c1f17a8133879d6129b6e1c25292927e63"
        );
        assert_eq!(signature(SECRET, &auth, &to_sign), sig);
        check(&req);
    }

    #[test]
    fn session_token_query_order_form_body_and_trim() {
        check(&request(
            "GET",
            "/",
            &[
                ("host", "example.amazonaws.com"),
                ("x-amz-date", "20150830T123600Z"),
                (
                    "x-amz-security-token",
                    "6e86291e8372ff2a2260956d9b8aae1d763fbf315fa00fa31553b73ebf194267",
                ),
                (
                    "authorization",
                    &authorization(
                        "host;x-amz-date;x-amz-security-token",
                        "07ec1639c89043aa0e3e2de82b96708f198cceab042d4a97044c66dd9f74e7f8",
                    ),
                ),
            ],
            "",
        ));
        check(&request(
            "GET",
            "/?Param-3=Value3&Param=Value2&%E1%88%B4=Value1",
            &[
                ("host", "example.amazonaws.com"),
                ("x-amz-date", "20150830T123600Z"),
                (
                    "authorization",
                    &authorization(
                        "host;x-amz-date",
                        "371d3713e185cc334048618a97f809c9ffe339c62934c032af5a0e595648fcac",
                    ),
                ),
            ],
            "",
        ));
        check(&request(
            "POST",
            "/",
            &[
                ("content-type", "application/x-www-form-urlencoded"),
                ("host", "example.amazonaws.com"),
                ("content-length", "13"),
                ("x-amz-date", "20150830T123600Z"),
                (
                    "x-amz-content-sha256",
                    "9095672bbd1f56dfc5b65f3e153adc8731a4a654192329106275f4c7b24d0b6e",
                ),
                (
                    "authorization",
                    &authorization(
                        "content-length;content-type;host;x-amz-content-sha256;x-amz-date",
                        "d3875051da38690788ef43de4db0d8f280229d82040bfac253562e56c3f20e0b",
                    ),
                ),
            ],
            "Param1=value1",
        ));
        check(&request(
            "GET",
            "/",
            &[
                ("host", "example.amazonaws.com"),
                ("my-header1", " value1"),
                ("my-header2", " \"a   b   c\""),
                ("x-amz-date", "20150830T123600Z"),
                (
                    "authorization",
                    &authorization(
                        "host;my-header1;my-header2;x-amz-date",
                        "acc3ed3afb60bb290fc8d2dd0098b9911fcaa05412b367055dee359757a9c736",
                    ),
                ),
            ],
            "",
        ));
    }

    #[test]
    fn canonical_uris() {
        assert_eq!(canonical_uri(""), "/");
        assert_eq!(canonical_uri("/"), "/");
        assert_eq!(canonical_uri("//example//"), "/example/");
        assert_eq!(canonical_uri("/a/./b/../c"), "/a/c");
        assert_eq!(canonical_uri("/example/.."), "/");
        assert_eq!(
            canonical_uri("/test/@connections/JBDvjfGEIAMCERw%3D"),
            "/test/%40connections/JBDvjfGEIAMCERw%253D"
        );
        assert_eq!(canonical_query("b=2&a=1&a=0&c"), "a=0&a=1&b=2&c=");
        assert_eq!(canonical_query("k=a%20b+c"), "k=a%20b%20c");
    }

    #[test]
    fn header_checks_in_aws_order() {
        let now = WHEN;
        let with = |auth: Option<&str>, date: Option<&str>| {
            let mut headers = vec![("host", "sts.amazonaws.com")];
            if let Some(a) = auth {
                headers.push(("authorization", a));
            }
            if let Some(d) = date {
                headers.push(("x-amz-date", d));
            }
            parse(&request("POST", "/", &headers, ""), now, "us-east-1", "sts").unwrap_err()
        };
        let e = with(None, Some("20150830T123600Z"));
        assert_eq!(
            (e.code, e.message.as_str()),
            ("MissingAuthenticationToken", MISSING_AUTH)
        );
        let e = with(Some("Bearer abc"), None);
        assert_eq!(e.code, "MissingAuthenticationToken");
        let e = with(Some("AWS4-HMAC-SHA256 Signature=b"), None);
        assert_eq!(e.code, "IncompleteSignature");
        assert_eq!(
            e.message,
            "Authorization header requires 'Credential' parameter. Authorization header requires 'SignedHeaders' parameter. Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header. Authorization=AWS4-HMAC-SHA256 Signature=b"
        );
        let good = "AWS4-HMAC-SHA256 Credential=AKID/20150830/us-east-1/sts/aws4_request, SignedHeaders=host;x-amz-date, Signature=00";
        let e = with(Some(good), Some("2015-08-30T12:36:00Z"));
        assert_eq!(e.code, "IncompleteSignature");
        assert!(
            e.message.starts_with(
                "Date must be in ISO-8601 'basic format'. Got '2015-08-30T12:36:00Z'."
            )
        );
        let e = with(Some(good), Some("20150830T122000Z"));
        assert_eq!(e.code, "SignatureDoesNotMatch");
        assert_eq!(
            e.message,
            "Signature expired: 20150830T122000Z is now earlier than 20150830T122100Z (20150830T123600Z - 15 min.)"
        );
        let e = with(Some(good), Some("20150830T125200Z"));
        assert_eq!(
            e.message,
            "Signature not yet current: 20150830T125200Z is still later than 20150830T125100Z (20150830T123600Z + 15 min.)"
        );
        let e = with(Some(&good.replace("host;", "")), Some("20150830T123600Z"));
        assert_eq!(e.code, "SignatureDoesNotMatch");
        assert!(e.message.contains("'Host'"));
        let e = with(
            Some(&good.replace("SHA256", "SHA512")),
            Some("20150830T123600Z"),
        );
        assert_eq!(
            (e.code, e.message.as_str()),
            (
                "IncompleteSignature",
                "Unsupported AWS 'algorithm': 'AWS4-HMAC-SHA512' (only AWS4-HMAC-SHA256 for now). "
            )
        );
        let e = with(
            Some(&good.replace("/aws4_request", "")),
            Some("20150830T123600Z"),
        );
        assert_eq!(e.code, "IncompleteSignature");
        assert!(
            e.message
                .starts_with("Credential must have exactly 5 slash-delimited elements")
        );
        let bad_scope = "AWS4-HMAC-SHA256 Credential=AKID/20150829/eu-west-1/iam/aws4_reqst, SignedHeaders=host;x-amz-date, Signature=00";
        let e = with(Some(bad_scope), Some("20150830T123600Z"));
        assert_eq!(e.code, "SignatureDoesNotMatch");
        assert_eq!(
            e.message,
            "Credential should be scoped to a valid region, not 'eu-west-1'. Credential should be scoped to correct service: 'sts'. Credential should be scoped with a valid terminator: 'aws4_request', not 'aws4_reqst'. Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: '20150829' != '20150830', from '20150830T123600Z'."
        );
        // A trailing slash on the credential is ignored.
        let req = request(
            "POST",
            "/",
            &[
                ("host", "sts.amazonaws.com"),
                ("x-amz-date", "20150830T123600Z"),
                (
                    "authorization",
                    &good.replace("aws4_request,", "aws4_request/,"),
                ),
            ],
            "",
        );
        let auth = parse(&req, now, "us-east-1", "sts").unwrap();
        assert_eq!(auth.access_key_id, "AKID");
        assert_eq!(claimed_access_key(&req).as_deref(), Some("AKID"));
    }

    #[test]
    fn basic_dates() {
        assert_eq!(parse_basic_format("20150830T123600Z"), Some(WHEN));
        assert_eq!(basic_format(WHEN), "20150830T123600Z");
        assert_eq!(parse_basic_format("20151330T123600Z"), None);
        assert_eq!(parse_basic_format("2015083T123600Z"), None);
    }
}

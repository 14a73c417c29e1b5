//! FakeSts `AssumeRole` (role chaining) and `GetCallerIdentity` over real HTTP, signed by an
//! independent signer (the `aws-sigv4` crate) and, when a Python with boto3 is at hand, by
//! boto3 itself.

mod support;
use support::now;

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use fakecloud::aws::{DEMO_ACCOUNT, DEMO_ROLE_ARN, FakeSts, FakeStsHandle, SessionTag};
use fakecloud::faults::Fault;
use fakecloud::issuer::{Issuer, ServiceAccount};
use quick_xml::events::Event;
use quick_xml::{Reader, XmlVersion};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

const TARGET: &str = "arn:aws:iam::210987654321:role/team/chained";
const THIRD: &str = "arn:aws:iam::210987654321:role/third";
const CHAIN_LIMIT: &str = "The requested DurationSeconds exceeds the 1 hour session limit for roles assumed by role chaining.";

/// Credentials to sign with.
#[derive(Debug, Clone)]
struct Creds {
    akid: String,
    secret: String,
    token: Option<String>,
}

struct Env {
    issuer: Arc<Issuer>,
    sts: FakeStsHandle,
    client: reqwest::Client,
}

async fn env() -> Env {
    let issuer = Arc::new(Issuer::new("https://oidc.test/cluster"));
    let sts = FakeSts::start(issuer.clone(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    Env {
        issuer,
        sts,
        client: support::client(),
    }
}

/// What a signed call should look like; each field bends one part of it.
struct Signing<'a> {
    region: &'a str,
    service: &'a str,
    time: SystemTime,
    /// Sign without the session token header even for temporary credentials.
    drop_token: bool,
    /// A GET with the parameters in the query string instead of a form POST.
    get: bool,
}

impl Default for Signing<'_> {
    fn default() -> Self {
        Signing {
            region: "us-east-1",
            service: "sts",
            time: SystemTime::now(),
            drop_token: false,
            get: false,
        }
    }
}

impl Env {
    /// `AssumeRoleWithWebIdentity` for the demo role: credentials of an assumed-role session.
    async fn web_identity(&self, session: &str) -> Creds {
        let token = self.issuer.mint(
            &ServiceAccount::default(),
            "sts.amazonaws.com",
            Duration::from_secs(600),
        );
        let resp = self
            .client
            .post(self.sts.url() + "/")
            .form(&[
                ("Action", "AssumeRoleWithWebIdentity"),
                ("Version", "2011-06-15"),
                ("RoleArn", DEMO_ROLE_ARN),
                ("RoleSessionName", session),
                ("WebIdentityToken", &token),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        creds_of(
            &xml_fields(&resp.text().await.unwrap()),
            "AssumeRoleWithWebIdentityResponse/AssumeRoleWithWebIdentityResult",
        )
    }

    async fn signed(&self, creds: &Creds, params: &[(&str, &str)]) -> reqwest::Response {
        self.signed_with(creds, params, Signing::default(), |_| {})
            .await
    }

    /// Signs a form POST with `aws-sigv4`, lets `tweak` alter the signed request, sends it.
    async fn signed_with(
        &self,
        creds: &Creds,
        params: &[(&str, &str)],
        how: Signing<'_>,
        tweak: impl FnOnce(&mut http::Request<String>),
    ) -> reqwest::Response {
        let form = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(params)
            .finish()
            .replace('+', "%20");
        let (method, url, body) = if how.get {
            ("GET", format!("{}/?{form}", self.sts.url()), String::new())
        } else {
            ("POST", self.sts.url() + "/", form)
        };
        let host = self.sts.addr().to_string();
        let mut req = http::Request::builder()
            .method(method)
            .uri(&url)
            .header("host", &host);
        if !how.get {
            req = req.header(
                "content-type",
                "application/x-www-form-urlencoded; charset=utf-8",
            );
        }
        let mut req = req.body(body).unwrap();
        let token = creds.token.clone().filter(|_| !how.drop_token);
        let identity: Identity =
            Credentials::new(&creds.akid, &creds.secret, token, None, "test").into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(how.region)
            .name(how.service)
            .time(how.time)
            .settings(SigningSettings::default())
            .build()
            .unwrap()
            .into();
        let signable = SignableRequest::new(
            method,
            url.as_str(),
            req.headers()
                .iter()
                .map(|(k, v)| (k.as_str(), v.to_str().unwrap())),
            SignableBody::Bytes(req.body().as_bytes()),
        )
        .unwrap();
        let (instructions, _) = sign(signable, &params).unwrap().into_parts();
        instructions.apply_to_request_http1x(&mut req);
        tweak(&mut req);
        let (parts, body) = req.into_parts();
        let mut out = self
            .client
            .request(parts.method.clone(), parts.uri.to_string())
            .body(body);
        for (name, value) in &parts.headers {
            if name != "host" {
                out = out.header(name.as_str(), value.as_bytes());
            }
        }
        out.send().await.unwrap()
    }

    async fn assume_role(&self, creds: &Creds, extra: &[(&str, &str)]) -> reqwest::Response {
        let mut params = vec![
            ("Action", "AssumeRole"),
            ("Version", "2011-06-15"),
            ("RoleArn", TARGET),
            ("RoleSessionName", "chained-session"),
        ];
        for (k, v) in extra {
            params.retain(|(name, _)| name != k);
            params.push((k, v));
        }
        self.signed(creds, &params).await
    }

    async fn whoami(&self, creds: &Creds) -> HashMap<String, String> {
        let resp = self
            .signed(
                creds,
                &[("Action", "GetCallerIdentity"), ("Version", "2011-06-15")],
            )
            .await;
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "text/xml");
        xml_fields(&resp.text().await.unwrap())
    }

    async fn admin(&self, method: reqwest::Method, path: &str, body: &str) -> u16 {
        self.client
            .request(method, format!("{}{path}", self.sts.admin_url()))
            .body(body.to_string())
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }
}

fn creds_of(f: &HashMap<String, String>, result: &str) -> Creds {
    Creds {
        akid: f[&format!("{result}/Credentials/AccessKeyId")].clone(),
        secret: f[&format!("{result}/Credentials/SecretAccessKey")].clone(),
        token: Some(f[&format!("{result}/Credentials/SessionToken")].clone()),
    }
}

/// Element text by local name path ("A/B/C"), first occurrence; entity references resolved.
fn xml_fields(xml: &str) -> HashMap<String, String> {
    let mut reader = Reader::from_str(xml);
    let mut path: Vec<String> = Vec::new();
    let mut text = String::new();
    let mut out = HashMap::new();
    loop {
        match reader.read_event().unwrap() {
            Event::Start(e) => {
                path.push(e.local_name().into_inner().to_string());
                text.clear();
            }
            Event::Text(t) => text.push_str(&t.xml_content(XmlVersion::Implicit1_0)),
            Event::GeneralRef(r) => match r.resolve_char_ref().unwrap() {
                Some(c) => text.push(c),
                None => text.push(match &*r.into_inner() {
                    "amp" => '&',
                    "lt" => '<',
                    "gt" => '>',
                    "quot" => '"',
                    "apos" => '\'',
                    other => panic!("unknown entity {other}"),
                }),
            },
            Event::End(_) => {
                if !text.trim().is_empty() {
                    out.entry(path.join("/"))
                        .or_insert(std::mem::take(&mut text));
                }
                text.clear();
                path.pop();
            }
            Event::Eof => break,
            _ => {}
        }
    }
    out
}

/// (status, type, code, message) of an STS `ErrorResponse`.
async fn error_of(resp: reqwest::Response) -> (u16, String, String, String) {
    let status = resp.status().as_u16();
    assert_eq!(resp.headers()["content-type"], "text/xml");
    assert!(resp.headers().contains_key("x-amzn-requestid"));
    let body = resp.text().await.unwrap();
    let f = xml_fields(&body);
    assert!(f.contains_key("ErrorResponse/RequestId"), "{body}");
    (
        status,
        f["ErrorResponse/Error/Type"].clone(),
        f["ErrorResponse/Error/Code"].clone(),
        f.get("ErrorResponse/Error/Message")
            .cloned()
            .unwrap_or_default(),
    )
}

/// Parses `YYYY-MM-DDTHH:MM:SSZ` to Unix seconds.
fn unix_of(s: &str) -> u64 {
    let num = |a: usize, b: usize| s[a..b].parse::<i64>().unwrap();
    let (y, m, d) = (num(0, 4), num(5, 7), num(8, 10));
    let (hh, mm, ss) = (num(11, 13), num(14, 16), num(17, 19));
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    ((era * 146_097 + doe - 719_468) * 86_400 + hh * 3600 + mm * 60 + ss) as u64
}

fn tag(k: &str, v: &str) -> SessionTag {
    SessionTag {
        key: k.into(),
        value: v.into(),
    }
}

const R: &str = "AssumeRoleResponse/AssumeRoleResult";

#[tokio::test]
async fn chain_with_tags_external_id_and_source_identity() {
    let env = env().await;
    env.sts.trust_role(TARGET, DEMO_ROLE_ARN, Some("ext-123"));
    let web = env.web_identity("web-session").await;

    // Who the web identity credentials are.
    let me = env.whoami(&web).await;
    let g = "GetCallerIdentityResponse/GetCallerIdentityResult";
    assert_eq!(
        me[&format!("{g}/Arn")],
        "arn:aws:sts::123456789012:assumed-role/credbroker-demo/web-session"
    );
    assert_eq!(me[&format!("{g}/Account")], DEMO_ACCOUNT);
    assert!(me[&format!("{g}/UserId")].starts_with("AROA"));
    assert!(me[&format!("{g}/UserId")].ends_with(":web-session"));

    let resp = env
        .assume_role(
            &web,
            &[
                ("ExternalId", "ext-123"),
                ("SourceIdentity", "alice@example.com"),
                ("Tags.member.1.Key", "team"),
                ("Tags.member.1.Value", "payments"),
                ("Tags.member.2.Key", "env"),
                ("Tags.member.2.Value", "prod"),
                ("TransitiveTagKeys.member.1", "team"),
            ],
        )
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/xml");
    let request_id = resp.headers()["x-amzn-requestid"]
        .to_str()
        .unwrap()
        .to_string();
    let body = resp.text().await.unwrap();
    assert!(
        body.contains("<AssumeRoleResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\">")
    );
    let f = xml_fields(&body);
    assert_eq!(f[&format!("{R}/SourceIdentity")], "alice@example.com");
    assert_eq!(
        f[&format!("{R}/AssumedRoleUser/Arn")],
        "arn:aws:sts::210987654321:assumed-role/chained/chained-session"
    );
    let role_id = &f[&format!("{R}/AssumedRoleUser/AssumedRoleId")];
    assert!(
        role_id.starts_with("AROA") && role_id.ends_with(":chained-session"),
        "{role_id}"
    );
    assert_eq!(role_id.split(':').next().unwrap().len(), 21);
    let chained = creds_of(&f, R);
    assert!(chained.akid.starts_with("ASIA") && chained.akid.len() == 20);
    assert_eq!(chained.secret.len(), 40);
    assert!(chained.token.as_ref().unwrap().len() >= 300);
    // Default duration: one hour.
    let expires = unix_of(&f[&format!("{R}/Credentials/Expiration")]);
    assert!(expires.abs_diff(now() + 3600) <= 2);
    let packed: u32 = f[&format!("{R}/PackedPolicySize")].parse().unwrap();
    assert!((1..=100).contains(&packed));
    assert_eq!(
        f["AssumeRoleResponse/ResponseMetadata/RequestId"],
        request_id
    );

    // The chained credentials are the chained role.
    let me = env.whoami(&chained).await;
    assert_eq!(
        me[&format!("{g}/Arn")],
        "arn:aws:sts::210987654321:assumed-role/chained/chained-session"
    );
    assert_eq!(me[&format!("{g}/Account")], "210987654321");
    assert_eq!(&me[&format!("{g}/UserId")], role_id);

    let id = env.sts.identity(&chained.akid).unwrap();
    assert_eq!(id.role_arn.as_deref(), Some(TARGET));
    assert_eq!(id.source_identity.as_deref(), Some("alice@example.com"));
    assert_eq!(id.tags, [tag("team", "payments"), tag("env", "prod")]);
    assert_eq!(id.transitive_tag_keys, ["team"]);
    assert!(id.is_role_session());

    // Log: the web identity call, two GetCallerIdentity, the AssumeRole.
    let log = env.sts.log();
    let outcomes: Vec<&str> = log.iter().map(|r| r.outcome.as_str()).collect();
    assert_eq!(outcomes, ["issued", "answered", "issued", "answered"]);
    let r = &log[2];
    assert_eq!(r.action.as_deref(), Some("AssumeRole"));
    assert_eq!(r.role_arn.as_deref(), Some(TARGET));
    assert_eq!(r.session_name.as_deref(), Some("chained-session"));
    assert_eq!(r.duration_seconds, None);
    assert_eq!(r.external_id.as_deref(), Some("ext-123"));
    assert_eq!(r.source_identity.as_deref(), Some("alice@example.com"));
    assert_eq!(r.tags, [tag("team", "payments"), tag("env", "prod")]);
    assert_eq!(r.transitive_tag_keys, ["team"]);
    assert!(r.inherited_tags.is_empty());
    assert_eq!(r.caller_access_key_id.as_deref(), Some(web.akid.as_str()));
    assert_eq!(
        r.caller_arn.as_deref(),
        Some("arn:aws:sts::123456789012:assumed-role/credbroker-demo/web-session")
    );
    assert_eq!(r.credentials.as_ref().unwrap().access_key_id, chained.akid);
    assert_eq!(
        log[3].caller_access_key_id.as_deref(),
        Some(chained.akid.as_str())
    );
    assert_eq!(env.sts.issued_count(), 2);

    // A third hop: the transitive tag and the source identity come along; a non-transitive
    // tag does not; overriding the transitive tag or changing the source identity fails.
    env.sts.trust_role(THIRD, TARGET, None);
    let third_params = [("RoleArn", THIRD), ("RoleSessionName", "third")];
    let conflict = [
        third_params[0],
        third_params[1],
        ("Tags.member.1.Key", "TEAM"),
        ("Tags.member.1.Value", "other"),
    ];
    let (status, kind, code, msg) = error_of(env.assume_role(&chained, &conflict).await).await;
    assert_eq!(
        (status, kind.as_str(), code.as_str()),
        (400, "Sender", "InvalidParameterValue")
    );
    assert_eq!(
        msg,
        "One of the specified transitive tag keys can't be set because it conflicts with a transitive tag key from the calling session."
    );
    let change = [
        third_params[0],
        third_params[1],
        ("SourceIdentity", "mallory"),
    ];
    let (status, _, code, msg) = error_of(env.assume_role(&chained, &change).await).await;
    assert_eq!((status, code.as_str()), (400, "ValidationError"));
    assert_eq!(
        msg,
        "The source identity is already set for this assume role session"
    );

    let same = [
        third_params[0],
        third_params[1],
        ("SourceIdentity", "alice@example.com"),
        ("Tags.member.1.Key", "cost"),
        ("Tags.member.1.Value", "42"),
    ];
    let resp = env.assume_role(&chained, &same).await;
    assert_eq!(resp.status(), 200);
    let f = xml_fields(&resp.text().await.unwrap());
    assert_eq!(f[&format!("{R}/SourceIdentity")], "alice@example.com");
    let third = creds_of(&f, R);
    let id = env.sts.identity(&third.akid).unwrap();
    assert_eq!(id.tags, [tag("team", "payments"), tag("cost", "42")]);
    assert_eq!(id.transitive_tag_keys, ["team"]);
    let r = env.sts.log().pop().unwrap();
    assert_eq!(r.inherited_tags, [tag("team", "payments")]);
    assert_eq!(r.tags, [tag("cost", "42")]);

    // Without a SourceIdentity parameter the session's one still comes back.
    let resp = env
        .assume_role(&chained, &[third_params[0], ("RoleSessionName", "third-2")])
        .await;
    let f = xml_fields(&resp.text().await.unwrap());
    assert_eq!(f[&format!("{R}/SourceIdentity")], "alice@example.com");
    assert!(!f.contains_key(&format!("{R}/PackedPolicySize")));
}

#[tokio::test]
async fn signature_errors() {
    let env = env().await;
    env.sts.trust_role(TARGET, DEMO_ROLE_ARN, None);
    let web = env.web_identity("s1").await;
    assert_eq!(env.assume_role(&web, &[]).await.status(), 200);

    // Wrong secret (last character changed).
    let mut secret = web.secret.clone();
    let last = secret.pop().unwrap();
    secret.push(if last == 'A' { 'B' } else { 'A' });
    let wrong = Creds {
        secret,
        ..web.clone()
    };
    let (status, kind, code, msg) = error_of(env.assume_role(&wrong, &[]).await).await;
    assert_eq!(
        (status, kind.as_str(), code.as_str()),
        (403, "Sender", "SignatureDoesNotMatch")
    );
    assert_eq!(
        msg,
        "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details."
    );

    // A body changed after signing.
    let resp = env
        .signed_with(
            &web,
            &[("Action", "GetCallerIdentity"), ("Version", "2011-06-15")],
            Signing::default(),
            |req| req.body_mut().push_str("&Extra=1"),
        )
        .await;
    let (status, _, code, _) = error_of(resp).await;
    assert_eq!((status, code.as_str()), (403, "SignatureDoesNotMatch"));

    // An access key this STS never issued.
    let unknown = Creds {
        akid: "ASIAZZZZZZZZZZZZZZZZ".into(),
        ..web.clone()
    };
    let (status, _, code, msg) = error_of(env.assume_role(&unknown, &[]).await).await;
    assert_eq!((status, code.as_str()), (403, "InvalidClientTokenId"));
    assert_eq!(
        msg,
        "The security token included in the request is invalid."
    );

    // Temporary credentials without their session token, or with another session's.
    let resp = env
        .signed_with(
            &web,
            &[("Action", "GetCallerIdentity")],
            Signing {
                drop_token: true,
                ..Signing::default()
            },
            |_| {},
        )
        .await;
    let (status, _, code, msg) = error_of(resp).await;
    assert_eq!((status, code.as_str()), (403, "InvalidClientTokenId"));
    assert_eq!(msg, "The security token included in the request is invalid");
    let other = env.web_identity("s2").await;
    let mixed = Creds {
        token: other.token.clone(),
        ..web.clone()
    };
    let (status, _, code, _) = error_of(env.assume_role(&mixed, &[]).await).await;
    assert_eq!((status, code.as_str()), (403, "InvalidClientTokenId"));

    // Unsigned.
    let resp = env
        .client
        .post(env.sts.url() + "/")
        .form(&[
            ("Action", "AssumeRole"),
            ("Version", "2011-06-15"),
            ("RoleArn", TARGET),
            ("RoleSessionName", "x1"),
        ])
        .send()
        .await
        .unwrap();
    let (status, _, code, msg) = error_of(resp).await;
    assert_eq!((status, code.as_str()), (403, "MissingAuthenticationToken"));
    assert_eq!(msg, "Request is missing Authentication Token");

    // Signed 20 minutes ago, or 20 minutes ahead.
    let resp = env
        .signed_with(
            &web,
            &[("Action", "GetCallerIdentity")],
            Signing {
                time: SystemTime::now() - Duration::from_secs(1200),
                ..Signing::default()
            },
            |_| {},
        )
        .await;
    let (status, _, code, msg) = error_of(resp).await;
    assert_eq!((status, code.as_str()), (403, "SignatureDoesNotMatch"));
    assert!(
        msg.starts_with("Signature expired: ") && msg.ends_with(" - 15 min.)"),
        "{msg}"
    );
    let resp = env
        .signed_with(
            &web,
            &[("Action", "GetCallerIdentity")],
            Signing {
                time: SystemTime::now() + Duration::from_secs(1200),
                ..Signing::default()
            },
            |_| {},
        )
        .await;
    let (_, _, code, msg) = error_of(resp).await;
    assert_eq!(code, "SignatureDoesNotMatch");
    assert!(msg.starts_with("Signature not yet current: "), "{msg}");
    // 10 minutes off is inside the window.
    let resp = env
        .signed_with(
            &web,
            &[("Action", "GetCallerIdentity")],
            Signing {
                time: SystemTime::now() - Duration::from_secs(600),
                ..Signing::default()
            },
            |_| {},
        )
        .await;
    assert_eq!(resp.status(), 200);

    // Another region or service in the credential scope.
    for (region, service, expected) in [
        (
            "eu-west-1",
            "sts",
            "Credential should be scoped to a valid region, not 'eu-west-1'.",
        ),
        (
            "us-east-1",
            "iam",
            "Credential should be scoped to correct service: 'sts'.",
        ),
    ] {
        let resp = env
            .signed_with(
                &web,
                &[("Action", "GetCallerIdentity")],
                Signing {
                    region,
                    service,
                    ..Signing::default()
                },
                |_| {},
            )
            .await;
        let (status, _, code, msg) = error_of(resp).await;
        assert_eq!(
            (status, code.as_str(), msg.as_str()),
            (403, "SignatureDoesNotMatch", expected)
        );
    }
    // The region follows set_region.
    env.sts.set_region("eu-west-1");
    let resp = env
        .signed_with(
            &web,
            &[("Action", "GetCallerIdentity")],
            Signing {
                region: "eu-west-1",
                ..Signing::default()
            },
            |_| {},
        )
        .await;
    assert_eq!(resp.status(), 200);
    env.sts.set_region("us-east-1");

    // GET with the parameters (and odd characters) in the query string.
    let resp = env
        .signed_with(
            &web,
            &[
                ("Action", "AssumeRole"),
                ("Version", "2011-06-15"),
                ("RoleArn", TARGET),
                ("RoleSessionName", "via-get"),
                ("Tags.member.1.Key", "path/with space"),
                ("Tags.member.1.Value", "a+b=c@d"),
            ],
            Signing {
                get: true,
                ..Signing::default()
            },
            |_| {},
        )
        .await;
    assert_eq!(resp.status(), 200);
    let r = env.sts.log().pop().unwrap();
    assert_eq!(r.session_name.as_deref(), Some("via-get"));
    assert_eq!(r.tags, [tag("path/with space", "a+b=c@d")]);

    // A malformed Authorization header.
    let resp = env
        .signed_with(
            &web,
            &[("Action", "GetCallerIdentity")],
            Signing::default(),
            |req| {
                let auth = req.headers()["authorization"].to_str().unwrap().to_string();
                let cut = auth.split(", Signature=").next().unwrap().to_string();
                req.headers_mut()
                    .insert("authorization", cut.parse().unwrap());
            },
        )
        .await;
    let (status, _, code, msg) = error_of(resp).await;
    assert_eq!((status, code.as_str()), (400, "IncompleteSignature"));
    assert!(msg.starts_with("Authorization header requires 'Signature' parameter. Authorization=AWS4-HMAC-SHA256 Credential="), "{msg}");

    // Every refusal is logged with the key it named.
    let log = env.sts.log();
    let refused: Vec<_> = log
        .iter()
        .filter(|r| r.outcome.starts_with("error:"))
        .collect();
    assert!(
        refused
            .iter()
            .all(|r| r.credentials.is_none() && r.caller_arn.is_none())
    );
    assert!(
        refused
            .iter()
            .any(|r| r.caller_access_key_id.as_deref() == Some("ASIAZZZZZZZZZZZZZZZZ"))
    );
    assert!(refused.iter().any(
        |r| r.outcome == "error:MissingAuthenticationToken" && r.caller_access_key_id.is_none()
    ));
}

#[tokio::test]
async fn expired_sessions() {
    let env = env().await;
    env.sts.trust_role(TARGET, DEMO_ROLE_ARN, None);
    let web = env.web_identity("s1").await;
    assert!(env.sts.expire_credentials(&web.akid));
    let (status, _, code, msg) = error_of(env.assume_role(&web, &[]).await).await;
    assert_eq!((status, code.as_str()), (403, "ExpiredToken"));
    assert_eq!(msg, "The security token included in the request is expired");
    assert!(!env.sts.expire_credentials("ASIANOPE"));

    // The admin route, and a real expiry through the issued-lifetime hook.
    let web = env.web_identity("s2").await;
    let body = format!(r#"{{"access_key_id":"{}"}}"#, web.akid);
    assert_eq!(
        env.admin(reqwest::Method::POST, "/expire", &body).await,
        204
    );
    assert_eq!(
        env.admin(reqwest::Method::POST, "/expire", r#"{"access_key_id":"x"}"#)
            .await,
        400
    );
    let (_, _, code, _) = error_of(env.assume_role(&web, &[]).await).await;
    assert_eq!(code, "ExpiredToken");

    env.sts.set_issued_lifetime(Some(Duration::from_secs(1)));
    let web = env.web_identity("s3").await;
    let chained = {
        let resp = env.assume_role(&web, &[]).await;
        assert_eq!(resp.status(), 200);
        creds_of(&xml_fields(&resp.text().await.unwrap()), R)
    };
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let resp = env
        .signed(&chained, &[("Action", "GetCallerIdentity")])
        .await;
    let (_, _, code, _) = error_of(resp).await;
    assert_eq!(code, "ExpiredToken");
}

#[tokio::test]
async fn trust_and_external_id() {
    let env = env().await;
    let web = env.web_identity("s1").await;
    let denied = "User: arn:aws:sts::123456789012:assumed-role/credbroker-demo/s1 is not authorized to perform: sts:AssumeRole on resource: arn:aws:iam::210987654321:role/team/chained";

    // No such role, then a role that trusts someone else.
    let (status, kind, code, msg) = error_of(env.assume_role(&web, &[]).await).await;
    assert_eq!(
        (status, kind.as_str(), code.as_str()),
        (403, "Sender", "AccessDenied")
    );
    assert_eq!(msg, denied);
    env.sts
        .trust_role(TARGET, "arn:aws:iam::123456789012:role/other", None);
    let (_, _, code, msg) = error_of(env.assume_role(&web, &[]).await).await;
    assert_eq!((code.as_str(), msg.as_str()), ("AccessDenied", denied));

    // Trusted with an external id: missing or wrong is denied the same way.
    let body = format!(
        r#"{{"role_arn":"{TARGET}","from_role_arn":"{DEMO_ROLE_ARN}","external_id":"ext-123"}}"#
    );
    assert_eq!(
        env.admin(reqwest::Method::POST, "/trust_role", &body).await,
        204
    );
    assert_eq!(
        env.admin(reqwest::Method::POST, "/trust_role", "{}").await,
        400
    );
    let (_, _, code, msg) = error_of(env.assume_role(&web, &[]).await).await;
    assert_eq!((code.as_str(), msg.as_str()), ("AccessDenied", denied));
    let (_, _, code, _) = error_of(env.assume_role(&web, &[("ExternalId", "ext-124")]).await).await;
    assert_eq!(code, "AccessDenied");
    assert_eq!(
        env.assume_role(&web, &[("ExternalId", "ext-123")])
            .await
            .status(),
        200
    );

    // No external id rule: any or none.
    env.sts.trust_role(TARGET, DEMO_ROLE_ARN, None);
    assert_eq!(env.assume_role(&web, &[]).await.status(), 200);
    assert_eq!(
        env.assume_role(&web, &[("ExternalId", "whatever")])
            .await
            .status(),
        200
    );

    // Untrusted again through the admin route; the account root trusts every caller in it.
    let body = format!(r#"{{"role_arn":"{TARGET}","from_role_arn":"{DEMO_ROLE_ARN}"}}"#);
    assert_eq!(
        env.admin(reqwest::Method::DELETE, "/trust_role", &body)
            .await,
        204
    );
    assert_eq!(env.assume_role(&web, &[]).await.status(), 403);
    env.sts
        .trust_role(TARGET, "arn:aws:iam::123456789012:root", None);
    assert_eq!(env.assume_role(&web, &[]).await.status(), 200);
    env.sts
        .untrust_role(TARGET, "arn:aws:iam::123456789012:root");
    // The exact session ARN as a principal.
    env.sts.trust_role(
        TARGET,
        "arn:aws:sts::123456789012:assumed-role/credbroker-demo/s1",
        None,
    );
    assert_eq!(env.assume_role(&web, &[]).await.status(), 200);
    let other = env.web_identity("s2").await;
    assert_eq!(env.assume_role(&other, &[]).await.status(), 403);

    let outcomes: Vec<String> = env
        .sts
        .log()
        .into_iter()
        .filter(|r| r.action.as_deref() == Some("AssumeRole"))
        .map(|r| r.outcome)
        .collect();
    assert_eq!(
        outcomes,
        [
            "error:AccessDenied",
            "error:AccessDenied",
            "error:AccessDenied",
            "error:AccessDenied",
            "issued",
            "issued",
            "issued",
            "error:AccessDenied",
            "issued",
            "issued",
            "error:AccessDenied"
        ]
    );
}

#[tokio::test]
async fn tag_session_and_set_source_identity_permissions() {
    let env = env().await;
    let web = env.web_identity("s1").await;
    env.sts.trust_role(TARGET, DEMO_ROLE_ARN, None);
    assert!(
        env.sts
            .set_trust_actions(TARGET, DEMO_ROLE_ARN, false, false)
    );
    assert!(!env.sts.set_trust_actions(THIRD, DEMO_ROLE_ARN, true, true));
    let denied = |action: &str| {
        format!(
            "User: arn:aws:sts::123456789012:assumed-role/credbroker-demo/s1 is not authorized to perform: {action} on resource: {TARGET}"
        )
    };
    let tagged = [("Tags.member.1.Key", "team"), ("Tags.member.1.Value", "a")];
    let (status, _, code, msg) = error_of(env.assume_role(&web, &tagged).await).await;
    assert_eq!((status, code.as_str()), (403, "AccessDenied"));
    assert_eq!(msg, denied("sts:TagSession"));
    let (_, _, code, msg) =
        error_of(env.assume_role(&web, &[("SourceIdentity", "alice")]).await).await;
    assert_eq!(
        (code.as_str(), msg),
        ("AccessDenied", denied("sts:SetSourceIdentity"))
    );
    // Neither is needed for a plain call.
    assert_eq!(env.assume_role(&web, &[]).await.status(), 200);

    // Inheriting transitive tags needs sts:TagSession on the next role even with no new tags.
    env.sts.set_trust_actions(TARGET, DEMO_ROLE_ARN, true, true);
    let resp = env
        .assume_role(
            &web,
            &[
                ("Tags.member.1.Key", "team"),
                ("Tags.member.1.Value", "a"),
                ("TransitiveTagKeys.member.1", "team"),
            ],
        )
        .await;
    assert_eq!(resp.status(), 200);
    let chained = creds_of(&xml_fields(&resp.text().await.unwrap()), R);
    let body =
        format!(r#"{{"role_arn":"{THIRD}","from_role_arn":"{TARGET}","tag_session":false}}"#);
    assert_eq!(
        env.admin(reqwest::Method::POST, "/trust_role", &body).await,
        204
    );
    let third = [("RoleArn", THIRD), ("RoleSessionName", "third")];
    let (_, _, code, msg) = error_of(env.assume_role(&chained, &third).await).await;
    assert_eq!(code, "AccessDenied");
    assert!(
        msg.ends_with(&format!("sts:TagSession on resource: {THIRD}")),
        "{msg}"
    );
    env.sts.trust_role(THIRD, TARGET, None);
    assert_eq!(env.assume_role(&chained, &third).await.status(), 200);
}

#[tokio::test]
async fn durations_and_the_chaining_cap() {
    let env = env().await;
    env.sts.trust_role(TARGET, DEMO_ROLE_ARN, None);
    let web = env.web_identity("s1").await;

    let (status, _, code, msg) =
        error_of(env.assume_role(&web, &[("DurationSeconds", "3601")]).await).await;
    assert_eq!(
        (status, code.as_str(), msg.as_str()),
        (400, "ValidationError", CHAIN_LIMIT)
    );
    let resp = env.assume_role(&web, &[("DurationSeconds", "3600")]).await;
    assert_eq!(resp.status(), 200);
    let f = xml_fields(&resp.text().await.unwrap());
    assert!(unix_of(&f[&format!("{R}/Credentials/Expiration")]).abs_diff(now() + 3600) <= 2);
    let resp = env.assume_role(&web, &[("DurationSeconds", "900")]).await;
    let f = xml_fields(&resp.text().await.unwrap());
    assert!(unix_of(&f[&format!("{R}/Credentials/Expiration")]).abs_diff(now() + 900) <= 2);
    for bad in ["899", "43201", "soon"] {
        let (status, _, code, msg) =
            error_of(env.assume_role(&web, &[("DurationSeconds", bad)]).await).await;
        assert_eq!((status, code.as_str()), (400, "ValidationError"), "{bad}");
        assert!(msg.contains("'durationSeconds'"), "{msg}");
    }

    // An IAM user's long-term key is not role chaining: up to the role's MaxSessionDuration.
    let user = "arn:aws:iam::123456789012:user/deployer";
    let key = env.sts.create_access_key(user).unwrap();
    assert!(key.access_key_id.starts_with("AKIA"));
    assert!(
        env.sts
            .create_access_key("arn:aws:iam::123456789012:role/x")
            .is_none()
    );
    let user_creds = Creds {
        akid: key.access_key_id.clone(),
        secret: key.secret_access_key.clone(),
        token: None,
    };
    let me = env.whoami(&user_creds).await;
    let g = "GetCallerIdentityResponse/GetCallerIdentityResult";
    assert_eq!(me[&format!("{g}/Arn")], user);
    assert!(me[&format!("{g}/UserId")].starts_with("AIDA"));
    env.sts.trust_role(TARGET, user, None);
    let resp = env
        .assume_role(&user_creds, &[("DurationSeconds", "7200")])
        .await;
    assert_eq!(resp.status(), 200);
    env.sts.set_max_session_duration(TARGET, 3600);
    let (_, _, code, msg) = error_of(
        env.assume_role(&user_creds, &[("DurationSeconds", "7200")])
            .await,
    )
    .await;
    assert_eq!(code, "ValidationError");
    assert_eq!(
        msg,
        "The requested DurationSeconds exceeds the MaxSessionDuration set for this role."
    );
    // A session token with a long-term key is refused.
    let with_token = Creds {
        token: Some("IQoJb3JpZ2luX2VjEnope".into()),
        ..user_creds.clone()
    };
    let (_, _, code, _) = error_of(env.assume_role(&with_token, &[]).await).await;
    assert_eq!(code, "InvalidClientTokenId");
}

#[tokio::test]
async fn parameter_and_tag_validation() {
    let env = env().await;
    env.sts.trust_role(TARGET, DEMO_ROLE_ARN, None);
    let web = env.web_identity("s1").await;

    let many: Vec<(String, String)> = (1..=51)
        .flat_map(|n| {
            [
                (format!("Tags.member.{n}.Key"), format!("k{n}")),
                (format!("Tags.member.{n}.Value"), "v".to_string()),
            ]
        })
        .collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let (status, _, code, msg) = error_of(env.assume_role(&web, &many).await).await;
    assert_eq!((status, code.as_str()), (400, "ValidationError"));
    assert_eq!(
        msg,
        "1 validation error detected: Value at 'tags' failed to satisfy constraint: Member must have length less than or equal to 50"
    );
    // Exactly 50 is fine.
    assert_eq!(env.assume_role(&web, &many[..100]).await.status(), 200);

    let long_key = "k".repeat(129);
    let long_value = "v".repeat(257);
    // (extra parameters, expected code, expected message part)
    type Case<'a> = (Vec<(&'a str, &'a str)>, &'a str, &'a str);
    let cases: Vec<Case> = vec![
        (
            vec![
                ("Tags.member.1.Key", &long_key),
                ("Tags.member.1.Value", "v"),
            ],
            "ValidationError",
            "at 'tags.1.member.key' failed to satisfy constraint: Member must have length less than or equal to 128",
        ),
        (
            vec![
                ("Tags.member.1.Key", "k"),
                ("Tags.member.1.Value", &long_value),
            ],
            "ValidationError",
            "at 'tags.1.member.value' failed to satisfy constraint: Member must have length less than or equal to 256",
        ),
        (
            vec![
                ("Tags.member.1.Key", "bad#key"),
                ("Tags.member.1.Value", "v"),
            ],
            "ValidationError",
            r"Value 'bad#key' at 'tags.1.member.key' failed to satisfy constraint: Member must satisfy regular expression pattern: [\p{L}\p{Z}\p{N}_.:/=+\-@]+",
        ),
        (
            vec![("Tags.member.1.Key", "k")],
            "ValidationError",
            "Value null at 'tags.1.member.value' failed to satisfy constraint: Member must not be null",
        ),
        (
            vec![
                ("Tags.member.1.Key", "team"),
                ("Tags.member.1.Value", "a"),
                ("TransitiveTagKeys.member.1", "env"),
            ],
            "InvalidParameterValue",
            "The specified transitive tag key must be included in the requested tags.",
        ),
        (
            vec![("TransitiveTagKeys.member.1", "env")],
            "InvalidParameterValue",
            "The specified transitive tag key must be included in the requested tags.",
        ),
        (
            vec![
                ("Tags.member.1.Key", "Team"),
                ("Tags.member.1.Value", "a"),
                ("Tags.member.2.Key", "team"),
                ("Tags.member.2.Value", "b"),
            ],
            "InvalidParameterValue",
            "Duplicate tag keys found. Please note that Tag keys are case insensitive.",
        ),
        (
            vec![("RoleSessionName", "x")],
            "ValidationError",
            "1 validation error detected: Value 'x' at 'roleSessionName' failed to satisfy constraint: Member must have length greater than or equal to 2",
        ),
        (
            vec![("RoleSessionName", "has space")],
            "ValidationError",
            r"Value 'has space' at 'roleSessionName' failed to satisfy constraint: Member must satisfy regular expression pattern: [\w+=,.@-]*",
        ),
        (
            vec![("ExternalId", "x")],
            "ValidationError",
            "Value 'x' at 'externalId' failed to satisfy constraint: Member must have length greater than or equal to 2",
        ),
        (
            vec![("SourceIdentity", "aws:alice")],
            "ValidationError",
            r"Value 'aws:alice' at 'sourceIdentity' failed to satisfy constraint: Member must satisfy regular expression pattern: [\w+=,.@-]*",
        ),
        (
            vec![("RoleArn", "nothing-valid-in-here")],
            "ValidationError",
            "nothing-valid-in-here is invalid",
        ),
        (
            vec![("RoleArn", "arn:aws:iam::1:r")],
            "ValidationError",
            "Value 'arn:aws:iam::1:r' at 'roleArn' failed to satisfy constraint: Member must have length greater than or equal to 20",
        ),
        (
            vec![("Version", "2010-01-01")],
            "InvalidAction",
            "Could not find operation AssumeRole for version 2010-01-01",
        ),
    ];
    for (extra, expected_code, expected_msg) in cases {
        let (status, _, code, msg) = error_of(env.assume_role(&web, &extra).await).await;
        assert_eq!(
            (status, code.as_str()),
            (400, expected_code),
            "{extra:?}: {msg}"
        );
        assert!(msg.contains(expected_msg), "{extra:?}: {msg}");
    }
    // Two problems are reported together.
    let (_, _, _, msg) = error_of(
        env.assume_role(&web, &[("RoleSessionName", "x"), ("DurationSeconds", "1")])
            .await,
    )
    .await;
    assert!(msg.starts_with("2 validation errors detected: "), "{msg}");
    for missing in ["RoleArn", "RoleSessionName"] {
        let mut params = vec![
            ("Action", "AssumeRole"),
            ("RoleArn", TARGET),
            ("RoleSessionName", "s1"),
        ];
        params.retain(|(k, _)| *k != missing);
        let (status, _, code, msg) = error_of(env.signed(&web, &params).await).await;
        assert_eq!((status, code.as_str()), (400, "MissingParameter"));
        assert!(msg.contains(missing));
    }

    // Session policies and tags count toward PackedPolicySize; too much is refused.
    let big = "v".repeat(256);
    let heavy: Vec<(String, String)> = (1..=10)
        .flat_map(|n| {
            [
                (format!("Tags.member.{n}.Key"), format!("key{n}")),
                (format!("Tags.member.{n}.Value"), big.clone()),
            ]
        })
        .collect();
    let heavy: Vec<(&str, &str)> = heavy
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let (_, _, code, msg) = error_of(env.assume_role(&web, &heavy).await).await;
    assert_eq!(code, "PackedPolicyTooLarge");
    assert!(
        msg.starts_with("Packed policy consumes ")
            && msg.ends_with("% of allotted space, please use smaller policy."),
        "{msg}"
    );
    let resp = env
        .assume_role(
            &web,
            &[("Policy", r#"{"Version":"2012-10-17","Statement":[]}"#)],
        )
        .await;
    assert_eq!(resp.status(), 200);
    let f = xml_fields(&resp.text().await.unwrap());
    assert!(f.contains_key(&format!("{R}/PackedPolicySize")));

    // Unknown actions are looked up before authentication.
    let resp = env
        .client
        .post(env.sts.url() + "/")
        .form(&[("Action", "GetSessionToken"), ("Version", "2011-06-15")])
        .send()
        .await
        .unwrap();
    let (status, _, code, _) = error_of(resp).await;
    assert_eq!((status, code.as_str()), (400, "InvalidAction"));
}

#[tokio::test]
async fn faults_apply_to_assume_role() {
    let env = env().await;
    env.sts.trust_role(TARGET, DEMO_ROLE_ARN, None);
    let web = env.web_identity("s1").await;
    let exchanges = env.sts.exchanges();
    for (code, status, kind) in [
        ("Throttling", 400, "Sender"),
        ("ExpiredToken", 403, "Sender"),
        ("InvalidClientTokenId", 403, "Sender"),
        ("SignatureDoesNotMatch", 403, "Sender"),
        ("ServiceUnavailable", 503, "Receiver"),
    ] {
        env.sts.faults().set(Fault::Error {
            code: code.into(),
            count: Some(1),
        });
        let (s, k, c, _) = error_of(env.assume_role(&web, &[]).await).await;
        assert_eq!((s, k.as_str(), c.as_str()), (status, kind, code));
    }
    env.sts.faults().set(Fault::Status {
        status: 500,
        count: Some(1),
        retry_after: None,
    });
    let (s, _, c, _) = error_of(env.assume_role(&web, &[]).await).await;
    assert_eq!((s, c.as_str()), (500, "InternalFailure"));
    env.sts.faults().set(Fault::Garbage { count: Some(1) });
    assert_eq!(env.assume_role(&web, &[]).await.status(), 200);
    assert_eq!(
        env.assume_role(
            &web,
            &[("Tags.member.1.Key", "a"), ("Tags.member.1.Value", "b")]
        )
        .await
        .status(),
        200
    );
    assert_eq!(
        env.sts.exchanges(),
        exchanges + 1,
        "faulted requests never reach the handler"
    );

    let log = env.sts.log();
    let faulted: Vec<_> = log
        .iter()
        .filter(|r| r.outcome.starts_with("fault:"))
        .collect();
    assert_eq!(faulted.len(), 7);
    assert!(
        faulted
            .iter()
            .all(|r| r.action.as_deref() == Some("AssumeRole")
                && r.role_arn.as_deref() == Some(TARGET)
                && r.caller_access_key_id.as_deref() == Some(web.akid.as_str())
                && r.caller_arn.is_none())
    );
    let last = log.last().unwrap();
    assert_eq!(last.outcome, "issued");
    assert_eq!(last.tags, [tag("a", "b")]);
    // The log JSON carries the new fields by name.
    let json = env
        .client
        .get(env.sts.admin_url() + "/log")
        .send()
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap();
    let last = json.as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        last["tags"],
        serde_json::json!([{"key": "a", "value": "b"}])
    );
    assert_eq!(last["caller_access_key_id"], web.akid.as_str());
    assert_eq!(
        last["caller_arn"],
        "arn:aws:sts::123456789012:assumed-role/credbroker-demo/s1"
    );
}

/// boto3 against the fake: the real client's signer, parser and error handling.
#[tokio::test]
async fn boto3_chains_and_sees_the_chained_role() {
    let Some(python) = boto3_python() else {
        eprintln!(
            "skipped: no Python with boto3 (set FAKECLOUD_BOTO3_PYTHON, or create target/venv: python3 -m venv target/venv && target/venv/bin/pip install boto3==1.44.5)"
        );
        assert!(
            std::env::var_os("FAKECLOUD_REQUIRE_BOTO3").is_none(),
            "FAKECLOUD_REQUIRE_BOTO3 is set but no Python with boto3 was found"
        );
        return;
    };
    let env = env().await;
    env.sts.trust_role(TARGET, DEMO_ROLE_ARN, Some("ext-123"));
    let token = env.issuer.mint(
        &ServiceAccount::default(),
        "sts.amazonaws.com",
        Duration::from_secs(600),
    );
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("chain.py");
    std::fs::write(&script, BOTO3_SCRIPT).unwrap();
    let (endpoint, home) = (env.sts.url(), dir.path().to_path_buf());
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(&python)
            .arg(&script)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &home)
            .env("AWS_CONFIG_FILE", home.join("none"))
            .env("AWS_SHARED_CREDENTIALS_FILE", home.join("none"))
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("STS_ENDPOINT", endpoint)
            .env("WEB_IDENTITY_TOKEN", &token)
            .env("WEB_ROLE", DEMO_ROLE_ARN)
            .env("TARGET_ROLE", TARGET)
            .output()
    })
    .await
    .unwrap()
    .unwrap();
    assert!(
        out.status.success(),
        "boto3 script failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        result["web_identity"]["Arn"],
        "arn:aws:sts::123456789012:assumed-role/credbroker-demo/boto3-web"
    );
    assert_eq!(
        result["chained"]["AssumedRoleUser"]["Arn"],
        "arn:aws:sts::210987654321:assumed-role/chained/boto3-chain"
    );
    assert_eq!(result["chained"]["SourceIdentity"], "alice");
    assert_eq!(
        result["chained_identity"]["Arn"],
        "arn:aws:sts::210987654321:assumed-role/chained/boto3-chain"
    );
    assert_eq!(result["chained_identity"]["Account"], "210987654321");
    assert_eq!(
        result["chained_identity"]["UserId"],
        result["chained"]["AssumedRoleUser"]["AssumedRoleId"]
    );
    assert_eq!(result["cap"]["Code"], "ValidationError");
    assert_eq!(result["cap"]["Message"], CHAIN_LIMIT);
    assert_eq!(result["wrong_external_id"]["Code"], "AccessDenied");
    assert_eq!(result["wrong_external_id"]["status"], 403);
    assert_eq!(result["bad_secret"]["Code"], "SignatureDoesNotMatch");

    // What boto3 sent, as the fake saw it.
    let log = env.sts.log();
    let issued: Vec<_> = log
        .iter()
        .filter(|r| r.action.as_deref() == Some("AssumeRole") && r.outcome == "issued")
        .collect();
    assert_eq!(issued.len(), 1);
    let r = issued[0];
    assert_eq!(r.session_name.as_deref(), Some("boto3-chain"));
    assert_eq!(r.duration_seconds, Some(3600));
    assert_eq!(r.external_id.as_deref(), Some("ext-123"));
    assert_eq!(r.source_identity.as_deref(), Some("alice"));
    assert_eq!(r.tags, [tag("team", "payments"), tag("env", "prod")]);
    assert_eq!(r.transitive_tag_keys, ["team"]);
    assert_eq!(
        r.caller_arn.as_deref(),
        Some("arn:aws:sts::123456789012:assumed-role/credbroker-demo/boto3-web")
    );
}

/// A Python that imports boto3: `FAKECLOUD_BOTO3_PYTHON`, else the workspace's `target/venv` or
/// `target/conformance-venv`.
fn boto3_python() -> Option<std::path::PathBuf> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let candidates = std::env::var_os("FAKECLOUD_BOTO3_PYTHON")
        .map(std::path::PathBuf::from)
        .into_iter()
        .chain(
            [
                "target/venv/bin/python",
                "target/conformance-venv/bin/python",
            ]
            .iter()
            .map(|p| root.join(p)),
        );
    for python in candidates {
        let ok = std::process::Command::new(&python)
            .args(["-c", "import boto3"])
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return Some(python);
        }
    }
    None
}

const BOTO3_SCRIPT: &str = r#"
import json, os
import boto3, botocore
from botocore.config import Config
from botocore.exceptions import ClientError

ep = os.environ["STS_ENDPOINT"]
cfg = Config(retries={"max_attempts": 1, "mode": "standard"})

def client(**kw):
    return boto3.session.Session().client("sts", region_name="us-east-1", endpoint_url=ep, config=cfg, **kw)

def creds(c):
    return dict(aws_access_key_id=c["AccessKeyId"], aws_secret_access_key=c["SecretAccessKey"], aws_session_token=c["SessionToken"])

def error(call):
    try:
        call()
    except ClientError as e:
        return dict(e.response["Error"], status=e.response["ResponseMetadata"]["HTTPStatusCode"])
    raise SystemExit("expected an error")

anon = boto3.session.Session().client("sts", region_name="us-east-1", endpoint_url=ep,
    config=cfg.merge(Config(signature_version=botocore.UNSIGNED)))
web = anon.assume_role_with_web_identity(RoleArn=os.environ["WEB_ROLE"], RoleSessionName="boto3-web",
    WebIdentityToken=os.environ["WEB_IDENTITY_TOKEN"])["Credentials"]
sts1 = client(**creds(web))
target = os.environ["TARGET_ROLE"]
chained = sts1.assume_role(RoleArn=target, RoleSessionName="boto3-chain", DurationSeconds=3600,
    ExternalId="ext-123", SourceIdentity="alice",
    Tags=[{"Key": "team", "Value": "payments"}, {"Key": "env", "Value": "prod"}],
    TransitiveTagKeys=["team"])
sts2 = client(**creds(chained["Credentials"]))
out = {
    "web_identity": sts1.get_caller_identity(),
    "chained": chained,
    "chained_identity": sts2.get_caller_identity(),
    "cap": error(lambda: sts1.assume_role(RoleArn=target, RoleSessionName="too-long",
        DurationSeconds=7200, ExternalId="ext-123")),
    "wrong_external_id": error(lambda: sts1.assume_role(RoleArn=target, RoleSessionName="x1",
        ExternalId="nope")),
    "bad_secret": error(lambda: client(aws_access_key_id=web["AccessKeyId"],
        aws_secret_access_key="x" * 40, aws_session_token=web["SessionToken"]).get_caller_identity()),
}
for k in ("web_identity", "chained", "chained_identity"):
    out[k].pop("ResponseMetadata", None)
print(json.dumps(out, default=str))
"#;

//! The five credential surfaces under test and the exact request an SDK sends to each for a
//! cached credential (docs/aws.md, "Container credentials" and "IMDSv2"; docs/gcp.md, "Metadata
//! server"; docs/azure.md, "IMDS token endpoint" and "App Service").

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderName, HeaderValue, Method, Request};
use http_body_util::Empty;
use serde::{Deserialize, Serialize};

/// A surface, named as in the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Target {
    /// `GET /v1/credentials` with `Authorization` (AWS container credentials).
    AwsContainer,
    /// `GET /latest/meta-data/iam/security-credentials/ROLE` with an IMDSv2 session token.
    AwsImds,
    /// `GET /computeMetadata/v1/instance/service-accounts/default/token` (GCE metadata).
    GceToken,
    /// `GET /metadata/identity/oauth2/token?api-version=2018-02-01&resource=…` (Azure IMDS).
    AzureImds,
    /// `GET /msi/token?api-version=2019-08-01&resource=…` with `X-IDENTITY-HEADER` (App Service).
    AzureAppService,
}

impl Target {
    pub const ALL: [Target; 5] = [
        Target::AwsContainer,
        Target::AwsImds,
        Target::GceToken,
        Target::AzureImds,
        Target::AzureAppService,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Target::AwsContainer => "aws-container",
            Target::AwsImds => "aws-imds",
            Target::GceToken => "gce-token",
            Target::AzureImds => "azure-imds",
            Target::AzureAppService => "azure-app-service",
        }
    }
}

/// The per-broker values a request needs: the container `Authorization` value and an IMDSv2
/// session token (both secrets of the bench's own throwaway broker).
#[derive(Debug, Clone)]
pub struct Credentials {
    pub aws_auth: String,
    pub imds_session: String,
}

/// The AWS role name the demo role ARN ends with (the IMDS path segment).
pub fn demo_role_name() -> &'static str {
    fakecloud::aws::DEMO_ROLE_ARN
        .rsplit('/')
        .next()
        .unwrap_or_default()
}

/// The Azure resource SDKs ask for most (ARM).
pub const AZURE_RESOURCE: &str = "https://management.azure.com/";

/// One request, reusable: method, path and query, headers.
#[derive(Debug, Clone)]
pub struct RequestSpec {
    pub method: Method,
    pub path_and_query: String,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl RequestSpec {
    /// The request an SDK sends on `target`, addressed to `host` (`127.0.0.1:PORT`).
    pub fn for_target(target: Target, host: &str, creds: &Credentials) -> RequestSpec {
        let mut headers = vec![(http::header::HOST, value(host))];
        let path_and_query = match target {
            Target::AwsContainer => {
                headers.push((http::header::AUTHORIZATION, value(&creds.aws_auth)));
                "/v1/credentials".to_string()
            }
            Target::AwsImds => {
                headers.push((
                    HeaderName::from_static("x-aws-ec2-metadata-token"),
                    value(&creds.imds_session),
                ));
                format!(
                    "/latest/meta-data/iam/security-credentials/{}",
                    demo_role_name()
                )
            }
            Target::GceToken => {
                headers.push((
                    HeaderName::from_static("metadata-flavor"),
                    HeaderValue::from_static("Google"),
                ));
                "/computeMetadata/v1/instance/service-accounts/default/token".to_string()
            }
            Target::AzureImds => {
                headers.push((
                    HeaderName::from_static("metadata"),
                    HeaderValue::from_static("true"),
                ));
                format!(
                    "/metadata/identity/oauth2/token?api-version=2018-02-01&resource={}",
                    encode(AZURE_RESOURCE)
                )
            }
            Target::AzureAppService => {
                headers.push((
                    HeaderName::from_static("x-identity-header"),
                    value(fakecloud::sidecar::AZURE_IDENTITY_HEADER),
                ));
                format!(
                    "/msi/token?api-version=2019-08-01&resource={}",
                    encode(AZURE_RESOURCE)
                )
            }
        };
        RequestSpec {
            method: Method::GET,
            path_and_query,
            headers,
        }
    }

    /// The IMDSv2 session-token request (`PUT /latest/api/token`).
    pub fn imds_session(host: &str) -> RequestSpec {
        RequestSpec {
            method: Method::PUT,
            path_and_query: "/latest/api/token".into(),
            headers: vec![
                (http::header::HOST, value(host)),
                (
                    HeaderName::from_static("x-aws-ec2-metadata-token-ttl-seconds"),
                    HeaderValue::from_static("21600"),
                ),
            ],
        }
    }

    /// A plain GET with a `Host` header.
    pub fn get(host: &str, path_and_query: impl Into<String>) -> RequestSpec {
        RequestSpec {
            method: Method::GET,
            path_and_query: path_and_query.into(),
            headers: vec![(http::header::HOST, value(host))],
        }
    }

    pub fn with_header(mut self, name: &'static str, v: &str) -> RequestSpec {
        self.headers.push((HeaderName::from_static(name), value(v)));
        self
    }

    /// A client request (origin-form URI, as HTTP/1.1 clients send).
    pub fn request(&self) -> Request<Empty<Bytes>> {
        let mut b = Request::builder()
            .method(self.method.clone())
            .uri(self.path_and_query.as_str());
        if let Some(h) = b.headers_mut() {
            for (k, v) in &self.headers {
                h.append(k.clone(), v.clone());
            }
        }
        b.body(Empty::new())
            .expect("a request built from valid parts")
    }

    /// The request head as a server sees it, for driving a handler without a socket.
    pub fn parts(&self) -> Parts {
        self.request().into_parts().0
    }
}

/// A [`RequestSpec`] as plain strings: what `credbroker-bench gen --request` takes and what the
/// wrk script is written from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireSpec {
    pub method: String,
    pub path_and_query: String,
    pub headers: Vec<(String, String)>,
}

impl RequestSpec {
    pub fn to_wire(&self) -> WireSpec {
        WireSpec {
            method: self.method.to_string(),
            path_and_query: self.path_and_query.clone(),
            headers: self
                .headers
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect(),
        }
    }

    pub fn from_wire(w: &WireSpec) -> Result<RequestSpec, String> {
        Ok(RequestSpec {
            method: Method::from_bytes(w.method.as_bytes()).map_err(|e| e.to_string())?,
            path_and_query: w.path_and_query.clone(),
            headers: w
                .headers
                .iter()
                .map(|(k, v)| {
                    Ok((
                        HeaderName::try_from(k.as_str()).map_err(|e| e.to_string())?,
                        HeaderValue::try_from(v.as_str()).map_err(|e| e.to_string())?,
                    ))
                })
                .collect::<Result<_, String>>()?,
        })
    }
}

fn value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).expect("header values built here are visible ASCII")
}

/// Percent-encodes a query value (RFC 3986 unreserved characters pass).
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs() {
        let creds = Credentials {
            aws_auth: "auth".into(),
            imds_session: "sess".into(),
        };
        let s = RequestSpec::for_target(Target::AzureImds, "127.0.0.1:1", &creds);
        assert_eq!(
            s.path_and_query,
            "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fmanagement.azure.com%2F"
        );
        let p = RequestSpec::for_target(Target::AwsImds, "127.0.0.1:1", &creds).parts();
        assert_eq!(
            p.uri.path(),
            "/latest/meta-data/iam/security-credentials/credbroker-demo"
        );
        assert_eq!(p.headers["x-aws-ec2-metadata-token"], "sess");
        assert_eq!(p.headers["host"], "127.0.0.1:1");
        let a = RequestSpec::for_target(Target::AzureAppService, "127.0.0.1:1", &creds);
        assert!(
            a.path_and_query
                .starts_with("/msi/token?api-version=2019-08-01&resource=")
        );
        let back = RequestSpec::from_wire(&a.to_wire()).unwrap();
        assert_eq!(back.to_wire(), a.to_wire());
    }
}

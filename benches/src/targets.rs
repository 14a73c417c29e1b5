//! The four credential surfaces under test and the exact request an SDK sends to each for a
//! cached credential (docs/aws.md, "Container credentials" and "IMDSv2";
//! docs/gcp.md, "Metadata server"; docs/azure.md, "IMDS token endpoint").

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderName, HeaderValue, Method, Request};
use http_body_util::Empty;
use serde::Serialize;

/// A surface, named as in the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, clap::ValueEnum)]
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
}

impl Target {
    pub const ALL: [Target; 4] = [
        Target::AwsContainer,
        Target::AwsImds,
        Target::GceToken,
        Target::AzureImds,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Target::AwsContainer => "aws-container",
            Target::AwsImds => "aws-imds",
            Target::GceToken => "gce-token",
            Target::AzureImds => "azure-imds",
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
    }
}

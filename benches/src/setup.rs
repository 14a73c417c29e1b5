//! The sidecar-side configuration of a pod with AWS, GCP and Azure enabled against the local
//! fakes, built from the fakes' description (`Cloudscape::describe`, or `fakecloud run
//! --ready-file`), exactly as the conformance suite does.

use std::path::Path;

use serde_json::Value;

/// Which clouds to enable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Clouds {
    pub aws: bool,
    pub gcp: bool,
    pub azure: bool,
}

impl Clouds {
    pub const ALL: Clouds = Clouds {
        aws: true,
        gcp: true,
        azure: true,
    };
    pub const AWS: Clouds = Clouds {
        aws: true,
        gcp: false,
        azure: false,
    };
}

fn s(v: &Value, path: &[&str]) -> String {
    let mut cur = v;
    for p in path {
        cur = &cur[*p];
    }
    match cur {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The sidecar's environment variables (what the clouds' webhooks inject).
pub fn sidecar_env(desc: &Value, clouds: Clouds) -> Vec<(String, String)> {
    let mut env = Vec::new();
    let mut set = |k: &str, v: String| env.push((k.to_string(), v));
    if clouds.aws {
        set("AWS_ROLE_ARN", s(desc, &["aws", "role_arn"]));
        set("AWS_WEB_IDENTITY_TOKEN_FILE", s(desc, &["tokens", "aws"]));
        set("AWS_ENDPOINT_URL_STS", s(desc, &["aws", "sts_endpoint"]));
        set("AWS_REGION", s(desc, &["aws", "region"]));
        set("AWS_ROLE_SESSION_NAME", "bench".into());
    }
    if clouds.gcp {
        set(
            "GOOGLE_APPLICATION_CREDENTIALS",
            s(desc, &["gcp", "credentials_file"]),
        );
        set("GOOGLE_CLOUD_PROJECT", s(desc, &["gcp", "project_id"]));
    }
    if clouds.azure {
        set("AZURE_CLIENT_ID", s(desc, &["azure", "client_id"]));
        set("AZURE_TENANT_ID", s(desc, &["azure", "tenant_id"]));
        set("AZURE_FEDERATED_TOKEN_FILE", s(desc, &["tokens", "azure"]));
        set(
            "AZURE_AUTHORITY_HOST",
            s(desc, &["azure", "authority_host"]),
        );
    }
    env
}

/// The App Service `X-IDENTITY-HEADER` value the bench's broker is started with.
pub const AZURE_IDENTITY_HEADER: &str = "credbroker-bench-identity-header";

/// `credbroker serve` flags besides the listeners: the AWS `Authorization` file, and the App
/// Service identity header (which enables `/msi/token`).
pub fn serve_flags(clouds: Clouds, aws_auth_file: &Path) -> Vec<String> {
    let mut flags = Vec::new();
    if clouds.aws {
        flags.push("--aws-auth-token-file".to_string());
        flags.push(aws_auth_file.display().to_string());
    }
    if clouds.azure {
        flags.push("--azure-identity-header".to_string());
        flags.push(AZURE_IDENTITY_HEADER.to_string());
    }
    flags
}

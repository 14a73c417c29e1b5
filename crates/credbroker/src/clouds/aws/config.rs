//! AWS configuration, from the variables the EKS pod-identity webhook injects (IRSA).

use std::path::PathBuf;

use reqwest::Url;

use super::Aws;
use crate::clouds::Cloud;
use crate::config::{ConfigError, Env};
use crate::http::client::endpoint;

#[derive(clap::Args, Debug, Clone)]
#[group(id = "aws_flags")]
pub struct Flags {
    /// File holding the value applications must send in `Authorization` to /v1/credentials.
    /// Created with a random value when missing. Required when AWS is enabled.
    #[arg(long, env = "CREDBROKER_AWS_AUTH_TOKEN_FILE", value_name = "PATH")]
    pub aws_auth_token_file: Option<PathBuf>,

    /// DurationSeconds asked of STS (900–43200; must not exceed the role's maximum).
    #[arg(long, env = "CREDBROKER_AWS_SESSION_DURATION", default_value_t = 3600,
          value_parser = clap::value_parser!(u32).range(900..=43200), value_name = "SECS")]
    pub aws_session_duration: u32,
}

impl Default for Flags {
    fn default() -> Self {
        Flags {
            aws_auth_token_file: None,
            aws_session_duration: 3600,
        }
    }
}

/// A parsed `arn:PARTITION:iam::ACCOUNT:role/PATH/NAME`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleArn {
    pub arn: String,
    pub partition: String,
    pub account: String,
    pub name: String,
}

impl RoleArn {
    pub fn parse(arn: &str) -> Result<Self, ConfigError> {
        let bad = |why: &str| {
            ConfigError::new(
                "AWS_ROLE_ARN",
                format!("{arn:?} is not an IAM role ARN: {why}"),
            )
        };
        let parts: Vec<&str> = arn.splitn(6, ':').collect();
        if parts.len() != 6 || parts[0] != "arn" || parts[2] != "iam" || !parts[3].is_empty() {
            return Err(bad("expected arn:aws:iam::ACCOUNT:role/NAME"));
        }
        if parts[4].len() != 12 || !parts[4].bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad("the account must be 12 digits"));
        }
        let resource = parts[5]
            .strip_prefix("role/")
            .ok_or_else(|| bad("the resource must start with role/"))?;
        let name = resource.rsplit('/').next().unwrap_or_default();
        if name.is_empty() || arn.len() < 20 || arn.len() > 2048 {
            return Err(bad("missing role name"));
        }
        Ok(RoleArn {
            arn: arn.to_string(),
            partition: parts[1].to_string(),
            account: parts[4].to_string(),
            name: name.to_string(),
        })
    }
}

#[derive(Debug, Clone)]
pub struct AwsConfig {
    pub role: RoleArn,
    pub token_file: PathBuf,
    pub session_name: String,
    pub region: Option<String>,
    pub sts_endpoint: Url,
    pub session_duration: u32,
    pub auth_token_file: PathBuf,
}

/// Regions botocore's `legacy` STS mode sends to the global endpoint.
const LEGACY_GLOBAL_REGIONS: &[&str] = &[
    "ap-northeast-1",
    "ap-south-1",
    "ap-southeast-1",
    "ap-southeast-2",
    "aws-global",
    "ca-central-1",
    "eu-central-1",
    "eu-north-1",
    "eu-west-1",
    "eu-west-2",
    "eu-west-3",
    "sa-east-1",
    "us-east-1",
    "us-east-2",
    "us-west-1",
    "us-west-2",
];

impl AwsConfig {
    /// `None` when AWS is not enabled (neither `AWS_ROLE_ARN` nor the token file is set).
    pub fn from_env(env: &Env, flags: &Flags) -> Result<Option<Self>, ConfigError> {
        let Some([role, file]) =
            env.all_or_none(Aws::TITLE, ["AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE"])?
        else {
            return Ok(None);
        };
        let (role, token_file) = (RoleArn::parse(role.trim())?, PathBuf::from(file));
        let session_name = match env.get("AWS_ROLE_SESSION_NAME") {
            Some(s) => s.to_string(),
            None => format!(
                "credbroker-{}",
                crate::clock::Clock::unix_secs(&crate::clock::SystemClock)
            ),
        };
        let valid_name = (2..=64).contains(&session_name.len())
            && session_name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_+=,.@-".contains(&b));
        if !valid_name {
            return Err(ConfigError::new(
                "AWS_ROLE_SESSION_NAME",
                format!("{session_name:?} must be 2-64 characters of [A-Za-z0-9_+=,.@-]"),
            ));
        }
        let region = env.region(&["AWS_REGION", "AWS_DEFAULT_REGION"])?;
        let sts_endpoint = sts_endpoint(env, region.as_deref())?;
        let auth_token_file = flags.aws_auth_token_file.clone().ok_or_else(|| {
            ConfigError::new(
                "--aws-auth-token-file",
                "is required when AWS is enabled (the file applications read via AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE; created if missing)",
            )
        })?;
        Ok(Some(AwsConfig {
            role,
            token_file,
            session_name,
            region,
            sts_endpoint,
            session_duration: flags.aws_session_duration,
            auth_token_file,
        }))
    }
}

fn sts_endpoint(env: &Env, region: Option<&str>) -> Result<Url, ConfigError> {
    for var in ["AWS_ENDPOINT_URL_STS", "AWS_ENDPOINT_URL"] {
        if let Some(url) = env.get(var) {
            return endpoint(var, url);
        }
    }
    let mode = env
        .get("AWS_STS_REGIONAL_ENDPOINTS")
        .map(|m| m.trim().to_ascii_lowercase());
    let legacy = match mode.as_deref() {
        None | Some("regional") => false,
        Some("legacy") => true,
        Some(other) => {
            return Err(ConfigError::new(
                "AWS_STS_REGIONAL_ENDPOINTS",
                format!("{other:?} must be \"regional\" or \"legacy\""),
            ));
        }
    };
    let url = match region {
        None => "https://sts.amazonaws.com/".to_string(),
        Some(r) if legacy && LEGACY_GLOBAL_REGIONS.contains(&r) => {
            "https://sts.amazonaws.com/".to_string()
        }
        Some(r) if r.starts_with("cn-") => format!("https://sts.{r}.amazonaws.com.cn/"),
        Some(r) => format!("https://sts.{r}.amazonaws.com/"),
    };
    endpoint("AWS_REGION", &url)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Env {
        let mut e = Env::from_pairs([
            (
                "AWS_ROLE_ARN",
                "arn:aws:iam::123456789012:role/path/app-role",
            ),
            (
                "AWS_WEB_IDENTITY_TOKEN_FILE",
                "/var/run/secrets/eks.amazonaws.com/serviceaccount/token",
            ),
        ]);
        for (k, v) in pairs {
            e.set(*k, *v);
        }
        e
    }

    fn flags() -> Flags {
        Flags {
            aws_auth_token_file: Some("/run/credbroker/aws-token".into()),
            aws_session_duration: 3600,
        }
    }

    fn load(pairs: &[(&str, &str)]) -> Result<AwsConfig, ConfigError> {
        AwsConfig::from_env(&env(pairs), &flags()).map(Option::unwrap)
    }

    #[test]
    fn disabled_without_variables() {
        assert!(
            AwsConfig::from_env(&Env::default(), &flags())
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn role_arn_parsing() {
        let c = load(&[]).unwrap();
        assert_eq!(c.role.account, "123456789012");
        assert_eq!(c.role.name, "app-role");
        assert_eq!(c.role.partition, "aws");
        for bad in [
            "arn:aws:iam::12345:role/x",
            "arn:aws:s3:::bucket",
            "role/x",
            "arn:aws:iam::123456789012:user/x",
        ] {
            let e = load(&[("AWS_ROLE_ARN", bad)]).unwrap_err();
            assert_eq!(e.subject, "AWS_ROLE_ARN", "{bad}");
        }
    }

    #[test]
    fn endpoints() {
        assert_eq!(
            load(&[]).unwrap().sts_endpoint.as_str(),
            "https://sts.amazonaws.com/"
        );
        assert_eq!(
            load(&[("AWS_REGION", "eu-west-1")])
                .unwrap()
                .sts_endpoint
                .as_str(),
            "https://sts.eu-west-1.amazonaws.com/"
        );
        assert_eq!(
            load(&[("AWS_DEFAULT_REGION", "eu-west-1")])
                .unwrap()
                .sts_endpoint
                .as_str(),
            "https://sts.eu-west-1.amazonaws.com/"
        );
        assert_eq!(
            load(&[
                ("AWS_REGION", "eu-west-1"),
                ("AWS_STS_REGIONAL_ENDPOINTS", "legacy")
            ])
            .unwrap()
            .sts_endpoint
            .as_str(),
            "https://sts.amazonaws.com/"
        );
        assert_eq!(
            load(&[
                ("AWS_REGION", "me-south-1"),
                ("AWS_STS_REGIONAL_ENDPOINTS", "legacy")
            ])
            .unwrap()
            .sts_endpoint
            .as_str(),
            "https://sts.me-south-1.amazonaws.com/"
        );
        assert_eq!(
            load(&[("AWS_REGION", "cn-north-1")])
                .unwrap()
                .sts_endpoint
                .as_str(),
            "https://sts.cn-north-1.amazonaws.com.cn/"
        );
        let c = load(&[
            ("AWS_REGION", "eu-west-1"),
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:4566"),
            ("AWS_ENDPOINT_URL_STS", "http://127.0.0.1:5000"),
        ])
        .unwrap();
        assert_eq!(c.sts_endpoint.as_str(), "http://127.0.0.1:5000/");
        let c = load(&[("AWS_ENDPOINT_URL", "http://127.0.0.1:4566")]).unwrap();
        assert_eq!(c.sts_endpoint.as_str(), "http://127.0.0.1:4566/");
        assert_eq!(
            load(&[("AWS_ENDPOINT_URL_STS", "http://sts.example.com")])
                .unwrap_err()
                .subject,
            "AWS_ENDPOINT_URL_STS"
        );
        assert_eq!(
            load(&[("AWS_STS_REGIONAL_ENDPOINTS", "sometimes")])
                .unwrap_err()
                .subject,
            "AWS_STS_REGIONAL_ENDPOINTS"
        );
    }

    #[test]
    fn half_configured_is_an_error() {
        let e = AwsConfig::from_env(
            &Env::from_pairs([("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/r")]),
            &flags(),
        )
        .unwrap_err();
        assert_eq!(e.subject, "AWS_WEB_IDENTITY_TOKEN_FILE");
        let e = AwsConfig::from_env(&env(&[]), &Flags::default()).unwrap_err();
        assert_eq!(e.subject, "--aws-auth-token-file");
    }

    #[test]
    fn session_names() {
        assert!(load(&[]).unwrap().session_name.starts_with("credbroker-"));
        assert_eq!(
            load(&[("AWS_ROLE_SESSION_NAME", "my.app@ns")])
                .unwrap()
                .session_name,
            "my.app@ns"
        );
        assert_eq!(
            load(&[("AWS_ROLE_SESSION_NAME", "has space")])
                .unwrap_err()
                .subject,
            "AWS_ROLE_SESSION_NAME"
        );
    }
}

//! AWS configuration, from the variables the EKS pod-identity webhook injects (IRSA).

use std::path::PathBuf;

use reqwest::Url;

use super::Aws;
use super::auth::AuthSource;
use super::identity::{self, Identity};
use crate::clouds::Cloud;
use crate::config::{ConfigError, Env};
use crate::http::client::endpoint;
use crate::secret::Secret;

#[derive(clap::Args, Debug, Clone)]
#[group(id = "aws_flags")]
pub struct Flags {
    /// File holding the value applications must send in `Authorization` to /v1/credentials
    /// (AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE). Created with a random value when missing, and
    /// followed when it changes; with --aws-auth-token, written with that value.
    #[arg(long, env = "CREDBROKER_AWS_AUTH_TOKEN_FILE", value_name = "PATH")]
    pub aws_auth_token_file: Option<PathBuf>,

    /// The value itself (AWS_CONTAINER_AUTHORIZATION_TOKEN), for SDKs that read only the
    /// literal: e.g. the pod's UID, given to both containers by the downward API. At least 16
    /// printable characters. Without this flag and --aws-auth-token-file, /v1/credentials is off
    /// and only IMDSv2 serves.
    #[arg(long, env = "CREDBROKER_AWS_AUTH_TOKEN", value_name = "VALUE",
          hide_env_values = true, value_parser = parse_auth_token)]
    pub aws_auth_token: Option<Secret>,

    /// Another role, assumed with the pod's web-identity token: NAME=ROLE_ARN, served at
    /// /v1/credentials/NAME and listed by IMDSv2 as NAME. Repeatable (the variable: a
    /// comma-separated list).
    #[arg(long, env = "CREDBROKER_AWS_ROLE", value_name = "NAME=ROLE_ARN",
          value_delimiter = ',', action = clap::ArgAction::Append)]
    pub aws_role: Vec<String>,

    /// A role reached by AssumeRole from identity BASE (`default` or another NAME): cross-account
    /// role chaining. Served the same way. Repeatable.
    #[arg(long, env = "CREDBROKER_AWS_CHAINED_ROLE", value_name = "NAME=ROLE_ARN@BASE",
          value_delimiter = ',', action = clap::ArgAction::Append)]
    pub aws_chained_role: Vec<String>,

    /// An identity's option: NAME:external-id=V, NAME:source-identity=V, NAME:tag=KEY=VALUE,
    /// NAME:transitive-tag=KEY (chained roles), NAME:duration=SECS (at most 3600 when chained).
    /// Repeatable.
    #[arg(long, env = "CREDBROKER_AWS_ROLE_OPTION", value_name = "NAME:OPTION=VALUE",
          value_delimiter = ',', action = clap::ArgAction::Append)]
    pub aws_role_option: Vec<String>,

    /// DurationSeconds asked of STS (900–43200; must not exceed the role's maximum).
    #[arg(long, env = "CREDBROKER_AWS_SESSION_DURATION", default_value_t = 3600,
          value_parser = clap::value_parser!(u32).range(900..=43200), value_name = "SECS")]
    pub aws_session_duration: u32,
}

impl Default for Flags {
    fn default() -> Self {
        Flags {
            aws_auth_token_file: None,
            aws_auth_token: None,
            aws_role: Vec::new(),
            aws_chained_role: Vec::new(),
            aws_role_option: Vec::new(),
            aws_session_duration: 3600,
        }
    }
}

/// The shared value must not be guessable: at least this many characters.
const MIN_AUTH_TOKEN_LEN: usize = 16;

fn parse_auth_token(value: &str) -> Result<Secret, String> {
    if value.len() < MIN_AUTH_TOKEN_LEN {
        return Err(format!(
            "must be at least {MIN_AUTH_TOKEN_LEN} characters (it is what guards /v1/credentials)"
        ));
    }
    if !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("must be printable ASCII without spaces (it is sent as a header)".into());
    }
    Ok(Secret::new(value))
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
    /// How applications authenticate to /v1/credentials (or that they cannot: IMDSv2 only).
    pub auth: AuthSource,
    /// The named identities besides the default role.
    pub identities: Vec<Identity>,
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
        // Pod names (the manifests' choice) may be longer than STS's 64: keep the first 64.
        let session_name: String = session_name.chars().take(64).collect();
        let valid_name = session_name.len() >= 2
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
        let auth = match (&flags.aws_auth_token, &flags.aws_auth_token_file) {
            (Some(value), file) => AuthSource::Value {
                value: value.clone(),
                file: file.clone(),
            },
            (None, Some(file)) => AuthSource::File(file.clone()),
            (None, None) => AuthSource::None,
        };
        let identities = identity::parse(
            &flags.aws_role,
            &flags.aws_chained_role,
            &flags.aws_role_option,
            &role,
        )?;
        Ok(Some(AwsConfig {
            identities,
            role,
            token_file,
            session_name,
            region,
            sts_endpoint,
            session_duration: flags.aws_session_duration,
            auth,
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
            ..Flags::default()
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
        // With only what the IRSA webhook injects, AWS is enabled for IMDSv2 alone.
        let c = AwsConfig::from_env(&env(&[]), &Flags::default())
            .unwrap()
            .unwrap();
        assert_eq!(c.auth, AuthSource::None);
    }

    #[test]
    fn long_pod_names_make_a_valid_session_name() {
        let name = "a".repeat(63) + "-x-y-z";
        let c = load(&[("AWS_ROLE_SESSION_NAME", &name)]).unwrap();
        assert_eq!(c.session_name.len(), 64);
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

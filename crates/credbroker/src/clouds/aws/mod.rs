//! AWS: STS `AssumeRoleWithWebIdentity` → container credentials and IMDSv2.

pub mod config;
pub mod sts;
pub mod surface;
pub mod xml;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub use config::{AwsConfig, Flags, RoleArn};
use sts::StsClient;
use surface::{AwsCredential, ContainerSurface, ImdsSessions, ImdsSurface};

use super::runtime::seconds_left;
use super::{AppEnv, Cloud, CloudConfig, Pinned, Runtime, Shared};
use crate::config::{ConfigError, Env};
use crate::exchange::{Exchange, ExchangeError, Fresh};
use crate::fs::{FileMode, Fs};
use crate::secret::Secret;
use crate::timefmt::format_rfc3339;

/// AWS, as the registry declares it.
pub struct Aws;

impl Cloud for Aws {
    const NAME: &'static str = "aws";
    const TITLE: &'static str = "AWS";
    const ENABLED_BY: &'static str = "AWS_ROLE_ARN and AWS_WEB_IDENTITY_TOKEN_FILE";
    /// botocore refreshes whenever less than 15 minutes remain (advisory) and blocks under 10
    /// (docs/aws.md, "Refresh windows").
    const SDK_WINDOW: Duration = Duration::from_secs(15 * 60);
    type Flags = Flags;
    type Config = AwsConfig;

    fn detect(env: &Env, flags: &Flags) -> Result<Option<AwsConfig>, ConfigError> {
        AwsConfig::from_env(env, flags)
    }
}

/// The AWS exchanger: one STS call, rendered for both surfaces.
struct AwsExchange {
    sts: StsClient,
    role: RoleArn,
    clock: Arc<dyn crate::clock::Clock>,
}

impl Exchange<String> for AwsExchange {
    type Credential = AwsCredential;

    async fn exchange(&self, _role: &String) -> Result<Fresh<AwsCredential>, ExchangeError> {
        let creds = self.sts.assume_role().await?;
        let expires_at = creds.expiration;
        Ok(Fresh {
            value: AwsCredential::render(creds, &self.role, self.clock.wall()),
            expires_at,
        })
    }
}

/// The shared value for `Authorization`: the file's content, or a new random one written there.
fn load_or_create_auth_token(
    fs: &dyn Fs,
    path: &Path,
    mode: FileMode,
) -> Result<Secret, ConfigError> {
    const SUBJECT: &str = "--aws-auth-token-file";
    match fs.read(path, 64 * 1024) {
        Ok(bytes) => {
            let value = String::from_utf8(bytes).map_err(|_| {
                ConfigError::new(SUBJECT, format!("{} is not UTF-8 text", path.display()))
            })?;
            if value.contains(['\r', '\n']) {
                return Err(ConfigError::new(
                    SUBJECT,
                    format!(
                        "{} contains a line break; SDKs reject such a token (write it without a newline)",
                        path.display()
                    ),
                ));
            }
            if value.trim().is_empty() {
                return Err(ConfigError::new(
                    SUBJECT,
                    format!("{} is empty", path.display()),
                ));
            }
            Ok(Secret::new(value))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let raw: [u8; 32] = rand::random();
            let value =
                base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, raw);
            fs.write_atomic(path, value.as_bytes(), mode).map_err(|e| {
                ConfigError::new(SUBJECT, format!("cannot write {}: {e}", path.display()))
            })?;
            Ok(Secret::new(value))
        }
        Err(e) => Err(ConfigError::new(
            SUBJECT,
            format!("cannot read {}: {}", path.display(), e.kind()),
        )),
    }
}

impl CloudConfig for AwsConfig {
    fn name(&self) -> &'static str {
        Aws::NAME
    }

    fn app_env(&self, listen: SocketAddr) -> AppEnv {
        let mut exports = vec![
            (
                "AWS_CONTAINER_CREDENTIALS_FULL_URI".to_string(),
                format!("http://{listen}/v1/credentials"),
            ),
            (
                "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE".to_string(),
                self.auth_token_file.display().to_string(),
            ),
            (
                "AWS_EC2_METADATA_SERVICE_ENDPOINT".to_string(),
                format!("http://{listen}/"),
            ),
        ];
        if let Some(region) = &self.region {
            exports.push(("AWS_REGION".into(), region.clone()));
            exports.push(("AWS_DEFAULT_REGION".into(), region.clone()));
        }
        AppEnv {
            cloud: Aws::NAME,
            exports,
            // Web identity and static keys come before the container provider in every SDK's chain.
            forbidden: vec![
                "AWS_ROLE_ARN",
                "AWS_WEB_IDENTITY_TOKEN_FILE",
                "AWS_ACCESS_KEY_ID",
                "AWS_SECRET_ACCESS_KEY",
                "AWS_SESSION_TOKEN",
                "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
            ],
            notes: vec![
                "JavaScript code calling the legacy fromContainerMetadata() directly needs AWS_CONTAINER_AUTHORIZATION_TOKEN set to the token file's content.".into(),
            ],
        }
    }

    fn try_it(&self, listen: SocketAddr) -> Vec<String> {
        let auth = self.auth_token_file.display();
        vec![
            format!("curl -s -H \"Authorization: $(cat {auth})\" http://{listen}/v1/credentials"),
            format!(
                "TOKEN=$(curl -s -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 60' http://{listen}/latest/api/token) && \
                 curl -s -H \"X-aws-ec2-metadata-token: $TOKEN\" http://{listen}/latest/meta-data/iam/security-credentials/{}",
                self.role.name
            ),
            format!(
                "# with boto3 installed: env -i PATH=\"$PATH\" AWS_CONTAINER_CREDENTIALS_FULL_URI=http://{listen}/v1/credentials \
                 AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE={auth} AWS_REGION={} python3 -c 'import boto3; print(boto3.Session().get_credentials().get_frozen_credentials().access_key)'",
                self.region.as_deref().unwrap_or("us-east-1")
            ),
        ]
    }

    fn start(self: Box<Self>, shared: &Shared) -> Result<Runtime, ConfigError> {
        let auth =
            load_or_create_auth_token(shared.env.fs(), &self.auth_token_file, shared.file_mode)?;
        let token = shared
            .tokens
            .get("AWS_WEB_IDENTITY_TOKEN_FILE", &self.token_file)?;
        let exchange = AwsExchange {
            sts: StsClient {
                http: shared.http.clone(),
                endpoint: self.sts_endpoint.clone(),
                role_arn: self.role.arn.clone(),
                session_name: self.session_name.clone(),
                duration_secs: self.session_duration,
                token: token.clone(),
                clock: shared.clock.clone(),
            },
            role: self.role.clone(),
            clock: shared.clock.clone(),
        };
        let cache = Aws::cache(shared, exchange, Some(&token)).build();
        let pinned = Pinned::new(
            self.role.arn.clone(),
            &cache,
            self.role.arn.clone(),
            |cred| {
                let sts = &cred.value.sts;
                let key = &sts.access_key_id;
                let shown = format!(
                    "{}…{}",
                    &key[..4.min(key.len())],
                    &key[key.len().saturating_sub(4)..]
                );
                format!(
                    "assumed {} (access key {shown}), expires {} (in {} s)",
                    sts.assumed_role_arn,
                    format_rfc3339(sts.expiration),
                    seconds_left(cred)
                )
            },
        );
        tracing::info!(
            role = %self.role.arn,
            endpoint = %self.sts_endpoint,
            session_duration_s = self.session_duration,
            "aws enabled"
        );
        Ok(Runtime::new(Aws::NAME)
            .surface(Arc::new(ContainerSurface {
                slot: pinned.slot().clone(),
                auth,
            }))
            .surface(Arc::new(ImdsSurface {
                slot: pinned.slot().clone(),
                role: self.role.clone(),
                region: self.region.clone(),
                sessions: ImdsSessions::new(shared.clock.clone()),
            }))
            .hold(pinned))
    }
}

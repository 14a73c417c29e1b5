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

use super::{AppEnv, CloudConfig, CloudRuntime, Shared};
use crate::config::ConfigError;
use crate::exchange::{Exchange, ExchangeError, Fresh};
use crate::fsutil::{FileMode, write_atomic};
use crate::refresh::{Cache, KeyLimits, Policy, Slot};
use crate::secret::Secret;
use crate::surface::Surface;
use crate::timefmt::format_rfc3339;

/// botocore refreshes whenever less than 15 minutes remain (advisory) and blocks under 10.
pub const SDK_WINDOW: Duration = Duration::from_secs(15 * 60);

pub fn policy() -> Policy {
    Policy::for_sdk_window(SDK_WINDOW)
}

/// The AWS exchanger: one STS call, rendered for both surfaces.
pub struct AwsExchange {
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

pub struct AwsRuntime {
    cache: Cache<String, AwsExchange>,
    slot: Arc<Slot<AwsCredential>>,
    surfaces: Vec<Arc<dyn Surface>>,
}

/// The shared value for `Authorization`: the file's content, or a new random one written there.
fn load_or_create_auth_token(path: &Path, mode: FileMode) -> Result<Secret, ConfigError> {
    const SUBJECT: &str = "--aws-auth-token-file";
    match std::fs::read(path) {
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
            write_atomic(path, value.as_bytes(), mode).map_err(|e| {
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
        "aws"
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
            // object_store (Rust; obstore, polars, delta-rs) reads IMDS only from this name and
            // appends "/latest/..." as is: no trailing slash (object_store 0.14.2 aws/credential.rs).
            (
                "AWS_METADATA_ENDPOINT".to_string(),
                format!("http://{listen}"),
            ),
        ];
        if let Some(region) = &self.region {
            exports.push(("AWS_REGION".into(), region.clone()));
            exports.push(("AWS_DEFAULT_REGION".into(), region.clone()));
        }
        AppEnv {
            cloud: "aws",
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

    fn start(self: Box<Self>, shared: &Shared) -> Result<Arc<dyn CloudRuntime>, ConfigError> {
        let auth = load_or_create_auth_token(&self.auth_token_file, shared.file_mode)?;
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
            },
            role: self.role.clone(),
            clock: shared.clock.clone(),
        };
        let cache = Cache::build(
            "aws",
            exchange,
            policy(),
            shared.clock.clone(),
            shared.metrics.clone(),
            Some(token.changes()),
            KeyLimits::default(),
        );
        let slot = cache.pin(self.role.arn.clone());
        let surfaces: Vec<Arc<dyn Surface>> = vec![
            Arc::new(ContainerSurface {
                slot: slot.clone(),
                auth,
            }),
            Arc::new(ImdsSurface {
                slot: slot.clone(),
                role: self.role.clone(),
                region: self.region.clone(),
                sessions: ImdsSessions::new(shared.clock.clone()),
            }),
        ];
        tracing::info!(
            role = %self.role.arn,
            endpoint = %self.sts_endpoint,
            session_duration_s = self.session_duration,
            "aws enabled"
        );
        Ok(Arc::new(AwsRuntime {
            cache,
            slot,
            surfaces,
        }))
    }
}

impl CloudRuntime for AwsRuntime {
    fn name(&self) -> &'static str {
        "aws"
    }

    fn surfaces(&self) -> Vec<Arc<dyn Surface>> {
        self.surfaces.clone()
    }

    fn readiness(&self) -> Result<(), String> {
        self.cache.readiness()
    }

    fn summary(&self) -> Result<String, String> {
        match self.slot.current() {
            Some(cred) => {
                let sts = &cred.value.sts;
                let key = &sts.access_key_id;
                let shown = format!(
                    "{}…{}",
                    &key[..4.min(key.len())],
                    &key[key.len().saturating_sub(4)..]
                );
                Ok(format!(
                    "assumed {} (access key {shown}), expires {} (in {} s)",
                    sts.assumed_role_arn,
                    format_rfc3339(sts.expiration),
                    cred.remaining(tokio::time::Instant::now()).as_secs()
                ))
            }
            None => Err(self.slot.readiness().err().unwrap_or_default()),
        }
    }
}

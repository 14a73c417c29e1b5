//! AWS: STS `AssumeRoleWithWebIdentity` → container credentials and IMDSv2.

pub mod auth;
pub mod config;
pub mod inject;
pub mod sts;
pub mod surface;
pub mod xml;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use auth::{AuthSource, AuthToken};
pub use config::{AwsConfig, Flags, RoleArn};
use sts::StsClient;
use surface::{AwsCredential, ContainerSurface, ImdsSessions, ImdsSurface};

use super::runtime::seconds_left;
use super::{AppEnv, Cloud, CloudConfig, Pinned, Runtime, Shared};
use crate::config::{ConfigError, Env};
use crate::exchange::{Exchange, ExchangeError, Fresh};
use crate::inject::part::{Account, PodPart, Refusal};
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

    const IDENTITY_ANNOTATION: &'static str = inject::ROLE_ARN;
    type InjectFlags = inject::InjectFlags;

    fn inject(sa: &Account, flags: &inject::InjectFlags) -> Result<Option<PodPart>, Refusal> {
        inject::part(sa, flags)
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

impl CloudConfig for AwsConfig {
    fn name(&self) -> &'static str {
        Aws::NAME
    }

    fn app_env(&self, listen: SocketAddr) -> AppEnv {
        let mut exports = Vec::new();
        let mut notes = Vec::new();
        match &self.auth {
            AuthSource::None => notes.push(
                "the container endpoint (/v1/credentials) is off: start credbroker with --aws-auth-token-file or --aws-auth-token to serve it; SDKs use IMDSv2 meanwhile".to_string(),
            ),
            source => {
                exports.push((
                    "AWS_CONTAINER_CREDENTIALS_FULL_URI".to_string(),
                    format!("http://{listen}/v1/credentials"),
                ));
                if let Some(file) = source.file() {
                    exports.push((
                        "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE".to_string(),
                        file.display().to_string(),
                    ));
                }
                match source {
                    // aws-sdk-go v1 before 1.47.11, minio-go, the AWS CLI v2 and botocore
                    // before 1.32 read only the literal (docs/conformance.md).
                    AuthSource::Value { value, .. } => exports.push((
                        "AWS_CONTAINER_AUTHORIZATION_TOKEN".to_string(),
                        value.expose().to_string(),
                    )),
                    _ => notes.push(
                        "SDKs that read only AWS_CONTAINER_AUTHORIZATION_TOKEN (aws-sdk-go v1 before 1.47.11, minio-go, the AWS CLI v2, botocore before 1.32, legacy fromContainerMetadata() in JavaScript) need it set to the token file's content, or the sidecar started with --aws-auth-token".into(),
                    ),
                }
            }
        }
        // No trailing slash (the contract): some SDKs append "/latest/..." as it is; the
        // listener serves "//latest/..." too, for configurations that kept one.
        exports.push((
            "AWS_EC2_METADATA_SERVICE_ENDPOINT".to_string(),
            format!("http://{listen}"),
        ));
        // object_store (Rust; obstore, polars, delta-rs) reads IMDS only from this name and
        // appends "/latest/..." as is (docs/conformance.md, object_store 0.14.2 aws/credential.rs).
        exports.push((
            "AWS_METADATA_ENDPOINT".to_string(),
            format!("http://{listen}"),
        ));
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
            notes,
        }
    }

    fn try_it(&self, listen: SocketAddr) -> Vec<String> {
        let auth = self
            .auth
            .file()
            .map(|f| f.display().to_string())
            .unwrap_or_else(|| "AUTH_TOKEN_FILE".into());
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
        // The web identity token first: without it nothing works, so its error comes first.
        let token = shared
            .tokens
            .get("AWS_WEB_IDENTITY_TOKEN_FILE", &self.token_file)?;
        let auth = AuthToken::start(&self.auth, shared.env.fs(), shared.file_mode)?;
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

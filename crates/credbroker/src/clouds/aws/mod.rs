//! AWS: STS `AssumeRoleWithWebIdentity` → container credentials and IMDSv2.

pub mod auth;
pub mod config;
pub mod identity;
pub mod inject;
pub mod sts;
pub mod surface;
pub mod xml;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use auth::{AuthSource, AuthToken};
pub use config::{AwsConfig, Flags, RoleArn};
use identity::{RoleOptions, Via};
use sts::{RoleRequest, StsApi, StsClient};
use surface::{AwsCredential, ContainerSurface, Identities, ImdsSessions, ImdsSurface};

use super::runtime::seconds_left;
use super::{AppEnv, Cloud, CloudConfig, IdentityEnv, Pinned, Runtime, Shared};
use crate::config::{ConfigError, Env};
use crate::exchange::{Exchange, ExchangeError, Fresh};
use crate::inject::part::{PodPart, Refusal, ServiceAccount};
use crate::refresh::{Cache, Issued, Slot, WeakCache};
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

    fn inject(
        sa: &ServiceAccount,
        flags: &inject::InjectFlags,
    ) -> Result<Option<PodPart>, Refusal> {
        inject::part(sa, flags)
    }
}

/// How one identity's credentials are obtained.
struct Plan {
    role: RoleArn,
    via: Via,
    options: RoleOptions,
    duration_secs: u32,
}

/// How long a chained role's exchange waits for its base's credentials (the base's own first
/// exchange may be in flight); inside the refresher's 30 s bound on one exchange.
const BASE_WAIT: Duration = Duration::from_secs(20);

/// The AWS exchanger: one STS call per identity (the default role's key is its ARN, the named
/// ones' their names), rendered for both surfaces. A chained identity signs `AssumeRole` with
/// its base's credentials, read from the same cache.
struct AwsExchange<S: StsApi = StsClient> {
    sts: S,
    session_name: String,
    plans: HashMap<String, Plan>,
    /// A chained identity's base, by cache key.
    bases: HashMap<String, String>,
    cache: OnceLock<WeakCache<String, AwsExchange<S>>>,
    clock: Arc<dyn crate::clock::Clock>,
}

impl<S: StsApi> Exchange<String> for AwsExchange<S> {
    type Credential = AwsCredential;

    async fn exchange(&self, key: &String) -> Result<Fresh<AwsCredential>, ExchangeError> {
        let plan = self.plans.get(key).ok_or_else(|| {
            ExchangeError::permanent("UnknownIdentity", format!("no AWS identity {key:?}"))
        })?;
        let request = RoleRequest {
            role_arn: &plan.role.arn,
            session_name: &self.session_name,
            duration_secs: plan.duration_secs,
        };
        let (creds, base) = match &plan.via {
            Via::WebIdentity => (self.sts.web_identity(request).await?, None),
            Via::Chained { base } => {
                let base_key = &self.bases[key];
                let cache = self
                    .cache
                    .get()
                    .and_then(WeakCache::upgrade)
                    .ok_or_else(|| ExchangeError::transient("ShuttingDown", "the cache is gone"))?;
                let held = cache.get(base_key, BASE_WAIT).await.map_err(|why| {
                    ExchangeError::transient(
                        "BaseUnavailable",
                        format!("its base identity {base:?} has no credential: {why}"),
                    )
                })?;
                let held = fresh_base(&cache, base_key, held).await;
                let creds = self
                    .sts
                    .chained(&held.value.sts, request, &plan.options)
                    .await?;
                (creds, Some(held.value.sts.access_key_id.clone()))
            }
        };
        let expires_at = creds.expiration;
        Ok(Fresh {
            value: AwsCredential::render(creds, &plan.role, self.clock.wall(), base),
            expires_at,
        })
    }
}

/// A base credential this far into its life is about to be refreshed anyway (the refresh point
/// is at half its life, jittered by ±10 %: `refresh::policy::Policy::refresh_at`).
const BASE_DUE_FRACTION: f64 = 0.4;

/// The base's credential to sign a chained call with: when the base is itself due for refresh,
/// it is refreshed first and the new session signs, so the chain is derived once per base
/// session. Otherwise a chain whose own refresh came just before its base's would be derived
/// twice (once from the old session, again by [`follow_base`] from the new one): measured at 1.33
/// chained calls per base session before this (`credbroker-bench identities`).
async fn fresh_base<S: StsApi>(
    cache: &crate::refresh::Cache<String, AwsExchange<S>>,
    base_key: &String,
    held: Arc<Issued<AwsCredential>>,
) -> Arc<Issued<AwsCredential>> {
    let life = held.expires_at.saturating_duration_since(held.issued_at);
    let used = tokio::time::Instant::now().saturating_duration_since(held.issued_at);
    if used < life.mul_f64(BASE_DUE_FRACTION) {
        return held;
    }
    let slot = cache.slot(base_key);
    let mut rx = slot.subscribe();
    // The base's own refresh may be under way already: then that one is waited for.
    slot.refresh_unless_in_flight();
    let old = held.value.sts.access_key_id.clone();
    let renewed = tokio::time::timeout(BASE_WAIT, async {
        loop {
            if rx.changed().await.is_err() {
                return None;
            }
            let state = rx.borrow_and_update();
            if state.in_flight {
                continue;
            }
            match &state.cred {
                Some(c) if c.value.sts.access_key_id != old => return Some(c.clone()),
                // The base's refresh failed: sign with the session held, still valid.
                _ if state.error.is_some() => return None,
                _ => {}
            }
        }
    })
    .await;
    renewed.ok().flatten().unwrap_or(held)
}

/// A redacted one-line description of a held AWS credential.
fn describe(cred: &Issued<AwsCredential>) -> String {
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
}

/// Re-derives a chained identity whenever its base's credential changes (a new session from
/// the base role), so the chain follows its base rather than waiting out its own lifetime.
async fn follow_base(
    base: Arc<Slot<AwsCredential>>,
    chained: std::sync::Weak<Slot<AwsCredential>>,
) {
    let mut rx = base.subscribe();
    while rx.changed().await.is_ok() {
        let Some(slot) = chained.upgrade() else {
            return;
        };
        // An exchange of the chain in flight may be signing with the new base already (it
        // refreshed the base first: `fresh_base`): decide once it has finished.
        let mut chain = slot.subscribe();
        while chain.borrow_and_update().in_flight {
            if chain.changed().await.is_err() {
                return;
            }
        }
        let now = base.current().map(|c| c.value.sts.access_key_id.clone());
        let derived_from = slot.current().and_then(|c| c.value.base_key_id.clone());
        if now.is_some() && derived_from.is_some() && now != derived_from {
            tracing::info!("aws: a chained identity's base changed; re-deriving it");
            slot.refresh_now();
        }
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
        let identities = self
            .identities
            .iter()
            .filter(|_| !matches!(self.auth, AuthSource::None))
            .map(|id| IdentityEnv {
                name: id.name.clone(),
                exports: vec![(
                    "AWS_CONTAINER_CREDENTIALS_FULL_URI".to_string(),
                    format!("http://{listen}/v1/credentials/{}", id.name),
                )],
                how: format!(
                    "role {} — a container that uses it sets, instead of the default:",
                    id.role.arn
                ),
            })
            .collect();
        AppEnv {
            cloud: Aws::NAME,
            identities,
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
        let sts = StsClient {
            http: shared.http.clone(),
            endpoint: self.sts_endpoint.clone(),
            signing_region: self.region.clone().unwrap_or_else(|| "us-east-1".into()),
            token: token.clone(),
            clock: shared.clock.clone(),
        };
        tracing::info!(
            role = %self.role.arn,
            identities = ?self.identities.iter().map(|i| i.name.as_str()).collect::<Vec<_>>(),
            endpoint = %self.sts_endpoint,
            session_duration_s = self.session_duration,
            "aws enabled"
        );
        let sessions = ImdsSessions::new(shared.clock.clone());
        Ok(self.runtime(
            sts,
            |exchange| Aws::cache(shared, exchange, Some(&token)).build(),
            shared.clock.clone(),
            auth,
            sessions,
        ))
    }
}

impl AwsConfig {
    /// The running identities over `sts`: one cache (`build` gives it its clock, metrics and
    /// token changes), a pinned slot per identity, the chains following their bases, both
    /// surfaces.
    fn runtime<S: StsApi>(
        &self,
        sts: S,
        build: impl FnOnce(AwsExchange<S>) -> Cache<String, AwsExchange<S>>,
        clock: Arc<dyn crate::clock::Clock>,
        auth: Option<Arc<AuthToken>>,
        sessions: ImdsSessions,
    ) -> Runtime {
        let default_key = self.role.arn.clone();
        let key_of = |name: &str| {
            if name == identity::DEFAULT {
                default_key.clone()
            } else {
                name.to_string()
            }
        };
        let mut plans = HashMap::from([(
            default_key.clone(),
            Plan {
                role: self.role.clone(),
                via: Via::WebIdentity,
                options: RoleOptions::default(),
                duration_secs: self.session_duration,
            },
        )]);
        let mut bases = HashMap::new();
        for id in &self.identities {
            if let Via::Chained { base } = &id.via {
                bases.insert(id.name.clone(), key_of(base));
            }
            let cap = match id.via {
                Via::Chained { .. } => identity::CHAINED_MAX_SECS,
                Via::WebIdentity => u32::MAX,
            };
            plans.insert(
                id.name.clone(),
                Plan {
                    role: id.role.clone(),
                    via: id.via.clone(),
                    options: id.options.clone(),
                    duration_secs: id
                        .options
                        .duration
                        .unwrap_or(self.session_duration)
                        .min(cap),
                },
            );
        }
        let exchange = AwsExchange {
            sts,
            session_name: self.session_name.clone(),
            plans,
            bases: bases.clone(),
            cache: OnceLock::new(),
            clock,
        };
        let cache = build(exchange);
        let _ = cache.exchanger().cache.set(cache.downgrade());
        let default = Pinned::new(default_key.clone(), &cache, default_key.clone(), describe);
        let mut named = BTreeMap::new();
        let mut runtime = Runtime::new(Aws::NAME);
        let mut pins = Vec::new();
        for id in &self.identities {
            let pinned = Pinned::new(id.name.clone(), &cache, id.name.clone(), describe);
            named.insert(id.name.clone(), pinned.slot().clone());
            pins.push(pinned);
        }
        for (name, base_key) in &bases {
            let base = if *base_key == default_key {
                default.slot().clone()
            } else {
                named[base_key].clone()
            };
            let task = tokio::spawn(follow_base(base, Arc::downgrade(&named[name])));
            runtime = runtime.task(task.abort_handle());
        }
        let identities = Arc::new(Identities {
            default: default.slot().clone(),
            default_role: self.role.clone(),
            named,
        });
        runtime = runtime
            .surface(Arc::new(ContainerSurface {
                identities: identities.clone(),
                auth,
            }))
            .surface(Arc::new(ImdsSurface {
                identities,
                region: self.region.clone(),
                sessions,
            }))
            .hold(default);
        for pinned in pins {
            runtime = runtime.hold(pinned);
        }
        runtime
    }
}

#[cfg(test)]
mod tests;

//! GCP: workload identity federation (STS, then IAM Credentials when a service account is
//! impersonated) → a GCE-compatible metadata server.

pub mod config;
pub mod inject;
pub mod keys;
pub mod sts;
pub mod surface;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub use config::{Flags, GcpConfig};
pub use keys::{AccessKey, Account, Federated, IdFor, IdFormat, IdKey, ScopeSet};
use sts::{AccessToken, CLOUD_PLATFORM, GoogleClient, SubjectSource};
use surface::{MetadataSurface, MetadataTree};

use super::runtime::seconds_left;
use super::{AppEnv, Cloud, CloudConfig, IdentityEnv, Pinned, Runtime, Shared};
use crate::clock::Clock;
use crate::config::{ConfigError, Env};
use crate::exchange::{Exchange, ExchangeError, Fresh};
use crate::inject::part::{PodPart, Refusal, ServiceAccount};
use crate::refresh::{Cache, KeyLimits, Policy, Unavailable};
use crate::secret::Secret;
use crate::timefmt::format_rfc3339;

/// GCP, as the registry declares it.
pub struct Gcp;

impl Cloud for Gcp {
    const NAME: &'static str = "gcp";
    const TITLE: &'static str = "GCP";
    const ENABLED_BY: &'static str =
        "GOOGLE_APPLICATION_CREDENTIALS naming an external_account file";
    /// Node's google-auth-library refreshes 5 min before expiry (Python and Java 3m45s, Go
    /// 225 s), and GCE's own metadata server hands out a cached token until 5 min remain
    /// (docs/gcp.md, "Refresh windows").
    const SDK_WINDOW: Duration = Duration::from_secs(5 * 60);
    type Flags = Flags;
    type Config = GcpConfig;

    fn detect(env: &Env, flags: &Flags) -> Result<Option<GcpConfig>, ConfigError> {
        GcpConfig::from_env(env, flags)
    }

    const IDENTITY_ANNOTATION: &'static str = inject::SERVICE_ACCOUNT;
    type InjectFlags = inject::InjectFlags;

    fn inject(
        sa: &ServiceAccount,
        flags: &inject::InjectFlags,
    ) -> Result<Option<PodPart>, Refusal> {
        inject::part(sa, flags)
    }
}

/// How long a Google ID token is reused. Go assumes an ID token from the metadata server is
/// valid for 1 h *from fetch* and refreshes it 5 min early, so a token we hand out must be
/// young: at most this old (2–3 min: docs/gcp.md, "Refresh windows").
pub const ID_TOKEN_REUSE: Duration = Duration::from_secs(3 * 60);

/// ID tokens are given an effective lifetime of [`ID_TOKEN_REUSE`]; with no SDK window the
/// policy refreshes them at about half of it while they are in use.
pub fn id_policy() -> Policy {
    Policy::for_sdk_window(Duration::ZERO)
}

/// ID-token audiences are caller-chosen; bound how many are kept warm and for how long.
const ID_LIMITS: KeyLimits = KeyLimits {
    max_keys: 64,
    idle_ttl: Duration::from_secs(10 * 60),
};

// === exchangers ===

/// The service accounts impersonated: the default one (when the configuration impersonates)
/// and the others (`--gcp-service-account`).
#[derive(Debug, Clone, Default)]
pub struct Impersonations {
    pub default: Option<config::Impersonation>,
    pub others: HashMap<Arc<str>, config::Impersonation>,
}

impl Impersonations {
    fn of(&self, account: &Account) -> Option<&config::Impersonation> {
        match account {
            Account::Default => self.default.as_ref(),
            Account::Other(email) => self.others.get(email),
        }
    }
}

/// How long an impersonation waits for the shared federated token (its first exchange may be
/// in flight); inside the refresher's 30 s bound on one exchange.
const FEDERATED_WAIT: Duration = Duration::from_secs(20);

/// The federated token: STS with `cloud-platform`, once, shared by every impersonation.
pub struct FederatedExchange {
    pub client: Arc<GoogleClient>,
}

impl Exchange<Federated> for FederatedExchange {
    type Credential = AccessToken;

    async fn exchange(&self, _: &Federated) -> Result<Fresh<AccessToken>, ExchangeError> {
        let token = self.client.exchange(&[CLOUD_PLATFORM.to_string()]).await?;
        Ok(Fresh {
            expires_at: token.expires_at,
            value: token,
        })
    }
}

/// The shared federated token from its cache.
async fn federated(
    cache: &Cache<Federated, FederatedExchange>,
) -> Result<Arc<crate::refresh::Issued<AccessToken>>, ExchangeError> {
    cache
        .get(&Federated, FEDERATED_WAIT)
        .await
        .map_err(|why| match why {
            Unavailable::Failed(e) => e,
            other => ExchangeError::transient("FederatedTokenUnavailable", other.to_string()),
        })
}

/// Access tokens for an (account, scope set): STS alone for the default account in direct
/// federation; else the shared federated token, then `generateAccessToken` with the caller's
/// scopes (impersonation, AIP-4117).
pub struct AccessExchange {
    pub client: Arc<GoogleClient>,
    pub federated: Option<Cache<Federated, FederatedExchange>>,
    pub impersonations: Arc<Impersonations>,
}

impl Exchange<AccessKey> for AccessExchange {
    type Credential = AccessToken;

    async fn exchange(&self, key: &AccessKey) -> Result<Fresh<AccessToken>, ExchangeError> {
        let scopes = key.scopes.as_slice();
        let token = match (self.impersonations.of(&key.account), &self.federated) {
            (Some(imp), Some(fed)) => {
                let held = federated(fed).await?;
                self.client
                    .generate_access_token(
                        &imp.access_token_url,
                        &held.value,
                        scopes,
                        imp.lifetime_secs,
                    )
                    .await?
            }
            (None, _) if key.account == Account::Default => self.client.exchange(scopes).await?,
            _ => {
                return Err(ExchangeError::permanent(
                    "UnknownServiceAccount",
                    format!("no service account {}", key),
                ));
            }
        };
        Ok(Fresh {
            expires_at: token.expires_at,
            value: token,
        })
    }
}

/// ID tokens for an (account, audience, format): the shared federated token, then
/// `generateIdToken` for that account.
pub struct IdExchange {
    pub client: Arc<GoogleClient>,
    pub federated: Cache<Federated, FederatedExchange>,
    pub impersonations: Arc<Impersonations>,
    pub clock: Arc<dyn Clock>,
}

impl Exchange<IdFor> for IdExchange {
    type Credential = Secret;

    async fn exchange(&self, key: &IdFor) -> Result<Fresh<Secret>, ExchangeError> {
        let imp = self.impersonations.of(&key.account).ok_or_else(|| {
            ExchangeError::permanent(
                "UnknownServiceAccount",
                format!("no service account for {key}"),
            )
        })?;
        let held = federated(&self.federated).await?;
        let token = self
            .client
            .generate_id_token(
                &imp.id_token_url,
                &held.value,
                &key.id.audience,
                key.id.format == IdFormat::Full,
            )
            .await?;
        let reuse_until = self.clock.wall() + ID_TOKEN_REUSE;
        let exp = crate::token::jwt::decode_claims(token.expose())
            .ok()
            .and_then(|c| c.exp)
            .map(crate::clock::from_unix);
        Ok(Fresh {
            value: token,
            expires_at: exp.map_or(reuse_until, |e| e.min(reuse_until)),
        })
    }
}

// === wiring ===

impl CloudConfig for GcpConfig {
    fn name(&self) -> &'static str {
        Gcp::NAME
    }

    fn app_env(&self, listen: SocketAddr) -> AppEnv {
        let host = listen.to_string();
        let identities = self
            .others
            .iter()
            .map(|i| IdentityEnv {
                name: i.email.clone(),
                exports: Vec::new(),
                how: format!(
                    "select it in code, e.g. compute_engine.Credentials(service_account_email=\"{}\") (Python), or at instance/service-accounts/{}/",
                    i.email, i.email
                ),
            })
            .collect();
        AppEnv {
            identities,
            cloud: Gcp::NAME,
            exports: vec![
                ("GCE_METADATA_HOST".into(), host.clone()),
                // Python pings this one; node uses it for every call.
                ("GCE_METADATA_IP".into(), host.clone()),
                // The legacy name older Python and gcloud read.
                ("GCE_METADATA_ROOT".into(), host),
            ],
            // Each makes SDKs skip or bypass the metadata server
            // (docs/gcp.md, "Metadata server detection" and "external_account file").
            forbidden: vec![
                "GOOGLE_APPLICATION_CREDENTIALS",
                "CLOUDSDK_AUTH_CREDENTIAL_FILE_OVERRIDE",
                "CLOUDSDK_AUTH_ACCESS_TOKEN_FILE",
                "CLOUDSDK_AUTH_ACCESS_TOKEN",
                "NO_GCE_CHECK",
                "METADATA_SERVER_DETECTION",
            ],
            notes: vec![
                format!(
                    "tools that resolve metadata.google.internal instead of reading GCE_METADATA_HOST (gcloud, DNS-based detection) need a pod hostAliases entry {{ip: \"127.0.0.1\", hostnames: [\"metadata.google.internal\"]}}, and reach the sidecar only if it listens on port 80 (--listen 127.0.0.1:80; now {listen})"
                ),
                "the sidecar, not the application, mounts the external_account file and the projected token".into(),
            ],
        }
    }

    fn try_it(&self, listen: SocketAddr) -> Vec<String> {
        vec![
            format!(
                "curl -s -H 'Metadata-Flavor: Google' http://{listen}/computeMetadata/v1/instance/service-accounts/default/token"
            ),
            format!(
                "# with google-auth installed: env -i PATH=\"$PATH\" GCE_METADATA_HOST={listen} GCE_METADATA_IP={listen} \
                 python3 -c 'import google.auth, google.auth.transport.requests as r; c, p = google.auth.default(); c.refresh(r.Request()); print(p, c.token[:12])'"
            ),
        ]
    }

    fn start(self: Box<Self>, shared: &Shared) -> Result<Runtime, ConfigError> {
        const SUBJECT: &str = "GOOGLE_APPLICATION_CREDENTIALS: credential_source.file";
        let (subject, watched) = match &self.token_format {
            config::SubjectFormat::Text => {
                let token = shared.tokens.get(SUBJECT, &self.token_file)?;
                (SubjectSource::Watched(token.clone()), Some(token))
            }
            config::SubjectFormat::Json { field } => {
                shared.env.readable_file(SUBJECT, &self.token_file)?;
                (
                    SubjectSource::JsonFile {
                        path: self.token_file.clone(),
                        field: field.clone(),
                    },
                    None,
                )
            }
        };
        let client = Arc::new(GoogleClient {
            http: shared.http.clone(),
            token_url: self.token_url.clone(),
            audience: self.audience.clone(),
            subject_token_type: self.subject_token_type.clone(),
            subject,
            client_auth: self.client_auth.clone(),
            clock: shared.clock.clone(),
        });
        let impersonations = Arc::new(Impersonations {
            default: self.impersonation.clone(),
            others: self
                .others
                .iter()
                .map(|i| (Arc::<str>::from(i.email.as_str()), i.clone()))
                .collect(),
        });
        let impersonating = impersonations.default.is_some() || !self.others.is_empty();
        // One STS exchange, shared by every impersonation.
        let federated = impersonating.then(|| {
            Gcp::cache(
                shared,
                FederatedExchange {
                    client: client.clone(),
                },
                watched.as_deref(),
            )
            .build()
        });
        let access = Gcp::cache(
            shared,
            AccessExchange {
                client: client.clone(),
                federated: federated.clone(),
                impersonations: impersonations.clone(),
            },
            watched.as_deref(),
        )
        .build();
        let default_scopes = ScopeSet::default_set();
        let ids = federated.clone().map(|federated| {
            Gcp::cache(
                shared,
                IdExchange {
                    client: client.clone(),
                    federated,
                    impersonations: impersonations.clone(),
                    clock: shared.clock.clone(),
                },
                watched.as_deref(),
            )
            .policy(id_policy())
            .limits(ID_LIMITS)
            .build()
        });
        let email = self.email();
        let tree = MetadataTree::build(&self, &email, &default_scopes);
        let others: Vec<Arc<str>> = impersonations.others.keys().cloned().collect();
        let default = AccessKey::new(Account::Default, default_scopes.clone());
        let surface = MetadataSurface {
            access: access.clone(),
            default_scopes: default_scopes.clone(),
            default_slot: access.pin(default.clone()),
            ids,
            default_impersonated: self.impersonation.is_some(),
            tree,
            email: email.clone(),
            others: others.clone(),
            ksa: watched,
            token_bodies: Default::default(),
        };
        let identity = match &self.impersonation {
            Some(i) => format!("impersonating {}", i.email),
            None => format!(
                "direct federation through {}/{}",
                self.provider.pool, self.provider.provider
            ),
        };
        tracing::info!(
            audience = %self.audience,
            token_url = %self.token_url,
            service_account = self.impersonation.as_ref().map(|i| i.email.as_str()),
            other_service_accounts = ?others,
            project_id = self.project_id.as_deref(),
            "gcp enabled"
        );
        let scopes = default_scopes.to_string();
        let mut runtime = Runtime::new(Gcp::NAME)
            .surface(Arc::new(surface))
            .hold(Pinned::new(
                default.to_string(),
                &access,
                default,
                move |cred| {
                    format!(
                        "{identity}: access token for {scopes} expires {} (in {} s)",
                        format_rfc3339(cred.expires_wall),
                        seconds_left(cred)
                    )
                },
            ));
        for email in others {
            let key = AccessKey::new(Account::Other(email.clone()), default_scopes.clone());
            runtime = runtime.hold(Pinned::new(key.to_string(), &access, key, move |cred| {
                format!(
                    "impersonating {email}: access token expires {} (in {} s)",
                    format_rfc3339(cred.expires_wall),
                    seconds_left(cred)
                )
            }));
        }
        Ok(runtime)
    }
}

#[cfg(test)]
mod tests;

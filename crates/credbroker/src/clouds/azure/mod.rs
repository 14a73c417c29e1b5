//! Azure: Entra ID client-assertion exchange → the IMDS managed-identity endpoint and the App
//! Service 2019-08-01 endpoint.
//!
//! One [`Cache`] keyed by scope: the tenant and client id are fixed for the process (one
//! identity per sidecar), so the scope alone identifies a token. The `--azure-resources` are
//! pinned (kept warm, counted by `/readyz/azure`); other resources get a slot on first request.

pub mod config;
pub mod entra;
pub mod inject;
pub mod surface;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

pub use config::{AzureConfig, Flags, Identity, scope_for};
use entra::EntraClient;
pub use surface::AzureToken;
use surface::{AppServiceSurface, ImdsSurface, Tokens};

use super::runtime::seconds_left;
use super::{AppEnv, Cloud, CloudConfig, IdentityEnv, Pinned, Runtime, Shared};
use crate::config::{ConfigError, Env};
use crate::exchange::{Exchange, ExchangeError, Fresh};
use crate::inject::part::{PodPart, Refusal, ServiceAccount};
use crate::timefmt::format_rfc3339;

/// Azure, as the registry declares it.
pub struct Azure;

impl Cloud for Azure {
    const NAME: &'static str = "azure";
    const TITLE: &'static str = "Azure";
    const ENABLED_BY: &'static str =
        "AZURE_CLIENT_ID, AZURE_TENANT_ID and AZURE_FEDERATED_TOKEN_FILE";
    /// azure-identity refreshes when less than 5 minutes remain (`DEFAULT_REFRESH_OFFSET = 300`);
    /// MSAL at half-life for long tokens (docs/azure.md, "Refresh windows"). The policy refreshes
    /// at half-life and no later than expiry − 5 min − margin, so SDKs never see a token inside
    /// their window.
    const SDK_WINDOW: Duration = Duration::from_secs(5 * 60);
    type Flags = Flags;
    type Config = AzureConfig;

    fn detect(env: &Env, flags: &Flags) -> Result<Option<AzureConfig>, ConfigError> {
        AzureConfig::from_env(env, flags)
    }

    const IDENTITY_ANNOTATION: &'static str = inject::CLIENT_ID;
    type InjectFlags = inject::InjectFlags;

    fn inject(
        sa: &ServiceAccount,
        flags: &inject::InjectFlags,
    ) -> Result<Option<PodPart>, Refusal> {
        inject::part(sa, flags)
    }
}

/// A token's cache key: which managed identity, for which scope. The default identity's keys
/// read as the bare scope in `/readyz` and metrics, as they did with one identity.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AzureKey {
    pub client_id: Arc<str>,
    pub scope: Arc<str>,
    pub default: bool,
}

impl std::fmt::Display for AzureKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.default {
            f.write_str(&self.scope)
        } else {
            write!(f, "{} {}", self.client_id, self.scope)
        }
    }
}

/// The Azure exchanger: one Entra request per (identity, scope), each identity its own
/// client id asserting the same federated token.
pub struct AzureExchange {
    clients: HashMap<Arc<str>, EntraClient>,
}

fn unix(t: std::time::SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Exchange<AzureKey> for AzureExchange {
    type Credential = AzureToken;

    async fn exchange(&self, key: &AzureKey) -> Result<Fresh<AzureToken>, ExchangeError> {
        let entra = self.clients.get(&key.client_id).ok_or_else(|| {
            ExchangeError::permanent("UnknownIdentity", format!("no identity {}", key.client_id))
        })?;
        let t = entra.token(&key.scope).await?;
        Ok(Fresh {
            expires_at: t.expires_on,
            value: AzureToken::new(t.access_token, unix(t.expires_on), unix(t.not_before)),
        })
    }
}

/// Variables that make an SDK bypass the sidecar when present in the application container.
/// DefaultAzureCredential tries EnvironmentCredential and WorkloadIdentityCredential before
/// ManagedIdentityCredential, and Python's ManagedIdentityCredential itself prefers workload
/// identity over IMDS (docs/azure.md, "Credential precedence").
const FORBIDDEN_IN_APP: &[&str] = &[
    "AZURE_CLIENT_ID",
    "AZURE_TENANT_ID",
    "AZURE_FEDERATED_TOKEN_FILE",
    "AZURE_CLIENT_SECRET",
    "AZURE_CLIENT_CERTIFICATE_PATH",
    "IDENTITY_SERVER_THUMBPRINT",
    "IMDS_ENDPOINT",
    "MSI_ENDPOINT",
    "MSI_SECRET",
];

impl CloudConfig for AzureConfig {
    fn name(&self) -> &'static str {
        Azure::NAME
    }

    fn app_env(&self, listen: SocketAddr) -> AppEnv {
        let mut exports = vec![
            (
                "AZURE_POD_IDENTITY_AUTHORITY_HOST".to_string(),
                format!("http://{listen}"),
            ),
            // object_store (Rust; obstore, polars, delta-rs) reads neither of the others: its one
            // managed-identity URL is IDENTITY_ENDPOINT, else this, else 169.254.169.254
            // (object_store 0.14.2 src/azure/builder.rs from_env, src/azure/credential.rs).
            (
                "AZURE_MSI_ENDPOINT".to_string(),
                format!("http://{listen}/metadata/identity/oauth2/token"),
            ),
        ];
        let mut notes = vec![
            "AZURE_CLIENT_ID, AZURE_TENANT_ID and AZURE_FEDERATED_TOKEN_FILE belong to the sidecar only: with them in the application container, DefaultAzureCredential (and Python's ManagedIdentityCredential) use workload identity directly and bypass the sidecar. With the Azure Workload Identity webhook, annotate the pod azure.workload.identity/skip-containers: <app container>.".to_string(),
        ];
        match &self.identity_header {
            Some(header) => {
                exports.push((
                    "IDENTITY_ENDPOINT".to_string(),
                    format!("http://{listen}/msi/token"),
                ));
                exports.push(("IDENTITY_HEADER".to_string(), header.expose().to_string()));
            }
            None => notes.push(
                "Go SDKs ignore AZURE_POD_IDENTITY_AUTHORITY_HOST; start credbroker with --azure-identity-header to enable IDENTITY_ENDPOINT/IDENTITY_HEADER (the App Service endpoint) for them.".to_string(),
            ),
        }
        let identities = self
            .others
            .iter()
            .map(|id| {
                let mut by = vec![format!("client_id={}", id.client_id)];
                by.extend(id.object_id.iter().map(|o| format!("object_id={o}")));
                by.extend(id.msi_res_id.iter().map(|r| format!("msi_res_id={r}")));
                IdentityEnv {
                    name: id.client_id.to_string(),
                    exports: Vec::new(),
                    how: format!(
                        "select it in code, e.g. ManagedIdentityCredential(client_id=\"{}\"), or by {} on either endpoint",
                        id.client_id,
                        by.join(" or ")
                    ),
                }
            })
            .collect();
        AppEnv {
            cloud: Azure::NAME,
            identities,
            exports,
            forbidden: FORBIDDEN_IN_APP.to_vec(),
            notes,
        }
    }

    fn try_it(&self, listen: SocketAddr) -> Vec<String> {
        let mut lines = vec![format!(
            "curl -s -H 'Metadata: true' 'http://{listen}/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://management.azure.com/'"
        )];
        if let Some(header) = &self.identity_header {
            lines.push(format!(
                "curl -s -H 'X-IDENTITY-HEADER: {}' 'http://{listen}/msi/token?api-version=2019-08-01&resource=https://vault.azure.net'",
                header.expose()
            ));
        }
        lines.push(format!(
            "# with azure-identity installed: env -i PATH=\"$PATH\" AZURE_POD_IDENTITY_AUTHORITY_HOST=http://{listen} python3 -c \
             'from azure.identity import ManagedIdentityCredential as M; print(M().get_token(\"https://management.azure.com/.default\").expires_on)'"
        ));
        lines
    }

    fn start(self: Box<Self>, shared: &Shared) -> Result<Runtime, ConfigError> {
        let token = shared
            .tokens
            .get("AZURE_FEDERATED_TOKEN_FILE", &self.token_file)?;
        let identities: Vec<Identity> = std::iter::once(self.identity.clone())
            .chain(self.others.iter().cloned())
            .collect();
        let clients = identities
            .iter()
            .map(|id| {
                let client = EntraClient {
                    http: shared.http.clone(),
                    token_url: self.token_url.clone(),
                    client_id: id.client_id.to_string(),
                    token: token.clone(),
                    clock: shared.clock.clone(),
                };
                (id.client_id.clone(), client)
            })
            .collect();
        let cache = Azure::cache(shared, AzureExchange { clients }, Some(&token)).build();
        let tokens = Arc::new(Tokens::new(
            cache.clone(),
            identities.clone(),
            shared.clock.clone(),
        ));
        tracing::info!(
            client_id = %self.identity.client_id,
            other_identities = ?self.others.iter().map(|i| &*i.client_id).collect::<Vec<_>>(),
            tenant_id = %self.identity.tenant_id,
            token_url = %self.token_url,
            resources = ?self.resources,
            app_service_endpoint = self.identity_header.is_some(),
            "azure enabled"
        );
        let mut runtime = Runtime::new(Azure::NAME)
            .who(format!(
                "client {} in tenant {}",
                identities
                    .iter()
                    .map(|i| &*i.client_id)
                    .collect::<Vec<_>>()
                    .join(", "),
                self.identity.tenant_id
            ))
            .surface(Arc::new(ImdsSurface {
                tokens: tokens.clone(),
            }))
            .surface(Arc::new(AppServiceSurface {
                tokens,
                header: self.identity_header.clone(),
            }));
        for (i, id) in identities.iter().enumerate() {
            for resource in &self.resources {
                let key = AzureKey {
                    client_id: id.client_id.clone(),
                    scope: scope_for(resource).into(),
                    default: i == 0,
                };
                let label = match i {
                    0 => resource.clone(),
                    _ => format!("{} {resource}", id.client_id),
                };
                runtime = runtime.hold(Pinned::new(key.to_string(), &cache, key, move |cred| {
                    format!(
                        "{label}: token of {} chars, expires {} (in {} s)",
                        cred.value.access_token.len(),
                        format_rfc3339(cred.expires_wall),
                        seconds_left(cred)
                    )
                }));
            }
        }
        Ok(runtime)
    }
}

#[cfg(test)]
mod tests;

//! Azure: Entra ID client-assertion exchange → the IMDS managed-identity endpoint and the App
//! Service 2019-08-01 endpoint.
//!
//! One [`Cache`] keyed by scope: the tenant and client id are fixed for the process (one
//! identity per sidecar), so the scope alone identifies a token. The `--azure-resources` are
//! pinned (kept warm, counted by `/readyz/azure`); other resources get a slot on first request.

pub mod config;
pub mod entra;
pub mod surface;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

pub use config::{AzureConfig, Flags, Identity, scope_for};
use entra::EntraClient;
pub use surface::AzureToken;
use surface::{AppServiceSurface, ImdsSurface, Tokens};

use super::{AppEnv, CloudConfig, CloudRuntime, Shared};
use crate::config::ConfigError;
use crate::exchange::{Exchange, ExchangeError, Fresh};
use crate::refresh::{Cache, KeyLimits, Policy, Slot};
use crate::surface::Surface;
use crate::timefmt::format_rfc3339;

/// azure-identity refreshes when less than 5 minutes remain (`DEFAULT_REFRESH_OFFSET = 300`);
/// MSAL at half-life for long tokens. The policy refreshes at half-life and no later than
/// expiry − 5 min − margin, so SDKs never see a token inside their window.
pub const SDK_WINDOW: Duration = Duration::from_secs(5 * 60);

pub fn policy() -> Policy {
    Policy::for_sdk_window(SDK_WINDOW)
}

/// The Azure exchanger: one Entra request per scope.
pub struct AzureExchange {
    pub entra: EntraClient,
}

fn unix(t: std::time::SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Exchange<String> for AzureExchange {
    type Credential = AzureToken;

    async fn exchange(&self, scope: &String) -> Result<Fresh<AzureToken>, ExchangeError> {
        let t = self.entra.token(scope).await?;
        Ok(Fresh {
            expires_at: t.expires_on,
            value: AzureToken::new(t.access_token, unix(t.expires_on), unix(t.not_before)),
        })
    }
}

pub struct AzureRuntime {
    cache: Cache<String, AzureExchange>,
    identity: Arc<Identity>,
    /// The warm resources and their slots, in configuration order.
    pinned: Vec<(String, Arc<Slot<AzureToken>>)>,
    surfaces: Vec<Arc<dyn Surface>>,
}

/// Variables that make an SDK bypass the sidecar when present in the application container.
/// DefaultAzureCredential tries EnvironmentCredential and WorkloadIdentityCredential before
/// ManagedIdentityCredential, and Python's ManagedIdentityCredential itself prefers workload
/// identity over IMDS (reference/azure.md, "Beware precedence").
pub const FORBIDDEN_IN_APP: &[&str] = &[
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
        "azure"
    }

    fn app_env(&self, listen: SocketAddr) -> AppEnv {
        let mut exports = vec![(
            "AZURE_POD_IDENTITY_AUTHORITY_HOST".to_string(),
            format!("http://{listen}"),
        )];
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
        AppEnv {
            cloud: "azure",
            exports,
            forbidden: FORBIDDEN_IN_APP.to_vec(),
            notes,
        }
    }

    fn start(self: Box<Self>, shared: &Shared) -> Result<Arc<dyn CloudRuntime>, ConfigError> {
        let token = shared
            .tokens
            .get("AZURE_FEDERATED_TOKEN_FILE", &self.token_file)?;
        let exchange = AzureExchange {
            entra: EntraClient {
                http: shared.http.clone(),
                token_url: self.token_url.clone(),
                client_id: self.identity.client_id.clone(),
                token: token.clone(),
                clock: shared.clock.clone(),
            },
        };
        let cache = Cache::build(
            "azure",
            exchange,
            policy(),
            shared.clock.clone(),
            shared.metrics.clone(),
            Some(token.changes()),
            KeyLimits::default(),
        );
        let pinned: Vec<(String, Arc<Slot<AzureToken>>)> = self
            .resources
            .iter()
            .map(|r| (r.clone(), cache.pin(scope_for(r))))
            .collect();
        let identity = Arc::new(self.identity.clone());
        let tokens = Arc::new(Tokens {
            cache: cache.clone(),
            identity: identity.clone(),
            clock: shared.clock.clone(),
            parsed: Default::default(),
        });
        let surfaces: Vec<Arc<dyn Surface>> = vec![
            Arc::new(ImdsSurface {
                tokens: tokens.clone(),
            }),
            Arc::new(AppServiceSurface {
                tokens,
                header: self.identity_header.clone(),
            }),
        ];
        tracing::info!(
            client_id = %self.identity.client_id,
            tenant_id = %self.identity.tenant_id,
            token_url = %self.token_url,
            resources = ?self.resources,
            app_service_endpoint = self.identity_header.is_some(),
            "azure enabled"
        );
        Ok(Arc::new(AzureRuntime {
            cache,
            identity,
            pinned,
            surfaces,
        }))
    }
}

impl CloudRuntime for AzureRuntime {
    fn name(&self) -> &'static str {
        "azure"
    }

    fn surfaces(&self) -> Vec<Arc<dyn Surface>> {
        self.surfaces.clone()
    }

    fn readiness(&self) -> Result<(), String> {
        self.cache.readiness()
    }

    fn summary(&self) -> Result<String, String> {
        let who = format!(
            "client {} in tenant {}",
            self.identity.client_id, self.identity.tenant_id
        );
        if self.pinned.is_empty() {
            return Ok(format!("{who}; no resources kept warm"));
        }
        let mut parts = Vec::new();
        for (resource, slot) in &self.pinned {
            match slot.current() {
                Some(cred) => parts.push(format!(
                    "{resource}: token of {} chars, expires {} (in {} s)",
                    cred.value.access_token.len(),
                    format_rfc3339(cred.expires_wall),
                    cred.remaining(tokio::time::Instant::now()).as_secs()
                )),
                None => {
                    let why = slot.readiness().err().unwrap_or_default();
                    return Err(format!("{resource}: {why}"));
                }
            }
        }
        Ok(format!("{who}; {}", parts.join("; ")))
    }
}

#[cfg(test)]
mod tests;

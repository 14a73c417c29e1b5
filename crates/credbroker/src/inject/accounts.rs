//! Reading the pod's ServiceAccount from the API server, at admission time: one GET per pod,
//! so a ServiceAccount created a millisecond before its pod is seen (peers that cache
//! ServiceAccounts from a watch miss those; see README "Deploying"). Bounded by a timeout well
//! inside the webhook's own, so an unreachable API server is a refusal that says so, not a hang.

use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::core::v1::ServiceAccount as ServiceAccountObject;
use kube::Api;

use super::part::ServiceAccount;

/// Why a ServiceAccount could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    #[error("ServiceAccount {0} does not exist")]
    NotFound(String),
    #[error(
        "the API server refused to show ServiceAccount {0}: {1} (the webhook's RBAC needs get on serviceaccounts)"
    )]
    Forbidden(String, String),
    #[error("the API server did not answer within {1:?} when asked for ServiceAccount {0}")]
    Timeout(String, Duration),
    #[error("cannot read ServiceAccount {0} from the API server: {1}")]
    Failed(String, String),
}

/// Where ServiceAccounts come from (the API server; tests may give their own).
pub trait Accounts: Send + Sync + 'static {
    fn get(
        &self,
        namespace: &str,
        name: &str,
    ) -> impl Future<Output = Result<ServiceAccount, LookupError>> + Send;
}

/// The API server, through the `kube` client (in-cluster configuration, or `KUBECONFIG`).
pub struct ApiServer {
    client: kube::Client,
    timeout: Duration,
}

impl ApiServer {
    /// The client `kube` infers: `KUBECONFIG` (or `~/.kube/config`) when present, else the
    /// in-cluster service account (`KUBERNETES_SERVICE_HOST`, its token and `ca.crt`).
    pub async fn infer(timeout: Duration) -> Result<Self, kube::Error> {
        let mut config = kube::Config::infer()
            .await
            .map_err(kube::Error::InferConfig)?;
        // `timeout` bounds each read as a whole (`get`); the client's own timeouts, were they as
        // short, would race it and turn "did not answer" into an unexplained client error.
        config.connect_timeout = None;
        config.read_timeout = None;
        config.write_timeout = None;
        Ok(ApiServer {
            client: kube::Client::try_from(config)?,
            timeout,
        })
    }
}

impl Accounts for ApiServer {
    async fn get(&self, namespace: &str, name: &str) -> Result<ServiceAccount, LookupError> {
        let id = format!("{namespace}/{name}");
        let api: Api<ServiceAccountObject> = Api::namespaced(self.client.clone(), namespace);
        let sa = match tokio::time::timeout(self.timeout, api.get(name)).await {
            Err(_) => return Err(LookupError::Timeout(id, self.timeout)),
            Ok(Err(kube::Error::Api(status))) if status.code == 404 => {
                return Err(LookupError::NotFound(id));
            }
            Ok(Err(kube::Error::Api(status))) if status.code == 403 || status.code == 401 => {
                return Err(LookupError::Forbidden(id, status.message));
            }
            Ok(Err(e)) => return Err(LookupError::Failed(id, with_causes(&e))),
            Ok(Ok(sa)) => sa,
        };
        Ok(ServiceAccount {
            namespace: namespace.to_string(),
            name: name.to_string(),
            annotations: sa.metadata.annotations.unwrap_or_default(),
        })
    }
}

/// The error and its causes: the client's own text ("client error (Connect)") does not say why.
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.contains(&more) {
            text = format!("{text}: {more}");
        }
        cause = c.source();
    }
    text
}

//! What one cloud adds to a pod, as the clouds declare it (no Kubernetes types here: the
//! webhook turns these into containers, volumes and patch operations).

use std::collections::BTreeMap;

/// The value an environment variable gets in the pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvValue {
    Text(String),
    /// A field of the pod itself, through the downward API (`metadata.uid`): known only once
    /// the pod exists, and the same in every container that asks.
    PodField(&'static str),
}

impl EnvValue {
    pub fn text(value: impl Into<String>) -> Self {
        EnvValue::Text(value.into())
    }
}

/// A projected service-account token the sidecar reads (kubelet writes and rotates it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectedToken {
    /// The pod volume's name.
    pub volume: &'static str,
    /// `None`: the API server's own audience (what OKE's proxymux reviews).
    pub audience: Option<String>,
    pub expiration_seconds: i64,
    /// Mounted here in the sidecar, read-only.
    pub dir: &'static str,
    pub file: &'static str,
    /// Also project the cluster CA (`ca.crt`) and the namespace, as the default service-account
    /// volume does.
    pub with_cluster_ca: bool,
}

impl ProjectedToken {
    pub fn path(&self) -> String {
        format!("{}/{}", self.dir, self.file)
    }
}

/// A file the sidecar reads whose content the webhook decides (GCP's credential
/// configuration): carried in a pod annotation and projected by the downward API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InjectedFile {
    pub volume: &'static str,
    pub annotation: &'static str,
    pub dir: &'static str,
    pub file: &'static str,
    pub content: String,
}

impl InjectedFile {
    pub fn path(&self) -> String {
        format!("{}/{}", self.dir, self.file)
    }
}

/// One cloud's share of an injected pod.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodPart {
    /// The sidecar's environment: the cloud's own variables (what its webhook would inject)
    /// and credbroker's `CREDBROKER_*` settings.
    pub env: Vec<(String, EnvValue)>,
    pub tokens: Vec<ProjectedToken>,
    pub files: Vec<InjectedFile>,
}

impl PodPart {
    pub fn var(mut self, name: &str, value: EnvValue) -> Self {
        self.env.push((name.to_string(), value));
        self
    }

    pub fn token(mut self, token: ProjectedToken) -> Self {
        self.tokens.push(token);
        self
    }

    pub fn file(mut self, file: InjectedFile) -> Self {
        self.files.push(file);
        self
    }
}

/// The ServiceAccount as the webhook read it: who it is and its annotations.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceAccount {
    pub namespace: String,
    pub name: String,
    pub annotations: BTreeMap<String, String>,
}

impl ServiceAccount {
    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations
            .get(key)
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
    }

    /// `namespace/name`, for messages.
    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// Why a pod that asked for injection cannot be injected: shown to the user (kubectl, the
/// ReplicaSet's events), so it names the ServiceAccount, the annotation and what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refusal(pub String);

/// Where the shared in-memory volume is mounted in every container.
pub const SHARED_DIR: &str = "/var/run/credbroker";

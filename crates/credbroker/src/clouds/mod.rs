//! The clouds. Each is one folder holding its configuration, exchanger and surfaces; adding a
//! cloud is one folder plus one line in [`detect`] and one in [`CloudFlags`].

pub mod aws;
pub mod azure;
pub mod gcp;
pub mod oci;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::clock::Clock;
use crate::config::{ConfigError, Env};
use crate::fsutil::FileMode;
use crate::metrics::Metrics;
use crate::surface::Surface;
use crate::token::{BACKSTOP_INTERVAL, TokenSource};

/// Every cloud's command-line flags.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct CloudFlags {
    #[command(flatten)]
    pub aws: aws::Flags,
    #[command(flatten)]
    pub gcp: gcp::Flags,
    #[command(flatten)]
    pub azure: azure::Flags,
    #[command(flatten)]
    pub oci: oci::Flags,
}

/// What an application container needs, and must not have, to use a cloud through the sidecar.
#[derive(Debug, Clone, Default)]
pub struct AppEnv {
    pub cloud: &'static str,
    pub exports: Vec<(String, String)>,
    pub forbidden: Vec<&'static str>,
    pub notes: Vec<String>,
}

/// A cloud's validated configuration, before anything runs.
pub trait CloudConfig: Send {
    fn name(&self) -> &'static str;
    /// The application container's environment for a broker listening on `listen`.
    fn app_env(&self, listen: SocketAddr) -> AppEnv;
    /// Starts the cloud's refreshers; returns its surfaces and state.
    fn start(self: Box<Self>, shared: &Shared) -> Result<Arc<dyn CloudRuntime>, ConfigError>;
}

/// A running cloud.
pub trait CloudRuntime: Send + Sync {
    fn name(&self) -> &'static str;
    fn surfaces(&self) -> Vec<Arc<dyn Surface>>;
    /// `Ok` once every credential it must hold is servable; else why not.
    fn readiness(&self) -> Result<(), String>;
    /// A redacted one-line summary (identity, expiry) for `credbroker check`.
    fn summary(&self) -> Result<String, String>;
}

/// The enabled clouds, from their own standard variables. Order is the order of output.
pub fn detect(env: &Env, flags: &CloudFlags) -> Result<Vec<Box<dyn CloudConfig>>, ConfigError> {
    let mut clouds: Vec<Box<dyn CloudConfig>> = Vec::new();
    if let Some(c) = aws::AwsConfig::from_env(env, &flags.aws)? {
        clouds.push(Box::new(c));
    }
    if let Some(c) = gcp::GcpConfig::from_env(env, &flags.gcp)? {
        clouds.push(Box::new(c));
    }
    if let Some(c) = azure::AzureConfig::from_env(env, &flags.azure)? {
        clouds.push(Box::new(c));
    }
    if let Some(c) = oci::OciConfig::from_env(env, &flags.oci)? {
        clouds.push(Box::new(c));
    }
    Ok(clouds)
}

/// What the clouds share at run time.
pub struct Shared {
    pub http: reqwest::Client,
    pub metrics: Arc<Metrics>,
    pub clock: Arc<dyn Clock>,
    pub tokens: TokenSources,
    pub file_mode: FileMode,
}

/// One watched [`TokenSource`] per token file, however many clouds read it.
pub struct TokenSources {
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    open: Mutex<HashMap<PathBuf, Arc<TokenSource>>>,
}

impl TokenSources {
    pub fn new(clock: Arc<dyn Clock>, metrics: Arc<Metrics>) -> Self {
        TokenSources {
            clock,
            metrics,
            open: Mutex::new(HashMap::new()),
        }
    }

    /// The source for `path`, opened and watched on first use. `subject` names the variable.
    pub fn get(&self, subject: &str, path: &Path) -> Result<Arc<TokenSource>, ConfigError> {
        let mut open = self.open.lock();
        if let Some(src) = open.get(path) {
            return Ok(src.clone());
        }
        let src = TokenSource::open(path, self.clock.clone(), self.metrics.clone())
            .map_err(|e| ConfigError::new(subject, e.to_string()))?;
        src.spawn_watch(BACKSTOP_INTERVAL);
        open.insert(path.to_path_buf(), src.clone());
        Ok(src)
    }
}

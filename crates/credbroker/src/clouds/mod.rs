//! The clouds, and the one registry of them.
//!
//! A cloud is a folder (`aws/`, `gcp/`, …) holding its configuration, exchanger and surfaces, and
//! one declaration: a type implementing [`Cloud`] (its name, flags, what enables it, its SDKs'
//! refresh window, how it is detected from its own variables) listed once in [`CLOUDS`].
//! Everything that enumerates clouds — the command-line flags, detection, the "no cloud is
//! enabled" message, `/readyz/<cloud>`, the demo — follows from that list.

pub mod aws;
pub mod azure;
pub mod gcp;
pub mod oci;
mod runtime;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::{ArgMatches, Args, FromArgMatches};
use parking_lot::Mutex;

use crate::clock::Clock;
use crate::config::{ConfigError, Env};
use crate::exchange::Exchange;
use crate::fs::FileMode;
use crate::inject::part::{PodPart, Refusal, ServiceAccount};
use crate::metrics::Metrics;
use crate::refresh::{Cache, CacheBuilder, CacheKey};
use crate::token::{BACKSTOP_INTERVAL, TokenSource};
pub use runtime::{Held, Pinned, Runtime};

/// Every cloud credbroker serves, in the order of its output.
pub static CLOUDS: &[&dyn Declared] = &[&aws::Aws, &gcp::Gcp, &azure::Azure, &oci::Oci];

/// One cloud's declaration.
pub trait Cloud: Sync + 'static {
    /// `aws`, `gcp`, …: `/readyz/<name>`, metric labels, log fields, `credbroker env` headings.
    const NAME: &'static str;
    /// Its name in prose (`AWS`, `Azure`).
    const TITLE: &'static str;
    /// What enables it, as the "no cloud is enabled" message lists it.
    const ENABLED_BY: &'static str;
    /// How long before expiry its SDKs start refreshing on their own: the refresher never hands
    /// out a credential inside this window when a refresh can avoid it.
    const SDK_WINDOW: Duration;
    /// Its command-line flags (each also read from `CREDBROKER_<FLAG>`).
    type Flags: Args + FromArgMatches;
    /// Its validated configuration.
    type Config: CloudConfig + 'static;

    /// The configuration from the cloud's own variables and flags; `None` when not enabled.
    fn detect(env: &Env, flags: &Self::Flags) -> Result<Option<Self::Config>, ConfigError>;

    /// The ServiceAccount annotation that names its identity (what the admission webhook asks
    /// for when a pod's ServiceAccount names none).
    const IDENTITY_ANNOTATION: &'static str;
    /// Its admission-webhook flags: cloud-wide settings an annotation cannot carry.
    type InjectFlags: Args + FromArgMatches;
    /// What the webhook adds to a pod for this cloud, from its ServiceAccount's annotations;
    /// `None` when they name no identity for it.
    fn inject(sa: &ServiceAccount, flags: &Self::InjectFlags) -> Result<Option<PodPart>, Refusal>;

    /// A cache for this cloud's credentials: its name and SDK window.
    fn cache_builder<K: CacheKey, E: Exchange<K>>(exchanger: E) -> CacheBuilder<K, E> {
        Cache::builder(Self::NAME, exchanger).sdk_window(Self::SDK_WINDOW)
    }

    /// [`Cloud::cache_builder`] with the shared clock and metrics, and (when given) the token
    /// whose rotation wakes failing exchanges.
    fn cache<K: CacheKey, E: Exchange<K>>(
        shared: &Shared,
        exchanger: E,
        token: Option<&TokenSource>,
    ) -> CacheBuilder<K, E> {
        let builder = Self::cache_builder(exchanger)
            .clock(shared.clock.clone())
            .metrics(shared.metrics.clone());
        match token {
            Some(t) => builder.token_changes(t.changes()),
            None => builder,
        }
    }
}

/// A cloud's declaration as the registry holds it (object-safe; implemented for every [`Cloud`]).
pub trait Declared: Sync {
    fn name(&self) -> &'static str;
    fn title(&self) -> &'static str;
    fn enabled_by(&self) -> &'static str;
    fn sdk_window(&self) -> Duration;
    fn augment_args(&self, cmd: clap::Command) -> clap::Command;
    fn detect(
        &self,
        env: &Env,
        flags: &CloudFlags,
    ) -> Result<Option<Box<dyn CloudConfig>>, ConfigError>;
    fn identity_annotation(&self) -> &'static str;
    fn augment_inject_args(&self, cmd: clap::Command) -> clap::Command;
    fn inject(&self, sa: &ServiceAccount, flags: &InjectFlags) -> Result<Option<PodPart>, Refusal>;
}

impl<C: Cloud> Declared for C {
    fn name(&self) -> &'static str {
        C::NAME
    }

    fn title(&self) -> &'static str {
        C::TITLE
    }

    fn enabled_by(&self) -> &'static str {
        C::ENABLED_BY
    }

    fn sdk_window(&self) -> Duration {
        C::SDK_WINDOW
    }

    fn augment_args(&self, cmd: clap::Command) -> clap::Command {
        C::Flags::augment_args(cmd)
    }

    fn detect(
        &self,
        env: &Env,
        flags: &CloudFlags,
    ) -> Result<Option<Box<dyn CloudConfig>>, ConfigError> {
        let own: C::Flags = flags.of();
        Ok(C::detect(env, &own)?.map(|c| Box::new(c) as Box<dyn CloudConfig>))
    }

    fn identity_annotation(&self) -> &'static str {
        C::IDENTITY_ANNOTATION
    }

    fn augment_inject_args(&self, cmd: clap::Command) -> clap::Command {
        C::InjectFlags::augment_args(cmd)
    }

    fn inject(&self, sa: &ServiceAccount, flags: &InjectFlags) -> Result<Option<PodPart>, Refusal> {
        let own: C::InjectFlags = flags.of();
        C::inject(sa, &own)
    }
}

/// Every registered cloud's flags of one kind (`S`: the sidecar's, or the webhook's), as
/// parsed. Each cloud reads its own from these matches.
pub struct RegistryFlags<S: FlagKind>(ArgMatches, std::marker::PhantomData<S>);

/// Which of a cloud's flag sets.
pub trait FlagKind: 'static {
    fn augment(cloud: &dyn Declared, cmd: clap::Command) -> clap::Command;
}

/// The sidecar's flags (`serve`, `env`, `check`).
pub enum ServeFlags {}

impl FlagKind for ServeFlags {
    fn augment(cloud: &dyn Declared, cmd: clap::Command) -> clap::Command {
        cloud.augment_args(cmd)
    }
}

/// The admission webhook's flags (`inject`).
pub enum WebhookFlags {}

impl FlagKind for WebhookFlags {
    fn augment(cloud: &dyn Declared, cmd: clap::Command) -> clap::Command {
        cloud.augment_inject_args(cmd)
    }
}

/// Every cloud's sidecar flags.
pub type CloudFlags = RegistryFlags<ServeFlags>;
/// Every cloud's webhook flags.
pub type InjectFlags = RegistryFlags<WebhookFlags>;

impl<S: FlagKind> Clone for RegistryFlags<S> {
    fn clone(&self) -> Self {
        RegistryFlags(self.0.clone(), std::marker::PhantomData)
    }
}

impl<S: FlagKind> std::fmt::Debug for RegistryFlags<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("RegistryFlags").field(&self.0).finish()
    }
}

impl<S: FlagKind> RegistryFlags<S> {
    /// The clouds' flags from command-line words (no program name), e.g. for the demo.
    pub fn parse_from<I, T>(words: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let cmd = Self::augment_args(clap::Command::new("credbroker").no_binary_name(true));
        let matches = cmd.try_get_matches_from(words)?;
        Ok(RegistryFlags(matches, std::marker::PhantomData))
    }

    /// One cloud's flags.
    pub fn of<F: FromArgMatches>(&self) -> F {
        F::from_arg_matches(&self.0).expect("every cloud's flags are registered")
    }
}

impl<S: FlagKind> Default for RegistryFlags<S> {
    /// Every flag at its default (and its `CREDBROKER_*` variable, when set).
    fn default() -> Self {
        Self::parse_from(std::iter::empty::<String>()).expect("no words parse")
    }
}

impl<S: FlagKind> FromArgMatches for RegistryFlags<S> {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        Ok(RegistryFlags(matches.clone(), std::marker::PhantomData))
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        self.0 = matches.clone();
        Ok(())
    }
}

impl<S: FlagKind> Args for RegistryFlags<S> {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        CLOUDS.iter().fold(cmd, |cmd, c| S::augment(*c, cmd))
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

/// The enabled clouds, from their own standard variables, in registry order.
pub fn detect(env: &Env, flags: &CloudFlags) -> Result<Vec<Box<dyn CloudConfig>>, ConfigError> {
    let mut clouds = Vec::new();
    for cloud in CLOUDS {
        if let Some(config) = cloud.detect(env, flags)? {
            clouds.push(config);
        }
    }
    Ok(clouds)
}

/// The message for a configuration that enables nothing: what enables each cloud.
pub fn none_enabled() -> ConfigError {
    let each: Vec<String> = CLOUDS
        .iter()
        .map(|c| format!("{} ({})", c.enabled_by(), c.title()))
        .collect();
    ConfigError::new(
        "environment",
        format!("no cloud is enabled: set {}", each.join("; ")),
    )
}

/// What an application container needs, and must not have, to use a cloud through the sidecar.
#[derive(Debug, Clone, Default)]
pub struct AppEnv {
    pub cloud: &'static str,
    pub exports: Vec<(String, String)>,
    pub forbidden: Vec<&'static str>,
    pub notes: Vec<String>,
    /// The other identities: for each, how a container selects it — the variables it sets
    /// instead of the defaults above (empty when it is selected in code), and how.
    pub identities: Vec<IdentityEnv>,
}

/// How an application container uses one of a cloud's named identities.
#[derive(Debug, Clone, Default)]
pub struct IdentityEnv {
    pub name: String,
    /// Variables a container that uses it sets instead of the defaults.
    pub exports: Vec<(String, String)>,
    /// How an application selects it when no variable can (a client id, an email in code).
    pub how: String,
}

/// A cloud's validated configuration, before anything runs.
pub trait CloudConfig: Send {
    fn name(&self) -> &'static str;
    /// The application container's environment for a broker listening on `listen`.
    fn app_env(&self, listen: SocketAddr) -> AppEnv;
    /// Starts the cloud's refreshers; returns its surfaces and the credentials it holds.
    fn start(self: Box<Self>, shared: &Shared) -> Result<Runtime, ConfigError>;
    /// Copy-paste commands that exercise this cloud's surfaces as configured (the demo prints
    /// them), each a shell line or a `#` comment.
    fn try_it(&self, _listen: SocketAddr) -> Vec<String> {
        Vec::new()
    }
}

/// What the clouds share at run time.
pub struct Shared {
    pub http: reqwest::Client,
    pub metrics: Arc<Metrics>,
    pub clock: Arc<dyn Clock>,
    pub tokens: TokenSources,
    pub file_mode: FileMode,
    /// Files and variables, as configuration read them.
    pub env: Env,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_registry_declares_each_cloud_once() {
        let names: Vec<&str> = CLOUDS.iter().map(|c| c.name()).collect();
        assert_eq!(names, ["aws", "gcp", "azure", "oci"]);
        let message = none_enabled().to_string();
        for c in CLOUDS {
            assert!(message.contains(c.enabled_by()), "{message}");
        }
    }

    #[test]
    fn each_cloud_reads_its_own_flags() {
        let flags = CloudFlags::parse_from([
            "--aws-auth-token-file",
            "/run/aws-token",
            "--oci-output-dir",
            "/run/oci",
        ])
        .unwrap();
        let aws = aws::Flags::from_arg_matches(&flags.0).unwrap();
        assert_eq!(
            aws.aws_auth_token_file.as_deref(),
            Some(Path::new("/run/aws-token"))
        );
        let oci = oci::Flags::from_arg_matches(&flags.0).unwrap();
        assert_eq!(oci.oci_output_dir.as_deref(), Some(Path::new("/run/oci")));
        assert!(CloudFlags::parse_from(["--no-such-flag"]).is_err());
    }
}

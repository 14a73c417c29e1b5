//! Command-line interface. Every flag also reads `CREDBROKER_<FLAG>`; flags win.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::clouds::{CloudFlags, InjectFlags};

/// The credential listener's default: loopback only, a fixed port applications are pointed at.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8189";
/// The ops listener's default: all interfaces, because kubelet probes the pod IP.
pub const DEFAULT_OPS_LISTEN: &str = "0.0.0.0:8190";

#[derive(Parser, Debug)]
#[command(
    name = "credbroker",
    version,
    about = "Short-lived cloud credentials for Kubernetes workloads, served in the clouds' own metadata formats"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    /// Log format.
    #[arg(long, global = true, env = "CREDBROKER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Log level or tracing filter (error, warn, info, debug, trace, or e.g. "credbroker=debug").
    #[arg(
        long,
        global = true,
        env = "CREDBROKER_LOG_LEVEL",
        default_value = "info"
    )]
    pub log_level: String,

    /// Runtime worker threads: auto (or 0) sizes the runtime to the CPUs this process may use
    /// (affinity and cgroup CPU quota); 1 runs everything on one thread (tokio's current-thread
    /// scheduler, the default under a CPU limit of one core or less).
    #[arg(
        long,
        global = true,
        env = "CREDBROKER_WORKER_THREADS",
        default_value = "auto",
        value_name = "N"
    )]
    pub worker_threads: crate::cpus::WorkerThreads,

    /// Scheduler for the runtime (for measurements): auto is current-thread for one worker.
    #[arg(
        long,
        global = true,
        env = "CREDBROKER_RUNTIME_FLAVOR",
        value_enum,
        default_value_t,
        hide = true
    )]
    pub runtime_flavor: crate::cpus::Flavor,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the sidecar: watch the token file(s), exchange, cache, serve.
    Serve(ServeArgs),
    /// Run a self-contained demo: local issuer, emulated clouds and the broker, all clouds enabled.
    Demo(DemoArgs),
    /// Print the application container's environment for the current configuration.
    Env(ServeArgs),
    /// One exchange per enabled cloud; a redacted summary; exit 0 only if all succeeded.
    Check(ServeArgs),
    /// The mutating admission webhook: injects the sidecar into pods labelled
    /// credbroker.io/inject=true, from their ServiceAccount's cloud annotations.
    Inject(InjectArgs),
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub clouds: CloudFlags,
}

#[derive(Args, Debug, Clone)]
pub struct CommonArgs {
    /// Credential listener (all metadata surfaces). Loopback unless --allow-non-loopback.
    #[arg(long, env = "CREDBROKER_LISTEN", default_value = DEFAULT_LISTEN, value_name = "ADDR")]
    pub listen: SocketAddr,

    /// Permit a non-loopback --listen (anyone who can reach it gets credentials).
    #[arg(long, env = "CREDBROKER_ALLOW_NON_LOOPBACK")]
    pub allow_non_loopback: bool,

    /// Operations listener: /healthz, /readyz, /readyz/<cloud>, /metrics.
    #[arg(long, env = "CREDBROKER_OPS_LISTEN", default_value = DEFAULT_OPS_LISTEN, value_name = "ADDR")]
    pub ops_listen: SocketAddr,

    /// Extra CA certificates (PEM) trusted for every upstream, on top of the system roots.
    #[arg(long, env = "CREDBROKER_UPSTREAM_CA_FILE", value_name = "PATH")]
    pub upstream_ca_file: Option<PathBuf>,

    /// Write files holding secrets (the AWS auth token, OCI files) with mode 0640 instead of
    /// 0600, for a volume shared with the application through fsGroup.
    #[arg(long, env = "CREDBROKER_GROUP_READABLE_FILES")]
    pub group_readable_files: bool,

    /// Most concurrent connections on the credential listener.
    #[arg(
        long,
        env = "CREDBROKER_MAX_CONNECTIONS",
        default_value_t = 1024,
        value_name = "N"
    )]
    pub max_connections: usize,

    /// Time a client has to send a request's headers, after which an idle keep-alive connection
    /// is closed too (milliseconds). Hidden: tests shorten it; the default suits every SDK.
    #[arg(
        long,
        env = "CREDBROKER_HEADER_READ_TIMEOUT_MS",
        default_value_t = 10_000,
        value_name = "MS",
        hide = true
    )]
    pub header_read_timeout_ms: u64,

    /// After binding, write `credentials=ADDR` and `ops=ADDR` lines here (for ports chosen with :0).
    #[arg(long, env = "CREDBROKER_ADDR_FILE", value_name = "PATH")]
    pub addr_file: Option<PathBuf>,
}

#[derive(Args, Debug, Clone)]
pub struct InjectArgs {
    /// HTTPS listener the API server calls (path /mutate).
    #[arg(
        long,
        env = "CREDBROKER_LISTEN",
        default_value = "0.0.0.0:9443",
        value_name = "ADDR"
    )]
    pub listen: SocketAddr,

    /// PEM certificate chain served on --listen; re-read when the file changes.
    #[arg(long, env = "CREDBROKER_TLS_CERT_FILE", value_name = "PATH")]
    pub tls_cert_file: PathBuf,

    /// PEM private key of --tls-cert-file; re-read when the file changes.
    #[arg(long, env = "CREDBROKER_TLS_KEY_FILE", value_name = "PATH")]
    pub tls_key_file: PathBuf,

    /// Operations listener: /healthz, /readyz, /metrics.
    #[arg(long, env = "CREDBROKER_OPS_LISTEN", default_value = DEFAULT_OPS_LISTEN, value_name = "ADDR")]
    pub ops_listen: SocketAddr,

    /// The credbroker image the injected sidecar runs.
    #[arg(long, env = "CREDBROKER_IMAGE", value_name = "IMAGE")]
    pub image: String,

    /// How long one ServiceAccount read from the API server may take (milliseconds): well
    /// inside the webhook's timeoutSeconds, so an unreachable API server is a refusal that
    /// says so rather than the API server's own timeout.
    #[arg(
        long,
        env = "CREDBROKER_API_TIMEOUT_MS",
        default_value_t = 2000,
        value_name = "MS"
    )]
    pub api_timeout_ms: u64,

    /// After binding, write `webhook=ADDR` and `ops=ADDR` lines here (for ports chosen with :0).
    #[arg(long, env = "CREDBROKER_ADDR_FILE", value_name = "PATH")]
    pub addr_file: Option<PathBuf>,

    #[command(flatten)]
    pub clouds: InjectFlags,
}

#[derive(Args, Debug, Clone)]
pub struct DemoArgs {
    /// Credential listener for the demo broker.
    #[arg(long, default_value = DEFAULT_LISTEN, value_name = "ADDR")]
    pub listen: SocketAddr,

    /// Ops listener for the demo broker.
    #[arg(long, default_value = "127.0.0.1:8190", value_name = "ADDR")]
    pub ops_listen: SocketAddr,

    /// Where the demo keeps its tokens and files (default: a new temporary directory).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,

    /// Rotate the projected tokens this often, as kubelet does (seconds).
    #[arg(long, default_value_t = 300, value_name = "SECS")]
    pub rotate_every: u64,

    /// Exit after this many seconds instead of waiting for Ctrl-C (for scripted runs).
    #[arg(long, value_name = "SECS")]
    pub exit_after: Option<u64>,
}

impl ServeArgs {
    /// `serve`'s arguments from a pod's sidecar environment, in-process (the demo, the webhook,
    /// benchmarks): each `CREDBROKER_<FLAG>` variable is read as its flag is (a switch's value as
    /// true or false), `words` are added as given, and nothing is read from this process's own
    /// environment. Returns the arguments and the other variables (the clouds' own).
    pub fn from_settings(
        vars: Vec<(String, String)>,
        words: &[String],
    ) -> Result<(ServeArgs, Vec<(String, String)>), clap::Error> {
        use clap::{FromArgMatches, builder::ArgAction};
        let cmd =
            <ServeArgs as Args>::augment_args(clap::Command::new("serve").no_binary_name(true));
        let mut argv: Vec<String> = Vec::new();
        let mut rest = Vec::new();
        for (name, value) in vars {
            let arg = cmd
                .get_arguments()
                .find(|a| a.get_env().is_some_and(|e| e == name.as_str()));
            match arg {
                Some(arg) => {
                    let flag = format!("--{}", arg.get_long().unwrap_or(arg.get_id().as_str()));
                    if matches!(arg.get_action(), ArgAction::SetTrue) {
                        if matches!(value.trim(), "true" | "1" | "yes" | "on") {
                            argv.push(flag);
                        }
                    } else {
                        argv.push(flag);
                        argv.push(value);
                    }
                }
                None => rest.push((name, value)),
            }
        }
        argv.extend(words.iter().cloned());
        let matches = cmd.mut_args(|a| a.env(None)).try_get_matches_from(argv)?;
        Ok((ServeArgs::from_arg_matches(&matches)?, rest))
    }
}

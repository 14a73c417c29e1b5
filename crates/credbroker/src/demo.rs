//! `credbroker demo`: the emulated clouds (fakecloud) and the broker in one process, every cloud
//! in the registry enabled, no network needed. Built only with the `demo` feature (the default
//! for a checkout; the image and the release artefact leave it out).

use std::time::Duration;

use fakecloud::{Cloudscape, CloudscapeOptions};
use tokio::sync::watch;

use crate::app::{self, AppError};
use crate::cli::{DemoArgs, ServeArgs};
use crate::clouds::CLOUDS;
use crate::config::{ConfigError, Env};

pub(crate) async fn run(
    args: DemoArgs,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), AppError> {
    let state_dir = args.state_dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("credbroker-demo-{}", std::process::id()))
    });
    let scape = Cloudscape::start(CloudscapeOptions {
        state_dir: state_dir.clone(),
        rotate_every: Some(Duration::from_secs(args.rotate_every.max(1))),
        ..CloudscapeOptions::default()
    })
    .await
    .map_err(|e| {
        AppError::Runtime(format!(
            "cannot start the emulated clouds in {}: {e}",
            state_dir.display()
        ))
    })?;

    // The pod's sidecar environment for every registered cloud, as the emulators describe it.
    let names: Vec<&str> = CLOUDS.iter().map(|c| c.name()).collect();
    let sidecar = scape
        .sidecar(&names, &state_dir)
        .map_err(|e| AppError::Runtime(e.to_string()))?;
    let mut words = Vec::new();
    words.extend([
        "--listen".to_string(),
        args.listen.to_string(),
        "--ops-listen".to_string(),
        args.ops_listen.to_string(),
    ]);
    // Instance metadata a GKE node would have.
    for (flag, value) in [
        ("--gcp-cluster-name", "credbroker-demo"),
        ("--gcp-cluster-location", "us-central1"),
        ("--gcp-zone", "us-central1-a"),
    ] {
        words.extend([flag.to_string(), value.to_string()]);
    }
    let (serve_args, env) = ServeArgs::from_settings(sidecar, &words)
        .map_err(|e| AppError::Config(ConfigError::new("demo", e.to_string())))?;
    let env = Env::from_pairs(env);

    let bound = app::bind(serve_args.clone(), &env).await?;
    let (listen, ops) = (bound.creds_addr, bound.ops_addr);
    let mut shown = serve_args.clone();
    shown.common.listen = listen;
    let configs = app::configure(&shown, &env)?;
    println!(
        "credbroker demo: emulated clouds under {}",
        state_dir.display()
    );
    println!("  OIDC issuer   {}", scape.issuer_url());
    for (name, what) in describe_endpoints(&scape.describe()) {
        println!("  {name:<13} {what}");
    }
    println!(
        "  tokens rotate every {} s, kubelet-style",
        args.rotate_every
    );
    println!("  broker        credentials on {listen}, ops on {ops}");
    println!();
    print!("{}", app::render_env(&app::app_envs(&configs, listen)));
    println!();
    println!("# Check it (another terminal):");
    println!("curl -s http://{ops}/readyz");
    println!(
        "export OCI_API_ENDPOINT={}   # the emulated OCI API, for the OCI SDK line",
        scape.oci_api.url()
    );
    for config in &configs {
        for line in config.try_it(listen) {
            println!("{line}");
        }
    }
    println!();
    use std::io::Write as _;
    let _ = std::io::stdout().flush();

    let (stop_tx, stop_rx) = watch::channel(false);
    let exit_after = args.exit_after;
    tokio::spawn(async move {
        match exit_after {
            Some(secs) => {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(secs)) => {}
                    _ = crate::http::server::stopped(&mut shutdown) => {}
                }
            }
            None => {
                crate::http::server::stopped(&mut shutdown).await;
            }
        }
        let _ = stop_tx.send(true);
    });
    let result = bound.run(stop_rx).await;
    drop(scape);
    result
}

/// `(name, endpoint)` for every emulated upstream in fakecloud's description.
fn describe_endpoints(desc: &serde_json::Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let Some(map) = desc.as_object() else {
        return out;
    };
    for (cloud, entry) in map {
        let Some(entry) = entry.as_object() else {
            continue;
        };
        let endpoints: Vec<String> = entry
            .iter()
            .filter(|(k, _)| k.ends_with("endpoint") || k.ends_with("_url") && *k != "admin")
            .filter_map(|(k, v)| v.as_str().map(|v| format!("{k} {v}")))
            .collect();
        if !endpoints.is_empty() {
            out.push((cloud.clone(), endpoints.join(", ")));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_become_flags_and_the_rest_stays_in_the_environment() {
        let (args, env) = ServeArgs::from_settings(
            vec![
                ("AWS_ROLE_ARN".into(), "arn".into()),
                ("CREDBROKER_AWS_AUTH_TOKEN_FILE".into(), "/f".into()),
                ("CREDBROKER_GROUP_READABLE_FILES".into(), "true".into()),
            ],
            &["--listen".into(), "127.0.0.1:9".into()],
        )
        .unwrap();
        assert_eq!(env, [("AWS_ROLE_ARN".to_string(), "arn".to_string())]);
        assert!(args.common.group_readable_files);
        assert_eq!(args.common.listen.to_string(), "127.0.0.1:9");
        let aws: crate::clouds::aws::Flags = args.clouds.of();
        assert_eq!(aws.aws_auth_token_file.unwrap().to_str(), Some("/f"));
    }
}

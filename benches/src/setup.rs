//! The sidecar-side configuration of a pod against the local fakes, from the fakes' own
//! description (`Cloudscape::describe`, or `fakecloud run --ready-file`): its `sidecar` entry
//! holds each cloud's environment, the same one the demo and the tests use.

use std::path::Path;

use serde_json::Value;

/// Which clouds to enable, by their registry names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Clouds(pub &'static [&'static str]);

impl Clouds {
    /// Every cloud with an HTTP surface (OCI's are files, measured by start-up alone).
    pub const ALL: Clouds = Clouds(&["aws", "gcp", "azure"]);
    pub const AWS: Clouds = Clouds(&["aws"]);
    pub const GCP: Clouds = Clouds(&["gcp"]);
    pub const AZURE: Clouds = Clouds(&["azure"]);
}

/// The sidecar's environment (what the clouds' webhooks inject, plus `CREDBROKER_*` settings),
/// with the files it writes under `files`.
pub fn sidecar_env(desc: &Value, clouds: Clouds, files: &Path) -> Vec<(String, String)> {
    let files = files.display().to_string();
    let mut env = Vec::new();
    for cloud in clouds.0 {
        if let Some(vars) = desc["sidecar"][*cloud].as_object() {
            for (k, v) in vars {
                let v = v.as_str().unwrap_or_default().replace("{files}", &files);
                env.push((k.clone(), v));
            }
        }
    }
    env
}

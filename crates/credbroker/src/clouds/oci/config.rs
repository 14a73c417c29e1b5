//! OCI configuration: the variables an OKE pod has (kubelet's service variables, the SDKs'
//! `OCI_*` names) plus where to write the resource principal files.

use std::net::IpAddr;
use std::path::PathBuf;

use reqwest::Url;

use crate::config::{ConfigError, Env, check_region};

/// The port Py, Go and Java hard-code; TS reads `KUBERNETES_SERVICE_PORT_PROXYMUX`
/// (docs/oci.md, "Proxymux exchange").
const DEFAULT_PROXYMUX_PORT: u16 = 12250;
/// The cluster CA kubelet mounts into every pod; overridden by
/// `OCI_KUBERNETES_SERVICE_ACCOUNT_CERT_PATH` as in the SDKs.
const DEFAULT_CA_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt";
/// The token the SDKs present to proxymux (none of them has an override variable).
const DEFAULT_TOKEN_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";
/// The exchange's path on proxymux.
const PROXYMUX_PATH: &str = "/resourcePrincipalSessionTokens";

#[derive(clap::Args, Debug, Clone)]
// Every cloud's struct is called `Flags`; clap names a flattened struct's group after it.
#[group(id = "oci-flags")]
pub struct Flags {
    /// Directory for the resource principal v2.2 files `rpst` and `private.pem` (a volume shared
    /// with the application, e.g. an in-memory emptyDir). With OCI_RESOURCE_PRINCIPAL_REGION,
    /// enables OCI.
    #[arg(long, env = "CREDBROKER_OCI_OUTPUT_DIR", value_name = "DIR")]
    pub oci_output_dir: Option<PathBuf>,

    /// The service-account token presented to proxymux.
    #[arg(long, env = "CREDBROKER_OCI_TOKEN_FILE", value_name = "PATH",
          default_value = DEFAULT_TOKEN_FILE)]
    pub oci_token_file: PathBuf,
}

impl Default for Flags {
    fn default() -> Self {
        Flags {
            oci_output_dir: None,
            oci_token_file: PathBuf::from(DEFAULT_TOKEN_FILE),
        }
    }
}

#[derive(Debug, Clone)]
pub struct OciConfig {
    pub region: String,
    /// `https://$KUBERNETES_SERVICE_HOST:$PORT/resourcePrincipalSessionTokens`.
    pub proxymux_url: Url,
    pub ca_path: PathBuf,
    pub token_file: PathBuf,
    /// Absolute: the SDKs treat only absolute values as file paths.
    pub output_dir: PathBuf,
}

impl OciConfig {
    /// `None` when OCI is not enabled (neither the region nor `--oci-output-dir` is given).
    pub fn from_env(env: &Env, flags: &Flags) -> Result<Option<Self>, ConfigError> {
        let region = env.get("OCI_RESOURCE_PRINCIPAL_REGION").map(str::trim);
        let (region, dir) = match (region, &flags.oci_output_dir) {
            (None, None) => return Ok(None),
            (Some(_), None) => {
                return Err(ConfigError::new(
                    "--oci-output-dir",
                    "is required when OCI_RESOURCE_PRINCIPAL_REGION is set (the directory, shared with the application, where the rpst and private.pem files are written)",
                ));
            }
            (None, Some(_)) => {
                return Err(ConfigError::new(
                    "OCI_RESOURCE_PRINCIPAL_REGION",
                    "is not set, but --oci-output-dir is (the region applications sign requests for, e.g. us-ashburn-1)",
                ));
            }
            (Some(r), Some(d)) => (r.to_string(), d),
        };
        check_region("OCI_RESOURCE_PRINCIPAL_REGION", &region)?;
        let host = env
            .require(
                "KUBERNETES_SERVICE_HOST",
                "kubelet sets it in every pod; proxymux listens on that address",
            )?
            .trim();
        let port = match env.get("KUBERNETES_SERVICE_PORT_PROXYMUX") {
            None => DEFAULT_PROXYMUX_PORT,
            Some(p) => p
                .trim()
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| {
                    ConfigError::new(
                        "KUBERNETES_SERVICE_PORT_PROXYMUX",
                        format!("{p:?} is not a TCP port"),
                    )
                })?,
        };
        let authority = match host.parse::<IpAddr>() {
            Ok(IpAddr::V6(ip)) => format!("[{ip}]:{port}"),
            _ => format!("{host}:{port}"),
        };
        let proxymux_url = Url::parse(&format!("https://{authority}{PROXYMUX_PATH}"))
            .ok()
            .filter(|u| u.host_str().is_some_and(|h| !h.is_empty()))
            .ok_or_else(|| {
                ConfigError::new(
                    "KUBERNETES_SERVICE_HOST",
                    format!("{host:?} is not a host name or IP address"),
                )
            })?;
        let ca_path = env
            .get("OCI_KUBERNETES_SERVICE_ACCOUNT_CERT_PATH")
            .map(|p| PathBuf::from(p.trim()))
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CA_PATH));
        let output_dir = std::path::absolute(dir)
            .map_err(|e| ConfigError::new("--oci-output-dir", format!("{}: {e}", dir.display())))?;
        Ok(Some(OciConfig {
            region,
            proxymux_url,
            ca_path,
            token_file: flags.oci_token_file.clone(),
            output_dir,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags() -> Flags {
        Flags {
            oci_output_dir: Some("/var/run/oci".into()),
            ..Flags::default()
        }
    }

    fn load(pairs: &[(&str, &str)]) -> Result<OciConfig, ConfigError> {
        let mut env = Env::from_pairs([
            ("OCI_RESOURCE_PRINCIPAL_REGION", "us-ashburn-1"),
            ("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
        ]);
        for (k, v) in pairs {
            env.set(*k, *v);
        }
        OciConfig::from_env(&env, &flags()).map(Option::unwrap)
    }

    #[test]
    fn disabled_without_region_or_dir() {
        let none = OciConfig::from_env(&Env::default(), &Flags::default()).unwrap();
        assert!(none.is_none());
    }

    #[test]
    fn defaults() {
        let c = load(&[]).unwrap();
        assert_eq!(
            c.proxymux_url.as_str(),
            "https://10.96.0.1:12250/resourcePrincipalSessionTokens"
        );
        assert_eq!(c.ca_path, PathBuf::from(DEFAULT_CA_PATH));
        assert_eq!(c.token_file, PathBuf::from(DEFAULT_TOKEN_FILE));
        assert_eq!(c.output_dir, PathBuf::from("/var/run/oci"));
        assert_eq!(c.region, "us-ashburn-1");
    }

    #[test]
    fn overrides() {
        let c = load(&[
            ("KUBERNETES_SERVICE_PORT_PROXYMUX", "4443"),
            ("OCI_KUBERNETES_SERVICE_ACCOUNT_CERT_PATH", "/etc/ca.pem"),
            ("KUBERNETES_SERVICE_HOST", "fd00::1"),
            ("OCI_RESOURCE_PRINCIPAL_REGION", "iad"),
        ])
        .unwrap();
        assert_eq!(
            c.proxymux_url.as_str(),
            "https://[fd00::1]:4443/resourcePrincipalSessionTokens"
        );
        assert_eq!(c.ca_path, PathBuf::from("/etc/ca.pem"));
        let relative = OciConfig::from_env(
            &Env::from_pairs([
                ("OCI_RESOURCE_PRINCIPAL_REGION", "phx"),
                ("KUBERNETES_SERVICE_HOST", "127.0.0.1"),
            ]),
            &Flags {
                oci_output_dir: Some("rel/dir".into()),
                ..Flags::default()
            },
        )
        .unwrap()
        .unwrap();
        assert!(relative.output_dir.is_absolute());
    }

    #[test]
    fn errors_name_the_variable() {
        for (pairs, subject) in [
            (
                vec![("KUBERNETES_SERVICE_PORT_PROXYMUX", "http")],
                "KUBERNETES_SERVICE_PORT_PROXYMUX",
            ),
            (
                vec![("KUBERNETES_SERVICE_PORT_PROXYMUX", "0")],
                "KUBERNETES_SERVICE_PORT_PROXYMUX",
            ),
            (
                vec![("OCI_RESOURCE_PRINCIPAL_REGION", "US East")],
                "OCI_RESOURCE_PRINCIPAL_REGION",
            ),
            (
                vec![("KUBERNETES_SERVICE_HOST", "")],
                "KUBERNETES_SERVICE_HOST",
            ),
            (
                vec![("KUBERNETES_SERVICE_HOST", "bad host/x")],
                "KUBERNETES_SERVICE_HOST",
            ),
        ] {
            assert_eq!(load(&pairs).unwrap_err().subject, subject, "{pairs:?}");
        }
        let e = OciConfig::from_env(
            &Env::from_pairs([("OCI_RESOURCE_PRINCIPAL_REGION", "us-ashburn-1")]),
            &Flags::default(),
        )
        .unwrap_err();
        assert_eq!(e.subject, "--oci-output-dir");
        let e = OciConfig::from_env(&Env::default(), &flags()).unwrap_err();
        assert_eq!(e.subject, "OCI_RESOURCE_PRINCIPAL_REGION");
    }
}

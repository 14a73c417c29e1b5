//! GCP configuration: the `external_account` credential file `GOOGLE_APPLICATION_CREDENTIALS`
//! names (AIP-4117; docs/gcp.md, "external_account file"), `GOOGLE_CLOUD_PROJECT`, and the instance
//! metadata flags.

use std::path::PathBuf;

use reqwest::Url;
use serde_json::Value;

use crate::config::{ConfigError, Env, check_region};
use crate::http::client::endpoint;

const VAR: &str = "GOOGLE_APPLICATION_CREDENTIALS";
pub const JWT_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";
pub const ID_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:id_token";
/// `service_account_impersonation.token_lifetime_seconds` bounds (AIP-4117).
const MIN_LIFETIME: u32 = 600;
const MAX_LIFETIME: u32 = 43_200;
const DEFAULT_LIFETIME: u32 = 3600;
/// The credential file is a few hundred bytes; refuse anything absurd.
const MAX_FILE_BYTES: u64 = 64 * 1024;

/// Instance metadata the sidecar serves. GKE's metadata server answers these from the node; a
/// sidecar has no node to ask, so they come from here (unset: 404, "not defined").
#[derive(clap::Args, Debug, Clone, Default)]
// clap names an argument group after the struct; every cloud's struct is called `Flags`.
#[group(id = "gcp-flags")]
pub struct Flags {
    /// `instance/attributes/cluster-name` (read by logging agents and OTel resource detectors).
    #[arg(long, env = "CREDBROKER_GCP_CLUSTER_NAME", value_name = "NAME")]
    pub gcp_cluster_name: Option<String>,

    /// `instance/attributes/cluster-location` (region or zone of the cluster).
    #[arg(long, env = "CREDBROKER_GCP_CLUSTER_LOCATION", value_name = "LOCATION")]
    pub gcp_cluster_location: Option<String>,

    /// `instance/zone`, served as `projects/NUMBER/zones/ZONE`.
    #[arg(long, env = "CREDBROKER_GCP_ZONE", value_name = "ZONE")]
    pub gcp_zone: Option<String>,

    /// `instance/name` (default: `$HOSTNAME`, the pod name).
    #[arg(long, env = "CREDBROKER_GCP_INSTANCE_NAME", value_name = "NAME")]
    pub gcp_instance_name: Option<String>,

    /// `instance/id`, a number (default: derived from the instance name).
    #[arg(long, env = "CREDBROKER_GCP_INSTANCE_ID", value_name = "ID")]
    pub gcp_instance_id: Option<u64>,

    /// `instance/hostname` (default: the instance name).
    #[arg(long, env = "CREDBROKER_GCP_INSTANCE_HOSTNAME", value_name = "HOST")]
    pub gcp_instance_hostname: Option<String>,

    /// Another service account impersonated with the same federated (STS) token, served under
    /// instance/service-accounts/EMAIL/. Repeatable (the variable: a comma-separated list).
    #[arg(long, env = "CREDBROKER_GCP_SERVICE_ACCOUNT", value_name = "EMAIL",
          value_delimiter = ',', action = clap::ArgAction::Append)]
    pub gcp_service_account: Vec<String>,
}

/// At most this many other service accounts (each a token per scope set, and ID tokens).
pub const MAX_SERVICE_ACCOUNTS: usize = 16;

/// Where the subject token comes from and how to read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubjectFormat {
    /// The whole file is the token (kubelet's projected token).
    Text,
    /// The file is JSON; the token is this top-level field.
    Json { field: String },
}

/// The workload identity pool provider the audience names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provider {
    pub project_number: String,
    pub pool: String,
    pub provider: String,
}

/// Impersonation of a Google service account after the STS exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Impersonation {
    pub email: String,
    /// `…:generateAccessToken`.
    pub access_token_url: Url,
    /// `…:generateIdToken` on the same host and path prefix.
    pub id_token_url: Url,
    pub lifetime_secs: u32,
}

/// Instance metadata values, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub name: String,
    pub id: u64,
    pub hostname: String,
    pub zone: Option<String>,
    pub cluster_name: Option<String>,
    pub cluster_location: Option<String>,
}

#[derive(Debug, Clone)]
pub struct GcpConfig {
    pub credentials_file: PathBuf,
    /// The STS `audience`: the provider's resource name.
    pub audience: String,
    pub provider: Provider,
    pub subject_token_type: String,
    pub token_url: Url,
    pub token_file: PathBuf,
    pub token_format: SubjectFormat,
    pub impersonation: Option<Impersonation>,
    /// The other service accounts, impersonated with the same federated token.
    pub others: Vec<Impersonation>,
    /// HTTP basic client authentication to STS (`client_id`/`client_secret`), when given.
    pub client_auth: Option<(String, crate::secret::Secret)>,
    pub project_id: Option<String>,
    pub universe_domain: String,
    pub instance: Instance,
}

fn err(field: &str, problem: impl Into<String>) -> ConfigError {
    ConfigError::new(format!("{VAR}: {field}"), problem)
}

fn string_field<'a>(doc: &'a Value, field: &str) -> Result<Option<&'a str>, ConfigError> {
    match doc.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.trim())),
        Some(_) => Err(err(field, "must be a string")),
    }
}

impl GcpConfig {
    /// `None` when GCP is not enabled (`GOOGLE_APPLICATION_CREDENTIALS` unset).
    pub fn from_env(env: &Env, flags: &Flags) -> Result<Option<Self>, ConfigError> {
        let Some(path) = env.get(VAR) else {
            return Ok(None);
        };
        let path = PathBuf::from(path);
        let bytes = env.read_file(VAR, &path, MAX_FILE_BYTES)?;
        let doc: Value = serde_json::from_slice(&bytes).map_err(|e| {
            ConfigError::new(VAR, format!("{} is not valid JSON: {e}", path.display()))
        })?;
        let mut config = Self::from_json(&doc, env, flags)?;
        config.credentials_file = path;
        Ok(Some(config))
    }

    /// Validates an `external_account` document.
    pub fn from_json(doc: &Value, env: &Env, flags: &Flags) -> Result<Self, ConfigError> {
        if !doc.is_object() {
            return Err(ConfigError::new(VAR, "the file is not a JSON object"));
        }
        match string_field(doc, "type")? {
            Some("external_account") => {}
            Some(other) => {
                return Err(err(
                    "type",
                    format!(
                        "is {other:?}; the sidecar serves only \"external_account\" (workload identity federation) credentials"
                    ),
                ));
            }
            None => return Err(err("type", "is missing (expected \"external_account\")")),
        }
        let audience = string_field(doc, "audience")?
            .ok_or_else(|| err("audience", "is missing"))?
            .to_string();
        let provider = parse_audience(&audience)?;
        let subject_token_type = match string_field(doc, "subject_token_type")? {
            Some(t @ (JWT_TOKEN_TYPE | ID_TOKEN_TYPE)) => t.to_string(),
            Some(other) => {
                return Err(err(
                    "subject_token_type",
                    format!(
                        "{other:?} is not a token type a Kubernetes service-account token can be (use {JWT_TOKEN_TYPE})"
                    ),
                ));
            }
            None => return Err(err("subject_token_type", "is missing")),
        };
        let universe_domain = string_field(doc, "universe_domain")?
            .unwrap_or("googleapis.com")
            .to_string();
        let token_url = match string_field(doc, "token_url")? {
            Some(url) => endpoint(&format!("{VAR}: token_url"), url)?,
            None => endpoint(
                &format!("{VAR}: universe_domain"),
                &format!("https://sts.{universe_domain}/v1/token"),
            )?,
        };
        let (token_file, token_format) = credential_source(doc)?;
        let impersonation = impersonation(doc)?;
        let universe = string_field(doc, "universe_domain")?.unwrap_or("googleapis.com");
        let others = others(&flags.gcp_service_account, impersonation.as_ref(), universe)?;
        if string_field(doc, "workforce_pool_user_project")?.is_some() {
            return Err(err(
                "workforce_pool_user_project",
                "workforce identity federation is for people, not Kubernetes workloads",
            ));
        }
        let client_auth = match (
            string_field(doc, "client_id")?,
            string_field(doc, "client_secret")?,
        ) {
            (Some(id), Some(secret)) => Some((id.to_string(), crate::secret::Secret::new(secret))),
            (Some(_), None) => return Err(err("client_secret", "is missing but client_id is set")),
            _ => None,
        };
        let project_id = env
            .get("GOOGLE_CLOUD_PROJECT")
            .map(|p| p.trim().to_string())
            .or_else(|| {
                // `NAME@PROJECT.iam.gserviceaccount.com` names its project.
                impersonation.as_ref().and_then(|i| {
                    i.email
                        .split_once('@')
                        .and_then(|(_, d)| d.strip_suffix(".iam.gserviceaccount.com"))
                        .map(str::to_string)
                })
            });
        if let Some(p) = &project_id {
            // 6–30 characters, or longer with a `domain:` prefix (legacy domain-scoped projects).
            let valid = (6..=100).contains(&p.len())
                && p.bytes().all(|b| {
                    b.is_ascii_lowercase()
                        || b.is_ascii_digit()
                        || b == b'-'
                        || b == b':'
                        || b == b'.'
                });
            if !valid {
                return Err(ConfigError::new(
                    "GOOGLE_CLOUD_PROJECT",
                    format!("{p:?} is not a project id (lower-case letters, digits, hyphens)"),
                ));
            }
        }
        let instance = instance(env, flags)?;
        Ok(GcpConfig {
            credentials_file: PathBuf::new(),
            audience,
            provider,
            subject_token_type,
            token_url,
            token_file,
            token_format,
            impersonation,
            others,
            client_auth,
            project_id,
            universe_domain,
            instance,
        })
    }

    /// The email `/email` and `service-accounts/` show: the service account, or in direct
    /// federation the pool-style `PROJECT.svc.id.goog` that GKE shows.
    pub fn email(&self) -> String {
        match &self.impersonation {
            Some(i) => i.email.clone(),
            None => format!(
                "{}.svc.id.goog",
                self.project_id
                    .as_deref()
                    .unwrap_or(&self.provider.project_number)
            ),
        }
    }
}

/// `//iam.googleapis.com/projects/NUM/locations/global/workloadIdentityPools/POOL/providers/PROV`.
fn parse_audience(audience: &str) -> Result<Provider, ConfigError> {
    let bad = |why: &str| {
        err(
            "audience",
            format!(
                "{audience:?} {why}; expected //iam.googleapis.com/projects/NUMBER/locations/global/workloadIdentityPools/POOL/providers/PROVIDER"
            ),
        )
    };
    if audience.starts_with("//iam.googleapis.com/locations/global/workforcePools/") {
        return Err(bad("is a workforce pool (for people, not workloads)"));
    }
    let rest = audience
        .strip_prefix("//iam.googleapis.com/projects/")
        .ok_or_else(|| bad("is not a workload identity pool provider"))?;
    let parts: Vec<&str> = rest.split('/').collect();
    match parts.as_slice() {
        [
            number,
            "locations",
            "global",
            "workloadIdentityPools",
            pool,
            "providers",
            provider,
        ] if !number.is_empty()
            && number.bytes().all(|b| b.is_ascii_digit())
            && !pool.is_empty()
            && !provider.is_empty() =>
        {
            Ok(Provider {
                project_number: number.to_string(),
                pool: pool.to_string(),
                provider: provider.to_string(),
            })
        }
        _ => Err(bad(
            "is not a workload identity pool provider with a project number",
        )),
    }
}

fn credential_source(doc: &Value) -> Result<(PathBuf, SubjectFormat), ConfigError> {
    let source = doc
        .get("credential_source")
        .ok_or_else(|| err("credential_source", "is missing"))?;
    if !source.is_object() {
        return Err(err("credential_source", "must be an object"));
    }
    // `file` takes precedence over `url`, as in every google-auth library.
    let Some(file) = string_field(source, "file")
        .map_err(|_| err("credential_source.file", "must be a string"))?
    else {
        for (key, what) in [
            ("executable", "runs a command"),
            ("url", "fetches the token from a URL"),
            ("certificate", "uses an X.509 certificate"),
            ("environment_id", "is an AWS credential source"),
        ] {
            if source.get(key).is_some() {
                return Err(err(
                    &format!("credential_source.{key}"),
                    format!(
                        "this credential source {what}; the sidecar serves only credential_source.file (the projected service-account token)"
                    ),
                ));
            }
        }
        return Err(err("credential_source.file", "is missing"));
    };
    let format = match source.get("format") {
        None | Some(Value::Null) => SubjectFormat::Text,
        Some(f) => match string_field(f, "type")
            .map_err(|_| err("credential_source.format.type", "must be a string"))?
        {
            None | Some("text") => SubjectFormat::Text,
            Some("json") => {
                let field = string_field(f, "subject_token_field_name")
                    .map_err(|_| {
                        err(
                            "credential_source.format.subject_token_field_name",
                            "must be a string",
                        )
                    })?
                    .ok_or_else(|| {
                        err(
                            "credential_source.format.subject_token_field_name",
                            "is required with format type \"json\"",
                        )
                    })?;
                SubjectFormat::Json {
                    field: field.to_string(),
                }
            }
            Some(other) => {
                return Err(err(
                    "credential_source.format.type",
                    format!("{other:?} must be \"text\" or \"json\""),
                ));
            }
        },
    };
    Ok((PathBuf::from(file), format))
}

fn impersonation(doc: &Value) -> Result<Option<Impersonation>, ConfigError> {
    const FIELD: &str = "service_account_impersonation_url";
    let Some(url) = string_field(doc, FIELD)? else {
        return Ok(None);
    };
    let access_token_url = endpoint(&format!("{VAR}: {FIELD}"), url)?;
    let path = access_token_url.path().to_string();
    let (prefix, account) = path
        .strip_suffix(":generateAccessToken")
        .and_then(|p| p.rsplit_once("/serviceAccounts/"))
        .ok_or_else(|| {
            err(
                FIELD,
                format!("{url:?} must end in /serviceAccounts/EMAIL:generateAccessToken"),
            )
        })?;
    let email = percent_decode(account);
    if email.is_empty() || email.contains('/') {
        return Err(err(FIELD, format!("{url:?} names no service account")));
    }
    let mut id_token_url = access_token_url.clone();
    id_token_url.set_path(&format!(
        "{prefix}/serviceAccounts/{account}:generateIdToken"
    ));
    let lifetime_secs = match doc
        .get("service_account_impersonation")
        .and_then(|s| s.get("token_lifetime_seconds"))
    {
        None | Some(Value::Null) => DEFAULT_LIFETIME,
        Some(v) => {
            let field = "service_account_impersonation.token_lifetime_seconds";
            let n = v
                .as_u64()
                .ok_or_else(|| err(field, "must be a whole number of seconds"))?;
            if !(u64::from(MIN_LIFETIME)..=u64::from(MAX_LIFETIME)).contains(&n) {
                return Err(err(
                    field,
                    format!("{n} is outside {MIN_LIFETIME}–{MAX_LIFETIME}"),
                ));
            }
            n as u32
        }
    };
    Ok(Some(Impersonation {
        email,
        access_token_url,
        id_token_url,
        lifetime_secs,
    }))
}

/// The other service accounts' impersonation URLs: on the configuration's IAM Credentials host
/// and path prefix when it impersonates, else on the universe's; its token lifetime, else an hour.
fn others(
    emails: &[String],
    default: Option<&Impersonation>,
    universe: &str,
) -> Result<Vec<Impersonation>, ConfigError> {
    const FLAG: &str = "--gcp-service-account";
    if emails.len() > MAX_SERVICE_ACCOUNTS {
        return Err(ConfigError::new(
            FLAG,
            format!(
                "{} service accounts; at most {MAX_SERVICE_ACCOUNTS} per pod",
                emails.len()
            ),
        ));
    }
    let mut out: Vec<Impersonation> = Vec::new();
    for email in emails {
        let email = email.trim();
        let valid = email.contains('@')
            && email.len() <= 254
            && email
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"@.-_".contains(&b));
        if !valid {
            return Err(ConfigError::new(
                FLAG,
                format!("{email:?} is not a service account email"),
            ));
        }
        if default.is_some_and(|d| d.email == email) || out.iter().any(|o| o.email == email) {
            return Err(ConfigError::new(FLAG, format!("{email} is given twice")));
        }
        let access = match default {
            Some(d) => {
                let mut url = d.access_token_url.clone();
                let path = url.path().to_string();
                let prefix = path
                    .rsplit_once("/serviceAccounts/")
                    .map(|(p, _)| p)
                    .unwrap_or("");
                url.set_path(&format!(
                    "{prefix}/serviceAccounts/{email}:generateAccessToken"
                ));
                url
            }
            None => endpoint(
                FLAG,
                &format!(
                    "https://iamcredentials.{universe}/v1/projects/-/serviceAccounts/{email}:generateAccessToken"
                ),
            )?,
        };
        let mut id_token_url = access.clone();
        let id_path = access
            .path()
            .replace(":generateAccessToken", ":generateIdToken");
        id_token_url.set_path(&id_path);
        out.push(Impersonation {
            email: email.to_string(),
            access_token_url: access,
            id_token_url,
            lifetime_secs: default.map_or(DEFAULT_LIFETIME, |d| d.lifetime_secs),
        });
    }
    Ok(out)
}

fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={}", s.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

fn instance(env: &Env, flags: &Flags) -> Result<Instance, ConfigError> {
    let name = flags
        .gcp_instance_name
        .clone()
        .or_else(|| env.get("HOSTNAME").map(str::to_string))
        .unwrap_or_else(|| "credbroker".to_string());
    // GCE instance ids are 19-digit numbers; derive a stable one from the name.
    let id = flags.gcp_instance_id.unwrap_or_else(|| {
        let hash = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, name.as_bytes());
        let mut b = [0u8; 8];
        b.copy_from_slice(&hash.as_ref()[..8]);
        1_000_000_000_000_000_000 + u64::from_be_bytes(b) % 8_000_000_000_000_000_000
    });
    let hostname = flags
        .gcp_instance_hostname
        .clone()
        .unwrap_or_else(|| name.clone());
    for (flag, value) in [
        ("--gcp-zone", &flags.gcp_zone),
        ("--gcp-cluster-location", &flags.gcp_cluster_location),
    ] {
        if let Some(v) = value {
            check_region(flag, v)?;
        }
    }
    Ok(Instance {
        name,
        id,
        hostname,
        zone: flags.gcp_zone.clone(),
        cluster_name: flags.gcp_cluster_name.clone(),
        cluster_location: flags.gcp_cluster_location.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const AUD: &str = "//iam.googleapis.com/projects/123456/locations/global/workloadIdentityPools/pool/providers/k8s";

    fn doc() -> Value {
        json!({
            "type": "external_account",
            "audience": AUD,
            "subject_token_type": JWT_TOKEN_TYPE,
            "token_url": "https://sts.googleapis.com/v1/token",
            "service_account_impersonation_url": "https://iamcredentials.googleapis.com/v1/projects/-/serviceAccounts/app@my-project.iam.gserviceaccount.com:generateAccessToken",
            "service_account_impersonation": {"token_lifetime_seconds": 1800},
            "credential_source": {"file": "/var/run/secrets/sts.googleapis.com/serviceaccount/token", "format": {"type": "text"}},
        })
    }

    fn load(doc: &Value) -> Result<GcpConfig, ConfigError> {
        GcpConfig::from_json(doc, &Env::default(), &Flags::default())
    }

    fn with(mut d: Value, path: &[&str], v: Value) -> Value {
        let mut at = &mut d;
        for p in &path[..path.len() - 1] {
            at = &mut at[*p];
        }
        let last = path[path.len() - 1];
        if v.is_null() {
            at.as_object_mut().unwrap().remove(last);
        } else {
            at[last] = v;
        }
        d
    }

    #[test]
    fn the_documented_file_parses() {
        let c = load(&doc()).unwrap();
        assert_eq!(c.provider.project_number, "123456");
        assert_eq!(c.provider.pool, "pool");
        assert_eq!(c.provider.provider, "k8s");
        assert_eq!(c.token_url.as_str(), "https://sts.googleapis.com/v1/token");
        assert_eq!(c.token_format, SubjectFormat::Text);
        let i = c.impersonation.as_ref().unwrap();
        assert_eq!(i.email, "app@my-project.iam.gserviceaccount.com");
        assert_eq!(i.lifetime_secs, 1800);
        assert_eq!(
            i.id_token_url.as_str(),
            "https://iamcredentials.googleapis.com/v1/projects/-/serviceAccounts/app@my-project.iam.gserviceaccount.com:generateIdToken"
        );
        assert_eq!(c.project_id.as_deref(), Some("my-project"));
        assert_eq!(c.email(), "app@my-project.iam.gserviceaccount.com");
        assert_eq!(c.universe_domain, "googleapis.com");
    }

    #[test]
    fn direct_federation_and_defaults() {
        let d = with(doc(), &["service_account_impersonation_url"], Value::Null);
        let d = with(d, &["token_url"], Value::Null);
        let env = Env::from_pairs([
            ("GOOGLE_CLOUD_PROJECT", "my-project"),
            ("HOSTNAME", "app-7d9f"),
        ]);
        let c = GcpConfig::from_json(&d, &env, &Flags::default()).unwrap();
        assert!(c.impersonation.is_none());
        assert_eq!(c.token_url.as_str(), "https://sts.googleapis.com/v1/token");
        assert_eq!(c.email(), "my-project.svc.id.goog");
        assert_eq!(c.instance.name, "app-7d9f");
        assert_eq!(c.instance.hostname, "app-7d9f");
        assert!(c.instance.id >= 1_000_000_000_000_000_000);
        let c = load(&with(d, &["credential_source", "format"], Value::Null)).unwrap();
        assert_eq!(c.project_id, None);
        assert_eq!(c.email(), "123456.svc.id.goog");
    }

    #[test]
    fn json_format() {
        let d = with(
            doc(),
            &["credential_source", "format"],
            json!({"type": "json", "subject_token_field_name": "id_token"}),
        );
        assert_eq!(
            load(&d).unwrap().token_format,
            SubjectFormat::Json {
                field: "id_token".into()
            }
        );
        let d = with(
            d,
            &["credential_source", "format", "subject_token_field_name"],
            Value::Null,
        );
        assert_eq!(
            load(&d).unwrap_err().subject,
            "GOOGLE_APPLICATION_CREDENTIALS: credential_source.format.subject_token_field_name"
        );
    }

    #[test]
    fn unservable_sources_name_the_field() {
        for (key, value) in [
            ("executable", json!({"command": "/bin/get-token"})),
            ("url", json!("http://169.254.169.254/token")),
            (
                "certificate",
                json!({"use_default_certificate_config": true}),
            ),
        ] {
            let d = with(doc(), &["credential_source"], json!({ key: value }));
            let e = load(&d).unwrap_err();
            assert_eq!(e.subject, format!("{VAR}: credential_source.{key}"), "{e}");
        }
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (with(doc(), &["type"], json!("service_account")), "type"),
            (with(doc(), &["audience"], Value::Null), "audience"),
            (
                with(
                    doc(),
                    &["audience"],
                    json!(
                        "https://iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/providers/x"
                    ),
                ),
                "audience",
            ),
            (
                with(
                    doc(),
                    &["audience"],
                    json!("//iam.googleapis.com/locations/global/workforcePools/p/providers/x"),
                ),
                "audience",
            ),
            (
                with(
                    doc(),
                    &["subject_token_type"],
                    json!("urn:ietf:params:oauth:token-type:saml2"),
                ),
                "subject_token_type",
            ),
            (
                with(
                    doc(),
                    &["token_url"],
                    json!("http://sts.example.com/v1/token"),
                ),
                "token_url",
            ),
            (
                with(
                    doc(),
                    &["service_account_impersonation_url"],
                    json!(
                        "https://iamcredentials.googleapis.com/v1/projects/-/serviceAccounts/x:signJwt"
                    ),
                ),
                "service_account_impersonation_url",
            ),
            (
                with(
                    doc(),
                    &["service_account_impersonation", "token_lifetime_seconds"],
                    json!(60),
                ),
                "service_account_impersonation.token_lifetime_seconds",
            ),
            (
                with(doc(), &["credential_source"], Value::Null),
                "credential_source",
            ),
            (
                with(
                    doc(),
                    &["credential_source", "format", "type"],
                    json!("xml"),
                ),
                "credential_source.format.type",
            ),
        ];
        for (d, field) in cases {
            let e = load(&d).unwrap_err();
            assert_eq!(e.subject, format!("{VAR}: {field}"), "{e}");
        }
    }

    #[test]
    fn files() {
        let fs = std::sync::Arc::new(crate::fs::MemFs::new());
        let path = PathBuf::from("/etc/credbroker/gcp/creds.json");
        let env = Env::from_pairs([(VAR, path.display().to_string())]).with_fs(fs.clone());
        let e = GcpConfig::from_env(&env, &Flags::default()).unwrap_err();
        assert_eq!(e.subject, VAR);
        fs.insert(&path, "{not json");
        let e = GcpConfig::from_env(&env, &Flags::default()).unwrap_err();
        assert!(e.problem.contains("not valid JSON"), "{e}");
        fs.insert(&path, vec![b' '; 65 * 1024]);
        let e = GcpConfig::from_env(&env, &Flags::default()).unwrap_err();
        assert!(e.problem.contains("larger than 64 KiB"), "{e}");
        fs.insert(&path, doc().to_string());
        let c = GcpConfig::from_env(&env, &Flags::default())
            .unwrap()
            .unwrap();
        assert_eq!(c.credentials_file, path);
        assert!(
            GcpConfig::from_env(&Env::default(), &Flags::default())
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn the_cli_with_every_cloud_is_consistent() {
        use clap::CommandFactory;
        crate::cli::Cli::command().debug_assert();
    }

    #[test]
    fn instance_flags() {
        let flags = Flags {
            gcp_zone: Some("us-central1-a".into()),
            gcp_instance_id: Some(42),
            ..Flags::default()
        };
        let c = GcpConfig::from_json(&doc(), &Env::default(), &flags).unwrap();
        assert_eq!(c.instance.zone.as_deref(), Some("us-central1-a"));
        assert_eq!(c.instance.id, 42);
        let flags = Flags {
            gcp_zone: Some("projects/1/zones/x".into()),
            ..Flags::default()
        };
        assert_eq!(
            GcpConfig::from_json(&doc(), &Env::default(), &flags)
                .unwrap_err()
                .subject,
            "--gcp-zone"
        );
    }
}

//! Azure configuration, from the variables the Azure Workload Identity webhook injects
//! (docs/azure.md, "Workload identity webhook"), plus the sidecar's own flags.

use std::sync::Arc;

use std::path::PathBuf;

use reqwest::Url;

use super::Azure;
use crate::clouds::Cloud;
use crate::config::{ConfigError, Env};
use crate::http::client::endpoint;
use crate::secret::Secret;

/// The resource kept warm when `--azure-resources` is not given (Azure Resource Manager).
pub const DEFAULT_RESOURCE: &str = "https://management.azure.com/";
/// The public cloud's authority host, as the azwi webhook injects it (trailing slash included).
const DEFAULT_AUTHORITY_HOST: &str = "https://login.microsoftonline.com/";
/// The shared `X-IDENTITY-HEADER` value must not be guessable: at least this many characters.
const MIN_IDENTITY_HEADER_LEN: usize = 16;
/// Longest resource accepted in configuration or a request (App ID URIs are far shorter).
const MAX_RESOURCE_LEN: usize = 1024;

#[derive(clap::Args, Debug, Clone)]
// clap names a flattened struct's group after the struct; every cloud's is called `Flags`.
#[group(id = "azure_flags")]
pub struct Flags {
    /// The X-IDENTITY-HEADER value the App Service endpoint (/msi/token) requires; give the
    /// application the same value as IDENTITY_HEADER. Without it, /msi/token is disabled.
    #[arg(long, env = "CREDBROKER_AZURE_IDENTITY_HEADER", value_name = "VALUE",
          hide_env_values = true, value_parser = parse_identity_header)]
    pub azure_identity_header: Option<Secret>,

    /// Resources fetched at start and kept warm (comma-separated); /readyz/azure waits for them.
    /// Other resources are fetched on first request and cached.
    #[arg(long, env = "CREDBROKER_AZURE_RESOURCES", value_name = "LIST",
          value_delimiter = ',', default_value = DEFAULT_RESOURCE)]
    pub azure_resources: Vec<String>,

    /// Object (principal) id of the identity, so requests naming it by object_id/principal_id
    /// are served. Without it such requests get 400 (identity not found).
    #[arg(long, env = "CREDBROKER_AZURE_OBJECT_ID", value_name = "GUID")]
    pub azure_object_id: Option<String>,

    /// ARM resource id of the user-assigned identity, so requests naming it by
    /// msi_res_id/mi_res_id are served. Without it such requests get 400.
    #[arg(long, env = "CREDBROKER_AZURE_MSI_RES_ID", value_name = "ARM_ID")]
    pub azure_msi_res_id: Option<String>,

    /// Another managed identity federated with the same token (its own federated identity
    /// credential for this ServiceAccount): CLIENT_ID[:object-id=OID][:msi-res-id=ARM_ID].
    /// Requests select it by client_id, object_id or msi_res_id. Repeatable.
    #[arg(long, env = "CREDBROKER_AZURE_IDENTITY", value_name = "CLIENT_ID[:object-id=OID][:msi-res-id=ID]",
          value_delimiter = ',', action = clap::ArgAction::Append)]
    pub azure_identity: Vec<String>,
}

impl Default for Flags {
    fn default() -> Self {
        Flags {
            azure_identity_header: None,
            azure_resources: vec![DEFAULT_RESOURCE.to_string()],
            azure_object_id: None,
            azure_msi_res_id: None,
            azure_identity: Vec::new(),
        }
    }
}

/// At most this many managed identities besides the default (each a token per resource).
pub const MAX_IDENTITIES: usize = 16;

fn parse_identity_header(value: &str) -> Result<Secret, String> {
    if value.len() < MIN_IDENTITY_HEADER_LEN {
        return Err(format!(
            "must be at least {MIN_IDENTITY_HEADER_LEN} characters (it is the only thing guarding /msi/token)"
        ));
    }
    if !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("must be printable ASCII without spaces (it is sent as a header)".into());
    }
    Ok(Secret::new(value))
}

/// The identity this sidecar holds, as requests may name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub client_id: Arc<str>,
    pub tenant_id: String,
    pub object_id: Option<String>,
    pub msi_res_id: Option<String>,
}

#[derive(Debug, Clone)]
pub struct AzureConfig {
    pub identity: Identity,
    /// The other managed identities, federated with the same token.
    pub others: Vec<Identity>,
    pub token_file: PathBuf,
    /// Normalised authority host, always ending in `/`.
    pub authority: Url,
    /// `{authority}{tenant}/oauth2/v2.0/token`.
    pub token_url: Url,
    pub identity_header: Option<Secret>,
    /// The warm resources, as given (each is echoed back exactly to callers asking for it).
    pub resources: Vec<String>,
}

impl AzureConfig {
    /// `None` when Azure is not enabled (none of the three workload-identity variables is set).
    pub fn from_env(env: &Env, flags: &Flags) -> Result<Option<Self>, ConfigError> {
        let Some([client_id, tenant_id, token_file]) = env.all_or_none(
            Azure::TITLE,
            [
                "AZURE_CLIENT_ID",
                "AZURE_TENANT_ID",
                "AZURE_FEDERATED_TOKEN_FILE",
            ],
        )?
        else {
            return Ok(None);
        };
        let client_id = guid("AZURE_CLIENT_ID", client_id)?;
        let tenant_id = tenant("AZURE_TENANT_ID", tenant_id)?;
        let token_file = PathBuf::from(token_file);
        let authority = authority_host(env.get("AZURE_AUTHORITY_HOST"))?;
        let token_url = authority
            .join(&format!("{tenant_id}/oauth2/v2.0/token"))
            .map_err(|e| ConfigError::new("AZURE_AUTHORITY_HOST", e.to_string()))?;
        let object_id = flags
            .azure_object_id
            .as_deref()
            .map(|v| guid("--azure-object-id", v))
            .transpose()?;
        let msi_res_id = flags
            .azure_msi_res_id
            .as_deref()
            .map(|id| arm_id("--azure-msi-res-id", id))
            .transpose()?;
        let mut others: Vec<Identity> = Vec::new();
        for spec in &flags.azure_identity {
            let other = other_identity(spec, &tenant_id)?;
            let clash = |i: &Identity| i.client_id == other.client_id;
            if clash(&others_or_default(&client_id)) || others.iter().any(clash) {
                return Err(ConfigError::new(
                    "--azure-identity",
                    format!("client id {} is given twice", other.client_id),
                ));
            }
            others.push(other);
        }
        if others.len() > MAX_IDENTITIES {
            return Err(ConfigError::new(
                "--azure-identity",
                format!(
                    "{} identities; at most {MAX_IDENTITIES} per pod",
                    others.len()
                ),
            ));
        }
        let mut resources: Vec<String> = Vec::new();
        for r in &flags.azure_resources {
            let r = r.trim();
            if r.is_empty() {
                continue;
            }
            if let Err(why) = check_resource(r) {
                return Err(ConfigError::new(
                    "--azure-resources",
                    format!("{r:?}: {why}"),
                ));
            }
            if !resources.iter().any(|have| scope_for(have) == scope_for(r)) {
                resources.push(r.to_string());
            }
        }
        Ok(Some(AzureConfig {
            others,
            identity: Identity {
                client_id: client_id.into(),
                tenant_id,
                object_id,
                msi_res_id,
            },
            token_file,
            authority,
            token_url,
            identity_header: flags.azure_identity_header.clone(),
            resources,
        }))
    }
}

/// A stand-in with only the client id, to compare against.
fn others_or_default(client_id: &str) -> Identity {
    Identity {
        client_id: client_id.into(),
        tenant_id: String::new(),
        object_id: None,
        msi_res_id: None,
    }
}

/// `CLIENT_ID[:object-id=OID][:msi-res-id=ARM_ID]`.
fn other_identity(spec: &str, tenant_id: &str) -> Result<Identity, ConfigError> {
    const FLAG: &str = "--azure-identity";
    let mut parts = spec.split(':');
    let client_id = guid(FLAG, parts.next().unwrap_or_default())?;
    let (mut object_id, mut msi_res_id) = (None, None);
    for part in parts {
        match part.split_once('=') {
            Some(("object-id", v)) => object_id = Some(guid(FLAG, v)?),
            Some(("msi-res-id", v)) => msi_res_id = Some(arm_id(FLAG, v)?),
            _ => {
                return Err(ConfigError::new(
                    FLAG,
                    format!("{spec:?}: {part:?} is neither object-id=GUID nor msi-res-id=ARM_ID"),
                ));
            }
        }
    }
    Ok(Identity {
        client_id: client_id.into(),
        tenant_id: tenant_id.to_string(),
        object_id,
        msi_res_id,
    })
}

/// A user-assigned identity's ARM resource id.
fn arm_id(subject: &str, id: &str) -> Result<String, ConfigError> {
    let id = id.trim();
    if id.to_ascii_lowercase().starts_with("/subscriptions/") && !id.contains(',') {
        Ok(id.to_string())
    } else {
        Err(ConfigError::new(
            subject,
            format!(
                "{id:?} is not an ARM resource id (/subscriptions/.../userAssignedIdentities/NAME)"
            ),
        ))
    }
}

/// The v2 scope for a v1 `resource` (docs/azure.md, "Resource to scope"): append `/.default` unless
/// it is already there, and never trim a trailing slash — `https://management.azure.com/` becomes
/// `https://management.azure.com//.default`, because Entra takes everything before the last
/// `/` as the resource.
pub fn scope_for(resource: &str) -> String {
    if resource.ends_with("/.default") {
        resource.to_string()
    } else {
        format!("{resource}/.default")
    }
}

/// A resource must be one App ID URI or GUID: no whitespace (that would be several scopes), no
/// control characters, bounded length.
pub fn check_resource(resource: &str) -> Result<(), &'static str> {
    if resource.is_empty() {
        return Err("is empty");
    }
    if resource.len() > MAX_RESOURCE_LEN {
        return Err("is too long");
    }
    if resource
        .chars()
        .any(|c| c.is_whitespace() || c.is_control())
    {
        return Err("must be a single resource (no spaces or control characters)");
    }
    Ok(())
}

/// `8-4-4-4-12` hex digits; returned in lower case (Entra compares GUIDs case-insensitively).
fn guid(subject: &str, value: &str) -> Result<String, ConfigError> {
    let v = value.trim();
    let groups: Vec<&str> = v.split('-').collect();
    let lens = [8, 4, 4, 4, 12];
    let ok = groups.len() == 5
        && groups
            .iter()
            .zip(lens)
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()));
    if !ok {
        return Err(ConfigError::new(
            subject,
            format!("{v:?} is not a GUID (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)"),
        ));
    }
    Ok(v.to_ascii_lowercase())
}

/// A tenant GUID or verified domain. `common`, `organizations` and `consumers` are refused:
/// the client-credentials grant needs one specific tenant.
fn tenant(subject: &str, value: &str) -> Result<String, ConfigError> {
    let v = value.trim();
    if guid(subject, v).is_ok() {
        return Ok(v.to_ascii_lowercase());
    }
    if ["common", "organizations", "consumers"].contains(&v.to_ascii_lowercase().as_str()) {
        return Err(ConfigError::new(
            subject,
            format!("{v:?} is not a tenant; the client-credentials grant needs the tenant id"),
        ));
    }
    let domain = !v.is_empty()
        && v.len() <= 253
        && v.contains('.')
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
    if !domain {
        return Err(ConfigError::new(
            subject,
            format!("{v:?} is neither a tenant GUID nor a domain name"),
        ));
    }
    Ok(v.to_ascii_lowercase())
}

/// `AZURE_AUTHORITY_HOST` normalised: `https://` when no scheme is given, exactly one trailing
/// `/` (the webhook writes `https://login.microsoftonline.com/`, users often omit it), no query.
/// `http://` is accepted only for a loopback host (a local emulator).
pub fn authority_host(raw: Option<&str>) -> Result<Url, ConfigError> {
    const SUBJECT: &str = "AZURE_AUTHORITY_HOST";
    let raw = raw.map(str::trim).unwrap_or(DEFAULT_AUTHORITY_HOST);
    let with_scheme = if raw.contains("://") {
        raw.to_string()
    } else {
        format!("https://{raw}")
    };
    let mut url = endpoint(SUBJECT, &with_scheme)?;
    if url.query().is_some() || url.fragment().is_some() {
        return Err(ConfigError::new(
            SUBJECT,
            format!("{raw:?} must not have a query or fragment"),
        ));
    }
    let path = format!("{}/", url.path().trim_end_matches('/'));
    url.set_path(&path);
    if let Some(host) = url.host_str()
        && host.eq_ignore_ascii_case("login.microsoftonline.de")
    {
        tracing::warn!(
            host,
            "Microsoft Cloud Germany closed in 2021; this authority host will not answer"
        );
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLIENT: &str = "5E29463D-1A2B-4C3D-8E9F-0123456789AB";
    const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";

    fn env(pairs: &[(&str, &str)]) -> Env {
        let mut e = Env::from_pairs([
            ("AZURE_CLIENT_ID", CLIENT),
            ("AZURE_TENANT_ID", TENANT),
            (
                "AZURE_FEDERATED_TOKEN_FILE",
                "/var/run/secrets/azure/tokens/azure-identity-token",
            ),
        ]);
        for (k, v) in pairs {
            e.set(*k, *v);
        }
        e
    }

    fn load(pairs: &[(&str, &str)]) -> Result<AzureConfig, ConfigError> {
        AzureConfig::from_env(&env(pairs), &Flags::default()).map(Option::unwrap)
    }

    #[test]
    fn disabled_without_variables() {
        assert!(
            AzureConfig::from_env(&Env::default(), &Flags::default())
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn partial_configuration_names_the_missing_variable() {
        let e = AzureConfig::from_env(
            &Env::from_pairs([("AZURE_CLIENT_ID", CLIENT), ("AZURE_TENANT_ID", TENANT)]),
            &Flags::default(),
        )
        .unwrap_err();
        assert_eq!(e.subject, "AZURE_FEDERATED_TOKEN_FILE");
        assert!(
            e.problem
                .contains("AZURE_CLIENT_ID and AZURE_TENANT_ID are")
        );
        let e = AzureConfig::from_env(
            &Env::from_pairs([("AZURE_FEDERATED_TOKEN_FILE", "/t")]),
            &Flags::default(),
        )
        .unwrap_err();
        assert_eq!(e.subject, "AZURE_CLIENT_ID");
    }

    #[test]
    fn ids_are_validated_and_lower_cased() {
        let c = load(&[]).unwrap();
        assert_eq!(&*c.identity.client_id, CLIENT.to_ascii_lowercase());
        assert_eq!(c.identity.tenant_id, TENANT);
        assert_eq!(
            load(&[("AZURE_CLIENT_ID", "not-a-guid")])
                .unwrap_err()
                .subject,
            "AZURE_CLIENT_ID"
        );
        assert_eq!(
            load(&[("AZURE_TENANT_ID", "contoso.onmicrosoft.com")])
                .unwrap()
                .identity
                .tenant_id,
            "contoso.onmicrosoft.com"
        );
        for bad in ["common", "organizations", "a/b", "x y"] {
            assert_eq!(
                load(&[("AZURE_TENANT_ID", bad)]).unwrap_err().subject,
                "AZURE_TENANT_ID",
                "{bad}"
            );
        }
    }

    #[test]
    fn authority_host_normalisation() {
        let c = load(&[]).unwrap();
        assert_eq!(c.authority.as_str(), "https://login.microsoftonline.com/");
        assert_eq!(
            c.token_url.as_str(),
            format!("https://login.microsoftonline.com/{TENANT}/oauth2/v2.0/token")
        );
        for (given, want) in [
            (
                "https://login.microsoftonline.us/",
                "https://login.microsoftonline.us/",
            ),
            (
                "https://login.microsoftonline.us",
                "https://login.microsoftonline.us/",
            ),
            ("login.chinacloudapi.cn", "https://login.chinacloudapi.cn/"),
            ("http://127.0.0.1:9000//", "http://127.0.0.1:9000/"),
            (
                "https://proxy.example/entra",
                "https://proxy.example/entra/",
            ),
        ] {
            let c = load(&[("AZURE_AUTHORITY_HOST", given)]).unwrap();
            assert_eq!(c.authority.as_str(), want, "{given}");
            assert!(
                c.token_url.as_str() == format!("{want}{TENANT}/oauth2/v2.0/token"),
                "{}",
                c.token_url
            );
        }
        for bad in ["http://login.example.com/", "ftp://x", "https://x/?a=b"] {
            assert_eq!(
                load(&[("AZURE_AUTHORITY_HOST", bad)]).unwrap_err().subject,
                "AZURE_AUTHORITY_HOST",
                "{bad}"
            );
        }
    }

    #[test]
    fn scopes_append_default_and_keep_trailing_slashes() {
        assert_eq!(
            scope_for("https://management.azure.com/"),
            "https://management.azure.com//.default"
        );
        assert_eq!(
            scope_for("https://vault.azure.net"),
            "https://vault.azure.net/.default"
        );
        assert_eq!(
            scope_for("https://storage.azure.com/.default"),
            "https://storage.azure.com/.default"
        );
        assert_eq!(
            scope_for("00000003-0000-0000-c000-000000000000"),
            "00000003-0000-0000-c000-000000000000/.default"
        );
    }

    #[test]
    fn resources_flag() {
        let flags = Flags {
            azure_resources: vec![
                "https://vault.azure.net".into(),
                " ".into(),
                "https://vault.azure.net/.default".into(),
                "https://storage.azure.com/".into(),
            ],
            ..Flags::default()
        };
        let c = AzureConfig::from_env(&env(&[]), &flags).unwrap().unwrap();
        assert_eq!(
            c.resources,
            ["https://vault.azure.net", "https://storage.azure.com/"]
        );
        let flags = Flags {
            azure_resources: vec!["https://a https://b".into()],
            ..Flags::default()
        };
        let e = AzureConfig::from_env(&env(&[]), &flags).unwrap_err();
        assert_eq!(e.subject, "--azure-resources");
    }

    #[test]
    fn identity_header_rules() {
        assert!(parse_identity_header("short").is_err());
        assert!(parse_identity_header("has a space in it, long enough").is_err());
        let s = parse_identity_header("0123456789abcdef").unwrap();
        assert_eq!(format!("{s:?}"), "Secret(<redacted>)");
    }

    #[test]
    fn optional_identity_names() {
        let flags = Flags {
            azure_object_id: Some("AAAAAAAA-BBBB-CCCC-DDDD-EEEEEEEEEEEE".into()),
            azure_msi_res_id: Some("/subscriptions/s/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/id".into()),
            ..Flags::default()
        };
        let c = AzureConfig::from_env(&env(&[]), &flags).unwrap().unwrap();
        assert_eq!(
            c.identity.object_id.as_deref(),
            Some("aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee")
        );
        let flags = Flags {
            azure_msi_res_id: Some("my-identity".into()),
            ..Flags::default()
        };
        assert_eq!(
            AzureConfig::from_env(&env(&[]), &flags)
                .unwrap_err()
                .subject,
            "--azure-msi-res-id"
        );
    }
}

//! Cache keys: a scope set for access tokens, an (audience, format) for ID tokens.

use std::fmt;
use std::sync::Arc;

use super::sts::CLOUD_PLATFORM;

/// The scopes a token request without `?scopes=` gets, as GKE's metadata server lists them.
const DEFAULT_SCOPES: &[&str] = &[
    CLOUD_PLATFORM,
    "https://www.googleapis.com/auth/userinfo.email",
];
/// Bounds on what a caller may ask for: more is not a real request.
const MAX_SCOPES: usize = 32;
const MAX_SCOPE_CHARS: usize = 512;
const MAX_AUDIENCE_CHARS: usize = 2048;

/// A sorted, de-duplicated set of OAuth scopes. `a,b` and `b,a,b` are the same token.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ScopeSet(Arc<[String]>);

impl ScopeSet {
    pub fn default_set() -> Self {
        Self::from_iter(DEFAULT_SCOPES.iter().map(|s| s.to_string()))
    }

    fn from_iter(scopes: impl IntoIterator<Item = String>) -> Self {
        let mut v: Vec<String> = scopes.into_iter().collect();
        v.sort();
        v.dedup();
        ScopeSet(v.into())
    }

    /// The `?scopes=` value (comma-separated; spaces tolerated); `None` for the default set.
    pub fn parse(value: Option<&str>) -> Result<Option<Self>, String> {
        let Some(value) = value else { return Ok(None) };
        let scopes: Vec<String> = value
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        if scopes.is_empty() {
            return Ok(None);
        }
        if scopes.len() > MAX_SCOPES {
            return Err(format!("at most {MAX_SCOPES} scopes may be requested"));
        }
        if let Some(bad) = scopes
            .iter()
            .find(|s| s.len() > MAX_SCOPE_CHARS || !s.bytes().all(|b| b.is_ascii_graphic()))
        {
            let shown: String = bad.chars().take(64).collect();
            return Err(format!("invalid scope {shown:?}"));
        }
        Ok(Some(Self::from_iter(scopes)))
    }

    pub fn as_slice(&self) -> &[String] {
        &self.0
    }
}

impl fmt::Display for ScopeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join(","))
    }
}

/// `format=full` adds the `email` claims (`includeEmail`); `standard` does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IdFormat {
    Standard,
    Full,
}

impl IdFormat {
    /// GCE's default is `standard`.
    pub fn parse(value: Option<&str>) -> Result<Self, String> {
        match value {
            None | Some("") | Some("standard") => Ok(IdFormat::Standard),
            Some("full") => Ok(IdFormat::Full),
            Some(other) => {
                let shown: String = other.chars().take(32).collect();
                Err(format!(
                    "format must be \"standard\" or \"full\", not {shown:?}"
                ))
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdKey {
    pub audience: String,
    pub format: IdFormat,
}

impl IdKey {
    pub fn new(audience: &str, format: IdFormat) -> Result<Self, String> {
        if audience.is_empty() {
            return Err("non-empty audience parameter required".into());
        }
        if audience.len() > MAX_AUDIENCE_CHARS || audience.chars().any(char::is_control) {
            return Err("invalid audience parameter".into());
        }
        Ok(IdKey {
            audience: audience.to_string(),
            format,
        })
    }
}

impl fmt::Display for IdKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let format = match self.format {
            IdFormat::Standard => "standard",
            IdFormat::Full => "full",
        };
        write!(f, "identity[{format}]:{}", self.audience)
    }
}

/// Which Google service account: the configuration's own (`default`: the impersonated one, or
/// the pool's identity in direct federation), or another impersonated one, by email.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Account {
    Default,
    Other(Arc<str>),
}

/// An access token's cache key: the account and the scope set. The default account's keys read
/// as the bare scope set in `/readyz` and metrics, as they did with one account.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AccessKey {
    pub account: Account,
    pub scopes: ScopeSet,
}

impl AccessKey {
    pub fn new(account: Account, scopes: ScopeSet) -> Self {
        AccessKey { account, scopes }
    }
}

impl fmt::Display for AccessKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.account {
            Account::Default => write!(f, "{}", self.scopes),
            Account::Other(email) => write!(f, "{email} {}", self.scopes),
        }
    }
}

/// An ID token's cache key: the account and the (audience, format).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdFor {
    pub account: Account,
    pub id: IdKey,
}

impl fmt::Display for IdFor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.account {
            Account::Default => write!(f, "{}", self.id),
            Account::Other(email) => write!(f, "{email} {}", self.id),
        }
    }
}

/// The one federated (STS) token every impersonation is made with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Federated;

impl fmt::Display for Federated {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("sts")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_sets_are_sorted_and_deduplicated() {
        let a = ScopeSet::parse(Some("b,a,b")).unwrap().unwrap();
        let b = ScopeSet::parse(Some("a b")).unwrap().unwrap();
        assert_eq!(a, b);
        assert_eq!(a.to_string(), "a,b");
        assert_eq!(ScopeSet::parse(None).unwrap(), None);
        assert_eq!(ScopeSet::parse(Some(",,")).unwrap(), None);
        assert!(
            ScopeSet::parse(Some(
                &vec!["s"; 33]
                    .iter()
                    .enumerate()
                    .map(|(i, s)| format!("{s}{i}"))
                    .collect::<Vec<_>>()
                    .join(",")
            ))
            .is_err()
        );
        assert!(ScopeSet::parse(Some("ok,bad\u{1}")).is_err());
        let d = ScopeSet::default_set();
        assert_eq!(d.as_slice().len(), 2);
        assert_ne!(d, ScopeSet::parse(Some(CLOUD_PLATFORM)).unwrap().unwrap());
    }

    #[test]
    fn id_keys() {
        assert_eq!(IdFormat::parse(None), Ok(IdFormat::Standard));
        assert_eq!(IdFormat::parse(Some("full")), Ok(IdFormat::Full));
        assert!(IdFormat::parse(Some("huge")).is_err());
        assert_eq!(
            IdKey::new("", IdFormat::Full).unwrap_err(),
            "non-empty audience parameter required"
        );
        let k = IdKey::new("https://svc", IdFormat::Full).unwrap();
        assert_eq!(k.to_string(), "identity[full]:https://svc");
        assert_ne!(k, IdKey::new("https://svc", IdFormat::Standard).unwrap());
    }
}

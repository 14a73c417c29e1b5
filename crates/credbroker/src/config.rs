//! Start-up configuration: the environment as read once (variables and files, both injected),
//! the helpers every cloud's configuration shares, and the error that stops start-up.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use crate::fs::{Fs, RealFs};

/// A configuration problem, reported in one line naming the variable, flag or file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{subject}: {problem}")]
pub struct ConfigError {
    pub subject: String,
    pub problem: String,
}

impl ConfigError {
    pub fn new(subject: impl Into<String>, problem: impl Into<String>) -> Self {
        ConfigError {
            subject: subject.into(),
            problem: problem.into(),
        }
    }
}

/// What configuration reads: a snapshot of environment variables and a file system, both
/// injected, so that every cloud's configuration is tested without a process environment or
/// temporary files (and the admission webhook can run it against the files it will mount).
#[derive(Debug, Clone)]
pub struct Env {
    vars: HashMap<String, String>,
    fs: Arc<dyn Fs>,
}

impl Default for Env {
    fn default() -> Self {
        Env {
            vars: HashMap::new(),
            fs: Arc::new(RealFs),
        }
    }
}

impl Env {
    /// The process environment and the real file system.
    pub fn from_process() -> Self {
        Env {
            vars: std::env::vars().collect(),
            fs: Arc::new(RealFs),
        }
    }

    /// These variables and the real file system.
    pub fn from_pairs<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        Env {
            vars: pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
            fs: Arc::new(RealFs),
        }
    }

    /// The same variables over another file system.
    pub fn with_fs(mut self, fs: Arc<dyn Fs>) -> Self {
        self.fs = fs;
        self
    }

    pub fn fs(&self) -> &dyn Fs {
        self.fs.as_ref()
    }

    /// The variable's value; an empty value counts as unset (as the SDKs treat it).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.trim().is_empty())
    }

    pub fn set(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.vars.insert(name.into(), value.into());
    }

    pub fn require(&self, name: &str, because: &str) -> Result<&str, ConfigError> {
        self.get(name)
            .ok_or_else(|| ConfigError::new(name, format!("is not set ({because})")))
    }

    /// Either every one of `names` is set (their values, in order) or none is (`None`); one
    /// set without the others is an error naming the first missing one. `cloud` names who
    /// needs them, for the message.
    pub fn all_or_none<const N: usize>(
        &self,
        cloud: &str,
        names: [&str; N],
    ) -> Result<Option<[&str; N]>, ConfigError> {
        let values = names.map(|n| self.get(n));
        if values.iter().all(Option::is_none) {
            return Ok(None);
        }
        match values.iter().position(Option::is_none) {
            None => Ok(Some(values.map(Option::unwrap_or_default))),
            Some(missing) => Err(half_set(
                cloud,
                &names,
                &values.map(|v| v.is_some()),
                missing,
            )),
        }
    }

    /// A region name from the first of `names` that is set (`us-east-1`, `eu-frankfurt-1`;
    /// OCI short codes like `iad` pass too): lower-case letters, digits and hyphens.
    pub fn region(&self, names: &[&str]) -> Result<Option<String>, ConfigError> {
        let Some((name, value)) = names
            .iter()
            .find_map(|n| self.get(n).map(|v| (*n, v.trim())))
        else {
            return Ok(None);
        };
        check_region(name, value)?;
        Ok(Some(value.to_string()))
    }

    /// A file named in configuration, whole, through the injected file system. Errors name
    /// `subject` (the variable or flag) and the path.
    pub fn read_file(&self, subject: &str, path: &Path, cap: u64) -> Result<Vec<u8>, ConfigError> {
        self.fs.read(path, cap).map_err(|e| {
            let why = match e.kind() {
                std::io::ErrorKind::FileTooLarge => format!("is larger than {} KiB", cap / 1024),
                kind => format!("cannot be read: {kind}"),
            };
            ConfigError::new(subject, format!("{} {why}", path.display()))
        })
    }

    /// Checks that a file given in configuration exists and is readable now.
    pub fn readable_file(&self, subject: &str, path: &Path) -> Result<(), ConfigError> {
        self.fs.read(path, u64::MAX - 1).map(|_| ()).map_err(|e| {
            ConfigError::new(
                subject,
                format!("cannot read {}: {}", path.display(), e.kind()),
            )
        })
    }
}

/// "`missing` is not set, but A and B are (CLOUD needs all of A, B and C)".
fn half_set(cloud: &str, names: &[&str], set: &[bool], missing: usize) -> ConfigError {
    let given: Vec<&str> = names
        .iter()
        .zip(set)
        .filter(|(_, s)| **s)
        .map(|(n, _)| *n)
        .collect();
    let verb = if given.len() == 1 { "is" } else { "are" };
    let need = match names.len() {
        2 => "both".to_string(),
        n => format!("all {n}"),
    };
    ConfigError::new(
        names[missing],
        format!(
            "is not set, but {} {verb} ({cloud} needs {need}: {})",
            and_list(&given),
            and_list(names)
        ),
    )
}

/// `a`, `a and b`, `a, b and c`.
pub(crate) fn and_list(items: &[&str]) -> String {
    match items {
        [] => String::new(),
        [one] => one.to_string(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

/// Region names and codes: lower-case letters, digits and hyphens.
pub(crate) fn check_region(subject: &str, value: &str) -> Result<(), ConfigError> {
    let ok = !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(ConfigError::new(
            subject,
            format!("{value:?} is not a region name"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::MemFs;

    #[test]
    fn all_or_none() {
        let env = Env::from_pairs([("A", "1"), ("B", "2")]);
        assert_eq!(env.all_or_none("X", ["A", "B"]).unwrap(), Some(["1", "2"]));
        assert_eq!(env.all_or_none("X", ["C", "D"]).unwrap(), None);
        let e = env.all_or_none("X", ["A", "C"]).unwrap_err();
        assert_eq!(e.subject, "C");
        assert_eq!(e.problem, "is not set, but A is (X needs both: A and C)");
        let e = env.all_or_none("X", ["A", "B", "C"]).unwrap_err();
        assert_eq!(
            e.problem,
            "is not set, but A and B are (X needs all 3: A, B and C)"
        );
    }

    #[test]
    fn regions() {
        let env = Env::from_pairs([("R", "eu-west-1"), ("BAD", "EU West")]);
        assert_eq!(
            env.region(&["NONE", "R"]).unwrap().as_deref(),
            Some("eu-west-1")
        );
        assert_eq!(env.region(&["NONE"]).unwrap(), None);
        assert_eq!(env.region(&["BAD", "R"]).unwrap_err().subject, "BAD");
    }

    #[test]
    fn files_through_the_injected_fs() {
        let fs = Arc::new(MemFs::new().with("/etc/x", "hello"));
        let env = Env::default().with_fs(fs);
        assert_eq!(
            env.read_file("X", Path::new("/etc/x"), 10).unwrap(),
            b"hello"
        );
        let e = env.read_file("X", Path::new("/etc/x"), 2).unwrap_err();
        assert_eq!(e.to_string(), "X: /etc/x is larger than 0 KiB");
        let e = env.read_file("X", Path::new("/nope"), 10).unwrap_err();
        assert_eq!(e.to_string(), "X: /nope cannot be read: entity not found");
        assert!(env.readable_file("X", Path::new("/etc/x")).is_ok());
    }
}

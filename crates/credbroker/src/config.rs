//! Start-up configuration: the process environment as read once, and the errors that stop start-up.

use std::collections::HashMap;
use std::path::Path;

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

/// A snapshot of environment variables, injected so configuration is testable.
#[derive(Debug, Clone, Default)]
pub struct Env(HashMap<String, String>);

impl Env {
    pub fn from_process() -> Self {
        Env(std::env::vars().collect())
    }

    pub fn from_pairs<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        Env(pairs
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect())
    }

    /// The variable's value; an empty value counts as unset (as the SDKs treat it).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.trim().is_empty())
    }

    pub fn set(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.0.insert(name.into(), value.into());
    }

    pub fn require(&self, name: &str, because: &str) -> Result<&str, ConfigError> {
        self.get(name)
            .ok_or_else(|| ConfigError::new(name, format!("is not set ({because})")))
    }
}

/// Checks that a file given in configuration exists and is readable now.
pub fn readable_file(subject: &str, path: &Path) -> Result<(), ConfigError> {
    std::fs::File::open(path).map(|_| ()).map_err(|e| {
        ConfigError::new(
            subject,
            format!("cannot read {}: {}", path.display(), e.kind()),
        )
    })
}

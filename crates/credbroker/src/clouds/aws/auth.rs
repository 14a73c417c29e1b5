//! The value applications send in `Authorization` to `/v1/credentials`: configured outright
//! (`--aws-auth-token`, e.g. the pod's UID from the downward API, which SDKs that read only the
//! literal `AWS_CONTAINER_AUTHORIZATION_TOKEN` need), or a file's content (created with a random
//! value when missing) that is followed when it changes. A request forged through SSRF cannot
//! add headers, so any value the application has and an attacker's URL cannot carry will do; it
//! only has to be hard to guess for other processes that share the pod's loopback.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use tokio::sync::Notify;

use crate::config::ConfigError;
use crate::fs::{FileMode, Fs};
use crate::secret::{Secret, constant_time_eq};

const FILE_FLAG: &str = "--aws-auth-token-file";
/// A shared token is a few dozen bytes; 64 KiB is already absurd.
const MAX_BYTES: u64 = 64 * 1024;
/// How often the file is re-read even when no file event arrives.
const BACKSTOP: Duration = Duration::from_secs(30);

/// Where the value comes from (validated configuration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthSource {
    /// Nothing configured: the container endpoint is off; IMDSv2 still serves.
    None,
    /// This value, also written to `file` when one is given (for SDKs that read the file).
    Value {
        value: Secret,
        file: Option<PathBuf>,
    },
    /// The file's content, followed.
    File(PathBuf),
}

impl AuthSource {
    /// The file applications read (`AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE`), if any.
    pub fn file(&self) -> Option<&Path> {
        match self {
            AuthSource::Value { file, .. } => file.as_deref(),
            AuthSource::File(path) => Some(path),
            AuthSource::None => None,
        }
    }
}

/// The current value, compared in constant time on every request.
pub struct AuthToken {
    current: RwLock<Secret>,
}

impl AuthToken {
    /// Loads (or creates) the value; for a followed file, starts following it.
    pub fn start(
        source: &AuthSource,
        fs: &dyn Fs,
        mode: FileMode,
    ) -> Result<Option<Arc<AuthToken>>, ConfigError> {
        let value = match source {
            AuthSource::None => return Ok(None),
            AuthSource::Value { value, file } => {
                if let Some(path) = file {
                    fs.write_atomic(path, value.expose().as_bytes(), mode)
                        .map_err(|e| {
                            ConfigError::new(
                                FILE_FLAG,
                                format!("cannot write {}: {e}", path.display()),
                            )
                        })?;
                }
                return Ok(Some(Arc::new(AuthToken {
                    current: RwLock::new(value.clone()),
                })));
            }
            AuthSource::File(path) => load_or_create(fs, path, mode)?,
        };
        let token = Arc::new(AuthToken {
            current: RwLock::new(value),
        });
        if let AuthSource::File(path) = source {
            token.clone().follow(path.clone());
        }
        Ok(Some(token))
    }

    /// Whether `presented` is the current value.
    pub fn matches(&self, presented: &[u8]) -> bool {
        constant_time_eq(presented, self.current.read().expose().as_bytes())
    }

    /// Re-reads `path` whenever its directory changes, and every 30 s; a value that is not
    /// usable (empty, a line break, unreadable) keeps the last good one.
    fn follow(self: Arc<Self>, path: PathBuf) {
        let wake = Arc::new(Notify::new());
        let watcher = crate::fs::watch_parent(&path, wake.clone());
        let weak = Arc::downgrade(&self);
        drop(self);
        tokio::spawn(async move {
            let _watcher = watcher;
            loop {
                tokio::select! {
                    _ = wake.notified() => tokio::time::sleep(Duration::from_millis(20)).await,
                    _ = tokio::time::sleep(BACKSTOP) => {}
                }
                let Some(token) = weak.upgrade() else { return };
                token.reload(&crate::fs::RealFs, &path);
            }
        });
    }

    fn reload(&self, fs: &dyn Fs, path: &Path) {
        match read_value(fs, path) {
            Ok(value) => {
                let changed = self.current.read().expose() != value.expose();
                if changed {
                    *self.current.write() = value;
                    tracing::info!(path = %path.display(), "aws: the Authorization value changed; following it");
                }
            }
            Err(e) => tracing::warn!(error = %e, "aws: keeping the last Authorization value"),
        }
    }
}

/// The file's value, or a new random one written there when it does not exist.
fn load_or_create(fs: &dyn Fs, path: &Path, mode: FileMode) -> Result<Secret, ConfigError> {
    match fs.read(path, MAX_BYTES) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let raw: [u8; 32] = rand::random();
            let value =
                base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, raw);
            fs.write_atomic(path, value.as_bytes(), mode).map_err(|e| {
                ConfigError::new(FILE_FLAG, format!("cannot write {}: {e}", path.display()))
            })?;
            Ok(Secret::new(value))
        }
        _ => read_value(fs, path),
    }
}

fn read_value(fs: &dyn Fs, path: &Path) -> Result<Secret, ConfigError> {
    let bytes = fs.read(path, MAX_BYTES).map_err(|e| {
        ConfigError::new(
            FILE_FLAG,
            format!("cannot read {}: {}", path.display(), e.kind()),
        )
    })?;
    let value = String::from_utf8(bytes).map_err(|_| {
        ConfigError::new(FILE_FLAG, format!("{} is not UTF-8 text", path.display()))
    })?;
    if value.contains(['\r', '\n']) {
        return Err(ConfigError::new(
            FILE_FLAG,
            format!(
                "{} contains a line break; SDKs reject such a token (write it without a newline)",
                path.display()
            ),
        ));
    }
    if value.trim().is_empty() {
        return Err(ConfigError::new(
            FILE_FLAG,
            format!("{} is empty", path.display()),
        ));
    }
    Ok(Secret::new(value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::MemFs;

    #[tokio::test]
    async fn a_file_is_created_read_and_followed() {
        let fs = MemFs::new();
        let path = PathBuf::from("/run/credbroker/aws-auth-token");
        let source = AuthSource::File(path.clone());
        let token = AuthToken::start(&source, &fs, FileMode::new(false))
            .unwrap()
            .unwrap();
        let (created, mode) = fs.get(&path).unwrap();
        assert_eq!(created.len(), 43);
        assert_eq!(mode, FileMode(0o600));
        assert!(token.matches(&created));
        fs.insert(&path, "rotated-value-0123456789");
        token.reload(&fs, &path);
        assert!(token.matches(b"rotated-value-0123456789") && !token.matches(&created));
        // An unusable file keeps the last good value.
        fs.insert(&path, "with a newline\n");
        token.reload(&fs, &path);
        assert!(token.matches(b"rotated-value-0123456789"));
    }

    #[tokio::test]
    async fn a_value_is_used_and_written_for_the_file_readers() {
        let fs = MemFs::new();
        let source = AuthSource::Value {
            value: Secret::new("5f2b6c1e-0d43-4a8e-9b1f-6a7c2d9e3f10"),
            file: Some("/run/aws-token".into()),
        };
        let token = AuthToken::start(&source, &fs, FileMode::new(true))
            .unwrap()
            .unwrap();
        assert!(token.matches(b"5f2b6c1e-0d43-4a8e-9b1f-6a7c2d9e3f10"));
        let (written, mode) = fs.get(Path::new("/run/aws-token")).unwrap();
        assert_eq!(written, b"5f2b6c1e-0d43-4a8e-9b1f-6a7c2d9e3f10");
        assert_eq!(mode, FileMode(0o640));
        assert!(
            AuthToken::start(&AuthSource::None, &fs, FileMode::new(false))
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn bad_files_are_configuration_errors() {
        let fs = MemFs::new().with("/t", "a\n").with("/e", "  ");
        for p in ["/t", "/e"] {
            let e = load_or_create(&fs, Path::new(p), FileMode::new(false)).unwrap_err();
            assert_eq!(e.subject, FILE_FLAG);
        }
    }
}

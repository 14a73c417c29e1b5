//! The file system, as configuration sees it: an injected [`Fs`] so that configuration reads
//! files (credential configurations, CA bundles, keys, shared tokens) the same way in production
//! ([`RealFs`]), in tests ([`MemFs`], no temporary files) and in the admission webhook, which
//! runs the sidecar's configuration code against the files it is about to mount. Also: writing
//! files that hold secrets atomically with owner-only permissions.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use parking_lot::Mutex;

mod watch;
pub(crate) use watch::watch_parent;

/// Permission bits for secret files: 0600, or 0640 for a volume shared through `fsGroup`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileMode(pub u32);

impl FileMode {
    pub fn new(group_readable: bool) -> Self {
        FileMode(if group_readable { 0o640 } else { 0o600 })
    }
}

/// What configuration may do with files.
pub trait Fs: Send + Sync + std::fmt::Debug {
    /// The whole file, refusing one longer than `cap` bytes (`ErrorKind::FileTooLarge`).
    fn read(&self, path: &Path, cap: u64) -> std::io::Result<Vec<u8>>;
    /// Replaces `path` so a reader sees either the old or the new content, never a part.
    fn write_atomic(&self, path: &Path, contents: &[u8], mode: FileMode) -> std::io::Result<()>;
    fn is_file(&self, path: &Path) -> bool;
}

/// The real file system.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealFs;

impl Fs for RealFs {
    fn read(&self, path: &Path, cap: u64) -> std::io::Result<Vec<u8>> {
        use std::io::Read;
        let file = std::fs::File::open(path)?;
        let mut buf = Vec::new();
        file.take(cap + 1).read_to_end(&mut buf)?;
        if buf.len() as u64 > cap {
            return Err(std::io::ErrorKind::FileTooLarge.into());
        }
        Ok(buf)
    }

    fn write_atomic(&self, path: &Path, contents: &[u8], mode: FileMode) -> std::io::Result<()> {
        write_atomic(path, contents, mode)
    }

    fn is_file(&self, path: &Path) -> bool {
        path.is_file()
    }
}

/// Files held in memory: configuration tests, and the webhook's view of the files it mounts.
#[derive(Debug, Default)]
pub struct MemFs {
    files: Mutex<HashMap<PathBuf, (Vec<u8>, FileMode)>>,
}

impl MemFs {
    pub fn new() -> Self {
        MemFs::default()
    }

    /// Adds (or replaces) a file, mode 0644.
    pub fn with(self, path: impl Into<PathBuf>, contents: impl Into<Vec<u8>>) -> Self {
        self.insert(path, contents);
        self
    }

    pub fn insert(&self, path: impl Into<PathBuf>, contents: impl Into<Vec<u8>>) {
        self.files
            .lock()
            .insert(path.into(), (contents.into(), FileMode(0o644)));
    }

    /// A file's content and mode, if it exists.
    pub fn get(&self, path: &Path) -> Option<(Vec<u8>, FileMode)> {
        self.files.lock().get(path).cloned()
    }
}

impl Fs for MemFs {
    fn read(&self, path: &Path, cap: u64) -> std::io::Result<Vec<u8>> {
        match self.files.lock().get(path) {
            Some((bytes, _)) if bytes.len() as u64 > cap => {
                Err(std::io::ErrorKind::FileTooLarge.into())
            }
            Some((bytes, _)) => Ok(bytes.clone()),
            None => Err(std::io::ErrorKind::NotFound.into()),
        }
    }

    fn write_atomic(&self, path: &Path, contents: &[u8], mode: FileMode) -> std::io::Result<()> {
        self.files
            .lock()
            .insert(path.to_path_buf(), (contents.to_vec(), mode));
        Ok(())
    }

    fn is_file(&self, path: &Path) -> bool {
        self.files.lock().contains_key(path)
    }
}

/// Replaces `path` with `contents` so a reader sees either the old or the new file, never a part.
pub fn write_atomic(path: &Path, contents: &[u8], mode: FileMode) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(
        ".{name}.tmp-{}-{:x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode.0)
            .open(&tmp)?;
        // The umask may have narrowed the mode; set it exactly.
        f.set_permissions(std::fs::Permissions::from_mode(mode.0))?;
        f.write_all(contents)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn writes_atomically_with_mode() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("secret");
        write_atomic(&p, b"one", FileMode::new(false)).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"one");
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        write_atomic(&p, b"two", FileMode::new(true)).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o640
        );
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1);
    }
}

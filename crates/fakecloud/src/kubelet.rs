//! A projected service-account token volume written the way kubelet's AtomicWriter does:
//!
//! ```text
//! dir/..2026_11_22_08_30_00.123456789/token   the payload (a new directory per write)
//! dir/..data -> ..2026_11_22_08_30_00.123456789
//! dir/token  -> ..data/token                   created once, never changes
//! ```
//!
//! An update writes a new timestamped directory, points `..data_tmp` at it, renames
//! `..data_tmp` over `..data` (the atomic swap) and then deletes the old directory. A
//! watch on `dir/token` itself therefore sees the file vanish, not change.

use parking_lot::Mutex;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, symlink};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::task::JoinHandle;

use crate::issuer::{Issuer, ServiceAccount};
use crate::timefmt::kubelet_stamp;

const DATA: &str = "..data";
const DATA_TMP: &str = "..data_tmp";
const FILE: &str = "token";

/// One projected token file that can be rotated, replaced or corrupted on demand.
#[derive(Debug)]
pub struct ProjectedToken {
    dir: PathBuf,
    issuer: Arc<Issuer>,
    service_account: ServiceAccount,
    audience: String,
    lifetime: Duration,
    /// Current content; the lock also serialises swaps.
    current: Mutex<String>,
}

impl ProjectedToken {
    /// Creates `dir` if needed and writes the first token. Leftovers of an earlier run in
    /// the same directory are replaced.
    pub fn create(
        dir: &Path,
        issuer: Arc<Issuer>,
        sa: ServiceAccount,
        audience: &str,
        lifetime: Duration,
    ) -> io::Result<ProjectedToken> {
        fs::create_dir_all(dir)?;
        let token = ProjectedToken {
            dir: dir.to_path_buf(),
            issuer,
            service_account: sa,
            audience: audience.to_string(),
            lifetime,
            current: Mutex::new(String::new()),
        };
        token.rotate()?;
        let link = dir.join(FILE);
        match fs::symlink_metadata(&link) {
            Ok(meta) if meta.file_type().is_symlink() && fs::read_link(&link)? == data_file() => {}
            Ok(_) => {
                remove_any(&link)?;
                symlink(data_file(), &link)?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => symlink(data_file(), &link)?,
            Err(e) => return Err(e),
        }
        token.remove_stale_dirs()?;
        Ok(token)
    }

    /// `dir/token`, the path applications are given.
    pub fn path(&self) -> PathBuf {
        self.dir.join(FILE)
    }

    /// The volume directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn audience(&self) -> &str {
        &self.audience
    }

    pub fn service_account(&self) -> &ServiceAccount {
        &self.service_account
    }

    /// The content most recently swapped in (lossy UTF-8 for raw writes).
    pub fn current(&self) -> String {
        self.current.lock().clone()
    }

    /// Mints a fresh token, swaps it in atomically and returns it.
    pub fn rotate(&self) -> io::Result<String> {
        let token = self
            .issuer
            .mint(&self.service_account, &self.audience, self.lifetime);
        let mut current = self.current.lock();
        self.swap(token.as_bytes())?;
        *current = token.clone();
        Ok(token)
    }

    /// Swaps in arbitrary bytes with the same atomic swap (garbage, empty, foreign tokens).
    pub fn write_raw(&self, bytes: &[u8]) -> io::Result<()> {
        let mut current = self.current.lock();
        self.swap(bytes)?;
        *current = String::from_utf8_lossy(bytes).into_owned();
        Ok(())
    }

    /// Overwrites the current file in place, truncating first: a reader racing this sees a
    /// partial file, which kubelet never produces but broken volume plugins do.
    pub fn write_in_place(&self, bytes: &[u8]) -> io::Result<()> {
        let mut current = self.current.lock();
        let mut file = fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(self.dir.join(DATA).join(FILE))?;
        file.write_all(bytes)?;
        *current = String::from_utf8_lossy(bytes).into_owned();
        Ok(())
    }

    /// Rotates every `every` (first rotation after one period) until the task is aborted.
    pub fn spawn_rotation(self: &Arc<Self>, every: Duration) -> JoinHandle<()> {
        let token = Arc::clone(self);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                if let Err(err) = token.rotate() {
                    tracing::warn!(%err, dir = %token.dir.display(), "token rotation failed");
                }
            }
        })
    }

    /// AtomicWriter's swap. Callers hold `self.current`'s lock.
    fn swap(&self, bytes: &[u8]) -> io::Result<()> {
        let old = fs::read_link(self.dir.join(DATA)).ok();
        let new_name = self.new_timestamp_dir()?;
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(self.dir.join(&new_name).join(FILE))?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);

        let tmp = self.dir.join(DATA_TMP);
        if fs::symlink_metadata(&tmp).is_ok() {
            remove_any(&tmp)?;
        }
        symlink(&new_name, &tmp)?;
        fs::rename(&tmp, self.dir.join(DATA))?;

        if let Some(old) = old
            && old != Path::new(&new_name)
            && is_timestamp_dir(&old.to_string_lossy())
        {
            fs::remove_dir_all(self.dir.join(old))?;
        }
        Ok(())
    }

    /// Creates `..<stamp>`; the stamp has nanoseconds, the suffix only breaks exact ties.
    fn new_timestamp_dir(&self) -> io::Result<String> {
        let stamp = kubelet_stamp(SystemTime::now());
        for attempt in 0u32..100 {
            let name = if attempt == 0 {
                format!("..{stamp}")
            } else {
                format!("..{stamp}{attempt}")
            };
            match fs::DirBuilder::new()
                .mode(0o755)
                .create(self.dir.join(&name))
            {
                Ok(()) => return Ok(name),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "no free timestamped directory name",
        ))
    }

    /// Deletes timestamped directories that `..data` does not point at.
    fn remove_stale_dirs(&self) -> io::Result<()> {
        let _guard = self.current.lock();
        let live = fs::read_link(self.dir.join(DATA))?;
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if is_timestamp_dir(&name) && Path::new(&*name) != live {
                fs::remove_dir_all(entry.path())?;
            }
        }
        Ok(())
    }
}

/// `..data/token`, the target of the `token` symlink.
fn data_file() -> PathBuf {
    Path::new(DATA).join(FILE)
}

/// `..` followed by a digit: kubelet's timestamped payload directories.
fn is_timestamp_dir(name: &str) -> bool {
    name.strip_prefix("..")
        .and_then(|rest| rest.chars().next())
        .is_some_and(|c| c.is_ascii_digit())
}

fn remove_any(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

//! OCI's surface is two files, not a route (docs/oci.md, "Resource principal 2.2 files"): `rpst`
//! and `private.pem` in the output directory, named by `OCI_RESOURCE_PRINCIPAL_RPST` and
//! `..._PRIVATE_PEM`.
//!
//! Each file is replaced atomically (temp file in the same directory, fsync, rename) with no
//! trailing newline: the SDKs read the files whole, never trim them, and re-read them at times
//! of their own choosing (Py only after a 401), so a reader must never see a partial file. The
//! key is written once; the RPST is rewritten whenever the cache obtains a new one.
//!
//! An RPST is taken off disk once less than [`VALID_FLOOR`] of it is left and no new one has
//! arrived (refreshes failing for its whole remaining life): a file surface "serves" whatever
//! sits in the file, and no surface serves a credential inside the floor. SDKs then fail to
//! load the file (as they would get a 5xx from an HTTP surface) until the next RPST is written.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use super::key::PodKey;
use super::proxymux::Rpst;
use crate::clouds::Held;
use crate::fs::{FileMode, write_atomic};
use crate::refresh::{Issued, NotReady, Slot, Unavailable};
use crate::secret::Secret;

/// File names inside the output directory.
const RPST_FILE: &str = "rpst";
const KEY_FILE: &str = "private.pem";

/// How often the writer checks that its files are still there (someone may clean the volume),
/// and how soon it retries a failed write.
const BACKSTOP: Duration = Duration::from_secs(30);
const RETRY: Duration = Duration::from_secs(2);
/// An RPST with less than this left does not count as valid for readiness (the refresher's
/// serve floor: the contract never hands out a credential with < 5 s left).
const VALID_FLOOR: Duration = Duration::from_secs(5);

/// The two files and their mode.
#[derive(Debug, Clone)]
pub struct OciFiles {
    dir: PathBuf,
    mode: FileMode,
}

impl OciFiles {
    pub fn new(dir: impl Into<PathBuf>, mode: FileMode) -> Self {
        OciFiles {
            dir: dir.into(),
            mode,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn rpst_path(&self) -> PathBuf {
        self.dir.join(RPST_FILE)
    }

    pub fn key_path(&self) -> PathBuf {
        self.dir.join(KEY_FILE)
    }

    /// Creates the directory if needed.
    pub fn prepare(&self) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        if !std::fs::metadata(&self.dir)?.is_dir() {
            return Err(std::io::Error::other("not a directory"));
        }
        Ok(())
    }

    /// Writes `private.pem` unless it already holds exactly this key (a restart reusing it);
    /// then only its mode is corrected. Returns whether the file was written.
    pub fn write_key(&self, key: &PodKey) -> std::io::Result<bool> {
        let path = self.key_path();
        let pem = key.private_pem().expose().as_bytes();
        if let Ok(existing) = std::fs::read(&path) {
            let same = crate::secret::constant_time_eq(&existing, pem);
            drop(zeroize::Zeroizing::new(existing));
            if same {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(self.mode.0))?;
                return Ok(false);
            }
        }
        write_atomic(&path, pem, self.mode)?;
        Ok(true)
    }

    /// Replaces `rpst` with the token, no trailing newline.
    fn write_rpst(&self, token: &Secret) -> std::io::Result<()> {
        write_atomic(&self.rpst_path(), token.expose().as_bytes(), self.mode)
    }

    /// Removes `rpst` (an expired RPST must not be read); a missing file is fine.
    fn withdraw_rpst(&self) -> std::io::Result<bool> {
        match std::fs::remove_file(self.rpst_path()) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Both files present.
    fn both_exist(&self) -> Result<(), String> {
        for path in [self.key_path(), self.rpst_path()] {
            if !path.is_file() {
                return Err(format!("{} does not exist", path.display()));
            }
        }
        Ok(())
    }
}

/// What the writer last did.
#[derive(Default)]
struct WriterState {
    written: Option<Arc<Issued<Rpst>>>,
    error: Option<String>,
    writes: u64,
}

/// Mirrors the cache slot's RPST into the `rpst` file.
pub struct FileWriter {
    files: OciFiles,
    key: Arc<PodKey>,
    state: Mutex<WriterState>,
}

impl FileWriter {
    pub fn new(files: OciFiles, key: Arc<PodKey>) -> Self {
        FileWriter {
            files,
            key,
            state: Mutex::new(WriterState::default()),
        }
    }

    pub fn files(&self) -> &OciFiles {
        &self.files
    }

    /// RPST files written so far.
    pub fn writes(&self) -> u64 {
        self.state.lock().writes
    }

    /// Follows `slot` until aborted: writes every new RPST, retries failed writes, and restores
    /// files that disappeared.
    pub async fn run(self: Arc<Self>, slot: Arc<Slot<Rpst>>) {
        let mut rx = slot.subscribe();
        loop {
            let latest = rx.borrow_and_update().cred.clone();
            let ok = match &latest {
                Some(cred) => self.sync(cred),
                None => true,
            };
            let mut wait = if ok { BACKSTOP } else { RETRY };
            // Wake when the held RPST enters the floor, to take it off disk.
            if let Some(cred) = &latest {
                let servable = cred.remaining(Instant::now()).saturating_sub(VALID_FLOOR);
                if !servable.is_zero() {
                    wait = wait.min(servable + Duration::from_millis(10));
                }
            }
            tokio::select! {
                changed = rx.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Writes `cred` unless it is the one on disk and both files are still there.
    /// Returns `false` when a write failed.
    fn sync(&self, cred: &Arc<Issued<Rpst>>) -> bool {
        let mut state = self.state.lock();
        if cred.remaining(Instant::now()) <= VALID_FLOOR {
            return match self.files.withdraw_rpst() {
                Ok(removed) => {
                    if removed {
                        tracing::warn!(
                            cloud = "oci",
                            path = %self.files.rpst_path().display(),
                            "the rpst is about to expire and no new one could be obtained; removed it until the next one arrives"
                        );
                    }
                    true
                }
                Err(e) => {
                    tracing::error!(cloud = "oci", error = %e, "cannot remove the expiring rpst");
                    false
                }
            };
        }
        let current = state.written.as_ref().is_some_and(|w| Arc::ptr_eq(w, cred));
        if current && self.files.both_exist().is_ok() {
            return true;
        }
        let result = self
            .files
            .write_key(&self.key)
            .and_then(|_| self.files.write_rpst(&cred.value.token));
        match result {
            Ok(()) => {
                state.written = Some(cred.clone());
                state.error = None;
                state.writes += 1;
                tracing::info!(
                    cloud = "oci",
                    path = %self.files.rpst_path().display(),
                    expires_in_s = cred.remaining(Instant::now()).as_secs(),
                    rpst_jti = cred.value.claims.jti.as_deref().unwrap_or(""),
                    "rpst written"
                );
                true
            }
            Err(e) => {
                let why = format!("cannot write {}: {e}", self.files.dir().display());
                tracing::error!(cloud = "oci", error = %why, "rpst not written");
                state.error = Some(why);
                false
            }
        }
    }

    /// `Ok` once both files exist and the RPST on disk is valid.
    pub fn readiness(&self) -> Result<(), NotReady> {
        const LABEL: &str = "rpst file";
        let state = self.state.lock();
        if let Some(err) = &state.error {
            return Err(NotReady::new(LABEL, Unavailable::Undelivered(err.clone())));
        }
        let Some(written) = &state.written else {
            return Err(NotReady::new(LABEL, Unavailable::Pending));
        };
        if written.remaining(Instant::now()) <= VALID_FLOOR {
            return Err(NotReady::new(LABEL, Unavailable::Expired));
        }
        self.files
            .both_exist()
            .map_err(|why| NotReady::new(LABEL, Unavailable::Undelivered(why)))
    }
}

impl Held for FileWriter {
    fn readiness(&self) -> Result<(), NotReady> {
        FileWriter::readiness(self)
    }

    fn summary(&self) -> Result<String, NotReady> {
        self.readiness()?;
        Ok(format!(
            "pod key {}; files in {}",
            self.key.fingerprint(),
            self.files.dir().display()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::sync::atomic::{AtomicBool, Ordering};

    fn mode_of(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn files_have_no_newline_and_owner_only_mode() {
        let dir = tempfile::tempdir().unwrap();
        let files = OciFiles::new(dir.path().join("out"), FileMode::new(false));
        files.prepare().unwrap();
        let key = PodKey::generate().unwrap();
        assert!(files.write_key(&key).unwrap());
        files
            .write_rpst(&Secret::new("header.payload.sig"))
            .unwrap();
        let rpst = std::fs::read(files.rpst_path()).unwrap();
        assert_eq!(rpst, b"header.payload.sig");
        let pem = std::fs::read_to_string(files.key_path()).unwrap();
        assert!(!pem.ends_with('\n'));
        assert_eq!(mode_of(&files.rpst_path()), 0o600);
        assert_eq!(mode_of(&files.key_path()), 0o600);
        // The key is written once: the same key again leaves the file alone but fixes its mode.
        let group = OciFiles::new(files.dir(), FileMode::new(true));
        let before = std::fs::metadata(files.key_path())
            .unwrap()
            .modified()
            .unwrap();
        assert!(!group.write_key(&key).unwrap());
        assert_eq!(
            std::fs::metadata(files.key_path())
                .unwrap()
                .modified()
                .unwrap(),
            before
        );
        assert_eq!(mode_of(&files.key_path()), 0o640);
        group.write_rpst(&Secret::new("x.y.z")).unwrap();
        assert_eq!(mode_of(&files.rpst_path()), 0o640);
        assert!(group.both_exist().is_ok());
        std::fs::remove_file(files.rpst_path()).unwrap();
        assert!(group.both_exist().unwrap_err().contains("rpst"));
    }

    /// A reader polling the file while it is rewritten many times only ever sees one of the
    /// complete contents, never a truncated or mixed one.
    #[test]
    fn readers_never_see_a_partial_rpst() {
        let dir = tempfile::tempdir().unwrap();
        let files = OciFiles::new(dir.path(), FileMode::new(false));
        // Contents of very different lengths, so a partial read cannot pass for a whole one.
        let versions: Vec<String> = (0..8)
            .map(|i| {
                let c = char::from(b'a' + i as u8);
                std::iter::repeat_n(c, 1000 + i * 7919).collect()
            })
            .collect();
        files.write_rpst(&Secret::new(versions[0].clone())).unwrap();
        let done = Arc::new(AtomicBool::new(false));
        let reader = {
            let (path, versions, done) = (files.rpst_path(), versions.clone(), done.clone());
            std::thread::spawn(move || {
                let mut reads = 0u64;
                while !done.load(Ordering::Relaxed) {
                    let got = std::fs::read_to_string(&path).expect("the file always exists");
                    assert!(
                        versions.contains(&got),
                        "partial read of {} bytes",
                        got.len()
                    );
                    reads += 1;
                }
                reads
            })
        };
        for i in 0..400 {
            files
                .write_rpst(&Secret::new(versions[i % versions.len()].clone()))
                .unwrap();
        }
        done.store(true, Ordering::Relaxed);
        let reads = reader.join().unwrap();
        assert!(reads > 0);
        let leftovers = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(leftovers, 1, "temporary files left behind");
    }
}

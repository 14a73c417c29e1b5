//! Directory watches, all on one inotify instance: notify's watcher runs a thread per
//! instance, and a sidecar following its AWS and Azure tokens, the GCP credential
//! configuration's token and the container-credentials auth token ran four of them (the
//! webhook two more, for its certificate and key). One process-wide watcher holds every
//! watched directory; each [`DirWatch`] wakes its reader on events in its directory and
//! unwatches the directory when the last watch of it is dropped.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use parking_lot::Mutex;
use tokio::sync::Notify;

/// Wakes its reader on changes in one directory until dropped.
#[must_use = "the directory is watched while this lives"]
#[derive(Debug)]
pub(crate) struct DirWatch {
    dir: PathBuf,
    id: u64,
}

/// The readers of each watched directory. The watcher's thread takes only this lock (in
/// [`Shared::dispatch`]); `watch` and `unwatch` wait for that thread, so they are called
/// without it ([`Shared::watcher`] serialises them).
type Readers = HashMap<PathBuf, Vec<(u64, Arc<Notify>)>>;

struct Shared {
    /// Created on the first watch; `Err` keeps why it could not be.
    watcher: Mutex<Option<Result<RecommendedWatcher, String>>>,
    readers: Mutex<Readers>,
    next_id: std::sync::atomic::AtomicU64,
}

fn shared() -> &'static Shared {
    static SHARED: OnceLock<Shared> = OnceLock::new();
    SHARED.get_or_init(|| Shared {
        watcher: Mutex::new(None),
        readers: Mutex::new(HashMap::new()),
        next_id: std::sync::atomic::AtomicU64::new(0),
    })
}

impl Shared {
    /// Wakes the readers an event concerns: those of the directory an event's path is in, and
    /// of the path itself when it is a watched directory (its own removal or move). An event
    /// without paths (a queue overflow: notify asks for a rescan) or an error wakes everyone.
    fn dispatch(&self, event: notify::Result<notify::Event>) {
        let readers = self.readers.lock();
        let wake = |dir: &Path| {
            for (_, notify) in readers.get(dir).into_iter().flatten() {
                notify.notify_one();
            }
        };
        match event {
            Ok(event) if !event.paths.is_empty() => {
                if may_change(&event.kind) {
                    for path in &event.paths {
                        if let Some(dir) = path.parent() {
                            wake(dir);
                        }
                        wake(path);
                    }
                }
            }
            _ => readers.values().flatten().for_each(|(_, n)| n.notify_one()),
        }
    }

    fn add(&'static self, dir: &Path, wake: Arc<Notify>) -> Result<DirWatch, String> {
        let mut watcher = self.watcher.lock();
        let watcher = watcher
            .get_or_insert_with(|| {
                notify::recommended_watcher(|event| shared().dispatch(event))
                    .map_err(|e| e.to_string())
            })
            .as_mut()
            .map_err(|e| e.clone())?;
        let first = !self.readers.lock().contains_key(dir);
        if first {
            watcher
                .watch(dir, RecursiveMode::NonRecursive)
                .map_err(|e| e.to_string())?;
        }
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.readers
            .lock()
            .entry(dir.to_path_buf())
            .or_default()
            .push((id, wake));
        Ok(DirWatch {
            dir: dir.to_path_buf(),
            id,
        })
    }

    fn remove(&self, watch: &DirWatch) {
        let mut watcher = self.watcher.lock();
        let last = {
            let mut readers = self.readers.lock();
            let Some(list) = readers.get_mut(&watch.dir) else {
                return;
            };
            list.retain(|(id, _)| *id != watch.id);
            let last = list.is_empty();
            if last {
                readers.remove(&watch.dir);
            }
            last
        };
        if last && let Some(Ok(w)) = watcher.as_mut() {
            // The directory may be gone already; then so is its watch.
            let _ = w.unwatch(&watch.dir);
        }
    }
}

impl Drop for DirWatch {
    fn drop(&mut self) {
        shared().remove(self);
    }
}

/// Watches the directory holding `path` (kubelet and Secret volumes swap a `..data` symlink,
/// which silences a watch on the file itself) and wakes `wake` on any event there that can
/// change a file ([`may_change`]). `None` when the directory cannot be watched: callers re-read
/// on a backstop interval anyway.
pub(crate) fn watch_parent(path: &Path, wake: Arc<Notify>) -> Option<DirWatch> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    // One name per directory: inotify gives a directory one watch however it is named, and
    // notify reports its events under the name it was watched by last, so two spellings of one
    // directory (`/t` and `/t/../t`, or a symlink) would leave the first one's readers asleep.
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    match shared().add(&dir, wake) {
        Ok(w) => Some(w),
        Err(error) => {
            tracing::warn!(dir = %dir.display(), %error, "cannot watch directory; relying on periodic re-reads");
            None
        }
    }
}

/// Whether a watch event can mean a file's contents changed. notify's inotify backend also
/// reports every open (`IN_OPEN`), the watcher's own reads included: waking on those re-read the
/// file, which opened it again, a loop of ~45 re-reads a second in an idle sidecar (strace).
/// A writer closing its file (`IN_CLOSE_WRITE`) does count: that is when an in-place write ends.
fn may_change(kind: &notify::EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode, EventKind};
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::{FileMode, write_atomic};
    use std::time::Duration;

    #[test]
    fn only_events_that_can_change_a_file_wake_its_reader() {
        use notify::event::{
            AccessKind, AccessMode, CreateKind, DataChange, EventKind, ModifyKind, RemoveKind,
            RenameMode,
        };
        for (kind, wakes) in [
            (EventKind::Access(AccessKind::Open(AccessMode::Any)), false),
            (EventKind::Access(AccessKind::Read), false),
            (
                EventKind::Access(AccessKind::Close(AccessMode::Read)),
                false,
            ),
            (
                EventKind::Access(AccessKind::Close(AccessMode::Write)),
                true,
            ),
            (EventKind::Create(CreateKind::File), true),
            (EventKind::Modify(ModifyKind::Data(DataChange::Any)), true),
            (EventKind::Modify(ModifyKind::Name(RenameMode::To)), true),
            (EventKind::Remove(RemoveKind::File), true),
            (EventKind::Any, true),
            (EventKind::Other, true),
        ] {
            assert_eq!(may_change(&kind), wakes, "{kind:?}");
        }
    }

    async fn woken(n: &Notify, within: Duration) -> bool {
        tokio::time::timeout(within, n.notified()).await.is_ok()
    }

    /// A real inotify watch: reading the watched file (as every re-read does) must not wake
    /// the reader again, a replaced file must.
    #[tokio::test]
    async fn reading_a_watched_file_does_not_wake_its_reader() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, b"one").unwrap();
        let wake = Arc::new(Notify::new());
        let _watch = watch_parent(&path, wake.clone()).expect("inotify is available");
        for _ in 0..20 {
            assert_eq!(std::fs::read(&path).unwrap(), b"one");
        }
        assert!(
            !woken(&wake, Duration::from_millis(300)).await,
            "20 reads woke the watcher"
        );
        write_atomic(&path, b"two", FileMode::new(false)).unwrap();
        assert!(
            woken(&wake, Duration::from_secs(10)).await,
            "a replaced file wakes the watcher"
        );
    }

    /// One watcher for every directory: a change wakes the readers of its directory (two
    /// readers of one directory both), not those of another; the last watch of a directory
    /// dropped unwatches it, and it can be watched again.
    #[tokio::test]
    async fn one_watcher_wakes_each_directory_s_readers() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (in_a, also_a, in_b) = (
            a.path().join("aws"),
            a.path().join("azure"),
            b.path().join("gcp"),
        );
        let [wa, wa2, wb] = [(); 3].map(|()| Arc::new(Notify::new()));
        let watches = [
            watch_parent(&in_a, wa.clone()).unwrap(),
            watch_parent(&also_a, wa2.clone()).unwrap(),
            watch_parent(&in_b, wb.clone()).unwrap(),
        ];
        write_atomic(&in_a, b"1", FileMode::new(false)).unwrap();
        assert!(woken(&wa, Duration::from_secs(10)).await);
        assert!(woken(&wa2, Duration::from_secs(10)).await);
        assert!(
            !woken(&wb, Duration::from_millis(200)).await,
            "another directory's reader woke"
        );
        write_atomic(&in_b, b"1", FileMode::new(false)).unwrap();
        assert!(woken(&wb, Duration::from_secs(10)).await);

        let [w_a, w_a2, w_b] = watches;
        drop(w_b);
        drop(w_a);
        // a is still watched for the second reader.
        write_atomic(&also_a, b"2", FileMode::new(false)).unwrap();
        assert!(woken(&wa2, Duration::from_secs(10)).await);
        drop(w_a2);
        for dir in [a.path(), b.path()] {
            let dir = std::fs::canonicalize(dir).unwrap();
            assert!(
                shared().readers.lock().get(&dir).is_none(),
                "{dir:?} still watched"
            );
        }
        let _again = watch_parent(&in_b, wb.clone()).unwrap();
        write_atomic(&in_b, b"2", FileMode::new(false)).unwrap();
        assert!(
            woken(&wb, Duration::from_secs(10)).await,
            "a re-watched directory wakes"
        );
    }

    /// Two spellings of one directory share its watch, and both readers wake.
    #[tokio::test]
    async fn one_directory_by_two_names_wakes_both_readers() {
        let dir = tempfile::tempdir().unwrap();
        let name = dir.path().file_name().unwrap();
        let plain = dir.path().join("aws");
        let detour = dir.path().join("..").join(name).join("azure");
        let [wa, wb] = [(); 2].map(|()| Arc::new(Notify::new()));
        let _a = watch_parent(&plain, wa.clone()).unwrap();
        let _b = watch_parent(&detour, wb.clone()).unwrap();
        write_atomic(&plain, b"1", FileMode::new(false)).unwrap();
        assert!(woken(&wa, Duration::from_secs(10)).await);
        assert!(
            woken(&wb, Duration::from_secs(10)).await,
            "the second spelling's reader slept"
        );
    }

    #[test]
    fn an_unwatchable_directory_is_none() {
        let wake = Arc::new(Notify::new());
        assert!(watch_parent(Path::new("/nonexistent-credbroker-dir/token"), wake).is_none());
        assert!(
            shared()
                .readers
                .lock()
                .get(Path::new("/nonexistent-credbroker-dir"))
                .is_none()
        );
    }
}

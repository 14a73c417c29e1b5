use fakecloud::issuer::{Issuer, ServiceAccount};
use fakecloud::kubelet::ProjectedToken;
use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

fn timestamp_dirs(dir: &Path) -> Vec<String> {
    let mut dirs: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("..") && n.as_bytes().get(2).is_some_and(u8::is_ascii_digit))
        .collect();
    dirs.sort();
    dirs
}

fn create(dir: &Path) -> ProjectedToken {
    let issuer = Arc::new(Issuer::new("https://issuer.test"));
    ProjectedToken::create(
        dir,
        issuer,
        ServiceAccount::default(),
        "sts.amazonaws.com",
        Duration::from_secs(3600),
    )
    .unwrap()
}

#[test]
fn layout_matches_atomic_writer() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tokens/aws");
    let token = create(&dir);

    assert_eq!(token.path(), dir.join("token"));
    let link = fs::symlink_metadata(dir.join("token")).unwrap();
    assert!(link.file_type().is_symlink());
    assert_eq!(
        fs::read_link(dir.join("token")).unwrap(),
        Path::new("..data/token")
    );
    let data = fs::symlink_metadata(dir.join("..data")).unwrap();
    assert!(data.file_type().is_symlink());
    let target = fs::read_link(dir.join("..data")).unwrap();
    let target = target.to_string_lossy().into_owned();
    // ..2026_11_22_08_30_00.123456789
    assert!(target.starts_with(".."), "{target}");
    assert_eq!(target.len(), 2 + 19 + 1 + 9, "{target}");
    assert_eq!(&target[6..7], "_");
    assert_eq!(&target[21..22], ".");
    assert_eq!(timestamp_dirs(&dir), vec![target.clone()]);
    assert!(fs::metadata(dir.join(&target)).unwrap().is_dir());
    assert_eq!(fs::read_to_string(token.path()).unwrap(), token.current());
    assert!(!dir.join("..data_tmp").exists());
}

#[test]
fn rotation_swaps_data_and_removes_old_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("t");
    let token = create(&dir);
    let first = token.current();
    let old_target = fs::read_link(dir.join("..data")).unwrap();
    let token_link = fs::read_link(dir.join("token")).unwrap();

    let second = token.rotate().unwrap();
    assert_ne!(first, second);
    assert_eq!(token.current(), second);
    assert_eq!(fs::read_to_string(token.path()).unwrap(), second);
    let new_target = fs::read_link(dir.join("..data")).unwrap();
    assert_ne!(old_target, new_target);
    assert!(
        !dir.join(&old_target).exists(),
        "old timestamped dir removed"
    );
    assert!(
        fs::symlink_metadata(dir.join("..data"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(fs::read_link(dir.join("token")).unwrap(), token_link);
    assert_eq!(timestamp_dirs(&dir).len(), 1);

    // Many quick rotations never leave more than one payload directory.
    for _ in 0..20 {
        token.rotate().unwrap();
    }
    assert_eq!(timestamp_dirs(&dir).len(), 1);
}

#[test]
fn raw_and_in_place_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let token = create(tmp.path());
    token.write_raw(b"").unwrap();
    assert_eq!(fs::read(token.path()).unwrap(), b"");
    token.write_raw(b"\xffgarbage\n").unwrap();
    assert_eq!(fs::read(token.path()).unwrap(), b"\xffgarbage\n");
    assert_eq!(timestamp_dirs(tmp.path()).len(), 1);

    let before = fs::read_link(tmp.path().join("..data")).unwrap();
    token.write_in_place(b"eyJhbGciOi").unwrap();
    assert_eq!(fs::read(token.path()).unwrap(), b"eyJhbGciOi");
    assert_eq!(fs::read_link(tmp.path().join("..data")).unwrap(), before);
    assert_eq!(token.current(), "eyJhbGciOi");
}

#[test]
fn reusing_a_directory_cleans_leftovers() {
    let tmp = tempfile::tempdir().unwrap();
    let first = create(tmp.path());
    fs::create_dir(tmp.path().join("..2020_01_01_00_00_00.000000001")).unwrap();
    drop(first);
    let second = create(tmp.path());
    assert_eq!(timestamp_dirs(tmp.path()).len(), 1);
    assert_eq!(fs::read_to_string(second.path()).unwrap(), second.current());
}

#[tokio::test(start_paused = true)]
async fn spawn_rotation_rotates_on_schedule() {
    let tmp = tempfile::tempdir().unwrap();
    let token = Arc::new(create(tmp.path()));
    let first = token.current();
    let task = token.spawn_rotation(Duration::from_secs(30));
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(token.current(), first);
    tokio::time::sleep(Duration::from_secs(25)).await;
    let second = token.current();
    assert_ne!(second, first);
    assert_eq!(fs::read_to_string(token.path()).unwrap(), second);
    task.abort();
}

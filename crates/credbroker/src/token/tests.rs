use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::*;
use crate::clock::SystemClock;
use crate::token::jwt::fake_jwt;

fn token_expiring_in(secs: i64, n: u32) -> String {
    let now = SystemClock.unix_secs() as i64;
    fake_jwt(
        &json!({"sub": format!("system:serviceaccount:default:app{n}"), "exp": now + secs, "aud": ["sts.amazonaws.com"]}),
    )
}

/// kubelet's AtomicWriter: new timestamped dir, `..data_tmp` symlink, rename over `..data`.
fn kubelet_write(dir: &Path, content: &str, n: u32) {
    let ts = format!("..2026_11_22_00_00_00.{n:09}");
    std::fs::create_dir_all(dir.join(&ts)).unwrap();
    std::fs::write(dir.join(&ts).join("token"), content).unwrap();
    let old = std::fs::read_link(dir.join("..data")).ok();
    std::os::unix::fs::symlink(&ts, dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    if !dir.join("token").exists() {
        std::os::unix::fs::symlink("..data/token", dir.join("token")).unwrap();
    }
    if let Some(old) = old {
        std::fs::remove_dir_all(dir.join(old)).unwrap();
    }
}

fn open(path: &Path) -> Arc<TokenSource> {
    TokenSource::open(path, Arc::new(SystemClock), Arc::new(Metrics::new())).unwrap()
}

#[test]
fn reads_and_validates() {
    let dir = tempfile::tempdir().unwrap();
    kubelet_write(dir.path(), &token_expiring_in(3600, 0), 0);
    let src = open(&dir.path().join("token"));
    let tok = src.snapshot().token.unwrap();
    assert_eq!(
        tok.claims.sub.as_deref(),
        Some("system:serviceaccount:default:app0")
    );
    // A trailing newline (hand-written files) is tolerated.
    std::fs::write(dir.path().join("plain"), token_expiring_in(3600, 1) + "\n").unwrap();
    let src = open(&dir.path().join("plain"));
    assert!(!src.read_now().unwrap().secret.expose().ends_with('\n'));
}

#[test]
fn bad_content_is_reported_without_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("token");
    let secret_looking = "not-a-jwt-but-secret-ish-1234567890";
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"".to_vec(), "is empty"),
        (b"  \n".to_vec(), "is empty"),
        (
            secret_looking.as_bytes().to_vec(),
            "is not a JWT: expected three dot-separated parts, found 1",
        ),
        (vec![0xff, 0xfe, 0x00], "not UTF-8"),
        (vec![b'a'; 70 * 1024], "larger than 64 KiB (71680 bytes)"),
        (
            token_expiring_in(-1000, 2).into_bytes(),
            "the token expired 100",
        ), // 1000 or 1001 s
    ];
    for (content, expected) in cases {
        std::fs::write(&p, &content).unwrap();
        let src = open(&p);
        let err = src.read_now().unwrap_err().to_string();
        assert!(err.contains(expected), "{err:?} lacks {expected:?}");
        assert!(!err.contains(secret_looking));
        assert!(err.contains(&p.display().to_string()));
    }
}

#[test]
fn missing_file_fails_at_open() {
    let err = TokenSource::open(
        "/nonexistent/token",
        Arc::new(SystemClock),
        Arc::new(Metrics::new()),
    )
    .err()
    .unwrap();
    assert!(matches!(err, TokenError::Unreadable { .. }));
    assert!(err.to_string().contains("/nonexistent/token"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follows_repeated_kubelet_swaps() {
    let dir = tempfile::tempdir().unwrap();
    kubelet_write(dir.path(), &token_expiring_in(3600, 0), 0);
    let src = open(&dir.path().join("token"));
    let mut changes = src.changes();
    // A long backstop: only the directory watch can see the swaps in time.
    let _task = src.spawn_watch(Duration::from_secs(3600));
    tokio::time::sleep(Duration::from_millis(100)).await;
    for n in 1..=5 {
        let tok = token_expiring_in(3600, n);
        kubelet_write(dir.path(), &tok, n);
        tokio::time::timeout(Duration::from_secs(5), changes.changed())
            .await
            .unwrap_or_else(|_| panic!("swap {n} not seen"))
            .unwrap();
        let snap = src.snapshot();
        assert_eq!(snap.token.unwrap().secret.expose(), tok, "swap {n}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backstop_catches_changes_without_events() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("token");
    std::fs::write(&p, token_expiring_in(3600, 0)).unwrap();
    let src = open(&p);
    let mut changes = src.changes();
    // Deliberately no directory watch: only the backstop re-read runs.
    let weak = Arc::downgrade(&src);
    let task = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            match weak.upgrade() {
                Some(s) => {
                    let _ = s.read_now();
                }
                None => return,
            }
        }
    });
    std::fs::write(&p, "garbage").unwrap();
    tokio::time::timeout(Duration::from_secs(5), changes.changed())
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(
        src.snapshot().token,
        Err(TokenError::NotJwt { .. })
    ));
    task.abort();
}

/// Re-reading a file that stays unreadable (missing, or not UTF-8) is not a change: changes wake
/// failing refreshers for an immediate retry, which re-reads the file.
#[test]
fn a_file_that_stays_bad_does_not_tick() {
    let dir = tempfile::tempdir().unwrap();
    kubelet_write(dir.path(), &token_expiring_in(3600, 0), 0);
    let path = dir.path().join("token");
    let src = open(&path);
    let changes = src.changes();
    let data = std::fs::read_link(dir.path().join("..data")).unwrap();
    let payload = dir.path().join(data).join("token");
    for bad in [None, Some(b"\x00\xff not utf-8".to_vec()), Some(Vec::new())] {
        match &bad {
            None => std::fs::remove_file(&payload).unwrap(),
            Some(bytes) => std::fs::write(&payload, bytes).unwrap(),
        }
        assert!(src.read_now().is_err());
        let ticks = *changes.borrow();
        for _ in 0..5 {
            assert!(src.read_now().is_err());
        }
        assert_eq!(
            *changes.borrow(),
            ticks,
            "{bad:?}: unchanged bad file ticked"
        );
    }
    std::fs::write(&payload, token_expiring_in(3600, 1)).unwrap();
    let ticks = *changes.borrow();
    assert!(src.read_now().is_ok());
    assert_eq!(*changes.borrow(), ticks + 1);
}

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::Syncer;
use crate::catalog::Store;
use crate::model::template::{DEFAULT_TEMPLATE, Template};
use crate::origins::Origins;

fn syncer(dir: &Path, origin: &Path) -> Syncer {
    let store = Store::open(
        &dir.join("c.redb"),
        Template::parse(DEFAULT_TEMPLATE).unwrap(),
    )
    .unwrap();
    Syncer::new(
        Arc::new(store),
        Origins::new(vec![Some(origin.to_path_buf())], Default::default()),
        2,
        100,
    )
}

fn rewrite(path: &Path, byte: u8, mtime: std::time::SystemTime) {
    let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all(&vec![byte; 10_000]).unwrap();
    f.set_modified(mtime).unwrap();
}

/// Same size, same (future) mtime, same inode, new content: the
/// fingerprint catches it; a file with a sane mtime is trusted.
#[test]
fn future_mtime_is_checked_by_fingerprint() {
    let dir = tempfile::tempdir().unwrap();
    let origin = dir.path().join("o");
    std::fs::create_dir(&origin).unwrap();
    let future = std::time::SystemTime::now() + Duration::from_secs(86_400);
    let past = std::time::SystemTime::now() - Duration::from_secs(86_400);
    for (name, t) in [("future.mp3", future), ("past.mp3", past)] {
        std::fs::write(origin.join(name), vec![1u8; 10_000]).unwrap();
        rewrite(&origin.join(name), 1, t);
    }
    let s = syncer(dir.path(), &origin);
    s.sync_all().unwrap();
    assert_eq!(s.counters.probed.load(Ordering::Relaxed), 2);
    // Unchanged: nothing probed, even for the future mtime.
    s.sync_all().unwrap();
    assert_eq!(s.counters.probed.load(Ordering::Relaxed), 2);
    rewrite(&origin.join("future.mp3"), 2, future);
    rewrite(&origin.join("past.mp3"), 2, past);
    s.sync_all().unwrap();
    assert_eq!(
        s.counters.probed.load(Ordering::Relaxed),
        3,
        "only the file with the untrustworthy mtime is re-read"
    );
}

/// An unreachable origin keeps what the catalog knows.
#[test]
fn vanished_origin_does_not_empty_the_catalog() {
    let dir = tempfile::tempdir().unwrap();
    let origin = dir.path().join("o");
    std::fs::create_dir(&origin).unwrap();
    std::fs::write(origin.join("a.mp3"), b"x").unwrap();
    let s = syncer(dir.path(), &origin);
    s.sync_all().unwrap();
    assert_eq!(s.store.file_count().unwrap(), 1);
    std::fs::rename(&origin, dir.path().join("elsewhere")).unwrap();
    s.sync_all().unwrap();
    assert_eq!(s.store.file_count().unwrap(), 1);
}

/// A pruned pass stats no file in a directory whose mtime is unchanged,
/// yet sees additions and deletions (they change the directory's mtime).
#[test]
fn pruned_pass_skips_quiet_directories_and_sees_new_files() {
    let dir = tempfile::tempdir().unwrap();
    let origin = dir.path().join("o");
    std::fs::create_dir_all(origin.join("a")).unwrap();
    std::fs::create_dir_all(origin.join("b")).unwrap();
    std::fs::write(origin.join("a/1.mp3"), b"1").unwrap();
    std::fs::write(origin.join("b/2.mp3"), b"2").unwrap();
    let store = Store::open(
        &dir.path().join("c.redb"),
        Template::parse(DEFAULT_TEMPLATE).unwrap(),
    )
    .unwrap();
    let s = Syncer::new(
        Arc::new(store),
        Origins::new(vec![Some(origin.clone())], Default::default()),
        1,
        100,
    );
    let mut mtimes = HashMap::new();
    s.sync_origin_pruned(0, Path::new(""), Some(&mut mtimes))
        .unwrap();
    assert_eq!(s.store.file_count().unwrap(), 2);
    // Let the directory mtime tick, then change b only.
    std::thread::sleep(Duration::from_millis(20));
    std::fs::write(origin.join("b/3.mp3"), b"3").unwrap();
    std::fs::remove_file(origin.join("b/2.mp3")).unwrap();
    let unchanged_before = s.counters.unchanged.load(Ordering::Relaxed);
    s.sync_origin_pruned(0, Path::new(""), Some(&mut mtimes))
        .unwrap();
    let known = s.store.file_stats(0, b"").unwrap();
    let keys: Vec<Vec<u8>> = known.paths().map(<[u8]>::to_vec).collect();
    assert_eq!(keys.len(), 2);
    assert!(keys.contains(&b"a/1.mp3".to_vec()) && keys.contains(&b"b/3.mp3".to_vec()));
    assert_eq!(s.counters.probed.load(Ordering::Relaxed), 3);
    // a/1.mp3 was kept without a stat (its directory is quiet).
    assert_eq!(
        s.counters.unchanged.load(Ordering::Relaxed),
        unchanged_before + 1
    );
}

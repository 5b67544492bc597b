//! The chunk store end to end, on a temporary directory: written chunks
//! read back verified after a reopen, a flipped byte is found by the read,
//! the scrubber and verify (which repairs it), and leftovers of a crash go.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use crate::content::{ChunkCache, ContentInfo, ContentKey, Layout, Settings};

fn settings(dir: &std::path::Path) -> Settings {
    Settings {
        dir: dir.to_path_buf(),
        max_bytes: 1 << 30,
        min_free_percent: 0,
        probe_interval: Duration::from_millis(20),
    }
}

/// Runs the writer of `cache` until the returned flag is set.
fn writer(cache: &Arc<ChunkCache>) -> (Arc<AtomicBool>, std::thread::JoinHandle<()>) {
    let stop = Arc::new(AtomicBool::new(false));
    let (c, s) = (cache.clone(), stop.clone());
    let t = std::thread::spawn(move || c.run_writer(&s).unwrap());
    (stop, t)
}

fn bytes(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

#[test]
fn chunks_are_verified_on_read_scrubbed_and_repaired() {
    let dir = tempfile::tempdir().unwrap();
    let key = ContentKey::of(b"\0\0\0\0a.flac", 3 << 20, 7);
    let layout = Layout::new(3 << 20);
    let info = ContentInfo {
        origin: 0,
        rel_path: b"a.flac".to_vec(),
        size_bytes: 3 << 20,
        mtime_ns: 7,
    };
    let chunk = |i: u32| bytes(layout.range(i).1 as usize, i as u8);
    {
        let cache = ChunkCache::open(&settings(dir.path()));
        let (stop, t) = writer(&cache);
        for i in 0..layout.count() {
            cache.put(&key, i, &info, chunk(i).into());
        }
        assert!(cache.flush(Duration::from_secs(10)));
        assert!(cache.complete(&key, layout));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        t.join().unwrap();
    }
    // A crash left a temporary file: the next open removes it.
    std::fs::write(dir.path().join("tmp/left.1.1"), b"x").unwrap();
    let cache = ChunkCache::open(&settings(dir.path()));
    assert_eq!(
        std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
        0
    );
    assert_eq!(cache.used_bytes(), 3 << 20);
    for i in 0..layout.count() {
        let got = cache.get(&key, i, layout.range(i).1).expect("cached");
        assert_eq!(&got[..], &chunk(i)[..]);
    }
    // Flip a byte of chunk 1 on disk: a fresh engine's read finds it.
    let files: Vec<_> = walkdir::WalkDir::new(dir.path().join("chunks"))
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .map(|e| e.into_path())
        .collect();
    assert_eq!(files.len(), layout.count() as usize);
    let flip = |path: &std::path::Path| {
        let mut b = std::fs::read(path).unwrap();
        b[10] ^= 1;
        std::fs::write(path, b).unwrap();
    };
    flip(&files[0]);
    drop(cache);
    let cache = ChunkCache::open(&settings(dir.path()));
    let (stop, t) = writer(&cache);
    let bad = (0..layout.count())
        .filter(|i| cache.get(&key, *i, layout.range(*i).1).is_none())
        .count();
    assert_eq!(bad, 1);
    assert_eq!(cache.status().corrupt, 1);
    // The scrubber finds another flipped chunk and removes it.
    flip(&files[1]);
    drop(cache);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    t.join().unwrap();
    let cache = ChunkCache::open(&settings(dir.path()));
    let (_, found) = cache.scrub(None, 100);
    assert!(found >= 1, "the scrubber found nothing");
    // verify --repair fetches what is bad back.
    let (stop, t) = writer(&cache);
    for i in 0..layout.count() {
        if cache.get(&key, i, layout.range(i).1).is_none() {
            cache.put(&key, i, &info, chunk(i).into());
        }
    }
    assert!(cache.flush(Duration::from_secs(10)));
    let now: Vec<_> = walkdir::WalkDir::new(dir.path().join("chunks"))
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .map(|e| e.into_path())
        .collect();
    flip(&now[2]);
    let refetch = |_: &ContentInfo, i: u32| Some(chunk(i));
    let report = cache
        .verify(Some(&refetch), &mut |_, _| {}, &AtomicBool::new(false))
        .unwrap();
    assert_eq!((report.bad, report.repaired), (1, 1), "{report:?}");
    let report = cache
        .verify(None, &mut |_, _| {}, &AtomicBool::new(false))
        .unwrap();
    assert_eq!((report.bad, report.missing), (0, 0), "{report:?}");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    t.join().unwrap();
}

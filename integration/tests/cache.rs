//! The chunk cache in front of a real network share: an sshd on 127.0.0.1
//! with generated keys and sshfs mounting it (a FUSE filesystem, so the
//! engine caches it). Every test compares every byte it reads with the
//! origin's.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use musicfs_integration::share::within;
use musicfs_integration::*;

/// A library with multi-chunk files (2 MB wav and mp3) and one-chunk ones.
fn library() -> PathBuf {
    generated_library_with(
        16,
        41,
        &["--seconds", "12", "--formats", "wav=2,flac=1,mp3=1"],
    )
}

/// A test's own directory, a share of `export`, and a config that mounts
/// the share with its cache in `cache_dir`.
struct Setup {
    root: tempfile::TempDir,
    share: SshShare,
    export: PathBuf,
    config: PathBuf,
    cache_dir: PathBuf,
}

fn setup(export: &Path, extra: &str) -> Setup {
    let root = tempfile::Builder::new()
        .prefix("mfs-cache")
        .tempdir_in("/tmp")
        .unwrap();
    let share = SshShare::start(export);
    let cache_dir = root.path().join("cache");
    std::fs::create_dir_all(&cache_dir).unwrap();
    let config = root.path().join("config.toml");
    let any_disk = if extra.contains("cache_min_free_percent") {
        ""
    } else {
        musicfs_integration::CACHE_ON_ANY_DISK
    };
    std::fs::write(
        &config,
        format!(
            "origins = [{:?}]\ncache_dir = {:?}\ncache_fetch_timeout_ms = 2000\n{any_disk}{extra}\n",
            share.mountpoint(),
            cache_dir
        ),
    )
    .unwrap();
    Setup {
        root,
        share,
        export: export.to_path_buf(),
        config,
        cache_dir,
    }
}

impl Setup {
    fn mount(&self) -> Mount {
        Mount::start_with_config(&self.config, &[("MUSICFS_CACHE_PROBE_MS", "50")])
    }

    /// The export file behind a mounted file (read locally, never through
    /// the share, so that a hung share does not hang the test's check).
    fn export_file(&self, mounted: &Path) -> PathBuf {
        let origin = PathBuf::from(std::ffi::OsStr::from_bytes(
            &getxattr(mounted, "user.musicfs.origin").expect("origin xattr"),
        ));
        self.export.join(
            origin
                .strip_prefix(self.share.mountpoint())
                .expect("from the share"),
        )
    }
}

/// Drops the kernel's pages of a mounted file, so that the next read
/// reaches the engine.
fn evict(path: &Path) {
    if let Ok(f) = std::fs::File::open(path) {
        // SAFETY: an advice call on an open fd.
        unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    }
}

fn cached_bytes(path: &Path) -> u64 {
    getxattr(path, "user.musicfs.cached")
        .and_then(|v| String::from_utf8(v).ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn cache_status(m: &Mount) -> serde_json::Value {
    status_json(&m.state)["chunk_cache"].clone()
}

fn figure(v: &serde_json::Value, name: &str) -> u64 {
    v[name]
        .as_u64()
        .unwrap_or_else(|| panic!("no {name} in {v}"))
}

/// Reads every file through the mount (page cache dropped first) and
/// checks it against the export; returns the files.
fn read_all(s: &Setup, m: &Mount) -> Vec<PathBuf> {
    let files = list_files(&m.mnt);
    for rel in &files {
        let p = m.mnt.join(rel);
        evict(&p);
        assert_eq!(
            hash_file(&p).unwrap(),
            hash_file(&s.export_file(&p)).unwrap(),
            "{} has wrong bytes",
            rel.display()
        );
    }
    files
}

/// Waits until every file under the mount is wholly in the cache.
fn wait_all_cached(m: &Mount, files: &[PathBuf]) {
    for rel in files {
        let p = m.mnt.join(rel);
        let size = std::fs::metadata(&p).unwrap().len();
        assert!(
            eventually(Duration::from_secs(20), || cached_bytes(&p) == size),
            "{} is not wholly cached: {} of {size}",
            rel.display(),
            cached_bytes(&p)
        );
    }
}

fn musicfs(args: &[&str], state: &Path) -> std::process::Output {
    let out = Command::new(musicfs_bin())
        .args(args)
        .arg("--state-dir")
        .arg(state)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "musicfs {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn chunk_files(cache_dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = walkdir::WalkDir::new(cache_dir.join("chunks"))
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .map(|e| e.into_path())
        .collect();
    out.sort();
    out
}

fn flip_byte(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x5a;
    std::fs::write(path, bytes).unwrap();
}

/// Reads go through the cache (misses, then hits), every file ends up
/// wholly cached, and with the share hung: cached files open and read right
/// without it, uncached ones fail EIO within the deadline, listings answer.
#[test]
fn a_hung_share_serves_cached_files_and_fails_uncached_ones_with_eio() {
    let s = setup(&library(), "");
    let m = s.mount();
    let files = read_all(&s, &m);
    assert!(files.len() >= 12, "{files:?}");
    let st = cache_status(&m);
    assert!(figure(&st, "misses") > 0, "{st}");
    assert_eq!(st["state"], "normal", "{st}");
    wait_all_cached(&m, &files);
    // Warm: every chunk from the cache.
    let misses = figure(&cache_status(&m), "misses");
    read_all(&s, &m);
    let st = cache_status(&m);
    assert_eq!(
        figure(&st, "misses"),
        misses,
        "a warm read went to the share: {st}"
    );
    assert!(figure(&st, "hits") > 0, "{st}");
    // Three files leave the cache: everything is cleared, and the rest is
    // read back in.
    musicfs(&["cache", "clear"], &m.state);
    let (uncached, cached) = files.split_at(3);
    for rel in cached {
        let p = m.mnt.join(rel);
        evict(&p);
        assert_eq!(
            hash_file(&p).unwrap(),
            hash_file(&s.export_file(&p)).unwrap()
        );
    }
    wait_all_cached(&m, cached);
    let expected: Vec<(PathBuf, blake3::Hash)> = cached
        .iter()
        .map(|rel| {
            let p = m.mnt.join(rel);
            let h = hash_file(&s.export_file(&p)).unwrap();
            evict(&p);
            (p, h)
        })
        .collect();
    let uncached: Vec<PathBuf> = uncached.iter().map(|r| m.mnt.join(r)).collect();
    for p in &uncached {
        // The share's own pages too (sshfs is a FUSE filesystem with a
        // page cache): the read must need the share.
        let origin = PathBuf::from(std::ffi::OsStr::from_bytes(
            &getxattr(p, "user.musicfs.origin").unwrap(),
        ));
        evict(&origin);
        evict(p);
    }
    let hung = s.share.hang();
    // Cached files: right bytes, without the share.
    let got = within(Duration::from_secs(20), move || {
        expected
            .into_iter()
            .map(|(p, h)| (hash_file(&p).map_err(|e| e.to_string()), h, p))
            .collect::<Vec<_>>()
    })
    .expect("a cached file waited for the hung share");
    for (got, want, p) in got {
        assert_eq!(got.as_ref().ok(), Some(&want), "{}: {got:?}", p.display());
    }
    // Uncached files: EIO within the deadline (2 s) plus slack.
    let t = std::time::Instant::now();
    let errors = within(Duration::from_secs(15), move || {
        uncached
            .iter()
            .map(|p| hash_file(p).map_err(|e| e.raw_os_error()))
            .collect::<Vec<_>>()
    })
    .expect("a read of an uncached file hung with the share");
    for e in &errors {
        assert_eq!(e.as_ref().err(), Some(&Some(libc::EIO)), "{errors:?}");
    }
    assert!(t.elapsed() < Duration::from_secs(15));
    // Listings and the status answer meanwhile.
    let mnt = m.mnt.clone();
    let listed =
        within(Duration::from_secs(5), move || list_files(&mnt).len()).expect("a listing hung");
    assert_eq!(listed, files.len());
    drop(hung);
    drop(m);
}

/// Chunks whose bytes were flipped or that were deleted are fetched again
/// and counted; `cache verify --repair` finds and fixes corruption; the
/// whole chunk directory removed under a running mount: right bytes.
#[test]
fn corrupt_missing_and_removed_chunks_are_fetched_again() {
    let s = setup(&library(), "");
    let m = s.mount();
    let files = read_all(&s, &m);
    wait_all_cached(&m, &files);
    let m = {
        m.stop();
        s.mount()
    };
    let chunks = chunk_files(&s.cache_dir);
    assert!(chunks.len() > files.len(), "{} chunks", chunks.len());
    for c in chunks.iter().step_by(3) {
        flip_byte(c);
    }
    for c in chunks.iter().skip(1).step_by(5) {
        std::fs::remove_file(c).unwrap();
    }
    read_all(&s, &m);
    let st = cache_status(&m);
    assert!(figure(&st, "corrupt") > 0, "corruption not counted: {st}");
    assert!(
        figure(&st, "missing") > 0,
        "missing chunks not counted: {st}"
    );
    assert!(
        m.log_text().contains("does not match its hash"),
        "{}",
        m.log_text()
    );
    // verify --repair finds and fixes what is corrupted now.
    wait_all_cached(&m, &files);
    let chunks = chunk_files(&s.cache_dir);
    let flipped: Vec<_> = chunks.iter().step_by(4).collect();
    for c in &flipped {
        flip_byte(c);
    }
    let out = musicfs(&["cache", "verify", "--repair", "--json"], &m.state);
    let report: serde_json::Value = serde_json::from_slice(
        out.stdout
            .split(|b| *b == b'\n')
            .find(|l| l.windows(9).any(|w| w == b"\"checked\""))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(figure(&report, "bad"), flipped.len() as u64, "{report}");
    assert_eq!(
        figure(&report, "repaired"),
        flipped.len() as u64,
        "{report}"
    );
    let out = musicfs(&["cache", "verify", "--json"], &m.state);
    let report: serde_json::Value = serde_json::from_slice(
        out.stdout
            .split(|b| *b == b'\n')
            .find(|l| l.windows(9).any(|w| w == b"\"checked\""))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        (figure(&report, "bad"), figure(&report, "missing")),
        (0, 0),
        "{report}"
    );
    // The chunk directory removed while mounted.
    std::fs::remove_dir_all(s.cache_dir.join("chunks")).unwrap();
    read_all(&s, &m);
    drop(m);
    drop(s.root);
}

/// A cache on a small tmpfs, with `cache_max_bytes` below the library's
/// size: the size stays within the limit, readers never see an error.
#[test]
fn the_cache_stays_within_its_limit_on_a_small_disk() {
    let s = setup(&library(), "cache_max_bytes = 6291456\n");
    let fs = TmpFs::mount(&s.cache_dir, "12m");
    let m = s.mount();
    for _ in 0..2 {
        read_all(&s, &m);
        let st = cache_status(&m);
        assert!(figure(&st, "used_bytes") <= 6_291_456, "{st}");
    }
    assert!(eventually(Duration::from_secs(10), || figure(
        &cache_status(&m),
        "evicted"
    ) > 0));
    let st = cache_status(&m);
    assert!(figure(&st, "used_bytes") <= 6_291_456, "{st}");
    drop(m);
    drop(fs);
}

/// A cache disk that fills up (a 6 MB tmpfs, no size limit of its own):
/// eviction by the free-space watermark, writes stopped when it is nearly
/// full, and no reader ever sees ENOSPC.
#[test]
fn a_full_cache_disk_never_fails_a_read() {
    let s = setup(
        &library(),
        "cache_max_bytes = 1073741824\ncache_min_free_percent = 20\n",
    );
    let fs = TmpFs::mount(&s.cache_dir, "6m");
    let m = s.mount();
    for _ in 0..2 {
        read_all(&s, &m);
    }
    let st = cache_status(&m);
    assert!(
        figure(&st, "evicted") > 0 || !st["writes_stopped"].as_str().unwrap().is_empty(),
        "{st}"
    );
    assert!(figure(&st, "used_bytes") <= 6 * 1024 * 1024, "{st}");
    assert_eq!(st["bypassed"], false, "a full disk is not a sick one: {st}");
    drop(m);
    drop(fs);
}

/// The cache disk turned read-only under the engine: bypassed (the status
/// says so and why), right bytes from the share; read-write again: caching
/// again. (A read-only bind mount over the cache directory: a filesystem
/// with files open for writing cannot be remounted read-only, and every
/// new open and write by path then fails EROFS, as on a disk the kernel
/// turned read-only after errors.)
#[test]
fn a_read_only_cache_disk_is_bypassed_then_used_again() {
    let s = setup(&library(), "");
    let m = s.mount();
    let files = list_files(&m.mnt);
    let (first, second) = files.split_at(files.len() / 2);
    for rel in first {
        let p = m.mnt.join(rel);
        assert_eq!(
            hash_file(&p).unwrap(),
            hash_file(&s.export_file(&p)).unwrap()
        );
    }
    wait_all_cached(&m, first);
    let ro = ReadOnly::over(&s.cache_dir);
    for rel in second {
        let p = m.mnt.join(rel);
        assert_eq!(
            hash_file(&p).unwrap(),
            hash_file(&s.export_file(&p)).unwrap()
        );
    }
    assert!(
        eventually(Duration::from_secs(10), || cache_status(&m)["bypassed"]
            == true),
        "{}",
        cache_status(&m)
    );
    let st = cache_status(&m);
    assert!(st["reason"].as_str().unwrap().contains("Read-only"), "{st}");
    // Bypassed: still right bytes for everything.
    read_all(&s, &m);
    drop(ro);
    assert!(
        eventually(Duration::from_secs(30), || cache_status(&m)["bypassed"]
            == false),
        "{}",
        cache_status(&m)
    );
    let written = figure(&cache_status(&m), "written");
    read_all(&s, &m);
    assert!(
        eventually(Duration::from_secs(10), || figure(
            &cache_status(&m),
            "written"
        ) > written),
        "{}",
        cache_status(&m)
    );
    drop(m);
}

/// A read-only bind mount of a directory over itself, removed on drop.
struct ReadOnly(PathBuf);

impl ReadOnly {
    fn over(dir: &Path) -> ReadOnly {
        let ok = Command::new("mount")
            .arg("--bind")
            .arg(dir)
            .arg(dir)
            .status()
            .unwrap()
            .success();
        assert!(ok, "cannot bind-mount {}", dir.display());
        let ok = Command::new("mount")
            .args(["-o", "remount,bind,ro"])
            .arg(dir)
            .status()
            .unwrap()
            .success();
        assert!(ok, "cannot make the bind mount read-only");
        ReadOnly(dir.to_path_buf())
    }
}

impl Drop for ReadOnly {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// a.flac, b.flac and c.flac of 2.1 MB each, of bytes no other file has
/// (generated tracks share chunks, which the cache keeps once).
fn distinct_files(dir: &Path, mul: u32, shift: u32) {
    for name in ["a", "b", "c"] {
        let bytes: Vec<u8> = (0..2_100_000u32)
            .map(|i| (i.wrapping_mul(mul) >> shift) as u8 ^ name.as_bytes()[0])
            .collect();
        std::fs::write(dir.join(format!("{name}.flac")), bytes).unwrap();
    }
}

/// Which chunks were used last survives a restart: after one, filling the
/// cache evicts the file read longest ago, not the one read again.
#[test]
fn lru_order_survives_a_restart() {
    // Three files of distinct bytes (generated tracks share chunks, which
    // the cache keeps once).
    let export = tempfile::tempdir().unwrap();
    distinct_files(export.path(), 2_654_435_761, 13);
    let s = setup(export.path(), "cache_max_bytes = 5000000\n");
    let m = s.mount();
    let mut big = list_files(&m.mnt);
    big.sort_by_key(|r| s.export_file(&m.mnt.join(r)));
    assert_eq!(big.len(), 3, "{big:?}");
    let (a, b) = (m.mnt.join(&big[0]), m.mnt.join(&big[1]));
    for p in [&a, &b] {
        hash_file(p).unwrap();
    }
    wait_all_cached(&m, &big[..2]);
    // a is read again: now b is the oldest.
    std::thread::sleep(Duration::from_millis(20));
    evict(&a);
    hash_file(&a).unwrap();
    let m = {
        m.stop();
        s.mount()
    };
    let [a, b, c] = [0, 1, 2].map(|i| m.mnt.join(&big[i]));
    // c needs room: b's chunks go first.
    hash_file(&c).unwrap();
    assert!(
        eventually(Duration::from_secs(20), || cached_bytes(&b)
            < std::fs::metadata(&b).unwrap().len()),
        "b was not evicted: a {} b {} c {}: {}",
        cached_bytes(&a),
        cached_bytes(&b),
        cached_bytes(&c),
        cache_status(&m)
    );
    let a_size = std::fs::metadata(&a).unwrap().len();
    assert_eq!(
        cached_bytes(&a),
        a_size,
        "a (used more recently than b) was evicted"
    );
    drop(m);
}

/// kill -9 of the engine while it writes chunks, 10 times: every read gives
/// the right bytes, no partial chunk is ever served, and the temporary files
/// are gone after the next start.
#[test]
fn engine_kills_while_writing_chunks_leave_no_partial_chunk() {
    let s = setup(&library(), "");
    let m = s.mount();
    let files = list_files(&m.mnt);
    let engine = || pids_with_cmdline(&format!("engine --state-dir {}", m.state.display()));
    for round in 0..10 {
        musicfs(&["cache", "clear"], &m.state);
        let rel = &files[round % files.len()];
        let p = m.mnt.join(rel);
        let want = hash_file(&s.export_file(&p)).unwrap();
        evict(&p);
        let reader = {
            let p = p.clone();
            std::thread::spawn(move || hash_file(&p).map_err(|e| e.to_string()))
        };
        std::thread::sleep(Duration::from_millis(5 * round as u64));
        for pid in engine() {
            // SAFETY: killing the engine under test.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        assert_eq!(
            reader.join().unwrap().as_ref(),
            Ok(&want),
            "{}",
            rel.display()
        );
        assert!(
            eventually(Duration::from_secs(30), || !engine().is_empty()
                && status_ok(&m.state)),
            "no engine came back"
        );
    }
    let all = read_all(&s, &m);
    wait_all_cached(&m, &all);
    let m = {
        m.stop();
        // A temporary file as a kill would leave it.
        std::fs::write(s.cache_dir.join("tmp/deadbeef.1.1"), b"partial").unwrap();
        s.mount()
    };
    assert!(
        eventually(Duration::from_secs(10), || std::fs::read_dir(
            s.cache_dir.join("tmp")
        )
        .unwrap()
        .count()
            == 0),
        "temporary files left"
    );
    let out = musicfs(&["cache", "verify", "--json"], &m.state);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let report: serde_json::Value =
        serde_json::from_str(text.lines().find(|l| l.contains("\"checked\"")).unwrap()).unwrap();
    assert_eq!(figure(&report, "bad"), 0, "{report}");
    read_all(&s, &m);
    drop(m);
}

fn status_ok(state: &Path) -> bool {
    Command::new(musicfs_bin())
        .args(["status", "--json", "--state-dir"])
        .arg(state)
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A tmpfs of a given size, unmounted on drop.
struct TmpFs(PathBuf);

impl TmpFs {
    fn mount(at: &Path, size: &str) -> TmpFs {
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .unwrap()
            .success();
        assert!(ok, "cannot mount a tmpfs");
        TmpFs(at.to_path_buf())
    }
}

impl Drop for TmpFs {
    fn drop(&mut self) {
        detach(&self.0);
    }
}

/// The first scan caches the head and tail chunk of every file (where a
/// media server's probe reads): a probe of every file is then all hits.
#[test]
fn the_first_scan_caches_every_head_and_tail() {
    let s = setup(&library(), "");
    let m = s.mount();
    let files = list_files(&m.mnt);
    for rel in &files {
        let p = m.mnt.join(rel);
        let size = std::fs::metadata(&p).unwrap().len();
        let want = if size <= 256 * 1024 {
            size
        } else {
            256 * 1024 + (size - 256 * 1024).min(128 * 1024)
        };
        assert!(
            eventually(Duration::from_secs(20), || cached_bytes(&p) >= want),
            "{}: {} of {want} head and tail bytes cached",
            rel.display(),
            cached_bytes(&p)
        );
    }
    let misses = figure(&cache_status(&m), "misses");
    for rel in &files {
        let p = m.mnt.join(rel);
        let size = std::fs::metadata(&p).unwrap().len();
        let f = std::fs::File::open(&p).unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        use std::os::unix::fs::FileExt;
        let n = f.read_at(&mut buf, 0).unwrap();
        let want = std::fs::read(s.export_file(&p)).unwrap();
        assert_eq!(&buf[..n], &want[..n]);
        let tail = size.saturating_sub(64 * 1024);
        let n = f.read_at(&mut buf, tail).unwrap();
        assert_eq!(&buf[..n], &want[tail as usize..tail as usize + n]);
    }
    let st = cache_status(&m);
    assert_eq!(
        figure(&st, "misses"),
        misses,
        "a probe of heads and tails missed: {st}"
    );
    drop(m);
}

/// A pinned file stays when room is needed, though it is the least
/// recently used; unpinned, it is evicted like any other.
#[test]
fn pinned_files_are_not_evicted() {
    let export = tempfile::tempdir().unwrap();
    distinct_files(export.path(), 2_246_822_519, 11);
    let s = setup(export.path(), "cache_max_bytes = 5000000\n");
    let m = s.mount();
    let mut files = list_files(&m.mnt);
    files.sort_by_key(|r| s.export_file(&m.mnt.join(r)));
    let [a, b, c] = [0, 1, 2].map(|i| m.mnt.join(&files[i]));
    hash_file(&a).unwrap();
    wait_all_cached(&m, &files[..1]);
    let out = Command::new(musicfs_bin())
        .args(["cache", "pin", "--state-dir"])
        .arg(&m.state)
        .arg(&a)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("pinned 1 files"));
    for p in [&b, &c] {
        std::thread::sleep(Duration::from_millis(20));
        evict(p);
        assert_eq!(hash_file(p).unwrap(), hash_file(&s.export_file(p)).unwrap());
    }
    let size = std::fs::metadata(&a).unwrap().len();
    assert!(
        eventually(Duration::from_secs(20), || figure(
            &cache_status(&m),
            "evicted"
        ) > 0),
        "{}",
        cache_status(&m)
    );
    assert_eq!(
        cached_bytes(&a),
        size,
        "the pinned file was evicted: {}",
        cache_status(&m)
    );
    let out = Command::new(musicfs_bin())
        .args(["cache", "unpin", "--state-dir"])
        .arg(&m.state)
        .arg(&a)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // b made room for c (a was pinned): the writer evicts in batches, so
    // wait until it has, or b would be read again from the cache.
    let b_size = std::fs::metadata(&b).unwrap().len();
    assert!(
        eventually(Duration::from_secs(20), || cached_bytes(&b) < b_size),
        "b stayed whole in the cache: {}",
        cache_status(&m)
    );
    // b is needed again: a, now the oldest and unpinned, makes room.
    evict(&b);
    assert_eq!(
        hash_file(&b).unwrap(),
        hash_file(&s.export_file(&b)).unwrap()
    );
    assert!(
        eventually(Duration::from_secs(20), || cached_bytes(&a) < size),
        "the unpinned file stayed: {}",
        cache_status(&m)
    );
    drop(m);
}

/// An engine that runs as another user (uid 65534) and may not write the
/// cache directory: the cache is bypassed (the status says why), every
/// byte still reads right from the origin. (A local origin with `cache =
/// true`; the shim runs as root because /dev/fuse is root's here.)
#[test]
fn an_unwritable_cache_dir_is_bypassed_for_a_non_root_engine() {
    let lib = library();
    let root = tempfile::Builder::new()
        .prefix("mfs-nonroot")
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::set_permissions(
        root.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let origin = root.path().join("origin");
    copy_tree(&lib, &origin);
    let (state, cache, mnt) = (
        root.path().join("state"),
        root.path().join("cache"),
        root.path().join("mnt"),
    );
    for d in [&state, &cache, &mnt] {
        std::fs::create_dir(d).unwrap();
    }
    std::fs::set_permissions(&cache, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let chown = Command::new("chown")
        .args(["-R", "65534:65534"])
        .arg(&state)
        .status()
        .unwrap();
    assert!(chown.success());
    let config = root.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "origins = [{origin:?}]\ncache_dir = {cache:?}\n{}[origin.{origin:?}]\ncache = true\n",
            musicfs_integration::CACHE_ON_ANY_DISK
        ),
    )
    .unwrap();
    let log = root.path().join("engine.log");
    let args: Vec<&std::ffi::OsStr> = vec![
        "--reuid=65534".as_ref(),
        "--regid=65534".as_ref(),
        "--clear-groups".as_ref(),
        musicfs_bin().into_os_string().leak(),
        "--config".as_ref(),
        config.as_os_str(),
        "engine".as_ref(),
        "--state-dir".as_ref(),
        state.as_os_str(),
    ];
    let mut engine = EngineProc::start_program("setpriv".as_ref(), &args, &state, &log, &[]);
    engine.wait_log("engine ready", 1, Duration::from_secs(60));
    let mut shim = Command::new(bin_dir().join("musicfs-shim"))
        .arg("--socket")
        .arg(state.join("engine.sock"))
        .arg("--mountpoint")
        .arg(&mnt)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(root.path().join("shim.log")).unwrap())
        .spawn()
        .unwrap();
    assert!(
        eventually(Duration::from_secs(30), || is_mountpoint(&mnt)),
        "not mounted"
    );
    let n = assert_files_match(&mnt, &[&origin]);
    assert!(n >= 12);
    let st = status_json(&state)["chunk_cache"].clone();
    assert_eq!(st["bypassed"], true, "{st}");
    assert!(
        st["reason"].as_str().unwrap().contains("Permission denied"),
        "{st}"
    );
    assert!(
        engine.log_text().contains("the chunk cache cannot be used"),
        "{}",
        engine.log_text()
    );
    // SAFETY: signalling our own child.
    unsafe { libc::kill(shim.id() as i32, libc::SIGTERM) };
    let _ = within(Duration::from_secs(15), move || shim.wait());
    let _ = run_bounded(
        Command::new("fusermount3").arg("-uz").arg(&mnt),
        CLEANUP_TIMEOUT,
    );
    assert!(engine.stop().success());
}

/// A share that drops its connection and is mounted again (a NAS reboot,
/// an automounter): the engine's origin file, opened before, answers
/// `ENOTCONN`; it is reopened by path on the new mount and a handle held
/// open across the reconnect reads on with the right bytes.
#[test]
fn a_reconnected_share_is_reopened_and_a_held_file_reads_on() {
    let mut s = setup(&library(), "");
    let m = s.mount();
    // The largest file: chunks the first scan did not cache (it caches the
    // head and the tail only).
    let rel = list_files(&m.mnt)
        .into_iter()
        .max_by_key(|r| std::fs::metadata(m.mnt.join(r)).map_or(0, |md| md.len()))
        .unwrap();
    let p = m.mnt.join(&rel);
    let want = std::fs::read(s.export_file(&p)).unwrap();
    // Chunks: a 256 KiB head, 1 MiB bodies, a 128 KiB tail.
    assert!(
        want.len() > 1_600_000,
        "{} is only {} bytes",
        rel.display(),
        want.len()
    );
    let f = std::fs::File::open(&p).unwrap();
    let read_at = |off: usize, len: usize| {
        use std::os::unix::fs::FileExt;
        let mut buf = vec![0u8; len];
        evict(&p);
        f.read_exact_at(&mut buf, off as u64).map(|()| buf)
    };
    // One body chunk through the engine's origin file (opened now).
    let mid = 300_000;
    assert_eq!(read_at(mid, 4096).unwrap(), want[mid..mid + 4096]);
    s.share.reconnect();
    // Another body chunk, never fetched: the old origin file is dead.
    let later = 1_400_000;
    let got = read_at(later, 64 * 1024).unwrap_or_else(|e| {
        panic!(
            "a read after the share reconnected failed: {e}\n{}",
            m.log_text()
        )
    });
    assert!(
        got == want[later..later + 64 * 1024],
        "wrong bytes after the reconnect"
    );
    assert!(
        m.log_text()
            .contains("origin file went stale; reopening it"),
        "the read did not go through a reopen:\n{}",
        m.log_text()
    );
    // The whole file, and every other one, right.
    drop(f);
    read_all(&s, &m);
}

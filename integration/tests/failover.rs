//! Several origins, one file: the same library on S3 (moto_server, first)
//! and WebDAV (rclone serve webdav, second), both on 127.0.0.1. Readers
//! hash whole files while the S3 server is stopped (SIGSTOP), blackholed
//! (an nft drop rule on its port) and killed: no syscall may fail and no
//! byte may be wrong. The cache is kept small, so reads keep going to the
//! origins.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use musicfs_integration::servers::{
    Blackhole, DavServer, S3_KEY, S3_SECRET, S3Server, SftpServer, SlowProxy,
};
use musicfs_integration::*;

/// About 60 MB: far more than the cache keeps (its disk part and the
/// 16 MiB in memory), so reads keep reaching the origins.
fn library() -> PathBuf {
    generated_library_with(24, 63, &["--seconds", "20", "--formats", "wav=2,flac=1"])
}

#[derive(Default)]
struct Tally {
    files: AtomicU64,
    failed: AtomicU64,
    wrong: AtomicU64,
    /// The longest open(2) or read(2), in microseconds (printed, not
    /// asserted: a measure of the failover's stall).
    longest_us: AtomicU64,
}

/// Hashes whole files of the mount in a loop until `stop`.
fn reader(
    mnt: PathBuf,
    files: Arc<Vec<(PathBuf, blake3::Hash)>>,
    start: usize,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
    errors: Arc<parking_lot_free::Log>,
) {
    let mut i = start;
    let mut buf = vec![0u8; 128 * 1024];
    while !stop.load(Ordering::Relaxed) {
        let (rel, want) = &files[i % files.len()];
        i += 1;
        let timed = |t: Instant| {
            let us = t.elapsed().as_micros() as u64;
            tally.longest_us.fetch_max(us, Ordering::Relaxed);
        };
        let got = (|| -> std::io::Result<blake3::Hash> {
            let t = Instant::now();
            let mut f = std::fs::File::open(mnt.join(rel))?;
            timed(t);
            // Past the kernel's page cache: every read reaches the engine.
            // SAFETY: an advice call on an open fd.
            unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
            let mut h = blake3::Hasher::new();
            loop {
                let t = Instant::now();
                let n = f.read(&mut buf)?;
                timed(t);
                if n == 0 {
                    return Ok(h.finalize());
                }
                h.update(&buf[..n]);
            }
        })();
        match got {
            Ok(h) if h == *want => {}
            Ok(_) => {
                tally.wrong.fetch_add(1, Ordering::Relaxed);
                errors.push(format!("{}: wrong bytes", rel.display()));
            }
            Err(e) => {
                tally.failed.fetch_add(1, Ordering::Relaxed);
                errors.push(format!("{}: {e}", rel.display()));
            }
        }
        tally.files.fetch_add(1, Ordering::Relaxed);
    }
}

/// A tiny shared log of the first errors (no extra crate).
mod parking_lot_free {
    #[derive(Default)]
    pub struct Log(std::sync::Mutex<Vec<String>>);
    impl Log {
        pub fn push(&self, s: String) {
            let mut v = self.0.lock().unwrap();
            if v.len() < 20 {
                v.push(s);
            }
        }
        pub fn all(&self) -> Vec<String> {
            self.0.lock().unwrap().clone()
        }
    }
}

/// Reads until `files` more whole files were read after `since`, or
/// `limit` passes.
fn read_for(tally: &Tally, files: u64, limit: Duration) {
    let before = tally.files.load(Ordering::Relaxed);
    let deadline = Instant::now() + limit;
    while tally.files.load(Ordering::Relaxed) < before + files && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Chunk fetches that went to origin `url` so far (the engine's metrics).
fn fetches(state: &Path, url: &str) -> u64 {
    let out = std::process::Command::new(musicfs_bin())
        .args(["metrics", "--state-dir"])
        .arg(state)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .filter(|l| l.starts_with("musicfs_origin_fetch_duration_seconds_count") && l.contains(url))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// The first copy's server, with its faults.
trait First {
    fn url(&self) -> String;
    fn port(&self) -> u16;
    fn stop(&self);
    fn resume(&self);
    fn kill(&mut self);
}

impl First for (S3Server, String) {
    fn url(&self) -> String {
        self.1.clone()
    }
    fn port(&self) -> u16 {
        self.0.port()
    }
    fn stop(&self) {
        self.0.stop()
    }
    fn resume(&self) {
        self.0.resume()
    }
    fn kill(&mut self) {
        self.0.kill()
    }
}

impl First for SftpServer {
    fn url(&self) -> String {
        SftpServer::url(self)
    }
    fn port(&self) -> u16 {
        SftpServer::port(self)
    }
    fn stop(&self) {
        SftpServer::stop(self)
    }
    fn resume(&self) {
        SftpServer::resume(self)
    }
    fn kill(&mut self) {
        SftpServer::kill(self)
    }
}

/// The files of `lib` with UTF-8 names (what every server holds), copied
/// to `export`.
fn utf8_export(lib: &Path, export: &Path) -> Vec<String> {
    let mut keys = Vec::new();
    for e in walkdir::WalkDir::new(lib)
        .into_iter()
        .filter_map(Result::ok)
    {
        if !e.file_type().is_file() {
            continue;
        }
        let Some(k) = e.path().strip_prefix(lib).unwrap().to_str() else {
            continue;
        };
        let to = export.join(k);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(e.path(), &to).unwrap();
        keys.push(k.to_string());
    }
    keys
}

/// An S3 server in `dir` whose bucket `music` holds `lib`, and `dir/export`
/// with exactly the files S3 holds (UTF-8 names) for a second server.
fn s3_and_export(lib: &Path, dir: &Path) -> (S3Server, Vec<String>, PathBuf) {
    let s3 = S3Server::start(dir);
    s3.create_bucket("music");
    let keys = s3.upload_tree("music", lib);
    let export = dir.join("export");
    for k in &keys {
        let to = export.join(k);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(lib.join(k), &to).unwrap();
    }
    (s3, keys, export)
}

#[test]
fn reads_fail_over_between_replicas_with_no_failed_syscall() {
    let lib = library();
    let dir = tempfile::Builder::new()
        .prefix("mfs-failover")
        .tempdir_in("/tmp")
        .unwrap();
    let (s3, keys, export) = s3_and_export(&lib, dir.path());
    let url = s3.url("music");
    fail_over(&mut (s3, url), dir.path(), &lib, &export, &keys);
}

/// The same with SFTP (OpenSSH's sshd, its sessions stopped, blackholed,
/// killed) as the first copy.
#[test]
fn reads_fail_over_from_sftp_with_no_failed_syscall() {
    let lib = library();
    let dir = tempfile::Builder::new()
        .prefix("mfs-failsftp")
        .tempdir_in("/tmp")
        .unwrap();
    let export = dir.path().join("export");
    let keys = utf8_export(&lib, &export);
    let mut sftp = SftpServer::start(&export, dir.path());
    fail_over(&mut sftp, dir.path(), &lib, &export, &keys);
}

/// The readers and the faults of the failover tests: `first` serves the
/// copies first, a WebDAV server on `export` second.
fn fail_over(first: &mut dyn First, dir: &Path, lib: &Path, export: &Path, keys: &[String]) {
    let dav = DavServer::start(export, dir);
    let (s3_url, dav_url) = (first.url(), dav.url());
    let cfg = dir.join("config.toml");
    std::fs::write(
        &cfg,
        format!(
            "origins = [{s3_url:?}, {dav_url:?}]\n\
             cache_dir = {:?}\n\
             cache_max_bytes = 3000000\n\
             cache_fetch_timeout_ms = 8000\n\
             {}\
             [origin.{s3_url:?}]\npoll_interval_s = 2\n\
             [origin.{dav_url:?}]\npoll_interval_s = 2\n",
            dir.join("cache"),
            musicfs_integration::CACHE_ON_ANY_DISK
        ),
    )
    .unwrap();
    let m = Mount::start_with_config(
        &cfg,
        &[
            ("AWS_ACCESS_KEY_ID", S3_KEY),
            ("AWS_SECRET_ACCESS_KEY", S3_SECRET),
        ],
    );
    // Every file once in the tree, with its expected hash.
    let bases = [
        s3_url
            .split('?')
            .next()
            .unwrap()
            .trim_end_matches('/')
            .to_string(),
        dav_url.trim_end_matches('/').to_string(),
    ];
    let audio = keys
        .iter()
        .filter(|k| {
            let k = k.to_ascii_lowercase();
            [".wav", ".flac", ".mp3"].iter().any(|x| k.ends_with(x))
        })
        .count();
    let wait = eventually(Duration::from_secs(60), || {
        list_files_lenient(&m.mnt).len() == audio
    });
    assert!(
        wait,
        "{} files, {audio} expected (replicas shown once):\n{}",
        list_files_lenient(&m.mnt).len(),
        m.log_text()
    );
    let mut expected: Vec<(PathBuf, blake3::Hash)> = Vec::new();
    let mut from: HashMap<String, usize> = HashMap::new();
    for rel in list_files(&m.mnt) {
        let origin =
            String::from_utf8(getxattr(&m.mnt.join(&rel), "user.musicfs.origin").unwrap()).unwrap();
        let (b, key) = bases
            .iter()
            .find_map(|b| {
                origin
                    .strip_prefix(b.as_str())
                    .map(|k| (b.clone(), k.trim_start_matches('/').to_string()))
            })
            .unwrap_or_else(|| panic!("{origin}"));
        *from.entry(b).or_default() += 1;
        expected.push((rel, hash_file(&lib.join(&key)).unwrap()));
    }
    assert!(expected.len() >= 15, "{} files", expected.len());
    let files = Arc::new(expected);

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let errors = Arc::new(parking_lot_free::Log::default());
    let readers: Vec<_> = (0..4)
        .map(|r| {
            let (mnt, files, stop, tally, errors) = (
                m.mnt.clone(),
                files.clone(),
                stop.clone(),
                tally.clone(),
                errors.clone(),
            );
            std::thread::spawn(move || reader(mnt, files, r * 5, stop, tally, errors))
        })
        .collect();
    let n = files.len() as u64;
    // Healthy, then each fault while the readers read whole files.
    read_for(&tally, n / 2, Duration::from_secs(60));
    let (s3_before, dav_before) = (fetches(&m.state, &s3_url), fetches(&m.state, &dav_url));
    assert!(
        s3_before > 0,
        "the first copy (S3) served nothing while healthy"
    );
    first.stop();
    read_for(&tally, n, Duration::from_secs(90));
    let dav_during = fetches(&m.state, &dav_url);
    first.resume();
    read_for(&tally, n / 2, Duration::from_secs(60));
    let served_dav = list_files(&m.mnt).iter().any(|rel| {
        getxattr(&m.mnt.join(rel), "user.musicfs.served_from")
            .is_some_and(|o| String::from_utf8_lossy(&o).starts_with(&bases[1]))
    });
    {
        let _hole = Blackhole::new(first.port());
        read_for(&tally, n, Duration::from_secs(90));
    }
    read_for(&tally, n / 2, Duration::from_secs(60));
    first.kill();
    read_for(&tally, n, Duration::from_secs(90));
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.join().unwrap();
    }
    let (read, failed, wrong) = (
        tally.files.load(Ordering::Relaxed),
        tally.failed.load(Ordering::Relaxed),
        tally.wrong.load(Ordering::Relaxed),
    );
    eprintln!(
        "failover from {s3_url}: {read} whole files read, {failed} failed, {wrong} wrong; longest open or read {} ms; tree from {from:?}",
        tally.longest_us.load(Ordering::Relaxed) / 1000
    );
    assert!(read >= 3 * n, "only {read} files read");
    assert_eq!(
        (failed, wrong),
        (0, 0),
        "errors: {:#?}\n{}",
        errors.all(),
        m.log_text()
    );
    assert!(
        served_dav,
        "no file shows the WebDAV copy in user.musicfs.served_from"
    );
    assert!(
        dav_during > dav_before,
        "the WebDAV copy served nothing while S3 was stopped ({dav_before} -> {dav_during})"
    );
    let log = m.log_text();
    assert!(
        log.contains("degraded") || log.contains("offline"),
        "the S3 origin's health never changed:\n{log}"
    );
    m.stop();
}

#[test]
fn a_slow_first_copy_is_passed_over_within_the_deadline() {
    let lib = generated_library_with(
        18,
        61,
        &["--seconds", "8", "--formats", "wav=1,flac=2,mp3=2"],
    );
    let dir = tempfile::Builder::new()
        .prefix("mfs-slow")
        .tempdir_in("/tmp")
        .unwrap();
    let (s3, _keys, export) = s3_and_export(&lib, dir.path());
    let dav = DavServer::start(&export, dir.path());
    // S3 is first, behind a proxy that answers 3 s late (its first-byte
    // deadline is 1 s), but only after the first scan: it lists fast
    // before that, so the tree has both copies.
    let proxy = SlowProxy::start(s3.port());
    let s3_url = format!(
        "s3://music?endpoint=http://127.0.0.1:{}&region=us-east-1",
        proxy.port()
    );
    let dav_url = dav.url();
    let cfg = dir.path().join("config.toml");
    std::fs::write(
        &cfg,
        format!(
            "origins = [{s3_url:?}, {dav_url:?}]\n\
             cache_dir = {:?}\n\
             cache_fetch_timeout_ms = 8000\n\
             {}\
             [origin.{s3_url:?}]\nfirst_byte_timeout_ms = 1000\nrequest_timeout_ms = 20000\n",
            dir.path().join("cache"),
            musicfs_integration::CACHE_ON_ANY_DISK
        ),
    )
    .unwrap();
    let m = Mount::start_with_config(
        &cfg,
        &[
            ("AWS_ACCESS_KEY_ID", S3_KEY),
            ("AWS_SECRET_ACCESS_KEY", S3_SECRET),
        ],
    );
    let files = list_files(&m.mnt);
    assert!(
        files.len() >= 10,
        "{} files:\n{}",
        files.len(),
        m.log_text()
    );
    // Both copies of every file are in the catalog.
    let both = status_json(&m.state)["files"].as_u64().unwrap_or(0);
    assert_eq!(
        both,
        2 * files.len() as u64,
        "the catalog holds both copies"
    );
    proxy.set_delay(Duration::from_secs(3));
    let dav_base = dav_url.trim_end_matches('/').to_string();
    let mut checked = 0;
    for rel in &files {
        let p = m.mnt.join(rel);
        let origin = String::from_utf8(getxattr(&p, "user.musicfs.origin").unwrap()).unwrap();
        let key = origin
            .rsplit_once("://")
            .map(|(_, r)| r.split_once('/').map_or("", |(_, k)| k))
            .unwrap()
            .to_string();
        let key = key
            .split_once('?')
            .map_or(key.clone(), |(k, _)| k.to_string());
        let t = Instant::now();
        let got =
            hash_file(&p).unwrap_or_else(|e| panic!("{}: {e}\n{}", rel.display(), m.log_text()));
        assert_eq!(
            got,
            hash_file(&export.join(&key)).unwrap(),
            "{} has wrong bytes",
            rel.display()
        );
        eprintln!("{} read in {:?}", rel.display(), t.elapsed());
        checked += 1;
    }
    assert_eq!(checked, files.len());
    assert!(
        fetches(&m.state, &dav_base) > 0,
        "the fast copy (WebDAV) served nothing"
    );
    let st = status_json(&m.state);
    let health = st["origins"][0]["health"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        health == "degraded" || health == "offline",
        "the slow origin is {health}: {}",
        st["origins"]
    );
    m.stop();
}

//! The failover row of the remote rows: the read library on S3 (moto, first) and WebDAV
//! (second), a small chunk cache so that reads keep reaching the origins, readers hashing whole
//! files; S3 is SIGSTOPped for a while: the longest single read() and the p99 while failing over,
//! beside the same before the stop, and the reads that failed (must be 0).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};

use super::cachetable::toml_string;
use super::remote::{RemoteRig, list_files};
use super::remotetable::{Phase, failover_rows};
use super::runner::Bench;
use super::servers::{dav_url, s3_url, start_dav};
use crate::harness::run_captured;

/// Readers hashing whole files at once.
const READERS: usize = 4;
/// How long the readers run before the stop, with S3 stopped, and after it is resumed.
const BEFORE: Duration = Duration::from_secs(4);
const STOPPED: Duration = Duration::from_secs(12);
const AFTER: Duration = Duration::from_secs(3);
/// Deadline of one `musicfs metrics`.
const METRICS_TIMEOUT: Duration = Duration::from_secs(10);
/// read() buffer of the readers.
const BUF: usize = 128 * 1024;

impl Bench {
    /// The failover rows (see the module doc).
    pub(super) fn measure_failover(&mut self, rig: &mut RemoteRig) -> Result<()> {
        let mut dav = start_dav(&rig.read_export, &rig.dir)?;
        let (s3, webdav) = (s3_url(rig.moto.port(), "read"), dav_url(dav.port()));
        let (state, config) = self.remote_config(
            rig,
            "failover",
            &format!(
                "origins = [{}, {}]\ncache_max_bytes = 3000000\ncache_fetch_timeout_ms = 8000\n",
                toml_string(&s3),
                toml_string(&webdav)
            ),
        )?;
        eprintln!("bench: remote rows: failover {s3} -> {webdav}");
        let (mut m, mnt, _, _) =
            self.mount_remote(rig, "failover", &[&s3, &webdav], &state, &config)?;
        let files = list_files(&mnt)?;
        ensure!(!files.is_empty(), "the failover mount shows no file");
        // The origin labels are matched by bucket and by address (whatever the query looks like).
        let urls = ["s3://read".to_string(), format!("127.0.0.1:{}", dav.port())];
        let snap = || fetch_counts(&self.bin, &state, &urls);
        let phases = run_readers(
            files,
            || rig.moto.pause(true),
            || rig.moto.pause(false),
            snap,
        )?;
        m.check_alive()?;
        rig.moto.check_alive()?;
        dav.check_alive()?;
        self.unmount_musicfs(m, "remote failover")?;
        for (name, p) in ["before", "during", "after"].iter().zip(&phases) {
            if let Some(e) = p.first_errors.first() {
                self.note(format!(
                    "failover, {name} the stop: {} failed reads, first: {e}",
                    p.failed
                ));
            }
        }
        self.remote_rows.extend(failover_rows(&phases, STOPPED));
        Ok(())
    }
}

/// Runs the readers over `files`: `BEFORE`, then `stop()`, `STOPPED`, `resume()`, `AFTER`.
/// `resume` runs on every path once `stop` ran (also when a reader panics).
fn run_readers(
    files: Vec<PathBuf>,
    stop: impl Fn(),
    resume: impl Fn(),
    snap: impl Fn() -> Option<[u64; 2]>,
) -> Result<[Phase; 3]> {
    let mut snaps = vec![snap()];
    let files = Arc::new(files);
    let phase = Arc::new(AtomicU8::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let out: Arc<Mutex<[Phase; 3]>> = Arc::default();
    let readers: Vec<_> = (0..READERS)
        .map(|r| {
            let (files, phase, done, out) =
                (files.clone(), phase.clone(), done.clone(), out.clone());
            std::thread::spawn(move || reader(&files, r, &phase, &done, &out))
        })
        .collect();
    std::thread::sleep(BEFORE);
    phase.store(1, Ordering::SeqCst);
    stop();
    snaps.push(snap());
    struct Resume<F: Fn()>(F);
    impl<F: Fn()> Drop for Resume<F> {
        fn drop(&mut self) {
            (self.0)();
        }
    }
    {
        let _resume = Resume(&resume);
        std::thread::sleep(STOPPED);
        phase.store(2, Ordering::SeqCst);
        snaps.push(snap());
    }
    std::thread::sleep(AFTER);
    done.store(true, Ordering::SeqCst);
    snaps.push(snap());
    // Each reader ends after its current file; a file may take at most the engine's fetch
    // deadline per chunk, so the join is bounded by the reads themselves.
    let deadline = Instant::now() + Duration::from_secs(120);
    for h in readers {
        while !h.is_finished() {
            ensure!(
                Instant::now() < deadline,
                "a failover reader did not finish within 120 s of the end"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = h.join();
    }
    let mut phases = out
        .lock()
        .map_err(|_| anyhow::anyhow!("a reader panicked"))?
        .clone();
    for (i, p) in phases.iter_mut().enumerate() {
        if let (Some(a), Some(b)) = (snaps[i], snaps[i + 1]) {
            p.fetches = Some([b[0].saturating_sub(a[0]), b[1].saturating_sub(a[1])]);
        }
    }
    Ok(phases)
}

/// Hashes whole files (from the `start`-th on) until `done`; every read() is timed and counted in
/// the phase it started in.
fn reader(
    files: &[PathBuf],
    start: usize,
    phase: &AtomicU8,
    done: &AtomicBool,
    out: &Mutex<[Phase; 3]>,
) {
    let mut buf = vec![0u8; BUF];
    let mut i = start * files.len() / READERS;
    let mut local: [Phase; 3] = Default::default();
    while !done.load(Ordering::SeqCst) {
        let path = &files[i % files.len()];
        i += 1;
        let p_file = phase.load(Ordering::SeqCst) as usize;
        let result = (|| -> std::io::Result<()> {
            let mut f = std::fs::File::open(path)?;
            drop_page_cache(&f);
            let mut h = blake3::Hasher::new();
            loop {
                let p = phase.load(Ordering::SeqCst) as usize;
                let t = Instant::now();
                let n = f.read(&mut buf)?;
                local[p].reads_ms.push(t.elapsed().as_secs_f64() * 1e3);
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
            }
            std::hint::black_box(h.finalize());
            drop_page_cache(&f);
            Ok(())
        })();
        match result {
            Ok(()) => local[p_file].files += 1,
            Err(e) => {
                let p = phase.load(Ordering::SeqCst) as usize;
                local[p].failed += 1;
                if local[p].first_errors.len() < 5 {
                    local[p]
                        .first_errors
                        .push(format!("{}: {e}", path.display()));
                }
            }
        }
    }
    if let Ok(mut out) = out.lock() {
        for (o, l) in out.iter_mut().zip(local) {
            o.reads_ms.extend(l.reads_ms);
            o.files += l.files;
            o.failed += l.failed;
            o.first_errors.extend(l.first_errors);
        }
    }
}

/// Drops the page cache of `f` (so that the next reads of it reach the engine).
fn drop_page_cache(f: &std::fs::File) {
    use std::os::fd::AsRawFd;
    // SAFETY: posix_fadvise(2) on an open file descriptor we own; it only drops cached pages.
    unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
}

/// The engine's chunk fetches so far from each of `urls` (`musicfs metrics`), if it answers.
fn fetch_counts(bin: &Path, state: &Path, urls: &[String; 2]) -> Option<[u64; 2]> {
    let mut cmd = Command::new(bin);
    cmd.args(["metrics", "--state-dir"]).arg(state);
    let out = match run_captured(&mut cmd, "musicfs metrics", METRICS_TIMEOUT) {
        Ok(out) if out.status.success() => out,
        Ok(out) => {
            eprintln!(
                "bench: musicfs metrics failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return None;
        }
        Err(e) => {
            eprintln!("bench: musicfs metrics: {e:#}");
            return None;
        }
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let count = |url: &str| {
        text.lines()
            .filter(|l| {
                l.starts_with("musicfs_origin_fetch_duration_seconds_count") && l.contains(url)
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    };
    let counts = [count(&urls[0]), count(&urls[1])];
    if counts == [0, 0] {
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("origin_fetch"))
            .take(6)
            .collect();
        eprintln!("bench: no chunk fetch counted yet; metrics lines: {lines:?}");
    }
    Some(counts)
}

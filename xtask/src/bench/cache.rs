//! The chunk cache rows (`--cache-tracks`): a musicfs mount whose origin is an sshfs share of the
//! cache library, read through the engine's chunk cache. Cold reads through the cache beside
//! reads of the share, warm cached reads beside native reads, opens of cached files beside opens
//! on the share, and the hit ratio of a media-server-like probe scan (see `CACHE_NOTE`).

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};

use super::cachetable::{CacheFigures, CacheRow, ProbeSample, percentile, probe_row, toml_string};
use super::consts::{
    CACHE_CMD_TIMEOUT, CACHE_QUIET, CACHE_READ_BUF, CACHE_SETTLE_TIMEOUT, MOUNT_READY_TIMEOUT,
    PROBE_BYTES,
};
use super::logs::log_len;
use super::mounts::{MusicfsMount, clear_stale_mount};
use super::procfs::get_xattr;
use super::runner::{Bench, settle};
use super::setup::drop_caches;
use super::share::SshShare;
use super::table::{Stats, below, fmt_bytes, fmt_ms, fmt_rate, fmt_ratio, show_opt};
use super::trees::{Pass, for_each_file, read_tree_within};
use crate::harness::{run_captured, with_deadline};

/// The paths of the cache rows and the share under them.
struct Rig {
    share: SshShare,
    /// The library directory itself (the share's export).
    lib: PathBuf,
    /// The musicfs mountpoint.
    mnt: PathBuf,
    state: PathBuf,
    cache_dir: PathBuf,
    /// The TOML file given to `musicfs mount` (as `MUSICFS_CONFIG`).
    config: PathBuf,
    tracks: usize,
}

/// Open latencies of one pass over every file, in ms.
#[derive(Default)]
struct Opens {
    p50: Vec<f64>,
    p99: Vec<f64>,
    samples: usize,
    errors: Vec<String>,
}

/// The samples of the read and open rows.
#[derive(Default)]
struct Reads {
    cold: Vec<Pass>,
    share_cold: Vec<Pass>,
    warm: Vec<Pass>,
    native: Vec<Pass>,
    opens: Opens,
    share_opens: Opens,
}

/// MB/s of a pass.
pub(super) fn rate(p: &Pass) -> f64 {
    p.bytes as f64 / 1e6 / p.secs.max(1e-9)
}

impl Bench {
    /// The cache rows on the cache library `lib` of `tracks` tracks.
    pub(super) fn measure_cache(&mut self, lib: &Path, tracks: usize) -> Result<()> {
        if !self.can_drop {
            self.note(
                "the chunk cache rows were skipped: they drop the page cache before every pass \
                 (needs root)"
                    .to_string(),
            );
            return Ok(());
        }
        let started = Instant::now();
        let local = self.measure_local_reads(lib, tracks)?;
        let mnt_dir = self.work.join("mnt");
        let share_mnt = mnt_dir.join("sshfs");
        let mnt = mnt_dir.join("musicfs-cache");
        for m in [&share_mnt, &mnt] {
            clear_stale_mount(m)?;
            fs::create_dir_all(m).with_context(|| format!("creating {}", m.display()))?;
        }
        eprintln!("bench: cache rows: sharing {} over sshfs", lib.display());
        let share = SshShare::start(lib, &self.work.join("cache-share"), &share_mnt)?;
        let mut rig = Rig {
            share,
            lib: lib.to_path_buf(),
            mnt,
            state: self.work.join(format!("state-cache-{tracks}")),
            cache_dir: self.work.join(format!("cache-{tracks}")),
            config: self.work.join(format!("cache-{tracks}.toml")),
            tracks,
        };
        fs::write(
            &rig.config,
            format!(
                "# Written by `cargo xtask bench` for the chunk cache rows.\n\
                 origins = [{}]\ncache_dir = {}\ncache_min_free_percent = 0\n",
                toml_string(&share_mnt.to_string_lossy()),
                toml_string(&rig.cache_dir.to_string_lossy())
            ),
        )
        .with_context(|| format!("writing {}", rig.config.display()))?;

        // The probe rows are kept even if the reads fail; the read rows go before them.
        let start = self.cache_rows.len();
        for (what, samples) in self.cache_probes(&mut rig)? {
            self.cache_rows.push(probe_row(what, &samples));
        }
        let reads = self.cache_reads(&mut rig)?;
        let rows = read_rows(&reads);
        self.cache_rows
            .splice(start..start, local.into_iter().chain(rows));
        let took = started.elapsed().as_secs_f64();
        eprintln!("bench: cache rows took {took:.1} s");
        self.note(format!(
            "the chunk cache rows took {took:.1} s ({} runs; the library generation not counted)",
            self.runs
        ));
        Ok(())
    }

    /// `musicfs mount` of the share with the cache config; returns once its scan finished.
    fn mount_cache(&self, rig: &Rig, label: &str) -> Result<MusicfsMount> {
        let offset = log_len(&self.log);
        let config = rig.config.to_string_lossy().into_owned();
        let (mut m, _) = self.mount_at(
            rig.share.mountpoint(),
            &rig.state,
            &rig.mnt,
            label,
            &[("MUSICFS_CONFIG", &config)],
            MOUNT_READY_TIMEOUT,
        )?;
        settle(&mut m, offset, rig.tracks)?;
        Ok(m)
    }

    fn cache_cmd(&self, rig: &Rig, action: &str, json: bool) -> Result<String> {
        let mut cmd = Command::new(&self.bin);
        cmd.args(["cache", action]);
        if json {
            cmd.arg("--json");
        }
        cmd.arg("--state-dir").arg(&rig.state);
        let what = format!("musicfs cache {action}");
        let out = run_captured(&mut cmd, &what, CACHE_CMD_TIMEOUT)?;
        ensure!(
            out.status.success(),
            "`{what}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn cache_status(&self, rig: &Rig) -> Result<CacheFigures> {
        CacheFigures::parse(&self.cache_cmd(rig, "status", true)?)
    }

    /// Waits (bounded) until the cache is settled: its writer and read-ahead are done (the
    /// figures stay the same for `CACHE_QUIET`). Returns the figures then.
    fn settle_cache(&mut self, rig: &Rig, what: &str) -> Result<CacheFigures> {
        let deadline = Instant::now() + CACHE_SETTLE_TIMEOUT;
        let mut last = self.cache_status(rig)?;
        let mut quiet_since = Instant::now();
        loop {
            std::thread::sleep(Duration::from_millis(100));
            let now = self.cache_status(rig)?;
            if now.activity() != last.activity() {
                quiet_since = Instant::now();
            } else if quiet_since.elapsed() >= CACHE_QUIET {
                return Ok(now);
            }
            last = now;
            if Instant::now() >= deadline {
                self.note(format!(
                    "{what}: the chunk cache was still busy after {} s ({last:?})",
                    CACHE_SETTLE_TIMEOUT.as_secs()
                ));
                return Ok(last);
            }
        }
    }

    fn check_cache_alive(&mut self, rig: &mut Rig, m: &mut MusicfsMount) -> Result<()> {
        m.check_alive()?;
        rig.share.check_alive()?;
        let s = self.cache_status(rig)?;
        if s.state != "normal" || s.bypassed || s.corrupt > 0 {
            self.note(format!(
                "chunk cache: state {:?}, bypassed {}, {} corrupt chunks, {} reads bypassed",
                s.state, s.bypassed, s.corrupt, s.bypassed_reads
            ));
        }
        Ok(())
    }

    /// The probe scans: on a fresh engine, right after `cache clear`, and again.
    fn cache_probes(&mut self, rig: &mut Rig) -> Result<Vec<(&'static str, Vec<ProbeSample>)>> {
        let mut fresh = Vec::new();
        let mut cleared = Vec::new();
        let mut again = Vec::new();
        for i in 0..self.runs {
            for dir in [&rig.state, &rig.cache_dir] {
                if dir.exists() {
                    fs::remove_dir_all(dir)
                        .with_context(|| format!("removing {}", dir.display()))?;
                }
            }
            let label = format!("cache rows: probe scans {}/{}", i + 1, self.runs);
            let mut m = self.mount_cache(rig, &label)?;
            let scanned = self.settle_cache(rig, &label)?;
            if i == 0 {
                self.note(format!(
                    "chunk cache after the engine's own scan of the share (fresh state dir, \
                     empty cache): {} chunks, {}, {} hits, {} misses, {} read ahead",
                    scanned.chunks,
                    fmt_bytes(scanned.used_bytes),
                    scanned.hits,
                    scanned.misses,
                    scanned.read_ahead
                ));
            }
            fresh.push(self.probe(rig, &label, &scanned)?);
            self.cache_cmd(rig, "clear", false)?;
            let before = self.settle_cache(rig, &label)?;
            cleared.push(self.probe(rig, &label, &before)?);
            let before = self.cache_status(rig)?;
            again.push(self.probe(rig, &label, &before)?);
            self.check_cache_alive(rig, &mut m)?;
            self.unmount_musicfs(m, &label)?;
        }
        Ok(vec![
            ("probe scan (first + last 64 KiB), fresh engine", fresh),
            ("probe scan, right after cache clear", cleared),
            ("probe scan again (warm)", again),
        ])
    }

    /// One probe scan of the mount (page cache dropped first) and what it did to the cache.
    fn probe(&mut self, rig: &Rig, label: &str, before: &CacheFigures) -> Result<ProbeSample> {
        drop_caches().context("dropping the page cache")?;
        let mnt = rig.mnt.clone();
        let pass = with_deadline(
            &format!("the probe scan of {}", mnt.display()),
            self.io_timeout,
            move || probe_tree(&mnt),
        )?;
        let after = self.settle_cache(rig, label)?;
        let mut s = ProbeSample::between(before, &after);
        s.read_bytes = pass.bytes;
        s.files = pass.files;
        s.secs = pass.secs;
        eprintln!(
            "bench: {label}: probe of {} files in {:.3} s: {} hits, {} misses, {} read ahead, \
             cache +{} bytes",
            pass.files, pass.secs, s.hits, s.misses, s.read_ahead, s.grew_bytes
        );
        if pass.errors > 0 || pass.files != rig.tracks as u64 {
            self.note(format!(
                "{label}: the probe scan saw {} files ({} tracks in the library), {} errors: {}",
                pass.files,
                rig.tracks,
                pass.errors,
                pass.first_errors.join("; ")
            ));
        }
        Ok(s)
    }

    /// Cold reads through the cache and of the share, then (every chunk cached) warm reads and
    /// native reads, then opens on the mount and on the share.
    fn cache_reads(&mut self, rig: &mut Rig) -> Result<Reads> {
        let label = "cache rows: reads and opens";
        let mut m = self.mount_cache(rig, label)?;
        let mut r = Reads::default();
        let share_mnt = rig.share.mountpoint().to_path_buf();
        let mut cold_figures = None;
        for i in 0..self.runs {
            self.settle_cache(rig, label)?;
            self.cache_cmd(rig, "clear", false)?;
            let before = self.settle_cache(rig, label)?;
            let pass = self.cache_read(&rig.mnt, "cold through the cache", i)?;
            let after = self.settle_cache(rig, label)?;
            cold_figures = Some(ProbeSample::between(&before, &after));
            r.cold.push(pass);
            r.share_cold
                .push(self.cache_read(&share_mnt, "cold on the sshfs share", i)?);
            self.check_cache_alive(rig, &mut m)?;
        }
        if let Some(c) = cold_figures {
            self.note(format!(
                "cold read through the cache (last run): {} chunks fetched on demand (misses), {} \
                 read ahead, {} hits (read requests served from the cache), the cache grew by {}",
                c.misses,
                c.read_ahead,
                c.hits,
                fmt_bytes(c.grew_bytes)
            ));
        }

        let (cached, total) = wait_full(&rig.mnt)?;
        if cached < total {
            self.note(format!(
                "after the cold reads the cache held {cached} of {total} bytes of the library; \
                 read once more (untimed)"
            ));
            read_tree_within(&rig.mnt, CACHE_READ_BUF, self.io_timeout)?;
            self.settle_cache(rig, label)?;
            let (cached, total) = wait_full(&rig.mnt)?;
            if cached < total {
                self.note(format!(
                    "the cache still holds only {cached} of {total} bytes: the warm rows read \
                     partly from the share"
                ));
            }
        }

        let before = self.cache_status(rig)?;
        for i in 0..self.runs {
            r.warm.push(self.cache_read(&rig.mnt, "warm cached", i)?);
            r.native.push(self.cache_read(&rig.lib, "native", i)?);
        }
        for i in 0..self.runs {
            self.opens(&rig.mnt, "cached", i, &mut r.opens)?;
            self.opens(&share_mnt, "sshfs", i, &mut r.share_opens)?;
        }
        let after = self.settle_cache(rig, label)?;
        let d = ProbeSample::between(&before, &after);
        if d.misses > 0 {
            self.note(format!(
                "the warm reads and opens of a full cache still fetched {} chunks from the share",
                d.misses
            ));
        }
        self.check_cache_alive(rig, &mut m)?;
        self.unmount_musicfs(m, label)?;
        self.check_reads(&r, rig.tracks);
        Ok(r)
    }

    /// A read of every file under `root`, page cache dropped first.
    fn cache_read(&self, root: &Path, what: &str, i: usize) -> Result<Pass> {
        self.read_pass(root, "cache rows: read", what, i, true)
    }

    /// A read of every file under `root` with the cache rows' buffer, the page cache dropped
    /// first if `cold`; printed as run `i` of `label`.
    pub(super) fn read_pass(
        &self,
        root: &Path,
        label: &str,
        what: &str,
        i: usize,
        cold: bool,
    ) -> Result<Pass> {
        if cold {
            drop_caches().context("dropping the page cache")?;
        }
        let pass = read_tree_within(root, CACHE_READ_BUF, self.io_timeout)?;
        eprintln!(
            "bench: {label} {what} {}/{}: {} files, {} bytes in {:.3} s ({:.1} MB/s)",
            i + 1,
            self.runs,
            pass.files,
            pass.bytes,
            pass.secs,
            rate(&pass)
        );
        Ok(pass)
    }

    /// open(2)+close of every file under `root`, page cache dropped and every file stat'ed
    /// again first (only the open and close are timed).
    fn opens(&self, root: &Path, what: &str, i: usize, into: &mut Opens) -> Result<()> {
        let files = list_files(root)?;
        drop_caches().context("dropping the page cache")?;
        let (ms, errors) = with_deadline(
            &format!("opening every file under {}", root.display()),
            self.io_timeout,
            move || open_every(&files),
        )?;
        let (p50, p99) = (percentile(&ms, 50.0), percentile(&ms, 99.0));
        eprintln!(
            "bench: cache rows: open {what} {}/{}: {} files, p50 {:.3} ms, p99 {:.3} ms",
            i + 1,
            self.runs,
            ms.len(),
            p50.unwrap_or(f64::NAN),
            p99.unwrap_or(f64::NAN)
        );
        into.p50.extend(p50);
        into.p99.extend(p99);
        into.samples += ms.len();
        into.errors.extend(errors);
        Ok(())
    }

    /// Notes errors and passes that saw other files or bytes than the rest.
    fn check_reads(&mut self, r: &Reads, tracks: usize) {
        let mut notes = Vec::new();
        let mut seen = Vec::new();
        for (what, passes) in [
            ("cold read through the cache", &r.cold),
            ("cold read of the sshfs share", &r.share_cold),
            ("warm cached read", &r.warm),
            ("native read", &r.native),
        ] {
            for p in passes {
                if p.errors > 0 {
                    notes.push(format!(
                        "{what}: {} errors, first: {}",
                        p.errors,
                        p.first_errors.join("; ")
                    ));
                }
                seen.push((what, p.files, p.bytes));
            }
        }
        if seen
            .windows(2)
            .any(|w| (w[0].1, w[0].2) != (w[1].1, w[1].2))
        {
            notes.push(format!(
                "the cache-row reads saw different (files, bytes): {seen:?}"
            ));
        } else if let Some((_, files, _)) = seen.first()
            && *files != tracks as u64
        {
            notes.push(format!(
                "the cache-row reads saw {files} files, the cache library has {tracks} tracks"
            ));
        }
        for (what, o) in [("cached", &r.opens), ("sshfs", &r.share_opens)] {
            if !o.errors.is_empty() {
                notes.push(format!(
                    "opens on {what}: {} errors, first: {}",
                    o.errors.len(),
                    o.errors[..o.errors.len().min(5)].join("; ")
                ));
            }
        }
        for n in notes {
            self.note(n);
        }
    }
}

/// The read and open rows, each beside its baseline.
fn read_rows(r: &Reads) -> Vec<CacheRow> {
    let mut rows = Vec::new();
    let rates = |v: &[Pass]| Stats::of(&v.iter().map(rate).collect::<Vec<_>>());
    let ratio = |a: Option<Stats>, b: Option<Stats>| match (a, b) {
        (Some(a), Some(b)) if b.median > 0.0 => Some(a.median / b.median),
        _ => None,
    };
    let (cold, share) = (rates(&r.cold), rates(&r.share_cold));
    rows.push(CacheRow {
        what: "cold read through the cache, right after cache clear (MB/s)".into(),
        musicfs: show_opt(cold, fmt_rate, "", "n/a"),
        baseline: "sshfs share, cold".into(),
        base_value: show_opt(share, fmt_rate, "", "n/a"),
        ratio: ratio(cold, share).map_or("n/a".into(), fmt_ratio),
        target: "-".into(),
    });
    let (warm, native) = (rates(&r.warm), rates(&r.native));
    let warm_ratio = ratio(warm, native);
    let target = ">= 0.8x native";
    rows.push(CacheRow {
        what: "warm cached read, every chunk cached, page cache dropped (MB/s)".into(),
        musicfs: show_opt(warm, fmt_rate, "", "n/a"),
        baseline: "native disk, cold".into(),
        base_value: show_opt(native, fmt_rate, "", "n/a"),
        ratio: warm_ratio.map_or("n/a".into(), fmt_ratio),
        target: match warm_ratio {
            Some(x) if x >= 0.8 => format!("{target}: met"),
            Some(_) => format!("{target}: MISSED"),
            None => target.into(),
        },
    });
    let cell = |o: &Opens| {
        format!(
            "{} / {}",
            show_opt(Stats::of(&o.p50), fmt_ms, "", "n/a"),
            show_opt(Stats::of(&o.p99), fmt_ms, "", "n/a")
        )
    };
    let (p50, share_p50) = (Stats::of(&r.opens.p50), Stats::of(&r.share_opens.p50));
    rows.push(CacheRow {
        what: format!(
            "open+close of a cached file, p50 / p99 (ms; {} opens)",
            r.opens.samples
        ),
        musicfs: cell(&r.opens),
        baseline: "sshfs share".into(),
        base_value: cell(&r.share_opens),
        ratio: ratio(p50, share_p50).map_or("n/a".into(), |x| format!("{} (p50)", fmt_ratio(x))),
        target: below(Stats::of(&r.opens.p99).map(|s| s.median), 5.0, "p99 < 5 ms"),
    });
    rows
}

/// Regular files under `root`, in walkdir order.
fn list_files(root: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in walkdir::WalkDir::new(root) {
        let entry = entry.with_context(|| format!("walking {}", root.display()))?;
        if entry.file_type().is_file() {
            out.push(entry.into_path());
        }
    }
    Ok(out)
}

/// Stats every file (untimed), then times open(2)+close of each; (ms per file, errors).
fn open_every(files: &[PathBuf]) -> (Vec<f64>, Vec<String>) {
    let mut errors = Vec::new();
    for f in files {
        if let Err(e) = fs::metadata(f) {
            errors.push(format!("stat {}: {e}", f.display()));
        }
    }
    let mut ms = Vec::with_capacity(files.len());
    for f in files {
        let t = Instant::now();
        match fs::File::open(f) {
            Ok(file) => {
                drop(file);
                ms.push(t.elapsed().as_secs_f64() * 1e3);
            }
            Err(e) => errors.push(format!("open {}: {e}", f.display())),
        }
    }
    (ms, errors)
}

/// Every file under `root` opened, its first and last `PROBE_BYTES` read, closed; timed.
fn probe_tree(root: &Path) -> Pass {
    let mut buf = vec![0u8; PROBE_BYTES];
    for_each_file(root, |path| probe_file(path, &mut buf))
}

fn probe_file(path: &Path, buf: &mut [u8]) -> std::io::Result<u64> {
    let mut f = fs::File::open(path)?;
    let size = f.metadata()?.len();
    let mut total = read_up_to(&mut f, buf)?;
    let tail = size.saturating_sub(buf.len() as u64);
    if tail > 0 {
        f.seek(SeekFrom::Start(tail))?;
        total += read_up_to(&mut f, buf)?;
    }
    Ok(total)
}

/// Reads until `buf` is full or the file ends.
fn read_up_to(f: &mut fs::File, buf: &mut [u8]) -> std::io::Result<u64> {
    let mut filled = 0;
    while filled < buf.len() {
        match f.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled as u64)
}

/// Waits (bounded) until every file of the mount is wholly cached (`user.musicfs.cached` = its
/// size); returns (cached bytes, total bytes) then or at the deadline.
fn wait_full(mnt: &Path) -> Result<(u64, u64)> {
    let files = list_files(mnt)?;
    let deadline = Instant::now() + CACHE_SETTLE_TIMEOUT;
    loop {
        let (mut cached, mut total) = (0, 0);
        for f in &files {
            let size = fs::metadata(f)
                .with_context(|| format!("stat {}", f.display()))?
                .len();
            let got = get_xattr(f, "user.musicfs.cached")
                .and_then(|v| String::from_utf8(v).ok())
                .and_then(|s| s.trim().parse::<u64>().ok())
                .unwrap_or(0);
            cached += got.min(size);
            total += size;
        }
        if cached >= total || Instant::now() >= deadline {
            return Ok((cached, total));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

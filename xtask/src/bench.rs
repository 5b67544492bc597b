//! `cargo xtask bench`: measures musicfs beside baselines in the same run.
//!
//! Steps:
//!
//! 1. `cargo build --release -p musicfs-engine -p musicfs-shim`, then the two binaries are copied
//!    to `<work-dir>/bin/` so a concurrent rebuild cannot swap them mid-run.
//! 2. A synthetic library of `--tracks` tracks is generated once into `<work-dir>/lib-<N>` with
//!    `cargo xtask gen-library` (this binary, as a subprocess); `<work-dir>/lib-<N>.complete`
//!    marks a finished generation and the library is reused while it exists.
//! 3. Measurements, each the median of `--runs` (with min..max):
//!    scan rate (`musicfs scan`, warm and cold page cache), engine start to the first answered
//!    readdir (fresh and reused state dir), a `find` walk that stats every file and a read of
//!    every file (cold, and with the origin warm in the page cache), on the musicfs mount, a
//!    `bindfs -r` mount of the origin and the origin itself.
//! 4. Scale rows, on a second library of `--big-tracks` tracks (default 100000, `0` skips them;
//!    generated once into `<work-dir>/lib-<N>` like the first): the initial scan (first mount
//!    with a fresh state dir), engine start to the first answered readdir with that persistent
//!    state dir, the time to apply one changed track (an mp3 retagged with lofty into a temporary
//!    file renamed over the original, as a tagger does; the engine's apply time comes from its
//!    `checkpoint committed` log line) and the idle RSS of the engine and the shim.
//! 5. The table is printed and, unless `--no-record`, written to `BENCHMARKS.md` (one section per
//!    `--tracks` value, newest first).
//!
//! Nothing here asserts on a time: targets are shown as met or missed, never enforced.
//! Dropping the page cache needs root; without it the cold measurements are skipped.
//!
//! Every wait has a deadline, and every mount is taken down on drop (also on error).

use std::ffi::{CString, OsStr, OsString};
use std::fmt::Write as _;
use std::fs;
use std::io::{BufRead, BufReader, Cursor, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};
use lofty::config::WriteOptions;
use lofty::file::{FileType, TaggedFileExt};
use lofty::probe::Probe;
use lofty::tag::{Accessor, ItemKey, TagExt, TagType};
use serde::Deserialize;

use crate::genlib::{Kind, MANIFEST_NAME, ManifestEntry};
use crate::workspace_root;

/// How long `musicfs mount` may take to answer its first readdir.
const MOUNT_READY_TIMEOUT: Duration = Duration::from_secs(600);
/// How long an unmount (and the mount process exiting after it) may take.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `cargo build` may take (it may wait on a lock held by another cargo).
const BUILD_TIMEOUT: Duration = Duration::from_secs(3600);
/// Poll interval of the bindfs mount wait.
const POLL: Duration = Duration::from_millis(5);
/// Poll interval of the readiness (first answered readdir) and visibility waits.
const READY_POLL: Duration = Duration::from_millis(1);
/// Deadline of the scale-row waits other than the initial scan: a start with the persistent state
/// dir, a log line, a change showing up in the mount (the reconcile gets more per track).
const BIG_WAIT: Duration = Duration::from_secs(60);
/// Log filter of the mount whose catalog commits are timed (`checkpoint committed` is a debug line).
const SYNC_DEBUG_LOG: &str = "info,musicfs_engine::sync=debug";
/// Quiet time after the reconcile before the idle RSS is read.
const IDLE_BEFORE_RSS: Duration = Duration::from_secs(2);
/// Album artist given to the retagged tracks (files that have it are never picked again).
const RETAG_ARTIST: &str = "Bench Retag";
/// The retagged tracks are taken from every RETAG_STRIDE-th manifest line first (spread out).
const RETAG_STRIDE: usize = 97;
/// Buffer of the read-every-file loop.
const READ_BUF: usize = 128 * 1024;
/// The file the results are recorded in, at the workspace root.
const RECORD_FILE: &str = "BENCHMARKS.md";
const SECTION_END: &str = "<!-- /bench -->";

/// `cargo xtask bench` arguments.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Number of tracks in the generated library.
    #[arg(long, default_value_t = 20_000)]
    pub tracks: usize,
    /// Where the library, state dirs and mountpoints live (default: `<target>/bench`).
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Tracks in the second library of the scale rows (initial scan, start with a persistent
    /// state dir, one changed track, idle RSS); 0 skips them.
    #[arg(long, default_value_t = 100_000)]
    pub big_tracks: usize,
    /// Timed runs per measurement (the table shows the median and min..max).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub runs: u32,
    /// Print the table but do not update BENCHMARKS.md.
    #[arg(long)]
    pub no_record: bool,
}

pub fn run(args: &Args) -> Result<()> {
    ensure!(args.tracks > 0, "--tracks must be > 0");
    for tool in ["bindfs", "fusermount3", "find"] {
        ensure!(
            on_path(tool),
            "`{tool}` is not installed (the bench needs bindfs, fuse3 and findutils)"
        );
    }
    ensure!(
        Path::new("/dev/fuse").exists(),
        "/dev/fuse does not exist; the bench needs FUSE"
    );

    let target = target_dir();
    let work = args
        .work_dir
        .clone()
        .unwrap_or_else(|| target.join("bench"));
    fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let work = work
        .canonicalize()
        .with_context(|| format!("resolving {}", work.display()))?;

    let bin = build(&target, &work)?;
    let lib = ensure_library(&work, args.tracks)?;
    let big_lib = if args.big_tracks > 0 {
        Some(ensure_library(&work, args.big_tracks)?)
    } else {
        None
    };

    let can_drop = match drop_caches() {
        Ok(()) => true,
        Err(e) => {
            eprintln!("bench: warning: cannot drop the page cache ({e:#}); cold runs are skipped");
            false
        }
    };

    let mnt_dir = work.join("mnt");
    let mfs_mnt = mnt_dir.join("musicfs");
    let bind_mnt = mnt_dir.join("bindfs");
    for m in [&mfs_mnt, &bind_mnt] {
        clear_stale_mount(m)?;
        fs::create_dir_all(m).with_context(|| format!("creating {}", m.display()))?;
    }
    let log = work.join("musicfs-mount.log");
    fs::write(&log, b"").with_context(|| format!("creating {}", log.display()))?;

    let mut bench = Bench {
        bin,
        lib,
        work,
        mfs_mnt,
        bind_mnt,
        log,
        can_drop,
        runs: args.runs as usize,
        tracks: args.tracks,
        io_timeout: Duration::from_secs(600 + args.tracks as u64 / 50),
        notes: Vec::new(),
        rows: Vec::new(),
    };
    let lib_size = tree_size(&bench.lib)?;
    bench.check_memory(lib_size.bytes);

    let scan_tracks = bench.measure_scan()?;
    bench.measure_start()?;
    bench.measure_trees(scan_tracks)?;
    bench.measure_stalls()?;

    // The scale rows come last; if they fail, the table so far is still recorded (with a note)
    // and the bench then fails.
    let mut big_library = None;
    let mut failure = None;
    if let Some(big_lib) = &big_lib {
        let size = tree_size(big_lib)?;
        big_library = Some(format!(
            "{} tracks requested; {} files, {} ({} bytes) in `{}`",
            args.big_tracks,
            size.files,
            fmt_bytes(size.bytes),
            size.bytes,
            big_lib.display()
        ));
        if let Err(e) = bench.measure_big(big_lib, args.big_tracks) {
            bench.note(format!(
                "{} tracks: the scale measurements stopped early: {e:#}",
                fmt_thousands(args.big_tracks as f64)
            ));
            failure = Some(e);
        }
    }

    let report = Report {
        tracks: args.tracks,
        command: command_line(args.big_tracks),
        date: utc_now(),
        machine: machine_info(&bench.work),
        commit: git_commit(),
        library: format!(
            "{} tracks requested, {} found by `musicfs scan`; {} files, {} ({} bytes) in `{}`",
            args.tracks,
            scan_tracks,
            lib_size.files,
            fmt_bytes(lib_size.bytes),
            lib_size.bytes,
            bench.lib.display()
        ),
        big_library,
        rows: std::mem::take(&mut bench.rows),
        notes: std::mem::take(&mut bench.notes),
    };
    let section = report.section();
    println!();
    println!("{section}");
    if args.no_record {
        println!("bench: --no-record given; {RECORD_FILE} left alone");
    } else {
        let path = workspace_root().join(RECORD_FILE);
        record(&path, args.tracks, &section)?;
        println!("bench: recorded in {}", path.display());
    }
    match failure {
        Some(e) => Err(e.context("the scale measurements failed (the rows so far were kept)")),
        None => Ok(()),
    }
}

// ---------------------------------------------------------------------------------------------
// Table
// ---------------------------------------------------------------------------------------------

/// One table row. Later measurements (stall times under engine kill, idle RSS, ...) add rows.
#[derive(Clone, Debug, Default)]
pub struct Row {
    pub what: String,
    pub musicfs: String,
    pub bindfs: String,
    pub native: String,
    pub vs_bindfs: String,
    pub vs_native: String,
    pub target: String,
}

const HEADERS: [&str; 7] = [
    "what",
    "musicfs",
    "bindfs",
    "native",
    "musicfs/bindfs",
    "musicfs/native",
    "target",
];

impl Row {
    fn cells(&self) -> [&str; 7] {
        [
            &self.what,
            &self.musicfs,
            &self.bindfs,
            &self.native,
            &self.vs_bindfs,
            &self.vs_native,
            &self.target,
        ]
    }
}

/// A markdown table, padded so it also reads well in a terminal.
fn render_table(rows: &[Row]) -> String {
    let mut widths = HEADERS.map(|h| h.chars().count());
    for row in rows {
        for (w, c) in widths.iter_mut().zip(row.cells()) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: [&str; 7]| {
        let mut s = String::from("|");
        for (c, w) in cells.iter().zip(widths) {
            let pad = w - c.chars().count();
            let _ = write!(s, " {c}{} |", " ".repeat(pad));
        }
        s.push('\n');
        s
    };
    let mut out = line(HEADERS);
    out.push('|');
    for w in widths {
        let _ = write!(out, "{}|", "-".repeat(w + 2));
    }
    out.push('\n');
    for row in rows {
        out.push_str(&line(row.cells()));
    }
    out
}

/// Median, min and max of some samples.
#[derive(Clone, Copy, Debug)]
struct Stats {
    median: f64,
    min: f64,
    max: f64,
    n: usize,
}

impl Stats {
    fn of(samples: &[f64]) -> Option<Stats> {
        if samples.is_empty() {
            return None;
        }
        let mut v = samples.to_vec();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Stats {
            median,
            min: v[0],
            max: v[n - 1],
            n,
        })
    }

    /// `median unit (min..max)`.
    fn show(&self, fmt: fn(f64) -> String, unit: &str) -> String {
        let unit = if unit.is_empty() {
            String::new()
        } else {
            format!(" {unit}")
        };
        if self.n > 1 {
            format!(
                "{}{unit} ({}..{})",
                fmt(self.median),
                fmt(self.min),
                fmt(self.max)
            )
        } else {
            format!("{}{unit}", fmt(self.median))
        }
    }
}

fn show_opt(s: Option<Stats>, fmt: fn(f64) -> String, unit: &str, missing: &str) -> String {
    s.map_or_else(|| missing.to_string(), |s| s.show(fmt, unit))
}

fn fmt_secs(s: f64) -> String {
    if s < 10.0 {
        format!("{s:.3}")
    } else {
        format!("{s:.1}")
    }
}

fn fmt_rate(r: f64) -> String {
    if r < 100.0 {
        format!("{r:.1}")
    } else {
        format!("{r:.0}")
    }
}

fn fmt_thousands(x: f64) -> String {
    let n = x.round().max(0.0) as u64;
    let digits = n.to_string();
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

fn fmt_ratio(r: f64) -> String {
    format!("{r:.2}x")
}

fn fmt_bytes(b: u64) -> String {
    let b = b as f64;
    if b >= 1e9 {
        format!("{:.2} GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.1} MB", b / 1e6)
    } else {
        format!("{:.0} kB", b / 1e3)
    }
}

/// Met, goal met or missed, for a value where `higher` is better (or lower).
fn verdict(value: f64, target: f64, goal: f64, higher: bool) -> &'static str {
    let ok = |t: f64| if higher { value >= t } else { value <= t };
    if ok(goal) {
        "goal met"
    } else if ok(target) {
        "met"
    } else {
        "MISSED"
    }
}

// ---------------------------------------------------------------------------------------------
// Measurements
// ---------------------------------------------------------------------------------------------

struct Bench {
    /// The copied `musicfs` binary (`musicfs-shim` is beside it).
    bin: PathBuf,
    lib: PathBuf,
    work: PathBuf,
    mfs_mnt: PathBuf,
    bind_mnt: PathBuf,
    /// stdout and stderr of every `musicfs mount`.
    log: PathBuf,
    can_drop: bool,
    runs: usize,
    tracks: usize,
    /// Deadline of one walk or read pass.
    io_timeout: Duration,
    notes: Vec<String>,
    rows: Vec<Row>,
}

#[derive(Deserialize, Debug)]
struct ScanReport {
    tracks: u64,
    unreadable_files: u64,
    unreadable_dirs: u64,
    #[allow(dead_code)]
    elapsed_ms: u64,
    tracks_per_s: f64,
}

/// What one pass (walk or read) over a tree saw.
#[derive(Clone, Debug, Default)]
struct Pass {
    secs: f64,
    files: u64,
    bytes: u64,
    errors: u64,
    first_errors: Vec<String>,
}

impl Pass {
    fn error(&mut self, e: String) {
        self.errors += 1;
        if self.first_errors.len() < 5 {
            self.first_errors.push(e);
        }
    }
}

/// Per-root samples of one measurement.
#[derive(Default)]
struct Triple {
    musicfs: Vec<Pass>,
    bindfs: Vec<Pass>,
    native: Vec<Pass>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Root {
    Musicfs,
    Bindfs,
    Native,
}

impl Root {
    fn name(self) -> &'static str {
        match self {
            Root::Musicfs => "musicfs",
            Root::Bindfs => "bindfs",
            Root::Native => "native",
        }
    }
}

impl Triple {
    fn push(&mut self, root: Root, pass: Pass) {
        match root {
            Root::Musicfs => self.musicfs.push(pass),
            Root::Bindfs => self.bindfs.push(pass),
            Root::Native => self.native.push(pass),
        }
    }
}

impl Bench {
    fn note(&mut self, note: String) {
        eprintln!("bench: note: {note}");
        self.notes.push(note);
    }

    fn check_memory(&mut self, lib_bytes: u64) {
        let avail = meminfo_kb("MemAvailable").map(|kb| kb * 1024);
        if let Some(avail) = avail
            && avail < lib_bytes.saturating_mul(3)
        {
            self.note(format!(
                "the library ({}) is more than a third of the available memory ({}): the \
                 warm-origin reads may evict the origin from the page cache",
                fmt_bytes(lib_bytes),
                fmt_bytes(avail)
            ));
        }
    }

    fn root(&self, root: Root) -> &Path {
        match root {
            Root::Musicfs => &self.mfs_mnt,
            Root::Bindfs => &self.bind_mnt,
            Root::Native => &self.lib,
        }
    }

    fn scan_once(&self) -> Result<ScanReport> {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("scan").arg("--origin").arg(&self.lib);
        let out = run_captured(&mut cmd, "musicfs scan", self.io_timeout)?;
        ensure!(
            out.status.success(),
            "musicfs scan failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let line = stdout
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .context("musicfs scan printed nothing")?;
        serde_json::from_str(line).with_context(|| format!("musicfs scan printed {line:?}"))
    }

    /// Scan rate, warm and cold. Returns the number of tracks found.
    fn measure_scan(&mut self) -> Result<u64> {
        eprintln!("bench: scan (warm-up)");
        let first = self.scan_once()?;
        if first.unreadable_files > 0 || first.unreadable_dirs > 0 {
            self.note(format!(
                "musicfs scan: {} unreadable files, {} unreadable dirs",
                first.unreadable_files, first.unreadable_dirs
            ));
        }
        let mut warm = Vec::new();
        for i in 0..self.runs {
            let r = self.scan_once()?;
            eprintln!(
                "bench: scan warm {}/{}: {} tracks, {:.0} tracks/s",
                i + 1,
                self.runs,
                r.tracks,
                r.tracks_per_s
            );
            warm.push(r.tracks_per_s);
        }
        let mut cold = Vec::new();
        if self.can_drop {
            for i in 0..self.runs {
                drop_caches()?;
                let r = self.scan_once()?;
                eprintln!(
                    "bench: scan cold {}/{}: {:.0} tracks/s",
                    i + 1,
                    self.runs,
                    r.tracks_per_s
                );
                cold.push(r.tracks_per_s);
            }
        }
        for (what, samples) in [
            ("scan, warm page cache (tracks/s)", warm),
            ("scan, cold page cache (tracks/s)", cold),
        ] {
            let st = Stats::of(&samples);
            let target = match st {
                Some(s) => format!(
                    ">= 5,000/s (goal 10,000): {}",
                    verdict(s.median, 5000.0, 10000.0, true)
                ),
                None => ">= 5,000/s (goal 10,000)".to_string(),
            };
            self.rows.push(Row {
                what: what.to_string(),
                musicfs: show_opt(st, fmt_thousands, "", "n/a (needs root)"),
                bindfs: "-".into(),
                native: "-".into(),
                vs_bindfs: "-".into(),
                vs_native: "-".into(),
                target,
            });
        }
        Ok(first.tracks)
    }

    /// Mounts, measuring spawn to first answered readdir, then waits (untimed) until the
    /// supervisor reports the mount up so that an immediate unmount is not a startup failure.
    fn mount_musicfs(&self, state: &Path, label: &str) -> Result<(MusicfsMount, Duration)> {
        self.mount_at(
            &self.lib,
            state,
            &self.mfs_mnt,
            label,
            &[],
            MOUNT_READY_TIMEOUT,
        )
    }

    /// [`Bench::mount_musicfs`] with any origin, mountpoint, extra environment and deadline.
    fn mount_at(
        &self,
        lib: &Path,
        state: &Path,
        mnt: &Path,
        label: &str,
        env: &[(&str, &str)],
        timeout: Duration,
    ) -> Result<(MusicfsMount, Duration)> {
        let mut m = MusicfsMount::start(&self.bin, lib, state, mnt, &self.log, label, env)?;
        let took = m.wait_ready(timeout)?;
        // Untimed; if the message ever changes this just waits 5 s.
        let _ = m.wait_announced(Duration::from_secs(5));
        Ok((m, took))
    }

    fn unmount_musicfs(&mut self, m: MusicfsMount, label: &str) -> Result<()> {
        let problems = m.stop()?;
        for p in problems {
            self.note(format!("{label}: {p}"));
        }
        Ok(())
    }

    /// Engine start to the first answered readdir, with a fresh and a reused state dir.
    fn measure_start(&mut self) -> Result<()> {
        let fresh = self.work.join(format!("state-{}-fresh", self.tracks));
        let reused = self.reused_state();
        let mut fresh_s = Vec::new();
        for i in 0..self.runs {
            if fresh.exists() {
                fs::remove_dir_all(&fresh)
                    .with_context(|| format!("removing {}", fresh.display()))?;
            }
            let label = format!("start, fresh state {}/{}", i + 1, self.runs);
            let (m, took) = self.mount_musicfs(&fresh, &label)?;
            eprintln!("bench: {label}: {:.3} s", took.as_secs_f64());
            fresh_s.push(took.as_secs_f64());
            self.unmount_musicfs(m, &label)?;
        }
        // Untimed: fills the state dir, or brings one from an older engine (catalog schema,
        // template) up to date, so the timed starts below never rescan.
        let label = "start, reused state (warm-up)";
        eprintln!("bench: {label}");
        let offset = log_len(&self.log);
        let (mut m, _) = self.mount_musicfs(&reused, label)?;
        settle(&mut m, offset, self.tracks)?;
        self.unmount_musicfs(m, label)?;
        let mut reused_s = Vec::new();
        for i in 0..self.runs {
            let label = format!("start, reused state {}/{}", i + 1, self.runs);
            let offset = log_len(&self.log);
            let (mut m, took) = self.mount_musicfs(&reused, &label)?;
            eprintln!("bench: {label}: {:.3} s", took.as_secs_f64());
            reused_s.push(took.as_secs_f64());
            settle(&mut m, offset, self.tracks)?;
            self.unmount_musicfs(m, &label)?;
        }
        for (what, samples) in [
            ("start to first readdir, fresh state dir (s)", fresh_s),
            ("start to first readdir, reused state dir (s)", reused_s),
        ] {
            self.rows.push(Row {
                what: what.to_string(),
                musicfs: show_opt(Stats::of(&samples), fmt_secs, "", "n/a"),
                bindfs: "-".into(),
                native: "-".into(),
                vs_bindfs: "-".into(),
                vs_native: "-".into(),
                target: "-".into(),
            });
        }
        Ok(())
    }

    fn reused_state(&self) -> PathBuf {
        self.work.join(format!("state-{}", self.tracks))
    }

    /// `find ROOT -type f -printf '%s\n'`, timed. Counts the files and sums their sizes.
    fn walk(&self, root: Root) -> Result<Pass> {
        let path = self.root(root);
        let mut cmd = Command::new("find");
        cmd.arg(path).args(["-type", "f", "-printf", "%s\\n"]);
        let out = run_captured(&mut cmd, "find", self.io_timeout)
            .with_context(|| format!("walking {}", path.display()))?;
        let mut pass = Pass {
            secs: out.elapsed.as_secs_f64(),
            ..Pass::default()
        };
        for line in out.stdout.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            pass.files += 1;
            pass.bytes += std::str::from_utf8(line)
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
                .unwrap_or(0);
        }
        if !out.status.success() {
            pass.error(format!("find exited with {}", out.status));
        }
        for line in String::from_utf8_lossy(&out.stderr).lines() {
            pass.error(line.to_string());
        }
        Ok(pass)
    }

    /// Reads every regular file under the root, timed, with a deadline.
    fn read(&self, root: Root) -> Result<Pass> {
        let path = self.root(root).to_path_buf();
        with_deadline(
            &format!("reading every file under {}", path.display()),
            self.io_timeout,
            move || read_tree(&path),
        )
    }

    fn drop_or_fail(&self) -> Result<()> {
        drop_caches().context("dropping the page cache")
    }

    /// Tree walks and reads on the three roots.
    /// Read stalls and failed reads while the engine is killed (kill -9) and
    /// swapped, 10 times each, under 4 readers (see `stall.rs`).
    fn measure_stalls(&mut self) -> Result<()> {
        use crate::stall::{Fault, measure};
        let musicfs = self.bin.clone();
        for (kind, what, limit) in [
            (
                Fault::Kill9,
                "engine kill -9 + restart x10 under load",
                1000.0,
            ),
            (Fault::Swap, "engine swap x10 under load", 250.0),
        ] {
            let r = measure(&musicfs, &self.lib, &self.work, kind, 10)?;
            self.rows.push(solo_row(
                format!("{what}: read stall per fault p50 / p99 / max (ms)"),
                format!(
                    "{:.0} / {:.0} / {:.0}",
                    r.recovery_p50_ms, r.recovery_p99_ms, r.recovery_max_ms
                ),
                below(
                    Some(r.recovery_p99_ms),
                    limit,
                    &format!("p99 < {limit:.0} ms"),
                ),
            ));
            self.rows.push(solo_row(
                format!("{what}: read latency p50 / p99 / max (ms); failed reads"),
                format!(
                    "{:.1} / {:.1} / {:.0}; {} of {}",
                    r.op_p50_ms, r.op_p99_ms, r.op_max_ms, r.failed, r.ops
                ),
                below(Some(r.failed as f64), 1.0, "0 failed"),
            ));
        }
        Ok(())
    }

    fn measure_trees(&mut self, scan_tracks: u64) -> Result<()> {
        let reused = self.reused_state();
        let (mut mfs, _) = self.mount_musicfs(&reused, "walk and read")?;
        let bind = BindfsMount::start(&self.lib, &self.bind_mnt)?;
        let roots = [Root::Musicfs, Root::Bindfs, Root::Native];

        // c. tree walk, cold
        let mut walks = Triple::default();
        for i in 0..self.runs {
            for root in roots {
                if self.can_drop {
                    self.drop_or_fail()?;
                }
                let pass = self.walk(root)?;
                mfs.check_alive()?;
                bind.check_alive()?;
                eprintln!(
                    "bench: walk {} {}/{}: {} files in {:.3} s",
                    root.name(),
                    i + 1,
                    self.runs,
                    pass.files,
                    pass.secs
                );
                walks.push(root, pass);
            }
        }

        // d. read every file, cold
        let mut cold = Triple::default();
        if self.can_drop {
            for i in 0..self.runs {
                for root in roots {
                    self.drop_or_fail()?;
                    let pass = self.read(root)?;
                    mfs.check_alive()?;
                    bind.check_alive()?;
                    eprintln!(
                        "bench: read cold {} {}/{}: {} files, {} in {:.3} s",
                        root.name(),
                        i + 1,
                        self.runs,
                        pass.files,
                        fmt_bytes(pass.bytes),
                        pass.secs
                    );
                    cold.push(root, pass);
                }
            }
        }

        // d. read every file, warm origin: each FUSE pass is its first (caches dropped before
        // the untimed native read that warms the origin).
        let mut warm = Triple::default();
        for i in 0..self.runs {
            if self.can_drop {
                self.drop_or_fail()?;
            }
            let _ = self.read(Root::Native)?;
            for root in [Root::Bindfs, Root::Musicfs, Root::Native] {
                let pass = self.read(root)?;
                mfs.check_alive()?;
                bind.check_alive()?;
                eprintln!(
                    "bench: read warm-origin {} {}/{}: {} files, {} in {:.3} s",
                    root.name(),
                    i + 1,
                    self.runs,
                    pass.files,
                    fmt_bytes(pass.bytes),
                    pass.secs
                );
                warm.push(root, pass);
            }
        }
        if !self.can_drop {
            self.note(
                "the page cache could not be dropped: the walks and the warm-origin reads ran \
                 with whatever was cached, and FUSE passes after the first were not first passes"
                    .to_string(),
            );
        }

        bind.stop()?;
        self.unmount_musicfs(mfs, "walk and read")?;

        self.check_passes(scan_tracks, &walks, &cold, &warm);

        self.rows.push(time_row(
            "tree walk, cold (find + stat every file, s)",
            &walks,
            "<= 1.5x bindfs (goal 1.2x)",
            1.5,
            1.2,
        ));
        if self.can_drop {
            self.rows
                .push(read_row("read every file, cold (MB/s)", &cold));
        } else {
            self.rows.push(Row {
                what: "read every file, cold (MB/s)".into(),
                musicfs: "n/a (needs root)".into(),
                bindfs: "n/a".into(),
                native: "n/a".into(),
                vs_bindfs: "-".into(),
                vs_native: "-".into(),
                target: ">= 0.8x bindfs (goal: time <= 1.1x)".into(),
            });
        }
        self.rows
            .push(read_row("read every file, warm origin (MB/s)", &warm));
        self.rows.push(seen_row(&warm));
        Ok(())
    }

    /// Notes errors and inconsistencies: files musicfs does not show, sizes that do not match
    /// the bytes read, errors from find or from the reads.
    fn check_passes(&mut self, scan_tracks: u64, walks: &Triple, cold: &Triple, warm: &Triple) {
        let mut notes = Vec::new();
        for (kind, t) in [
            ("walk", walks),
            ("cold read", cold),
            ("warm-origin read", warm),
        ] {
            for (root, passes) in [
                (Root::Musicfs, &t.musicfs),
                (Root::Bindfs, &t.bindfs),
                (Root::Native, &t.native),
            ] {
                let errors: u64 = passes.iter().map(|p| p.errors).sum();
                if errors > 0 {
                    let first: Vec<&str> = passes
                        .iter()
                        .flat_map(|p| p.first_errors.iter().map(String::as_str))
                        .take(5)
                        .collect();
                    notes.push(format!(
                        "{kind} on {}: {errors} errors, first: {}",
                        root.name(),
                        first.join("; ")
                    ));
                }
                let counts: Vec<(u64, u64)> = passes.iter().map(|p| (p.files, p.bytes)).collect();
                if counts.windows(2).any(|w| w[0] != w[1]) {
                    notes.push(format!(
                        "{kind} on {}: the runs saw different (files, bytes): {counts:?}",
                        root.name()
                    ));
                }
            }
        }
        let first = |v: &[Pass]| v.first().map(|p| (p.files, p.bytes));
        if let Some((files, _)) = first(&walks.musicfs)
            && files != scan_tracks
        {
            notes.push(format!(
                "the musicfs walk saw {files} files but `musicfs scan` found {scan_tracks} tracks"
            ));
        }
        for (root, walk, read) in [
            (Root::Musicfs, &walks.musicfs, &warm.musicfs),
            (Root::Bindfs, &walks.bindfs, &warm.bindfs),
            (Root::Native, &walks.native, &warm.native),
        ] {
            if let (Some(w), Some(r)) = (first(walk), first(read))
                && w != r
            {
                notes.push(format!(
                    "{}: find saw {} files with sizes summing to {} bytes, the reads got {} \
                     files and {} bytes",
                    root.name(),
                    w.0,
                    w.1,
                    r.0,
                    r.1
                ));
            }
        }
        if let (Some(b), Some(n)) = (first(&walks.bindfs), first(&walks.native))
            && b != n
        {
            notes.push(format!(
                "bindfs and native walks differ: {b:?} vs {n:?} (files, bytes)"
            ));
        }
        for n in notes {
            self.note(n);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Scale rows (`--big-tracks`)
// ---------------------------------------------------------------------------------------------

fn fmt_ms(ms: f64) -> String {
    if ms < 10.0 {
        format!("{ms:.2}")
    } else if ms < 100.0 {
        format!("{ms:.1}")
    } else {
        format!("{ms:.0}")
    }
}

/// Whole milliseconds as logged (a median of two may end in .5).
fn fmt_whole_ms(ms: f64) -> String {
    if ms.fract() == 0.0 {
        format!("{ms:.0}")
    } else {
        format!("{ms:.1}")
    }
}

fn fmt_mb(mb: f64) -> String {
    format!("{mb:.1}")
}

/// A musicfs-only row.
fn solo_row(what: String, musicfs: String, target: String) -> Row {
    Row {
        what,
        musicfs,
        bindfs: "-".into(),
        native: "-".into(),
        vs_bindfs: "-".into(),
        vs_native: "-".into(),
        target,
    }
}

/// `target: met/MISSED` for a value where lower is better and there is no separate goal.
fn below(value: Option<f64>, limit: f64, target: &str) -> String {
    match value {
        Some(v) if v < limit => format!("{target}: met"),
        Some(_) => format!("{target}: MISSED"),
        None => target.to_string(),
    }
}

/// Waits (untimed, bounded) until the engine of `m` logged `sync finished` after `offset` (the log
/// length before `m` started): the background reconcile of a start with a persistent state dir
/// (or the scan of a fresh one) is done. The starts are stopped only after that: stopping the
/// engine in the middle of its reconcile makes the next start slower (in proportion to the
/// catalog size), which would carry over from one timed run into the next.
fn settle(m: &mut MusicfsMount, offset: u64, tracks: usize) -> Result<()> {
    let timeout = BIG_WAIT + Duration::from_secs(tracks as u64 / 10_000);
    m.wait_log(offset, "sync finished", timeout)
        .context("waiting for the engine's background reconcile")?;
    Ok(())
}

/// What one change of a track measured.
struct Change {
    /// `elapsed_us` of the engine's commit, in ms.
    apply_ms: Option<f64>,
    /// From the rename until the new path answered a lookup.
    visible_ms: f64,
}

impl Bench {
    /// The scale rows on the library `lib` of `tracks` tracks: initial scan, start with the
    /// persistent state dir, one changed track, idle RSS.
    fn measure_big(&mut self, lib: &Path, tracks: usize) -> Result<()> {
        let n = fmt_thousands(tracks as f64);
        let mnt = self.work.join("mnt").join("musicfs-big");
        clear_stale_mount(&mnt)?;
        fs::create_dir_all(&mnt).with_context(|| format!("creating {}", mnt.display()))?;
        let state = self.work.join(format!("state-big-{tracks}"));

        // 1. The initial scan: a fresh state dir, cold page cache when possible.
        if state.exists() {
            fs::remove_dir_all(&state).with_context(|| format!("removing {}", state.display()))?;
        }
        let cold = self.can_drop && drop_caches().is_ok();
        let label = format!("{n} tracks: initial scan + mount, fresh state");
        eprintln!("bench: {label}");
        let offset = log_len(&self.log);
        let (mut m, took) = self.mount_at(lib, &state, &mnt, &label, &[], MOUNT_READY_TIMEOUT)?;
        eprintln!("bench: {label}: {:.3} s", took.as_secs_f64());
        let ready = m
            .wait_log(offset, "engine ready", Duration::from_secs(5))
            .ok();
        let since = log_since(&self.log, offset);
        let synced = since.lines().find(|l| l.contains("sync finished"));
        let engine_hwm = engine_pid(&state)
            .ok()
            .and_then(|pid| proc_status_kb(pid, "VmHWM"));
        self.unmount_musicfs(m, &label)?;
        self.rows.push(solo_row(
            format!("{n} tracks: initial scan + mount, fresh state (s)"),
            Stats::of(&[took.as_secs_f64()]).map_or("n/a".into(), |s| s.show(fmt_secs, "")),
            "-".into(),
        ));
        let mut note = format!(
            "{n} tracks, initial scan (one run, page cache {}): engine `startup_ms` {}",
            if cold { "dropped first" } else { "not dropped" },
            ready
                .as_deref()
                .and_then(|l| log_field(l, "startup_ms"))
                .map_or("n/a".into(), |v| v.to_string()),
        );
        match synced {
            Some(l) => {
                let get = |k| log_field(l, k).map_or("?".into(), |v| v.to_string());
                let _ = write!(
                    note,
                    ", `sync finished` elapsed_ms={} files={} nodes={} probed={}",
                    get("elapsed_ms"),
                    get("files"),
                    get("nodes"),
                    get("probed")
                );
            }
            None => note.push_str(", no `sync finished` line in the log"),
        }
        if let Some(kb) = engine_hwm {
            let _ = write!(
                note,
                "; engine peak RSS (VmHWM) {} MB",
                fmt_mb(kb as f64 / 1e3)
            );
        }
        self.note(note);

        // 2. Start with the persistent state dir.
        let mut start_ms = Vec::new();
        let mut startup_ms = Vec::new();
        for i in 0..self.runs {
            let label = format!(
                "{n} tracks: start, persistent state {}/{}",
                i + 1,
                self.runs
            );
            let offset = log_len(&self.log);
            let (mut m, took) = self.mount_at(lib, &state, &mnt, &label, &[], BIG_WAIT)?;
            let ms = took.as_secs_f64() * 1e3;
            let engine = m
                .wait_log(offset, "engine ready", Duration::from_secs(5))
                .ok()
                .and_then(|l| log_field(&l, "startup_ms"));
            eprintln!(
                "bench: {label}: {ms:.1} ms (engine startup_ms {})",
                engine.map_or("n/a".into(), |v| v.to_string())
            );
            start_ms.push(ms);
            if let Some(v) = engine {
                startup_ms.push(v as f64);
            }
            settle(&mut m, offset, tracks)?;
            self.unmount_musicfs(m, &label)?;
        }
        let st = Stats::of(&start_ms);
        let target = "< 200 ms (goal < 100 ms)";
        self.rows.push(solo_row(
            format!("{n} tracks: start to first readdir, persistent state (ms)"),
            show_opt(st, fmt_ms, "", "n/a"),
            match st {
                Some(s) => format!("{target}: {}", verdict(s.median, 200.0, 100.0, false)),
                None => target.into(),
            },
        ));
        self.note(format!(
            "{n} tracks, start with the persistent state dir: the engine's own `startup_ms` \
             (its `engine ready` log line) was {} ms",
            show_opt(Stats::of(&startup_ms), fmt_whole_ms, "", "n/a")
        ));

        // 3. and 4. One mount with the sync debug log: idle RSS, then the changed tracks.
        self.measure_changes(lib, tracks, &state, &mnt)
    }

    fn measure_changes(
        &mut self,
        lib: &Path,
        tracks: usize,
        state: &Path,
        mnt: &Path,
    ) -> Result<()> {
        let n = fmt_thousands(tracks as f64);
        let label = format!("{n} tracks: changes and idle RSS");
        eprintln!("bench: {label}");
        // The supervisor hands the engine `log_level` as its MUSICFS_LOG, so the filter goes in
        // MUSICFS_LOG_LEVEL too.
        let env = [
            ("MUSICFS_LOG", SYNC_DEBUG_LOG),
            ("MUSICFS_LOG_LEVEL", SYNC_DEBUG_LOG),
        ];
        let offset = log_len(&self.log);
        let (mut m, _) = self.mount_at(lib, state, mnt, &label, &env, BIG_WAIT)?;
        settle(&mut m, offset, tracks)?;
        let synced = m.wait_log(offset, "sync finished", Duration::from_secs(5))?;
        let since = log_since(&self.log, offset);
        let debug_on = since.contains("checkpoint committed");
        self.note(format!(
            "{n} tracks, background reconcile after the start: elapsed_ms={} probed={}",
            log_field(&synced, "elapsed_ms").map_or("?".into(), |v| v.to_string()),
            log_field(&synced, "probed").map_or("?".into(), |v| v.to_string()),
        ));
        if !debug_on {
            self.note(format!(
                "{n} tracks: the engine logged no `checkpoint committed` line although \
                 MUSICFS_LOG and MUSICFS_LOG_LEVEL were {SYNC_DEBUG_LOG:?}: no apply times"
            ));
        }

        // 4. Idle RSS.
        std::thread::sleep(IDLE_BEFORE_RSS);
        m.check_alive()?;
        let engine = engine_pid(state)?;
        let shim = shim_pid(mnt)?;
        let engine_rss = proc_status_kb(engine, "VmRSS").map(|kb| kb as f64 / 1e3);
        let shim_rss = proc_status_kb(shim, "VmRSS").map(|kb| kb as f64 / 1e3);
        let debounce_ms = proc_env(engine, "MUSICFS_DEBOUNCE_MS").and_then(|v| v.parse().ok());
        eprintln!(
            "bench: {label}: idle VmRSS engine {} MB, shim {} MB",
            engine_rss.map_or("n/a".into(), fmt_mb),
            shim_rss.map_or("n/a".into(), fmt_mb)
        );

        // 3. Changed tracks.
        let files = retag_candidates(lib, self.runs)?;
        if files.len() < self.runs {
            self.note(format!(
                "{n} tracks: only {} mp3 files are left that an earlier run has not retagged",
                files.len()
            ));
        }
        let stamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut changes = Vec::new();
        for (i, file) in files.iter().enumerate() {
            let album = format!("Retag {stamp} {}", i + 1);
            let title = format!("Changed Track {}", i + 1);
            let shown = mnt
                .join(RETAG_ARTIST)
                .join(&album)
                .join(format!("01 - {title}.mp3"));
            match self.change_once(&mut m, file, &album, &title, &shown, &n)? {
                Some(c) => {
                    eprintln!(
                        "bench: {n} tracks: change {}/{}: engine apply {} ms, visible after \
                         {:.1} ms",
                        i + 1,
                        files.len(),
                        c.apply_ms.map_or("n/a".into(), fmt_ms),
                        c.visible_ms
                    );
                    changes.push(c);
                }
                None => break,
            }
        }
        if let Some(kb) = proc_status_kb(engine, "VmRSS") {
            let hwm =
                proc_status_kb(engine, "VmHWM").map_or("n/a".into(), |h| fmt_mb(h as f64 / 1e3));
            self.note(format!(
                "{n} tracks: engine VmRSS after the changes {} MB, peak (VmHWM) since its start \
                 {hwm} MB",
                fmt_mb(kb as f64 / 1e3)
            ));
        }
        self.unmount_musicfs(m, &label)?;

        let apply = Stats::of(
            &changes
                .iter()
                .filter_map(|c| c.apply_ms)
                .collect::<Vec<_>>(),
        );
        let visible = Stats::of(&changes.iter().map(|c| c.visible_ms).collect::<Vec<_>>());
        self.rows.push(solo_row(
            format!("{n} tracks: one changed track, engine apply (ms)"),
            show_opt(apply, fmt_ms, "", "n/a (see notes)"),
            below(apply.map(|s| s.median), 10.0, "< 10 ms"),
        ));
        let debounce = debounce_ms.map_or("?".to_string(), |d: u64| d.to_string());
        self.rows.push(solo_row(
            format!("{n} tracks: one changed track, rename to new name visible (ms)"),
            show_opt(visible, fmt_ms, "", "n/a (see notes)"),
            format!("- (includes the {debounce} ms debounce)"),
        ));
        self.rows.push(solo_row(
            format!("{n} tracks: engine idle RSS (MB)"),
            engine_rss.map_or("n/a".into(), fmt_mb),
            below(engine_rss, 50.0, "< 50 MB"),
        ));
        self.rows.push(solo_row(
            format!("{n} tracks: shim idle RSS (MB)"),
            shim_rss.map_or("n/a".into(), fmt_mb),
            below(shim_rss, 15.0, "< 15 MB"),
        ));
        Ok(())
    }

    /// Retags `file` (tagger-like: temporary file, rename over the original) and times how long
    /// the new path `shown` takes to appear in the mount and what the engine's commit took.
    /// `None` (with a note) if the change did not show up.
    fn change_once(
        &mut self,
        m: &mut MusicfsMount,
        file: &Path,
        album: &str,
        title: &str,
        shown: &Path,
        n: &str,
    ) -> Result<Option<Change>> {
        let tmp = write_retagged(file, album, title)?;
        let offset = log_len(&self.log);
        let renamed = Instant::now();
        if let Err(e) = fs::rename(&tmp, file) {
            let _ = fs::remove_file(&tmp);
            return Err(e)
                .with_context(|| format!("renaming {} over {}", tmp.display(), file.display()));
        }
        let seen = {
            let shown = shown.to_path_buf();
            with_deadline(
                &format!("waiting for {}", shown.display()),
                BIG_WAIT + STOP_TIMEOUT,
                move || {
                    let deadline = Instant::now() + BIG_WAIT;
                    while Instant::now() < deadline {
                        if fs::symlink_metadata(&shown).is_ok() {
                            return Some(Instant::now());
                        }
                        std::thread::sleep(READY_POLL);
                    }
                    None
                },
            )?
        };
        m.check_alive()?;
        let Some(seen) = seen else {
            self.note(format!(
                "{n} tracks: after retagging {} the new path {} did not appear within {} s; log \
                 tail: {}",
                file.display(),
                shown.display(),
                BIG_WAIT.as_secs(),
                log_tail(&self.log, 10).replace('\n', " | ")
            ));
            return Ok(None);
        };
        let visible_ms = (seen - renamed).as_secs_f64() * 1e3;
        let commit = m
            .wait_log(offset, "checkpoint committed", Duration::from_secs(5))
            .ok();
        let apply_ms = commit
            .as_deref()
            .and_then(|l| log_field(l, "elapsed_us"))
            .map(|us| us as f64 / 1e3);
        match &commit {
            Some(line) => {
                let up = log_field(line, "upserts");
                let rm = log_field(line, "removals");
                if up != Some(1) || rm != Some(0) {
                    self.note(format!(
                        "{n} tracks: the commit for one retagged file was not 1 upsert and 0 \
                         removals: {}",
                        line.trim()
                    ));
                }
            }
            None => self.note(format!(
                "{n} tracks: no `checkpoint committed` line for the retag of {}",
                file.display()
            )),
        }
        let commits = log_since(&self.log, offset)
            .matches("checkpoint committed")
            .count();
        if commits > 1 {
            self.note(format!(
                "{n} tracks: one retagged file gave {commits} catalog commits"
            ));
        }
        let origin = get_xattr(shown, "user.musicfs.origin");
        if origin.as_deref() != Some(file.as_os_str().as_bytes()) {
            self.note(format!(
                "{n} tracks: {} has user.musicfs.origin {:?}, expected {}",
                shown.display(),
                origin.map(|o| String::from_utf8_lossy(&o).into_owned()),
                file.display()
            ));
        }
        Ok(Some(Change {
            apply_ms,
            visible_ms,
        }))
    }
}

/// The argument lists (`/proc/PID/cmdline`) of the running processes that `pred` accepts.
fn processes(pred: impl Fn(&[&[u8]]) -> bool) -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in dir.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let Ok(raw) = fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let raw = raw.strip_suffix(&[0]).unwrap_or(&raw);
        let args: Vec<&[u8]> = raw.split(|&b| b == 0).collect();
        if pred(&args) {
            out.push(pid);
        }
    }
    out
}

fn one_process(what: &str, pids: Vec<u32>) -> Result<u32> {
    match pids.as_slice() {
        [pid] => Ok(*pid),
        [] => bail!("no {what} process found in /proc"),
        many => bail!("{} {what} processes found: {many:?}", many.len()),
    }
}

/// `musicfs engine --state-dir STATE ...`.
fn engine_pid(state: &Path) -> Result<u32> {
    let state = state.as_os_str().as_bytes();
    one_process(
        &format!("engine for {}", String::from_utf8_lossy(state)),
        processes(|args| {
            args.get(1) == Some(&&b"engine"[..])
                && args
                    .windows(2)
                    .any(|w| w[0] == b"--state-dir" && w[1] == state)
        }),
    )
}

/// `musicfs-shim ... --mountpoint MNT ...`.
fn shim_pid(mnt: &Path) -> Result<u32> {
    let mnt = mnt.as_os_str().as_bytes();
    one_process(
        &format!("shim for {}", String::from_utf8_lossy(mnt)),
        processes(|args| {
            args.first().is_some_and(|a| a.ends_with(b"musicfs-shim"))
                && args
                    .windows(2)
                    .any(|w| w[0] == b"--mountpoint" && w[1] == mnt)
        }),
    )
}

/// A `kB` value of /proc/PID/status (`VmRSS`, `VmHWM`).
fn proc_status_kb(pid: u32, key: &str) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(key)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// A variable of /proc/PID/environ.
fn proc_env(pid: u32, key: &str) -> Option<String> {
    let raw = fs::read(format!("/proc/{pid}/environ")).ok()?;
    raw.split(|&b| b == 0).find_map(|kv| {
        let v = kv.strip_prefix(key.as_bytes())?.strip_prefix(b"=")?;
        Some(String::from_utf8_lossy(v).into_owned())
    })
}

/// An extended attribute of `path` (not following a symlink).
fn get_xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let p = CString::new(path.as_os_str().as_bytes()).ok()?;
    let n = CString::new(name).ok()?;
    let mut buf = vec![0u8; 4096];
    // SAFETY: both strings are NUL-terminated and `buf` has `buf.len()` writable bytes.
    let len =
        unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    let len = usize::try_from(len).ok()?;
    buf.truncate(len);
    Some(buf)
}

/// Whether `path` is an mp3 with an ID3v2 primary tag that no earlier run retagged and no other
/// tag (the generated mp3s also carry an empty ID3v1 tag) that could fill a path field.
fn retaggable(path: &Path) -> bool {
    let Ok(tagged) = Probe::open(path)
        .and_then(|p| Ok(p.guess_file_type()?))
        .and_then(|p| p.read())
    else {
        return false;
    };
    let set = |v: Option<std::borrow::Cow<'_, str>>| v.is_some_and(|v| !v.is_empty());
    tagged.file_type() == FileType::Mpeg
        && tagged.primary_tag().is_some_and(|t| {
            t.tag_type() == TagType::Id3v2
                && t.get_string(ItemKey::AlbumArtist) != Some(RETAG_ARTIST)
        })
        && tagged
            .tags()
            .iter()
            .filter(|t| t.tag_type() != TagType::Id3v2)
            .all(|t| {
                !set(t.artist())
                    && !set(t.album())
                    && !set(t.title())
                    && t.get_string(ItemKey::AlbumArtist).is_none_or(str::is_empty)
                    && t.date().is_none()
                    && t.track().is_none()
                    && t.disk().is_none()
            })
}

/// Up to `count` normal mp3 files of a generated library that can be retagged (see
/// [`retaggable`]), taken from every [`RETAG_STRIDE`]-th manifest line first.
fn retag_candidates(lib: &Path, count: usize) -> Result<Vec<PathBuf>> {
    let manifest = lib.join(MANIFEST_NAME);
    let mut out: Vec<PathBuf> = Vec::new();
    for stride in [RETAG_STRIDE, 1] {
        let f =
            fs::File::open(&manifest).with_context(|| format!("opening {}", manifest.display()))?;
        for (i, line) in BufReader::new(f).lines().enumerate() {
            if out.len() >= count {
                return Ok(out);
            }
            let line = line.with_context(|| format!("reading {}", manifest.display()))?;
            if i % stride != 0 || line.trim().is_empty() {
                continue;
            }
            let entry: ManifestEntry = serde_json::from_str(&line)
                .with_context(|| format!("bad line in {}: {line}", manifest.display()))?;
            if entry.kind != Kind::Normal || entry.format != "mp3" || entry.ext != "mp3" {
                continue;
            }
            let path = lib.join(OsStr::from_bytes(&entry.raw_path()));
            if !out.contains(&path) && retaggable(&path) {
                out.push(path);
            }
        }
    }
    Ok(out)
}

/// Writes a copy of the mp3 `path` with a new album artist ([`RETAG_ARTIST`]), album, title and
/// track 1 (no year, disc or totals, so the virtual path is `RETAG_ARTIST/ALBUM/01 - TITLE.mp3`)
/// to a temporary file beside it, as a tagger does before renaming it over the original.
/// Returns the temporary file, whose tags have been read back.
fn write_retagged(path: &Path, album: &str, title: &str) -> Result<PathBuf> {
    let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let tagged = Probe::new(Cursor::new(&bytes))
        .guess_file_type()?
        .read()
        .with_context(|| format!("lofty cannot read {}", path.display()))?;
    let mut tag = tagged
        .primary_tag()
        .cloned()
        .with_context(|| format!("{} has no tag", path.display()))?;
    tag.insert_text(ItemKey::AlbumArtist, RETAG_ARTIST.to_owned());
    tag.set_album(album.to_owned());
    tag.set_title(title.to_owned());
    tag.set_track(1);
    tag.remove_track_total();
    tag.remove_disk();
    tag.remove_disk_total();
    tag.remove_date();
    let mut cursor = Cursor::new(bytes);
    tag.save_to(&mut cursor, WriteOptions::default())
        .with_context(|| format!("lofty cannot write the tag of {}", path.display()))?;
    let bytes = cursor.into_inner();

    let check = Probe::new(Cursor::new(&bytes))
        .guess_file_type()?
        .read()
        .with_context(|| format!("lofty cannot read back the retagged {}", path.display()))?;
    let back = check.primary_tag();
    ensure!(
        back.and_then(|t| t.get_string(ItemKey::AlbumArtist)) == Some(RETAG_ARTIST)
            && back.and_then(|t| t.title()).as_deref() == Some(title)
            && back.and_then(|t| t.album()).as_deref() == Some(album),
        "the retagged {} does not read back as written",
        path.display()
    );

    let mut name = OsString::from(".");
    name.push(path.file_name().context("no file name")?);
    name.push(".bench-tmp");
    let tmp = path.with_file_name(name);
    fs::write(&tmp, &bytes).with_context(|| format!("writing {}", tmp.display()))?;
    Ok(tmp)
}

fn medians(passes: &[Pass], f: fn(&Pass) -> f64) -> Option<Stats> {
    Stats::of(&passes.iter().map(f).collect::<Vec<_>>())
}

/// A row of times (lower is better); the ratios are musicfs time / other time.
fn time_row(what: &str, t: &Triple, target: &str, limit: f64, goal: f64) -> Row {
    let secs = |p: &Pass| p.secs;
    let (m, b, n) = (
        medians(&t.musicfs, secs),
        medians(&t.bindfs, secs),
        medians(&t.native, secs),
    );
    let ratio = |x: Option<Stats>| match (m, x) {
        (Some(m), Some(x)) if x.median > 0.0 => Some(m.median / x.median),
        _ => None,
    };
    let (rb, rn) = (ratio(b), ratio(n));
    Row {
        what: what.to_string(),
        musicfs: show_opt(m, fmt_secs, "", "n/a"),
        bindfs: show_opt(b, fmt_secs, "", "n/a"),
        native: show_opt(n, fmt_secs, "", "n/a"),
        vs_bindfs: rb.map_or("n/a".into(), fmt_ratio),
        vs_native: rn.map_or("n/a".into(), fmt_ratio),
        target: match rb {
            Some(r) => format!("{target}: {}", verdict(r, limit, goal, false)),
            None => target.to_string(),
        },
    }
}

/// A row of read throughputs; the ratios are musicfs MB/s / other MB/s. The target is musicfs
/// throughput >= 0.8x bindfs, the design goal musicfs time <= 1.1x bindfs.
fn read_row(what: &str, t: &Triple) -> Row {
    let rate = |p: &Pass| p.bytes as f64 / 1e6 / p.secs.max(1e-9);
    let secs = |p: &Pass| p.secs;
    let (m, b, n) = (
        medians(&t.musicfs, rate),
        medians(&t.bindfs, rate),
        medians(&t.native, rate),
    );
    let ratio = |x: Option<Stats>| match (m, x) {
        (Some(m), Some(x)) if x.median > 0.0 => Some(m.median / x.median),
        _ => None,
    };
    let (rb, rn) = (ratio(b), ratio(n));
    let target = ">= 0.8x bindfs (goal: time <= 1.1x)";
    let time_ratio = match (medians(&t.musicfs, secs), medians(&t.bindfs, secs)) {
        (Some(m), Some(b)) if b.median > 0.0 => Some(m.median / b.median),
        _ => None,
    };
    Row {
        what: what.to_string(),
        musicfs: show_opt(m, fmt_rate, "", "n/a"),
        bindfs: show_opt(b, fmt_rate, "", "n/a"),
        native: show_opt(n, fmt_rate, "", "n/a"),
        vs_bindfs: rb.map_or("n/a".into(), fmt_ratio),
        vs_native: rn.map_or("n/a".into(), fmt_ratio),
        target: match (rb, time_ratio) {
            (Some(r), Some(tr)) => {
                let v = if tr <= 1.1 {
                    "goal met"
                } else if r >= 0.8 {
                    "met"
                } else {
                    "MISSED"
                };
                format!("{target}: {v}")
            }
            _ => target.to_string(),
        },
    }
}

/// What each root shows: files and bytes read.
fn seen_row(t: &Triple) -> Row {
    let cell = |v: &[Pass]| {
        v.first().map_or("n/a".to_string(), |p| {
            format!("{} files, {}", p.files, fmt_bytes(p.bytes))
        })
    };
    Row {
        what: "files and bytes read per pass".into(),
        musicfs: cell(&t.musicfs),
        bindfs: cell(&t.bindfs),
        native: cell(&t.native),
        vs_bindfs: "-".into(),
        vs_native: "-".into(),
        target: "-".into(),
    }
}

fn read_file(path: &Path, buf: &mut [u8]) -> std::io::Result<u64> {
    let mut f = fs::File::open(path)?;
    let mut total = 0;
    loop {
        match f.read(buf) {
            Ok(0) => return Ok(total),
            Ok(n) => total += n as u64,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Reads every regular file under `root` in walkdir order, single-threaded.
fn read_tree(root: &Path) -> Pass {
    let mut buf = vec![0u8; READ_BUF];
    let mut pass = Pass::default();
    let start = Instant::now();
    for entry in walkdir::WalkDir::new(root) {
        let entry = match entry {
            Ok(e) => e,
            Err(e) => {
                pass.error(format!("walk: {e}"));
                continue;
            }
        };
        if !entry.file_type().is_file() {
            continue;
        }
        match read_file(entry.path(), &mut buf) {
            Ok(n) => {
                pass.files += 1;
                pass.bytes += n;
            }
            Err(e) => pass.error(format!("{}: {e}", entry.path().display())),
        }
    }
    pass.secs = start.elapsed().as_secs_f64();
    pass
}

struct TreeSize {
    files: u64,
    bytes: u64,
}

fn tree_size(root: &Path) -> Result<TreeSize> {
    let mut size = TreeSize { files: 0, bytes: 0 };
    for entry in walkdir::WalkDir::new(root) {
        let entry = entry?;
        if entry.file_type().is_file() {
            size.files += 1;
            size.bytes += entry.metadata()?.len();
        }
    }
    Ok(size)
}

// ---------------------------------------------------------------------------------------------
// Mounts
// ---------------------------------------------------------------------------------------------

/// A running `musicfs mount`; taken down on drop.
struct MusicfsMount {
    bin: PathBuf,
    mnt: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    spawned: Instant,
    /// Gets a message when `musicfs mount` prints "mounted at".
    announced: mpsc::Receiver<()>,
}

impl MusicfsMount {
    fn start(
        bin: &Path,
        lib: &Path,
        state: &Path,
        mnt: &Path,
        log: &Path,
        label: &str,
        env: &[(&str, &str)],
    ) -> Result<MusicfsMount> {
        let mut logf = fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        writeln!(
            logf,
            "=== bench: {label}: musicfs mount at {} ===",
            utc_now()
        )?;
        let mut cmd = Command::new(bin);
        cmd.arg("mount")
            .arg("--origin")
            .arg(lib)
            .arg("--state-dir")
            .arg(state)
            .arg(mnt)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let spawned = Instant::now();
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        // Both streams are copied to the log; the line "musicfs: mounted at ..." tells that the
        // supervisor itself considers the mount up.
        let (tx, announced) = mpsc::channel();
        let stdout = child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>);
        let stderr = child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>);
        for pipe in [stdout, stderr].into_iter().flatten() {
            let mut logf = logf.try_clone()?;
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut reader = std::io::BufReader::new(pipe);
                let mut line = Vec::new();
                loop {
                    line.clear();
                    match std::io::BufRead::read_until(&mut reader, b'\n', &mut line) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                    let _ = logf.write_all(&line);
                    if line.windows(10).any(|w| w == b"mounted at") {
                        let _ = tx.send(());
                    }
                }
            });
        }
        Ok(MusicfsMount {
            bin: bin.to_path_buf(),
            mnt: mnt.to_path_buf(),
            log: log.to_path_buf(),
            child: Some(child),
            spawned,
            announced,
        })
    }

    /// Waits (at most `timeout`) until `musicfs mount` prints that it is mounted. Unmounting
    /// before that makes it exit with an error ("the shim exited before it was ready").
    /// Returns false on timeout or if the streams closed first.
    fn wait_announced(&self, timeout: Duration) -> bool {
        self.announced.recv_timeout(timeout).is_ok()
    }

    /// Waits until a readdir of the mountpoint yields an entry; returns the time since spawn.
    fn wait_ready(&mut self, timeout: Duration) -> Result<Duration> {
        let (tx, rx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let poller = {
            let mnt = self.mnt.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(mut entries) = fs::read_dir(&mnt)
                        && let Some(Ok(_)) = entries.next()
                    {
                        let _ = tx.send(Instant::now());
                        return;
                    }
                    std::thread::sleep(READY_POLL);
                }
            })
        };
        let deadline = self.spawned + timeout;
        let result = loop {
            match rx.recv_timeout(Duration::from_millis(20)) {
                Ok(at) => break Ok(at - self.spawned),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    break Err(anyhow::anyhow!("the readiness poller stopped"));
                }
            }
            let child = self.child.as_mut().context("mount already stopped")?;
            if let Some(status) = child.try_wait()? {
                break Err(anyhow::anyhow!(
                    "musicfs mount exited ({status}) before {} answered a readdir; log tail:\n{}",
                    self.mnt.display(),
                    log_tail(&self.log, 30)
                ));
            }
            if Instant::now() >= deadline {
                break Err(anyhow::anyhow!(
                    "{} did not list any entry within {} s of starting musicfs mount; log tail:\n{}",
                    self.mnt.display(),
                    timeout.as_secs(),
                    log_tail(&self.log, 30)
                ));
            }
        };
        stop.store(true, Ordering::Relaxed);
        if result.is_ok() {
            let _ = poller.join();
        }
        result
    }

    /// Fails if `musicfs mount` has exited or the mount is gone (a measurement on it would be
    /// meaningless).
    fn check_alive(&mut self) -> Result<()> {
        let child = self
            .child
            .as_mut()
            .context("the mount was already stopped")?;
        if let Some(status) = child.try_wait()? {
            bail!(
                "musicfs mount exited ({status}) in the middle of the bench; log tail:\n{}",
                log_tail(&self.log, 30)
            );
        }
        ensure!(
            is_mounted(&self.mnt),
            "{} is no longer mounted although musicfs mount is running; log tail:\n{}",
            self.mnt.display(),
            log_tail(&self.log, 30)
        );
        Ok(())
    }

    /// Waits (at most `timeout`) until the log after `offset` (a length of the log file taken
    /// before this mount started) has a line containing `needle`; returns the first such line.
    /// Fails early if the mount goes away.
    fn wait_log(&mut self, offset: u64, needle: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = log_since(&self.log, offset)
                .lines()
                .find(|l| l.contains(needle))
            {
                return Ok(line.to_string());
            }
            self.check_alive()?;
            ensure!(
                Instant::now() < deadline,
                "no log line with {needle:?} within {} s; log tail:\n{}",
                timeout.as_secs(),
                log_tail(&self.log, 30)
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Unmounts and waits for the process; returns what went wrong on the way (if anything).
    fn stop(mut self) -> Result<Vec<String>> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<Vec<String>> {
        let mut problems = Vec::new();
        let Some(mut child) = self.child.take() else {
            return Ok(problems);
        };
        if let Ok(Some(status)) = child.try_wait() {
            problems.push(format!(
                "musicfs mount had already exited ({status}) before the bench unmounted it \
                 (stopped from outside?); log: {}",
                self.log.display()
            ));
            if is_mounted(&self.mnt) {
                lazy_unmount(&self.mnt);
            }
            return Ok(problems);
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        let mut cmd = Command::new(&self.bin);
        cmd.arg("unmount").arg(&self.mnt);
        let unmounted = match run_captured(&mut cmd, "musicfs unmount", STOP_TIMEOUT) {
            Ok(out) if out.status.success() => true,
            Ok(out) => {
                problems.push(format!(
                    "`musicfs unmount` failed ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
                false
            }
            Err(e) => {
                problems.push(format!("`musicfs unmount` failed: {e:#}"));
                false
            }
        };
        if !unmounted {
            signal(child.id(), "TERM");
        }
        match wait_deadline(&mut child, deadline)? {
            Some(status) if status.success() => {}
            Some(status) => problems.push(format!(
                "musicfs mount exited with {status} after the unmount; log: {}",
                self.log.display()
            )),
            None => {
                problems.push(format!(
                    "musicfs mount did not exit within {} s of the unmount; killed it",
                    STOP_TIMEOUT.as_secs()
                ));
                kill_tree(&mut child);
            }
        }
        if is_mounted(&self.mnt) {
            problems.push(format!(
                "{} was still mounted after musicfs exited; lazily unmounted it",
                self.mnt.display()
            ));
            lazy_unmount(&self.mnt);
        }
        Ok(problems)
    }
}

impl Drop for MusicfsMount {
    fn drop(&mut self) {
        if self.child.is_some() {
            match self.shutdown() {
                Ok(problems) => {
                    for p in problems {
                        eprintln!("bench: cleanup: {p}");
                    }
                }
                Err(e) => eprintln!("bench: cleanup of {} failed: {e:#}", self.mnt.display()),
            }
        }
        if is_mounted(&self.mnt) {
            lazy_unmount(&self.mnt);
        }
    }
}

/// A `bindfs -r` mount of the origin; unmounted on drop.
struct BindfsMount {
    mnt: PathBuf,
    mounted: bool,
}

impl BindfsMount {
    fn start(lib: &Path, mnt: &Path) -> Result<BindfsMount> {
        let mut cmd = Command::new("bindfs");
        cmd.arg("-r").arg(lib).arg(mnt);
        let out = run_captured(&mut cmd, "bindfs", STOP_TIMEOUT)?;
        let guard = BindfsMount {
            mnt: mnt.to_path_buf(),
            mounted: true,
        };
        ensure!(
            out.status.success(),
            "bindfs -r {} {} failed ({}): {}",
            lib.display(),
            mnt.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        let deadline = Instant::now() + STOP_TIMEOUT;
        while !is_mounted(mnt) {
            ensure!(
                Instant::now() < deadline,
                "bindfs did not mount {} within {} s",
                mnt.display(),
                STOP_TIMEOUT.as_secs()
            );
            std::thread::sleep(POLL);
        }
        Ok(guard)
    }

    fn check_alive(&self) -> Result<()> {
        ensure!(
            is_mounted(&self.mnt),
            "the bindfs mount {} disappeared in the middle of the bench",
            self.mnt.display()
        );
        Ok(())
    }

    fn stop(mut self) -> Result<()> {
        self.mounted = false;
        let mut cmd = Command::new("fusermount3");
        cmd.arg("-u").arg(&self.mnt);
        let out = run_captured(&mut cmd, "fusermount3 -u", STOP_TIMEOUT);
        match out {
            Ok(o) if o.status.success() => Ok(()),
            other => {
                lazy_unmount(&self.mnt);
                let why = match other {
                    Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_string(),
                    Err(e) => format!("{e:#}"),
                };
                bail!("fusermount3 -u {} failed: {why}", self.mnt.display())
            }
        }
    }
}

impl Drop for BindfsMount {
    fn drop(&mut self) {
        if self.mounted && is_mounted(&self.mnt) {
            lazy_unmount(&self.mnt);
        }
    }
}

/// `fusermount3 -u -z`, best effort.
fn lazy_unmount(mnt: &Path) {
    let mut cmd = Command::new("fusermount3");
    cmd.arg("-u").arg("-z").arg(mnt);
    match run_captured(&mut cmd, "fusermount3 -u -z", STOP_TIMEOUT) {
        Ok(o) if o.status.success() => {}
        Ok(o) => eprintln!(
            "bench: fusermount3 -u -z {} failed: {}",
            mnt.display(),
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => eprintln!("bench: fusermount3 -u -z {}: {e:#}", mnt.display()),
    }
}

/// Unmounts whatever a crashed earlier run left on `mnt`.
fn clear_stale_mount(mnt: &Path) -> Result<()> {
    if is_mounted(mnt) {
        eprintln!(
            "bench: {} is still mounted (earlier run?); unmounting it",
            mnt.display()
        );
        lazy_unmount(mnt);
        ensure!(
            !is_mounted(mnt),
            "{} is mounted and could not be unmounted",
            mnt.display()
        );
    }
    Ok(())
}

/// Whether `path` (absolute, canonical) is a mountpoint, from /proc/self/mountinfo.
fn is_mounted(path: &Path) -> bool {
    let Ok(text) = fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = path.as_os_str().as_bytes();
    text.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|m| unescape_mountinfo(m) == want)
}

/// Undoes the `\ooo` octal escapes of /proc/self/mountinfo.
fn unescape_mountinfo(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') as u32 * 64
                + (b[i + 2] - b'0') as u32 * 8
                + (b[i + 3] - b'0') as u32;
            out.push(v as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------------

struct Captured {
    status: ExitStatus,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    elapsed: Duration,
}

fn drain(pipe: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut buf);
        }
        buf
    })
}

/// Runs a command with captured output; kills it (and fails) after `timeout`.
fn run_captured(cmd: &mut Command, what: &str, timeout: Duration) -> Result<Captured> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd.spawn().with_context(|| format!("cannot run {what}"))?;
    let out = drain(child.stdout.take());
    let err = drain(child.stderr.take());
    let status = wait_deadline(&mut child, start + timeout)?;
    let elapsed = start.elapsed();
    let Some(status) = status else {
        kill_tree(&mut child);
        bail!(
            "{what} did not finish within {} s; killed it",
            timeout.as_secs()
        );
    };
    Ok(Captured {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
        elapsed,
    })
}

/// Runs a command with inherited stdout/stderr; kills it (and fails) after `timeout`.
fn run_inherited(cmd: &mut Command, what: &str, timeout: Duration) -> Result<()> {
    cmd.stdin(Stdio::null());
    let mut child = cmd.spawn().with_context(|| format!("cannot run {what}"))?;
    match wait_deadline(&mut child, Instant::now() + timeout)? {
        Some(status) if status.success() => Ok(()),
        Some(status) => bail!("{what} failed ({status})"),
        None => {
            kill_tree(&mut child);
            bail!(
                "{what} did not finish within {} s; killed it",
                timeout.as_secs()
            )
        }
    }
}

/// Waits for `child` until `deadline`; `None` if it is still running then.
fn wait_deadline(child: &mut Child, deadline: Instant) -> Result<Option<ExitStatus>> {
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Runs `f` on a thread and waits at most `timeout` for it.
fn with_deadline<T: Send + 'static>(
    what: &str,
    timeout: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(timeout) {
        Ok(v) => Ok(v),
        Err(mpsc::RecvTimeoutError::Timeout) => {
            bail!("{what} did not finish within {} s", timeout.as_secs())
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => bail!("{what} panicked"),
    }
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// The pids of every descendant of `pid`, from /proc/PID/task/*/children.
fn descendants(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        let Ok(tasks) = fs::read_dir(format!("/proc/{p}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            if let Ok(text) = fs::read_to_string(task.path().join("children")) {
                for c in text.split_whitespace().filter_map(|s| s.parse().ok()) {
                    out.push(c);
                    todo.push(c);
                }
            }
        }
    }
    out
}

/// SIGKILLs a child we started and every process it started, then reaps the child.
fn kill_tree(child: &mut Child) {
    let kids = descendants(child.id());
    let _ = child.kill();
    for k in kids {
        signal(k, "KILL");
    }
    let _ = child.wait();
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(tool).is_file()))
}

/// The current length of a log file (0 if it cannot be read).
fn log_len(path: &Path) -> u64 {
    fs::metadata(path).map_or(0, |m| m.len())
}

/// What a log file got after `offset` bytes.
fn log_since(path: &Path, offset: u64) -> String {
    let bytes = fs::read(path).unwrap_or_default();
    let from = usize::try_from(offset)
        .unwrap_or(usize::MAX)
        .min(bytes.len());
    String::from_utf8_lossy(&bytes[from..]).into_owned()
}

/// The number in `key=N` of a tracing log line.
fn log_field(line: &str, key: &str) -> Option<u64> {
    line.split_whitespace().find_map(|w| {
        w.strip_prefix(key)?
            .strip_prefix('=')?
            .trim_matches('"')
            .parse()
            .ok()
    })
}

fn log_tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

// ---------------------------------------------------------------------------------------------
// Build, library, page cache
// ---------------------------------------------------------------------------------------------

/// The cargo target directory (`$CARGO_TARGET_DIR` or `<workspace>/target`), absolute.
fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                std::env::current_dir()
                    .map(|cwd| cwd.join(&dir))
                    .unwrap_or(dir)
            }
        }
        _ => workspace_root().join("target"),
    }
}

/// Builds the release binaries and copies them to `<work>/bin/`; returns the `musicfs` copy.
fn build(target: &Path, work: &Path) -> Result<PathBuf> {
    eprintln!("bench: cargo build --release -p musicfs-engine -p musicfs-shim");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args([
        "build",
        "--release",
        "-p",
        "musicfs-engine",
        "-p",
        "musicfs-shim",
    ])
    .current_dir(workspace_root());
    if std::env::var_os("CARGO_TARGET_DIR").is_some_and(|d| !d.is_empty()) {
        cmd.env("CARGO_TARGET_DIR", target);
    }
    run_inherited(&mut cmd, "cargo build --release", BUILD_TIMEOUT)?;
    let bin_dir = work.join("bin");
    fs::create_dir_all(&bin_dir)?;
    for name in ["musicfs", "musicfs-shim"] {
        let from = target.join("release").join(name);
        let to = bin_dir.join(name);
        ensure!(from.is_file(), "{} was not built", from.display());
        let _ = fs::remove_file(&to);
        fs::copy(&from, &to)
            .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    }
    Ok(bin_dir.join("musicfs"))
}

/// The library `<work>/lib-<N>`, generated unless a completed generation is there.
/// The generated library of `tracks` tracks in `work` (made once, marked complete).
pub(crate) fn ensure_library(work: &Path, tracks: usize) -> Result<PathBuf> {
    let lib = work.join(format!("lib-{tracks}"));
    let marker = work.join(format!("lib-{tracks}.complete"));
    if marker.is_file() && lib.is_dir() {
        eprintln!("bench: reusing the library {}", lib.display());
        return Ok(lib);
    }
    let _ = fs::remove_file(&marker);
    if lib.exists() {
        eprintln!(
            "bench: {} is an unfinished generation; removing it",
            lib.display()
        );
        fs::remove_dir_all(&lib).with_context(|| format!("removing {}", lib.display()))?;
    }
    eprintln!("bench: generating {tracks} tracks into {}", lib.display());
    let exe = std::env::current_exe().context("cannot find the xtask binary")?;
    let mut cmd = Command::new(exe);
    cmd.arg("gen-library")
        .arg("--tracks")
        .arg(tracks.to_string())
        .arg("--out")
        .arg(&lib);
    let timeout = Duration::from_secs(1800 + tracks as u64 / 10);
    run_inherited(&mut cmd, "xtask gen-library", timeout)?;
    fs::write(
        &marker,
        format!("{tracks} tracks generated {}\n", utc_now()),
    )
    .with_context(|| format!("writing {}", marker.display()))?;
    Ok(lib)
}

/// `sync; echo 3 > /proc/sys/vm/drop_caches` (needs root).
fn drop_caches() -> Result<()> {
    let mut cmd = Command::new("sync");
    let out = run_captured(&mut cmd, "sync", Duration::from_secs(300))?;
    ensure!(out.status.success(), "sync failed ({})", out.status);
    fs::write("/proc/sys/vm/drop_caches", b"3\n")
        .context("writing /proc/sys/vm/drop_caches (needs root)")
}

// ---------------------------------------------------------------------------------------------
// Report and BENCHMARKS.md
// ---------------------------------------------------------------------------------------------

struct Report {
    tracks: usize,
    command: String,
    date: String,
    machine: String,
    commit: String,
    library: String,
    /// The library of the scale rows (`--big-tracks`), if they ran.
    big_library: Option<String>,
    rows: Vec<Row>,
    notes: Vec<String>,
}

impl Report {
    fn section(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "{}", section_start(self.tracks));
        let _ = writeln!(s, "## {} tracks, {}", self.tracks, self.date);
        let _ = writeln!(s);
        let _ = writeln!(s, "- command: `{}`", self.command);
        let _ = writeln!(s, "- machine: {}", self.machine);
        let _ = writeln!(s, "- commit: {}", self.commit);
        let _ = writeln!(s, "- library: {}", self.library);
        if let Some(big) = &self.big_library {
            let _ = writeln!(s, "- scale library: {big}");
        }
        let _ = writeln!(s);
        s.push_str(&render_table(&self.rows));
        if !self.notes.is_empty() {
            let _ = writeln!(s);
            let _ = writeln!(s, "Notes:");
            let _ = writeln!(s);
            for n in &self.notes {
                let _ = writeln!(s, "- {n}");
            }
        }
        let _ = writeln!(s, "{SECTION_END}");
        s
    }
}

fn section_start(tracks: usize) -> String {
    format!("<!-- bench tracks={tracks} -->")
}

const HEADER: &str = "\
# MusicFS benchmarks

Written by `cargo xtask bench [--tracks N] [--big-tracks M]` (also `--runs R`, default 3;
`--work-dir DIR`, default `target/bench`; `--no-record` to only print). It needs root (to drop the
page cache), `/dev/fuse`, `bindfs` and `fuse3`. It builds the release binaries, generates a
synthetic library once (`cargo xtask gen-library`, default 20000 tracks) and measures musicfs
beside a `bindfs -r` mount of the same origin and the origin itself (native), in the same run.

Cells are the median of the runs, with (min..max). Times are in seconds, throughputs in MB/s
(10^6 bytes). Scan rates are from `musicfs scan`; start times run from spawning `musicfs mount`
until a readdir of the mountpoint lists an entry; the tree walk is
`find ROOT -type f -printf '%s\\n'` with the page cache dropped first; \"read every file\" reads
each file with a 128 KiB buffer in one thread, cold (page cache dropped before each pass) or with
the origin warm (the native tree is read first, then bindfs and musicfs each on their first pass
through FUSE, then native again). Targets are reported, never asserted.

The rows that start with \"M tracks:\" ran on a second generated library of `--big-tracks` tracks
(default 100000; `0` skips them). The initial scan is one mount with a fresh state dir, page
cache dropped first, spawn to first answered readdir. The start with the persistent state dir runs
from spawning `musicfs mount` until a readdir of the mountpoint (polled every 1 ms) lists an entry,
page cache warm; the engine's own `startup_ms` is in the notes. Every start with a reused or
persistent state dir (also in the first table rows) is stopped only after its background
reconcile finished, so that no run pays for the previous one being stopped in the middle of it.
One changed track: with the mount up and its background reconcile finished, an mp3 of the library
is retagged with lofty (new album artist, album and title) into a temporary file beside it that is
renamed over the original, as a tagger does; the engine apply time is the `elapsed_us` of the
engine's `checkpoint committed` log line for that change, the end-to-end time runs from the rename
until the new path answers a lookup in the mount and includes the watcher's debounce
(`debounce_ms`). Idle RSS is `VmRSS` of the engine and the shim 2 s after the reconcile finished;
memory in MB (10^6 bytes).

This file keeps the latest run per library size, newest first.
";

/// Writes `section` into the record file, replacing an older section for the same size.
fn record(path: &Path, tracks: usize, section: &str) -> Result<()> {
    let old = match fs::read_to_string(path) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let mine = section_start(tracks);
    let mut out = String::from(HEADER);
    out.push('\n');
    out.push_str(section);
    for (start, body) in sections(&old) {
        if start != mine {
            out.push('\n');
            out.push_str(body);
        }
    }
    let tmp = path.with_extension("md.tmp");
    fs::write(&tmp, &out).with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// The recorded sections of a BENCHMARKS.md: (start marker line, whole section text).
fn sections(text: &str) -> Vec<(&str, &str)> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(pos) = rest.find("<!-- bench tracks=") {
        let from = &rest[pos..];
        let marker_end = from.find('\n').unwrap_or(from.len());
        let end = from
            .find(SECTION_END)
            .map_or(from.len(), |e| e + SECTION_END.len());
        let end = if from[end..].starts_with('\n') {
            end + 1
        } else {
            end
        };
        out.push((from[..marker_end].trim_end(), &from[..end]));
        rest = &from[end..];
    }
    out
}

/// The command line of this run, with `--big-tracks` spelled out even when it was defaulted.
fn command_line(big_tracks: usize) -> String {
    let mut args: Vec<String> = std::env::args().skip(1).map(|a| shell_quote(&a)).collect();
    if !args
        .iter()
        .any(|a| a == "--big-tracks" || a.starts_with("--big-tracks="))
    {
        args.push(format!("--big-tracks {big_tracks}"));
    }
    format!("cargo xtask {}", args.join(" "))
}

fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-./=:,+@%".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

fn command_output(program: &str, args: &[&str]) -> Option<String> {
    let mut cmd = Command::new(program);
    cmd.args(args).current_dir(workspace_root());
    let out = run_captured(&mut cmd, program, Duration::from_secs(60)).ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn git_commit() -> String {
    let Some(head) = command_output("git", &["rev-parse", "--short", "HEAD"]) else {
        return "unknown (not a git checkout?)".to_string();
    };
    match command_output("git", &["--no-optional-locks", "status", "--porcelain"]) {
        Some(s) if s.is_empty() => head,
        Some(_) => format!("{head}-dirty"),
        None => format!("{head} (status unknown)"),
    }
}

fn meminfo_kb(key: &str) -> Option<u64> {
    let text = fs::read_to_string("/proc/meminfo").ok()?;
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(key)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

fn machine_info(work: &Path) -> String {
    let kernel = command_output("uname", &["-r"]).unwrap_or_else(|| "unknown".into());
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .filter(|l| l.starts_with("model name") || l.starts_with("Model"))
                .find_map(|l| l.split_once(':').map(|(_, v)| v.trim().to_string()))
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let ram = meminfo_kb("MemTotal").map_or("unknown".into(), |kb| {
        format!("{:.1} GiB", kb as f64 / 1048576.0)
    });
    let fs_type = work
        .to_str()
        .and_then(|w| command_output("df", &["-PT", w]))
        .and_then(|out| {
            out.lines()
                .nth(1)
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_string))
        })
        .unwrap_or_else(|| "unknown".into());
    format!(
        "Linux {kernel}, {cpu}, {nproc} CPUs, {ram} RAM, work dir on {fs_type} (`{}`)",
        work.display()
    )
}

/// The current time in UTC, `YYYY-MM-DD HH:MM:SS UTC`.
fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day) (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(20_000), (2024, 10, 4));
    }

    #[test]
    fn stats() {
        let s = Stats::of(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        let s = Stats::of(&[4.0, 1.0, 2.0, 3.0]).unwrap();
        assert_eq!(s.median, 2.5);
        assert!(Stats::of(&[]).is_none());
    }

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mountinfo(r"/a\040b"), b"/a b");
        assert_eq!(unescape_mountinfo(r"/plain"), b"/plain");
    }

    #[test]
    fn sections_are_replaced_per_size() {
        let a = "<!-- bench tracks=10 -->\n## a\n<!-- /bench -->\n";
        let b = "<!-- bench tracks=20 -->\n## b\n<!-- /bench -->\n";
        let text = format!("{HEADER}\n{a}\n{b}");
        let found = sections(&text);
        assert_eq!(found.len(), 2);
        assert_eq!(found[0], ("<!-- bench tracks=10 -->", a));
        assert_eq!(found[1], ("<!-- bench tracks=20 -->", b));
    }

    #[test]
    fn log_fields() {
        let line = "2026-11-26T14:08:20.999438Z DEBUG musicfs_engine::sync: checkpoint committed \
                    upserts=1 removals=0 files=2000 elapsed_us=1134";
        assert_eq!(log_field(line, "elapsed_us"), Some(1134));
        assert_eq!(log_field(line, "upserts"), Some(1));
        assert_eq!(log_field(line, "files"), Some(2000));
        assert_eq!(log_field(line, "us"), None);
        assert_eq!(log_field(line, "missing"), None);
    }

    #[test]
    fn thousands() {
        assert_eq!(fmt_thousands(1234567.4), "1,234,567");
        assert_eq!(fmt_thousands(999.0), "999");
    }
}

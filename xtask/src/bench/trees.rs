//! Tree walks and reads of every file on the musicfs mount, a bindfs mount and the origin.

use std::fs;
use std::io::Read;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::consts::READ_BUF;
use super::mounts::BindfsMount;
use super::runner::Bench;
use super::setup::drop_caches;
use super::table::{Row, Stats, fmt_bytes, fmt_rate, fmt_ratio, fmt_secs, show_opt, verdict};
use crate::harness::{run_captured, with_deadline};

/// What one pass (walk or read) over a tree saw.
#[derive(Clone, Debug, Default)]
pub(super) struct Pass {
    pub(super) secs: f64,
    pub(super) files: u64,
    pub(super) bytes: u64,
    pub(super) errors: u64,
    pub(super) first_errors: Vec<String>,
}

impl Pass {
    pub(super) fn error(&mut self, e: String) {
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
    fn root(&self, root: Root) -> &Path {
        match root {
            Root::Musicfs => &self.mfs_mnt,
            Root::Bindfs => &self.bind_mnt,
            Root::Native => &self.lib,
        }
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
            move || read_tree(&path, READ_BUF),
        )
    }

    fn drop_or_fail(&self) -> Result<()> {
        drop_caches().context("dropping the page cache")
    }

    /// Tree walks and reads on the three roots.
    pub(super) fn measure_trees(&mut self, scan_tracks: u64) -> Result<()> {
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

/// [`read_tree`] with a deadline.
pub(super) fn read_tree_within(root: &Path, buf_len: usize, timeout: Duration) -> Result<Pass> {
    let path = root.to_path_buf();
    with_deadline(
        &format!("reading every file under {}", path.display()),
        timeout,
        move || read_tree(&path, buf_len),
    )
}

/// Reads every regular file under `root` in walkdir order, single-threaded, with a buffer of
/// `buf_len` bytes.
fn read_tree(root: &Path, buf_len: usize) -> Pass {
    let mut buf = vec![0u8; buf_len];
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

pub(super) struct TreeSize {
    pub(super) files: u64,
    pub(super) bytes: u64,
}

pub(super) fn tree_size(root: &Path) -> Result<TreeSize> {
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

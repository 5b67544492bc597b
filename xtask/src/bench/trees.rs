//! Tree walks and reads of every file on the musicfs mount, a bindfs mount, the origin and the
//! peers (a native copy of the musicfs tree, musefs, rclone).

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::consts::READ_BUF;
use super::mounts::{BindfsMount, MusicfsMount};
use super::peers::{
    MUSEFS_VERSION, PEERS_NOTE, PeerMount, copy_tree, musefs_command, musefs_scan, rclone_command,
};
use super::runner::Bench;
use super::setup::drop_caches;
use super::table::fmt_bytes;
use super::treerows::{
    ALL_ROOTS, Root, Samples, Shown, na_row, per_file_row, read_row, seen_row, time_row,
};
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

/// The peers mounted for one walk-and-read measurement.
#[derive(Default)]
struct LivePeers {
    musefs: Option<PeerMount>,
    rclone: Option<PeerMount>,
}

impl LivePeers {
    fn check_alive(&mut self) -> Result<()> {
        for m in [&mut self.musefs, &mut self.rclone].into_iter().flatten() {
            m.check_alive()?;
        }
        Ok(())
    }

    fn stop(self) -> Vec<String> {
        let mut problems = Vec::new();
        for (name, m) in [("musefs", self.musefs), ("rclone", self.rclone)] {
            if let Some(m) = m {
                match m.stop() {
                    Ok(p) => problems.extend(p.into_iter().map(|p| format!("{name}: {p}"))),
                    Err(e) => problems.push(format!("{name}: stopping failed: {e:#}")),
                }
            }
        }
        problems
    }
}

impl Bench {
    fn root(&self, root: Root) -> PathBuf {
        match root {
            Root::Musicfs => self.mfs_mnt.clone(),
            Root::Bindfs => self.bind_mnt.clone(),
            Root::Native => self.lib.clone(),
            Root::NativeTree => self.peer_paths.native_tree.clone(),
            Root::Musefs => self.peer_paths.musefs_mnt.clone(),
            Root::Rclone => self.peer_paths.rclone_mnt.clone(),
        }
    }

    /// `find ROOT -type f -printf '%s\n'`, timed. Counts the files and sums their sizes.
    fn walk(&self, root: Root) -> Result<Pass> {
        let path = self.root(root);
        let mut cmd = Command::new("find");
        cmd.arg(&path).args(["-type", "f", "-printf", "%s\\n"]);
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
        let path = self.root(root);
        with_deadline(
            &format!("reading every file under {}", path.display()),
            self.io_timeout,
            move || read_tree(&path, READ_BUF),
        )
    }

    /// open(2) + close of every regular file under the root, warm (the walk that lists them
    /// is not timed), with a deadline: the time per open is the row.
    fn open_every_file(&self, root: Root) -> Result<Pass> {
        let path = self.root(root);
        with_deadline(
            &format!("opening every file under {}", path.display()),
            self.io_timeout,
            move || {
                let files: Vec<PathBuf> = walkdir::WalkDir::new(&path)
                    .into_iter()
                    .filter_map(Result::ok)
                    .filter(|e| e.file_type().is_file())
                    .map(|e| e.into_path())
                    .collect();
                let mut pass = Pass::default();
                let start = Instant::now();
                for f in &files {
                    match fs::File::open(f) {
                        Ok(file) => {
                            drop(file);
                            pass.files += 1;
                        }
                        Err(e) => pass.error(format!("{}: {e}", f.display())),
                    }
                }
                pass.secs = start.elapsed().as_secs_f64();
                pass
            },
        )
    }

    fn drop_or_fail(&self) -> Result<()> {
        drop_caches().context("dropping the page cache")
    }

    /// Brings up the peers (untimed): the native copy of the musicfs tree, musefs and rclone.
    /// Returns the live mounts and the roots that are missing (each with a note saying why).
    fn start_peers(&mut self) -> Result<(LivePeers, Vec<Root>)> {
        let mut live = LivePeers::default();
        let mut missing = Vec::new();
        let Some(plan) = self.peers.take() else {
            return Ok((live, missing));
        };
        let paths = self.peer_paths.clone();
        eprintln!(
            "bench: copying the musicfs tree to {}",
            paths.native_tree.display()
        );
        if let Err(e) = copy_tree(&self.mfs_mnt, &paths.native_tree, self.io_timeout) {
            self.note(format!("native tree: missing: {e:#}"));
            missing.push(Root::NativeTree);
        }
        let mut scan_note = None;
        let musefs = plan.musefs.clone().and_then(|bin| {
            eprintln!("bench: musefs scan {}", self.lib.display());
            musefs_scan(&bin, &self.lib, &paths.musefs_db, &paths.log)
                .and_then(|partial| {
                    if let Some(p) = partial {
                        eprintln!("bench: note: musefs: {p}");
                        scan_note = Some(p);
                    }
                    let cmd = musefs_command(&bin, &paths.musefs_db, &paths.musefs_mnt);
                    PeerMount::start("musefs", cmd, &paths.musefs_mnt, &paths.log)
                })
                .map_err(|e| format!("{e:#}"))
        });
        if let Some(n) = scan_note {
            self.notes.push(format!("musefs: {n}"));
        }
        match musefs {
            Ok(m) => live.musefs = Some(m),
            Err(why) => {
                self.note(format!("musefs {MUSEFS_VERSION}: missing: {why}"));
                missing.push(Root::Musefs);
            }
        }
        let rclone = plan.rclone.clone().and_then(|()| {
            let cmd = rclone_command(&self.lib, &paths.rclone_mnt);
            PeerMount::start("rclone", cmd, &paths.rclone_mnt, &paths.log)
                .map_err(|e| format!("{e:#}"))
        });
        match rclone {
            Ok(m) => live.rclone = Some(m),
            Err(why) => {
                self.note(format!("rclone: missing: {why}"));
                missing.push(Root::Rclone);
            }
        }
        self.peers = Some(plan);
        Ok((live, missing))
    }

    /// Tree walks and reads on the roots.
    pub(super) fn measure_trees(&mut self, scan_tracks: u64) -> Result<()> {
        let reused = self.reused_state();
        let (mut mfs, _) = self.mount_musicfs(&reused, "walk and read")?;
        let bind = BindfsMount::start(&self.lib, &self.bind_mnt)?;
        let peers_on = self.peers.is_some();
        let (mut live, missing) = self.start_peers()?;
        let roots: Vec<Root> = ALL_ROOTS
            .into_iter()
            .filter(|r| !r.is_peer() || (peers_on && !missing.contains(r)))
            .collect();
        let shown = Shown {
            peers: peers_on,
            missing,
        };
        let mut check = |mfs: &mut MusicfsMount| -> Result<()> {
            mfs.check_alive()?;
            bind.check_alive()?;
            live.check_alive()
        };

        // c. tree walk, cold, then warm (the same walk again right after)
        let mut walks = Samples::default();
        let mut warm_walks = Samples::default();
        for i in 0..self.runs {
            for &root in &roots {
                if self.can_drop {
                    self.drop_or_fail()?;
                }
                for (kind, samples) in [("cold", &mut walks), ("warm", &mut warm_walks)] {
                    let pass = self.walk(root)?;
                    check(&mut mfs)?;
                    eprintln!(
                        "bench: walk {kind} {} {}/{}: {} files in {:.3} s",
                        root.name(),
                        i + 1,
                        self.runs,
                        pass.files,
                        pass.secs
                    );
                    samples.push(root, pass);
                }
            }
        }

        // d. read every file, cold
        let mut cold = Samples::default();
        if self.can_drop {
            for i in 0..self.runs {
                for &root in &roots {
                    self.drop_or_fail()?;
                    let pass = self.read(root)?;
                    check(&mut mfs)?;
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
        // the untimed native reads that warm the origin and the native tree).
        let mut warm = Samples::default();
        let order: Vec<Root> = [
            Root::Bindfs,
            Root::Musicfs,
            Root::Musefs,
            Root::Rclone,
            Root::Native,
            Root::NativeTree,
        ]
        .into_iter()
        .filter(|r| roots.contains(r))
        .collect();
        for i in 0..self.runs {
            if self.can_drop {
                self.drop_or_fail()?;
            }
            let _ = self.read(Root::Native)?;
            if roots.contains(&Root::NativeTree) {
                let _ = self.read(Root::NativeTree)?;
            }
            for &root in &order {
                let pass = self.read(root)?;
                check(&mut mfs)?;
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
        // e. open + close of every file, warm (right after the warm reads)
        let mut opens = Samples::default();
        for i in 0..self.runs {
            for &root in &roots {
                let pass = self.open_every_file(root)?;
                check(&mut mfs)?;
                eprintln!(
                    "bench: open {} {}/{}: {} files in {:.3} s",
                    root.name(),
                    i + 1,
                    self.runs,
                    pass.files,
                    pass.secs
                );
                opens.push(root, pass);
            }
        }
        if !self.can_drop {
            self.note(
                "the page cache could not be dropped: the walks and the warm-origin reads ran \
                 with whatever was cached, and FUSE passes after the first were not first passes"
                    .to_string(),
            );
        }

        for p in live.stop() {
            self.note(p);
        }
        bind.stop()?;
        self.unmount_musicfs(mfs, "walk and read")?;

        self.check_passes(scan_tracks, &roots, &walks, &cold, &warm);
        if peers_on {
            self.note(PEERS_NOTE.to_string());
        }

        self.rows.push(time_row(
            "tree walk, cold (find + stat every file, s)",
            &walks,
            "<= 1.5x bindfs (goal 1.2x)",
            Some((1.5, 1.2)),
            &shown,
        ));
        self.rows.push(time_row(
            "tree walk, warm (the same walk again, s)",
            &warm_walks,
            "-",
            None,
            &shown,
        ));
        let read_target = ">= 0.8x bindfs (goal: time <= 1.1x)";
        if self.can_drop {
            self.rows
                .push(read_row("read every file, cold (MB/s)", &cold, &shown));
        } else {
            self.rows.push(na_row(
                "read every file, cold (MB/s)",
                "needs root",
                read_target,
                &shown,
            ));
        }
        self.rows.push(read_row(
            "read every file, warm origin (MB/s)",
            &warm,
            &shown,
        ));
        self.rows.push(seen_row(&warm, &shown));
        self.rows.push(per_file_row(
            "open+close of every file, warm (us per file)",
            &opens,
            &shown,
        ));
        Ok(())
    }

    /// Notes errors and inconsistencies: files musicfs does not show, sizes that do not match
    /// the bytes read, errors from find or from the reads, peers that show another tree.
    fn check_passes(
        &mut self,
        scan_tracks: u64,
        roots: &[Root],
        walks: &Samples,
        cold: &Samples,
        warm: &Samples,
    ) {
        let mut notes = Vec::new();
        for (kind, t) in [
            ("walk", walks),
            ("cold read", cold),
            ("warm-origin read", warm),
        ] {
            for &root in roots {
                let passes = t.get(root);
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
        if let Some((files, _)) = first(walks.get(Root::Musicfs))
            && files != scan_tracks
        {
            notes.push(format!(
                "the musicfs walk saw {files} files but `musicfs scan` found {scan_tracks} tracks"
            ));
        }
        for &root in roots {
            if let (Some(w), Some(r)) = (first(walks.get(root)), first(warm.get(root)))
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
        for (a, b) in [
            (Root::Bindfs, Root::Native),
            (Root::Rclone, Root::Native),
            (Root::NativeTree, Root::Musicfs),
            (Root::Musefs, Root::Native),
        ] {
            if let (Some(x), Some(y)) = (first(walks.get(a)), first(walks.get(b)))
                && x != y
            {
                notes.push(format!(
                    "{} and {} walks differ: {x:?} vs {y:?} (files, bytes)",
                    a.name(),
                    b.name()
                ));
            }
        }
        for n in notes {
            self.note(n);
        }
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
    for_each_file(root, |path| read_file(path, &mut buf))
}

/// Runs `visit` on every regular file under `root` in walkdir order, single-threaded, and
/// times it all: each `Ok(bytes)` counts the file and its bytes, each error is noted.
pub(super) fn for_each_file(
    root: &Path,
    mut visit: impl FnMut(&Path) -> std::io::Result<u64>,
) -> Pass {
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
        match visit(entry.path()) {
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

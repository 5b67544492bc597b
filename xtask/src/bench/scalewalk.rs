//! The scale rows that walk and hold the big tree (`--big-tracks`): a full walk cold and warm
//! with the engine's RSS after it, 1,000 files held open at once, and one directory of
//! 100,000 entries (`ls -f`, a lookup of one name and of a missing one).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};

use super::consts::{BIG_WAIT, MOUNT_READY_TIMEOUT};
use super::mounts::clear_stale_mount;
use super::procfs::{engine_pid, proc_status_kb, shim_pid};
use super::runner::{Bench, settle};
use super::setup::drop_caches;
use super::table::{fmt_mb, fmt_ms, fmt_secs, fmt_thousands, solo_row};
use crate::harness::{run_captured, with_deadline};

/// Files held open at once.
const HELD_OPEN: usize = 1000;
/// Entries of the one big directory.
const BIG_DIR_ENTRIES: usize = 100_000;

impl Bench {
    /// A full walk of the big tree (cold when the page cache can be dropped, then warm), the
    /// engine's and shim's RSS after it, and `HELD_OPEN` files held open at once.
    pub(super) fn measure_big_walk(
        &mut self,
        lib: &Path,
        tracks: usize,
        state: &Path,
    ) -> Result<()> {
        let n = fmt_thousands(tracks as f64);
        let mnt = self.work.join("mnt").join("musicfs-big");
        clear_stale_mount(&mnt)?;
        fs::create_dir_all(&mnt).with_context(|| format!("creating {}", mnt.display()))?;
        let label = format!("{n} tracks: full walk and open handles");
        eprintln!("bench: {label}");
        let offset = super::logs::log_len(&self.log);
        let (mut m, _) = self.mount_at(lib, state, &mnt, &label, &[], BIG_WAIT)?;
        settle(&mut m, offset, tracks)?;
        let mut walks = Vec::new();
        let mut files = Vec::new();
        for cold in [true, false] {
            if cold && !(self.can_drop && drop_caches().is_ok()) {
                continue;
            }
            let (secs, found) = self.find_files(&mnt)?;
            eprintln!(
                "bench: {label}: walk ({}) {secs:.2} s, {} files",
                if cold { "cold" } else { "warm" },
                found.len()
            );
            walks.push((cold, secs, found.len()));
            files = found;
        }
        let engine = engine_pid(state)?;
        let shim = shim_pid(&mnt)?;
        let rss = |pid| proc_status_kb(pid, "VmRSS").map(|kb| kb as f64 / 1e3);
        let (engine_rss, shim_rss) = (rss(engine), rss(shim));
        for (cold, secs, found) in &walks {
            self.rows.push(solo_row(
                format!(
                    "{n} tracks: full walk (`find -type f`), {} (s)",
                    if *cold { "cold" } else { "warm" }
                ),
                format!(
                    "{} ({} files)",
                    fmt_secs(*secs),
                    fmt_thousands(*found as f64)
                ),
                "-".into(),
            ));
        }
        self.rows.push(solo_row(
            format!("{n} tracks: RSS after a full walk, engine / shim (MB)"),
            format!(
                "{} / {}",
                engine_rss.map_or("n/a".into(), fmt_mb),
                shim_rss.map_or("n/a".into(), fmt_mb)
            ),
            "-".into(),
        ));

        // Files spread over the whole tree, held open together.
        ensure!(
            files.len() >= HELD_OPEN,
            "only {} files in the tree",
            files.len()
        );
        let step = files.len() / HELD_OPEN;
        let chosen: Vec<PathBuf> = files
            .iter()
            .step_by(step)
            .take(HELD_OPEN)
            .cloned()
            .collect();
        let (open_ms, read_ms, errors) =
            with_deadline("holding files open", BIG_WAIT, move || hold_open(&chosen))??;
        let held_rss = (rss(engine), rss(shim));
        self.rows.push(solo_row(
            format!(
                "{n} tracks: {HELD_OPEN} files open at once: open all / 4 KiB read of each (ms)"
            ),
            format!(
                "{} / {} ({errors} errors)",
                fmt_ms(open_ms),
                fmt_ms(read_ms)
            ),
            "0 errors".into(),
        ));
        self.note(format!(
            "{n} tracks, {HELD_OPEN} files held open: RSS engine {} MB, shim {} MB while open",
            held_rss.0.map_or("n/a".into(), fmt_mb),
            held_rss.1.map_or("n/a".into(), fmt_mb)
        ));
        self.unmount_musicfs(m, &label)
    }

    /// `find ROOT -type f`, timed; the files it found.
    fn find_files(&self, root: &Path) -> Result<(f64, Vec<PathBuf>)> {
        let mut cmd = Command::new("find");
        cmd.arg(root).args(["-type", "f"]);
        let out = run_captured(&mut cmd, "find", self.io_timeout)?;
        ensure!(
            out.status.success(),
            "find {} failed: {}",
            root.display(),
            out.status
        );
        let files = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(PathBuf::from)
            .collect();
        Ok((out.elapsed.as_secs_f64(), files))
    }

    /// One directory of `BIG_DIR_ENTRIES` entries: untagged files all fall back to
    /// `Unknown Artist/Unknown Album/<file name>`. A fresh mount scans them; then `ls -f` of
    /// the directory and a lookup of one name and of a missing one, cold and warm.
    pub(super) fn measure_big_dir(&mut self) -> Result<()> {
        let n = fmt_thousands(BIG_DIR_ENTRIES as f64);
        let origin = ensure_flat_origin(&self.work, BIG_DIR_ENTRIES)?;
        let mnt = self.work.join("mnt").join("musicfs-bigdir");
        clear_stale_mount(&mnt)?;
        fs::create_dir_all(&mnt).with_context(|| format!("creating {}", mnt.display()))?;
        let state = self.work.join("state-bigdir");
        if state.exists() {
            fs::remove_dir_all(&state).with_context(|| format!("removing {}", state.display()))?;
        }
        let label = format!("one directory of {n} entries");
        eprintln!("bench: {label}");
        let (m, _) = self.mount_at(&origin, &state, &mnt, &label, &[], MOUNT_READY_TIMEOUT)?;
        let dir = mnt.join("Unknown Artist").join("Unknown Album");
        let one = dir.join(format!("track {:06}.mp3", BIG_DIR_ENTRIES / 2));
        let missing = dir.join("folder.jpg");
        let mut cells = Vec::new();
        for cold in [true, false] {
            if cold && !(self.can_drop && drop_caches().is_ok()) {
                continue;
            }
            let t = Instant::now();
            let out = run_captured(
                Command::new("ls").arg("-f").arg(&dir),
                "ls -f",
                self.io_timeout,
            )?;
            let ls_ms = t.elapsed().as_secs_f64() * 1e3;
            let listed = out
                .stdout
                .iter()
                .filter(|&&b| b == b'\n')
                .count()
                .saturating_sub(2);
            let t = Instant::now();
            let found = fs::symlink_metadata(&one).is_ok();
            let lookup_ms = t.elapsed().as_secs_f64() * 1e3;
            let t = Instant::now();
            let absent = fs::symlink_metadata(&missing).is_err();
            let miss_ms = t.elapsed().as_secs_f64() * 1e3;
            eprintln!(
                "bench: {label} ({}): ls -f {ls_ms:.1} ms ({listed} entries), lookup {lookup_ms:.3} ms, missing {miss_ms:.3} ms",
                if cold { "cold" } else { "warm" }
            );
            cells.push((cold, ls_ms, listed, lookup_ms, found, miss_ms, absent));
        }
        self.unmount_musicfs(m, &label)?;
        for (cold, ls_ms, listed, lookup_ms, found, miss_ms, absent) in cells {
            let when = if cold { "cold" } else { "warm" };
            self.rows.push(solo_row(
                format!("one directory of {n} entries: `ls -f`, {when} (ms)"),
                format!(
                    "{} ({} entries)",
                    fmt_ms(ls_ms),
                    fmt_thousands(listed as f64)
                ),
                format!("{n} entries"),
            ));
            self.rows.push(solo_row(
                format!("one directory of {n} entries: lookup of one name / of a missing name, {when} (ms)"),
                format!(
                    "{} / {}{}",
                    fmt_ms(lookup_ms),
                    fmt_ms(miss_ms),
                    if found && absent { "" } else { " (wrong answer)" }
                ),
                "-".into(),
            ));
        }
        Ok(())
    }
}

/// Opens every file of `files` and keeps them open, then reads 4 KiB of each: the times of
/// both passes (ms) and the number of errors.
fn hold_open(files: &[PathBuf]) -> Result<(f64, f64, usize)> {
    use std::os::unix::fs::FileExt;
    let mut errors = 0;
    let t = Instant::now();
    let open: Vec<fs::File> = files
        .iter()
        .filter_map(|f| fs::File::open(f).map_err(|_| errors += 1).ok())
        .collect();
    let open_ms = t.elapsed().as_secs_f64() * 1e3;
    let mut buf = vec![0u8; 4096];
    let t = Instant::now();
    for f in &open {
        if f.read_at(&mut buf, 0).is_err() {
            errors += 1;
        }
    }
    let read_ms = t.elapsed().as_secs_f64() * 1e3;
    drop(open);
    Ok((open_ms, read_ms, errors))
}

/// `<work>/flat-N/`: N copies of one untagged 0.1 s mp3 (made with ffmpeg), named
/// `track NNNNNN.mp3`; kept between runs (a marker file says it is whole).
fn ensure_flat_origin(work: &Path, entries: usize) -> Result<PathBuf> {
    let dir = work.join(format!("flat-{entries}"));
    let marker = work.join(format!("flat-{entries}.complete"));
    if marker.exists() && dir.is_dir() {
        return Ok(dir);
    }
    if dir.exists() {
        fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let seed = work.join("flat-seed.mp3");
    let mut cmd = Command::new("ffmpeg");
    cmd.args([
        "-loglevel",
        "error",
        "-y",
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=440:duration=0.1",
    ])
    .args([
        "-map_metadata",
        "-1",
        "-fflags",
        "+bitexact",
        "-id3v2_version",
        "0",
    ])
    .args(["-write_id3v1", "0", "-c:a", "libmp3lame", "-b:a", "64k"])
    .arg(&seed);
    let out = run_captured(&mut cmd, "ffmpeg", Duration::from_secs(60))?;
    ensure!(
        out.status.success(),
        "ffmpeg failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bytes = fs::read(&seed).with_context(|| format!("reading {}", seed.display()))?;
    eprintln!(
        "bench: writing {entries} untagged files into {}",
        dir.display()
    );
    for i in 0..entries {
        let f = dir.join(format!("track {i:06}.mp3"));
        fs::write(&f, &bytes).with_context(|| format!("writing {}", f.display()))?;
    }
    fs::write(&marker, format!("{entries} files\n"))
        .with_context(|| format!("writing {}", marker.display()))?;
    Ok(dir)
}

//! The scale rows (`--big-tracks`): initial scan, start with a persistent state dir, one changed
//! track, idle RSS; then `scalewalk`: the full walk, open handles, one big directory.

use std::fmt::Write as _;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};

use super::consts::{
    BIG_WAIT, IDLE_BEFORE_RSS, MOUNT_READY_TIMEOUT, READY_POLL, RETAG_ARTIST, STOP_TIMEOUT,
    SYNC_DEBUG_LOG,
};
use super::logs::{log_field, log_len, log_since, log_tail};
use super::mounts::{MusicfsMount, clear_stale_mount};
use super::procfs::{engine_pid, get_xattr, proc_env, proc_status_kb, shim_pid};
use super::retag::{retag_candidates, write_retagged};
use super::runner::{Bench, settle};
use super::setup::drop_caches;
use super::table::{
    Stats, below, fmt_mb, fmt_ms, fmt_secs, fmt_thousands, fmt_whole_ms, show_opt, solo_row,
    verdict,
};
use crate::harness::with_deadline;

/// DESIGN section 5: the engine's idle RSS bound (MB) and the library size it is set at.
const IDLE_RSS_MB: f64 = 50.0;
const IDLE_RSS_TRACKS: usize = 100_000;
/// DESIGN section 5: the engine's peak RSS bound (MB) at 1M tracks.
const PEAK_RSS_MB_AT_1M: f64 = 500.0;

/// The idle RSS is read once two readings this far apart differ by less than
/// `IDLE_RSS_STEADY_KB`, or after `IDLE_RSS_WAIT_MAX`.
const IDLE_RSS_EVERY: Duration = Duration::from_millis(1000);
const IDLE_RSS_STEADY_KB: u64 = 256;
const IDLE_RSS_WAIT_MAX: Duration = Duration::from_secs(30);

/// The engine's VmRSS (kB) once it holds still, and how long that took.
fn settled_rss_kb(pid: u32) -> (Option<u64>, Duration) {
    let start = Instant::now();
    let mut last = proc_status_kb(pid, "VmRSS");
    while start.elapsed() < IDLE_RSS_WAIT_MAX {
        std::thread::sleep(IDLE_RSS_EVERY);
        let now = proc_status_kb(pid, "VmRSS");
        match (last, now) {
            (Some(a), Some(b)) if a.abs_diff(b) < IDLE_RSS_STEADY_KB => {
                return (now, start.elapsed());
            }
            (_, None) => return (None, start.elapsed()),
            _ => last = now,
        }
    }
    (last, start.elapsed())
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
    pub(super) fn measure_big(&mut self, lib: &Path, tracks: usize) -> Result<()> {
        let n = fmt_thousands(tracks as f64);
        let mnt = self.work.join("mnt").join("musicfs-big");
        clear_stale_mount(&mnt)?;
        fs::create_dir_all(&mnt).with_context(|| format!("creating {}", mnt.display()))?;
        let state = self.work.join(format!("state-big-{tracks}"));
        let _inotify = self.raise_inotify_limit(tracks);

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
        let restart_hwm = self.measure_changes(lib, tracks, &state, &mnt)?;
        let mb = |kb: Option<u64>| kb.map(|kb| kb as f64 / 1e3);
        let (scan_mb, restart_mb) = (mb(engine_hwm), mb(restart_hwm));
        let worst = scan_mb.into_iter().chain(restart_mb).reduce(f64::max);
        self.rows.push(solo_row(
            format!(
                "{n} tracks: engine peak RSS (VmHWM), initial scan / restart + reconcile + \
                 changes (MB)"
            ),
            format!(
                "{} / {}",
                scan_mb.map_or("n/a".into(), fmt_mb),
                restart_mb.map_or("n/a".into(), fmt_mb)
            ),
            if tracks >= 1_000_000 {
                below(worst, PEAK_RSS_MB_AT_1M, "< 500 MB at 1M tracks")
            } else {
                "- (< 500 MB is the target at 1M tracks)".into()
            },
        ));
        // 5. and 6. The full walk and the open handles; one directory of 100,000 entries.
        self.measure_big_walk(lib, tracks, &state)?;
        self.measure_big_dir()
    }

    /// The changed-track rows need inotify on every directory of the big library; a
    /// machine's default limit may be lower (the engine then polls every 300 s). As root the
    /// limit is raised for the run (and put back after it), with a note.
    fn raise_inotify_limit(&mut self, tracks: usize) -> Option<RestoreWatches> {
        let now = fs::read_to_string(WATCHES_KNOB)
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())?;
        let want = tracks.max(1 << 16);
        if now >= want {
            return None;
        }
        match fs::write(WATCHES_KNOB, want.to_string()) {
            Ok(()) => {
                self.note(format!(
                    "fs.inotify.max_user_watches raised from {now} to {want} for the scale rows"
                ));
                Some(RestoreWatches(now))
            }
            Err(e) => {
                self.note(format!(
                "fs.inotify.max_user_watches is {now} and could not be raised ({e}): the engine \
                 may poll the big library instead of following it"
                ));
                None
            }
        }
    }

    fn measure_changes(
        &mut self,
        lib: &Path,
        tracks: usize,
        state: &Path,
        mnt: &Path,
    ) -> Result<Option<u64>> {
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

        // 4. Idle RSS: once it stops moving (memory the reconcile freed may take a moment to
        // go back to the system).
        std::thread::sleep(IDLE_BEFORE_RSS);
        m.check_alive()?;
        let engine = engine_pid(state)?;
        let shim = shim_pid(mnt)?;
        let (settled, waited) = settled_rss_kb(engine);
        if let Some(kb) = settled {
            self.note(format!(
                "{n} tracks: engine idle RSS read {} s after the reconcile, once two readings \
                 {} ms apart differed by less than {IDLE_RSS_STEADY_KB} kB: {} MB",
                fmt_secs((IDLE_BEFORE_RSS + waited).as_secs_f64()),
                IDLE_RSS_EVERY.as_millis(),
                fmt_mb(kb as f64 / 1e3)
            ));
        }
        let engine_rss = settled.map(|kb| kb as f64 / 1e3);
        let shim_rss = proc_status_kb(shim, "VmRSS").map(|kb| kb as f64 / 1e3);
        if let (Some(anon), Some(file)) = (
            proc_status_kb(engine, "RssAnon"),
            proc_status_kb(engine, "RssFile"),
        ) {
            self.note(format!(
                "{n} tracks: engine idle RSS = anonymous {} MB + file-backed {} MB (the search \
                 index's mapped segments and the binary: clean pages the kernel may reclaim)",
                fmt_mb(anon as f64 / 1e3),
                fmt_mb(file as f64 / 1e3)
            ));
        }
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
        let hwm_kb = proc_status_kb(engine, "VmHWM");
        if let Some(kb) = proc_status_kb(engine, "VmRSS") {
            let hwm = hwm_kb.map_or("n/a".into(), |h| fmt_mb(h as f64 / 1e3));
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
            // DESIGN section 5 sets the idle bound at 100k tracks.
            if tracks <= IDLE_RSS_TRACKS {
                below(engine_rss, IDLE_RSS_MB, "< 50 MB at 100k tracks")
            } else {
                "- (< 50 MB is the target at 100k tracks)".into()
            },
        ));
        self.rows.push(solo_row(
            format!("{n} tracks: shim idle RSS (MB)"),
            shim_rss.map_or("n/a".into(), fmt_mb),
            below(shim_rss, 15.0, "< 15 MB"),
        ));
        Ok(hwm_kb)
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

const WATCHES_KNOB: &str = "/proc/sys/fs/inotify/max_user_watches";

/// Puts the inotify watch limit back when dropped.
struct RestoreWatches(usize);

impl Drop for RestoreWatches {
    fn drop(&mut self) {
        let _ = fs::write(WATCHES_KNOB, self.0.to_string());
    }
}

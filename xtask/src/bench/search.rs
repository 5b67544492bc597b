//! The search rows (issue 15), on the big library: the index build rate (the first start's
//! background build), query latency (a lookup under `/.search` runs the query), `ls` of a
//! search directory and of the bounded `All tracks` collection, and `musicfs search rebuild`.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};

use super::consts::MOUNT_READY_TIMEOUT;
use super::logs::{log_field, log_len};
use super::mounts::clear_stale_mount;
use super::runner::Bench;
use super::table::{Stats, fmt_ms, fmt_rate, fmt_secs, fmt_thousands, show_opt, solo_row};

/// Queries timed for latency: a word in one field, a range, a conjunction, a phrase-free
/// default-field word. Each run makes them distinct (`-title:zzN`) so the kernel has no entry.
const QUERIES: &[&str] = &[
    "genre:jazz",
    "year:[1990 TO 1999]",
    "genre:rock AND year:[1970 TO 1979]",
    "love",
    "artist:reed",
];
/// The query of the `ls` row: about one track in twenty of the generated library.
const LS_QUERY: &str = "genre:rock";

impl Bench {
    /// The search rows on `lib` (`tracks` tracks) with a fresh state dir.
    pub(super) fn measure_search(&mut self, lib: &Path, tracks: usize) -> Result<()> {
        let n = fmt_thousands(tracks as f64);
        let mnt = self.work.join("mnt").join("musicfs-search");
        clear_stale_mount(&mnt)?;
        fs::create_dir_all(&mnt).with_context(|| format!("creating {}", mnt.display()))?;
        let state = self.work.join(format!("state-search-{tracks}"));
        if state.exists() {
            fs::remove_dir_all(&state).with_context(|| format!("removing {}", state.display()))?;
        }
        let label = format!("{n} tracks: search");
        eprintln!("bench: {label}: first mount (scan, then the index in the background)");
        let offset = log_len(&self.log);
        let (mut m, _) = self.mount_at(lib, &state, &mnt, &label, &[], MOUNT_READY_TIMEOUT)?;
        let wait = Duration::from_secs(300 + tracks as u64 / 200);
        let built = m.wait_log(offset, "search index rebuilt from the catalog", wait)?;
        let indexed = log_field(&built, "tracks").unwrap_or(0);
        let build_ms = log_field(&built, "ms").unwrap_or(0);
        let rate = indexed as f64 / (build_ms.max(1) as f64 / 1e3);
        self.rows.push(solo_row(
            format!("{n} tracks: search index build (tracks/s)"),
            fmt_rate(rate),
            "-".into(),
        ));
        self.note(format!(
            "{n} tracks, search index build: {indexed} tracks in {build_ms} ms (the engine's \
             `search index rebuilt from the catalog` line, first start after the scan)"
        ));

        // Query latency: stat of a new name under /.search runs its query in the engine.
        let mut lookup_ms = Vec::new();
        let mut counts = Vec::new();
        for run in 0..self.runs.max(3) {
            for q in QUERIES {
                let dir = mnt.join(".search").join(format!("{q} -title:zz{run}"));
                let t = Instant::now();
                let md = fs::metadata(&dir).with_context(|| format!("stat {}", dir.display()));
                lookup_ms.push(t.elapsed().as_secs_f64() * 1e3);
                ensure!(md?.is_dir(), "{} is not a directory", dir.display());
                if run == 0 {
                    counts.push(format!("`{q}` {}", fs::read_dir(&dir)?.count()));
                }
            }
        }
        self.rows.push(solo_row(
            format!("{n} tracks: search query, lookup under /.search (ms)"),
            show_opt(Stats::of(&lookup_ms), fmt_ms, "", "n/a"),
            "-".into(),
        ));
        self.note(format!(
            "{n} tracks, search queries (each timed as the stat of a new /.search name; results \
             bounded by search_max_results 10000): {}",
            counts.join(", ")
        ));

        // `ls` of a search directory, and of `All tracks` (bounded at 10,000 entries).
        let mut ls_ms = Vec::new();
        let mut all_ms = Vec::new();
        let mut entries = (0, 0);
        for run in 0..self.runs {
            let dir = mnt
                .join(".search")
                .join(format!("{LS_QUERY} -title:ls{run}"));
            let t = Instant::now();
            entries.0 = fs::read_dir(&dir)?.count();
            ls_ms.push(t.elapsed().as_secs_f64() * 1e3);
            // A new listing each run: the index reader is refreshed by a rebuild below only,
            // so this is the engine's listing with the kernel's cache dropped.
            let all = mnt.join(".collections/All tracks");
            drop_dentries();
            let t = Instant::now();
            entries.1 = ls_l(&all)?;
            all_ms.push(t.elapsed().as_secs_f64() * 1e3);
        }
        self.rows.push(solo_row(
            format!(
                "{n} tracks: ls of a search directory, {} entries (ms)",
                entries.0
            ),
            show_opt(Stats::of(&ls_ms), fmt_ms, "", "n/a"),
            "-".into(),
        ));
        self.rows.push(solo_row(
            format!(
                "{n} tracks: ls -l of `All tracks`, {} entries (ms)",
                entries.1
            ),
            show_opt(Stats::of(&all_ms), fmt_ms, "", "n/a"),
            "-".into(),
        ));

        // `musicfs search rebuild` while the mount serves.
        let mut rebuild_s = Vec::new();
        for _ in 0..self.runs {
            let t = Instant::now();
            let out = Command::new(&self.bin)
                .args(["search", "rebuild", "--state-dir"])
                .arg(&state)
                .output()
                .context("running musicfs search rebuild")?;
            ensure!(
                out.status.success(),
                "musicfs search rebuild: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            rebuild_s.push(t.elapsed().as_secs_f64());
        }
        self.rows.push(solo_row(
            format!("{n} tracks: musicfs search rebuild (s)"),
            show_opt(Stats::of(&rebuild_s), fmt_secs, "", "n/a"),
            "-".into(),
        ));
        self.unmount_musicfs(m, &label)
    }
}

/// Drops the kernel's dentries and inodes (root only; harmless otherwise).
fn drop_dentries() {
    let _ = fs::write("/proc/sys/vm/drop_caches", "2");
}

/// `ls -l`: the listing, then a stat of each entry; returns the entries.
fn ls_l(dir: &Path) -> Result<usize> {
    let mut n = 0;
    for e in fs::read_dir(dir)? {
        fs::metadata(e?.path())?;
        n += 1;
    }
    Ok(n)
}

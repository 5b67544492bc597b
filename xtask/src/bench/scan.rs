//! Scan rate (`musicfs scan`) and engine start to the first answered readdir.

use std::fs;
use std::process::Command;

use anyhow::{Context, Result, ensure};
use serde::Deserialize;

use super::logs::log_len;
use super::runner::{Bench, settle};
use super::setup::drop_caches;
use super::table::{Row, Stats, fmt_secs, fmt_thousands, show_opt, verdict};
use crate::harness::run_captured;

#[derive(Deserialize, Debug)]
struct ScanReport {
    tracks: u64,
    unreadable_files: u64,
    unreadable_dirs: u64,
    #[allow(dead_code)]
    elapsed_ms: u64,
    tracks_per_s: f64,
}

impl Bench {
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
    pub(super) fn measure_scan(&mut self) -> Result<u64> {
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
                ..Row::default()
            });
        }
        Ok(first.tracks)
    }

    /// Engine start to the first answered readdir, with a fresh and a reused state dir.
    pub(super) fn measure_start(&mut self) -> Result<()> {
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
                ..Row::default()
            });
        }
        Ok(())
    }
}

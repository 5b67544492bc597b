//! The realistic-track read rows: a musicfs mount whose origin is the cache library itself (a
//! local disk, so the kernel reads it by passthrough when the bench runs as root), every file
//! read whole beside a native read of the same files in the same run, cold (page cache dropped
//! before each pass) and warm (the origin's pages cached).

use std::fs;
use std::path::Path;

use anyhow::{Context, Result};

use super::cache::rate;
use super::cachetable::CacheRow;
use super::consts::{CACHE_READ_BUF, MOUNT_READY_TIMEOUT};
use super::logs::{log_len, log_since};
use super::mounts::clear_stale_mount;
use super::runner::{Bench, settle};
use super::table::{Stats, fmt_rate, fmt_ratio, show_opt};
use super::trees::Pass;

/// DESIGN section 5: passthrough reads reach this share of native.
const TARGET: f64 = 0.9;
/// What the shim logs when the kernel refuses passthrough.
const NO_PASSTHROUGH: &str = "kernel passthrough unavailable";

#[derive(Default)]
struct Passes {
    cold: Vec<Pass>,
    native_cold: Vec<Pass>,
    warm: Vec<Pass>,
    native_warm: Vec<Pass>,
}

impl Bench {
    /// The two rows on the cache library `lib` of `tracks` tracks, mounted as a local origin.
    pub(super) fn measure_local_reads(
        &mut self,
        lib: &Path,
        tracks: usize,
    ) -> Result<Vec<CacheRow>> {
        let mnt = self.work.join("mnt").join("musicfs-local");
        clear_stale_mount(&mnt)?;
        fs::create_dir_all(&mnt).with_context(|| format!("creating {}", mnt.display()))?;
        let state = self.work.join(format!("state-local-{tracks}"));
        let label = "realistic tracks: local reads";
        eprintln!("bench: {label}");
        let offset = log_len(&self.log);
        let (mut m, _) = self.mount_at(lib, &state, &mnt, label, &[], MOUNT_READY_TIMEOUT)?;
        settle(&mut m, offset, tracks)?;
        let mut p = Passes::default();
        let pass = |root: &Path, what: &str, i: usize, cold: bool| {
            self.read_pass(root, &format!("{label}:"), what, i, cold)
        };
        for i in 0..self.runs {
            p.cold.push(pass(&mnt, "musicfs, cold", i, true)?);
            p.native_cold.push(pass(lib, "native, cold", i, true)?);
        }
        for i in 0..self.runs {
            p.native_warm.push(pass(lib, "native, warm", i, false)?);
            p.warm.push(pass(&mnt, "musicfs, warm", i, false)?);
        }
        m.check_alive()?;
        let log = log_since(&self.log, offset);
        self.unmount_musicfs(m, label)?;
        let how = if log.contains(NO_PASSTHROUGH) {
            "without passthrough: the kernel refused it, see the log"
        } else if is_root() {
            "by kernel passthrough"
        } else {
            "through the shim (not root: no passthrough)"
        };
        self.note(format!(
            "realistic tracks, local origin: musicfs read the cache library {how}; every pass \
             reads each file whole with a {} KiB buffer, cold passes drop the page cache first, \
             musicfs and native passes alternate",
            CACHE_READ_BUF / 1024
        ));
        self.check_local_passes(&p);
        Ok(local_rows(&p))
    }

    fn check_local_passes(&mut self, p: &Passes) {
        let all = [&p.cold, &p.native_cold, &p.warm, &p.native_warm];
        let seen: Vec<(u64, u64)> = all
            .iter()
            .flat_map(|v| v.iter().map(|x| (x.files, x.bytes)))
            .collect();
        if seen.windows(2).any(|w| w[0] != w[1]) {
            self.note(format!(
                "realistic tracks, local origin: the passes saw different (files, bytes): {seen:?}"
            ));
        }
        let errors: Vec<&str> = all
            .iter()
            .flat_map(|v| {
                v.iter()
                    .flat_map(|x| x.first_errors.iter().map(String::as_str))
            })
            .take(5)
            .collect();
        if !errors.is_empty() {
            self.note(format!(
                "realistic tracks, local origin: read errors, first: {}",
                errors.join("; ")
            ));
        }
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn local_rows(p: &Passes) -> Vec<CacheRow> {
    let rates = |v: &[Pass]| Stats::of(&v.iter().map(rate).collect::<Vec<_>>());
    let row = |what: &str, ours: &[Pass], base: &[Pass], baseline: &str| {
        let (a, b) = (rates(ours), rates(base));
        let ratio = match (a, b) {
            (Some(a), Some(b)) if b.median > 0.0 => Some(a.median / b.median),
            _ => None,
        };
        let target = format!(">= {TARGET}x native");
        CacheRow {
            what: what.into(),
            musicfs: show_opt(a, fmt_rate, "", "n/a"),
            baseline: baseline.into(),
            base_value: show_opt(b, fmt_rate, "", "n/a"),
            ratio: ratio.map_or("n/a".into(), fmt_ratio),
            target: match ratio {
                Some(x) if x >= TARGET => format!("{target}: met"),
                Some(_) => format!("{target}: MISSED"),
                None => target,
            },
        }
    };
    vec![
        row(
            "realistic tracks, local origin: read every file, cold (MB/s)",
            &p.cold,
            &p.native_cold,
            "native disk, cold",
        ),
        row(
            "realistic tracks, local origin: read every file, warm page cache (MB/s)",
            &p.warm,
            &p.native_warm,
            "native disk, warm",
        ),
    ]
}

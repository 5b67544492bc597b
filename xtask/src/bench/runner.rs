//! The state of one bench run and the musicfs mounts every measurement takes.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};

use super::cachetable::CacheRow;
use super::consts::{BIG_WAIT, MOUNT_READY_TIMEOUT};
use super::mounts::MusicfsMount;
use super::peers::{PeerPaths, PeerPlan};
use super::procfs::meminfo_kb;
use super::table::{Row, fmt_bytes};

pub(super) struct Bench {
    /// The copied `musicfs` binary (`musicfs-shim` is beside it).
    pub(super) bin: PathBuf,
    pub(super) lib: PathBuf,
    pub(super) work: PathBuf,
    pub(super) mfs_mnt: PathBuf,
    pub(super) bind_mnt: PathBuf,
    /// stdout and stderr of every `musicfs mount`.
    pub(super) log: PathBuf,
    pub(super) can_drop: bool,
    pub(super) runs: usize,
    pub(super) tracks: usize,
    /// Deadline of one walk or read pass.
    pub(super) io_timeout: Duration,
    pub(super) notes: Vec<String>,
    pub(super) rows: Vec<Row>,
    /// The chunk cache rows (their own table: each has its own baseline).
    pub(super) cache_rows: Vec<CacheRow>,
    /// The remote-origin rows (their own table).
    pub(super) remote_rows: Vec<CacheRow>,
    /// The peers of the walk and read rows; `None` with `--no-peers`.
    pub(super) peers: Option<PeerPlan>,
    pub(super) peer_paths: PeerPaths,
}

impl Bench {
    pub(super) fn note(&mut self, note: String) {
        eprintln!("bench: note: {note}");
        self.notes.push(note);
    }

    pub(super) fn check_memory(&mut self, lib_bytes: u64) {
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

    /// Mounts, measuring spawn to first answered readdir, then waits (untimed) until the
    /// supervisor reports the mount up so that an immediate unmount is not a startup failure.
    pub(super) fn mount_musicfs(
        &self,
        state: &Path,
        label: &str,
    ) -> Result<(MusicfsMount, Duration)> {
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
    pub(super) fn mount_at(
        &self,
        lib: &Path,
        state: &Path,
        mnt: &Path,
        label: &str,
        env: &[(&str, &str)],
        timeout: Duration,
    ) -> Result<(MusicfsMount, Duration)> {
        self.mount_origins(&[lib], state, mnt, label, env, timeout)
    }

    /// [`Bench::mount_at`] with several origins (directories or URLs), in priority order.
    pub(super) fn mount_origins(
        &self,
        origins: &[&Path],
        state: &Path,
        mnt: &Path,
        label: &str,
        env: &[(&str, &str)],
        timeout: Duration,
    ) -> Result<(MusicfsMount, Duration)> {
        let mut m = MusicfsMount::start(&self.bin, origins, state, mnt, &self.log, label, env)?;
        let took = m.wait_ready(timeout)?;
        // Untimed; if the message ever changes this just waits 5 s.
        let _ = m.wait_announced(Duration::from_secs(5));
        Ok((m, took))
    }

    pub(super) fn unmount_musicfs(&mut self, m: MusicfsMount, label: &str) -> Result<()> {
        let problems = m.stop()?;
        for p in problems {
            self.note(format!("{label}: {p}"));
        }
        Ok(())
    }

    pub(super) fn reused_state(&self) -> PathBuf {
        self.work.join(format!("state-{}", self.tracks))
    }
}

/// Waits (untimed, bounded) until the engine of `m` logged `sync finished` after `offset` (the log
/// length before `m` started): the background reconcile of a start with a persistent state dir
/// (or the scan of a fresh one) is done. The starts are stopped only after that: stopping the
/// engine in the middle of its reconcile makes the next start slower (in proportion to the
/// catalog size), which would carry over from one timed run into the next.
pub(super) fn settle(m: &mut MusicfsMount, offset: u64, tracks: usize) -> Result<()> {
    let timeout = BIG_WAIT + Duration::from_secs(tracks as u64 / 10_000);
    m.wait_log(offset, "sync finished", timeout)
        .context("waiting for the engine's background reconcile")?;
    Ok(())
}

//! Polling a network origin, and choosing between polling and inotify.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;
use tracing::{info, warn};

use crate::sync::inotify::{WatchLimit, watch_local};
use crate::sync::syncer::Syncer;

/// Every this many polls, one pass stats every file (in-place edits do not
/// change a directory's mtime).
const FULL_POLL_EVERY: u32 = 12;

/// How a watcher follows its origin (`watch` in the configuration).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WatchMode {
    Inotify,
    Poll,
    /// inotify on a local filesystem, polling on a network one.
    Auto,
}

/// Follows one origin until `stop`: fails (to be retried with backoff by
/// its supervisor) while the origin is unreachable; then inotify or polling,
/// chosen now that the origin's filesystem can be seen.
pub fn follow_origin(
    syncer: &Syncer,
    origin: u32,
    mode: WatchMode,
    debounce: Duration,
    interval: Duration,
    stop: &AtomicBool,
) -> Result<()> {
    if syncer.origins.snapshot().is_remote(origin) {
        return poll_remote(syncer, origin, interval, stop);
    }
    let root = syncer.origin_root(origin)?;
    if !syncer.origin_usable(origin, &root)? {
        anyhow::bail!("origin {} is not reachable", root.display());
    }
    let inotify = match mode {
        WatchMode::Inotify => true,
        WatchMode::Poll => false,
        WatchMode::Auto => {
            let local = crate::origins::is_local_fs(&root);
            if !local {
                info!(origin = %root.display(), "origin is on a network filesystem; polling instead of inotify");
            }
            local
        }
    };
    let outcome = if inotify {
        match watch_local(syncer, origin, debounce, stop) {
            // Past the watch limit, polling follows it (one line, then
            // polling for as long as this task runs).
            Err(e) if e.downcast_ref::<WatchLimit>().is_some() => {
                warn!(origin = %root.display(), "{e}; following this origin by polling every {} s instead (raise the limit for inotify)", interval.as_secs());
                crate::events::emit(
                    "origin",
                    format!("origin {} is polled: {e}", root.display()),
                );
                syncer.mark_dirty(origin);
                poll_network(syncer, origin, interval, stop)
            }
            other => other,
        }
    } else {
        poll_network(syncer, origin, interval, stop)
    };
    if outcome.is_err() {
        syncer.mark_dirty(origin);
    }
    outcome
}

/// Rescans an origin on a network filesystem every `interval` until `stop`,
/// pruned by directory mtimes except every `FULL_POLL_EVERY`th pass.
pub fn poll_network(
    syncer: &Syncer,
    origin: u32,
    interval: Duration,
    stop: &AtomicBool,
) -> Result<()> {
    let root = syncer.origin_root(origin)?;
    info!(origin = %root.display(), interval_s = interval.as_secs(), "polling for changes (network filesystem)");
    // Back after being away, or after a failed run: catch up in full.
    if syncer.take_back(origin, &root) | syncer.take_dirty(origin) {
        syncer.sync_origin(origin, Path::new(""))?;
    }
    let mut dir_mtimes: HashMap<PathBuf, i64> = HashMap::new();
    let mut passes: u32 = 0;
    loop {
        if syncer.is_offline(origin) {
            // Gone during the last pass: retried by the supervisor with
            // backoff (seconds, not a whole poll interval), rescanned once back.
            anyhow::bail!("origin {} went away", root.display());
        }
        let until = Instant::now() + interval;
        while Instant::now() < until {
            if stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(200).min(interval));
        }
        passes += 1;
        if passes.is_multiple_of(FULL_POLL_EVERY) {
            dir_mtimes.clear();
        }
        syncer.sync_origin_pruned(origin, Path::new(""), Some(&mut dir_mtimes))?;
    }
}

/// Lists a remote origin every `interval` (or its own `poll_interval_s`)
/// until `stop`, and at once when its health checks find it ready again
/// after it was not (a catch-up, seed 4.2.6). A failed listing ends the
/// run (retried by the supervisor with backoff); the files stay.
pub fn poll_remote(
    syncer: &Syncer,
    origin: u32,
    interval: Duration,
    stop: &AtomicBool,
) -> Result<()> {
    let table = syncer.origins.snapshot();
    let remote = match table.remote(origin) {
        Some(Ok(r)) => r.clone(),
        Some(Err(why)) => anyhow::bail!("remote origin cannot be used: {why}"),
        None => anyhow::bail!("origin {origin} is not remote"),
    };
    let interval = table
        .settings(origin)
        .poll_interval_s
        .map_or(interval, Duration::from_secs)
        .max(Duration::from_secs(1));
    drop(table);
    info!(origin = %remote.spec.url, interval_s = interval.as_secs(), "listing for changes (remote origin)");
    if syncer.take_dirty(origin) || syncer.is_offline(origin) {
        syncer.sync_remote(origin, &remote)?;
    }
    let mut was_ready = remote.health.state() == crate::origins::remote::State::Ready;
    loop {
        let until = Instant::now() + interval;
        loop {
            if stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            let ready = remote.health.state() == crate::origins::remote::State::Ready;
            let back = ready && !was_ready;
            was_ready = ready;
            if back || Instant::now() >= until {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        syncer.sync_remote(origin, &remote)?;
    }
}

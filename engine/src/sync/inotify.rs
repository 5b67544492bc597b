//! Following a local origin with inotify (debounced; a queue overflow
//! rescans the origin, never silence).

use std::collections::{HashMap, HashSet};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tracing::{debug, info, warn};

use crate::sync::syncer::Syncer;

/// Fault injection: `MUSICFS_FAULT=watch-fail-once` makes the first watcher
/// start fail, to show that the supervisor restarts it.
fn injected_watch_fault() -> bool {
    static FIRED: AtomicBool = AtomicBool::new(false);
    crate::sys::fault::injected("watch-fail-once") && !FIRED.swap(true, Ordering::Relaxed)
}

/// The inotify watch limit (`fs.inotify.max_user_watches`) was reached:
/// the origin is followed by polling instead.
#[derive(Debug)]
pub struct WatchLimit;

impl std::fmt::Display for WatchLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("inotify watch limit reached (fs.inotify.max_user_watches)")
    }
}

impl std::error::Error for WatchLimit {}

/// Follows a local origin with inotify until `stop`.
pub fn watch_local(
    syncer: &Syncer,
    origin: u32,
    debounce: Duration,
    stop: &AtomicBool,
) -> Result<()> {
    if injected_watch_fault() {
        anyhow::bail!("injected fault (MUSICFS_FAULT=watch-fail-once)");
    }
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use nix::sys::inotify::{AddWatchFlags as F, InitFlags, Inotify};
    use std::os::fd::AsFd;

    let root = syncer.origin_root(origin)?;
    let inotify =
        Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK).context("inotify_init")?;
    let mask = F::IN_CLOSE_WRITE
        | F::IN_CREATE
        | F::IN_DELETE
        | F::IN_MOVED_FROM
        | F::IN_MOVED_TO
        | F::IN_ATTRIB
        | F::IN_DELETE_SELF
        | F::IN_MOVE_SELF
        | F::IN_ONLYDIR;
    let mut dirs: HashMap<i32, PathBuf> = HashMap::new(); // wd -> relative dir
    let add_tree = |dirs: &mut HashMap<i32, PathBuf>, rel: &Path| -> Result<()> {
        for entry in walkdir::WalkDir::new(root.join(rel)).follow_links(false) {
            let Ok(entry) = entry else { continue };
            if !entry.file_type().is_dir() {
                continue;
            }
            // Fault injection: MUSICFS_FAULT=watch-limit acts as if the
            // watch limit were reached.
            let added = if crate::sys::fault::injected("watch-limit") {
                Err(nix::errno::Errno::ENOSPC)
            } else {
                inotify.add_watch(entry.path(), mask)
            };
            match added {
                Ok(wd) => {
                    let r = entry
                        .path()
                        .strip_prefix(&root)
                        .unwrap_or(Path::new(""))
                        .to_path_buf();
                    dirs.insert(wd.as_raw(), r);
                }
                Err(nix::errno::Errno::ENOSPC) => return Err(WatchLimit.into()),
                Err(e) => debug!(path = %entry.path().display(), "cannot watch: {e}"),
            }
        }
        Ok(())
    };
    if !syncer.origin_usable(origin, &root)? {
        // The supervisor retries with backoff; the catalog keeps serving.
        anyhow::bail!("origin {} is not reachable", root.display());
    }
    add_tree(&mut dirs, Path::new(""))?;
    info!(origin = %root.display(), directories = dirs.len(), "watching for changes");
    // Back after being away: catch up on what changed meanwhile (the
    // watches are in place first, so nothing is missed in between).
    // Or after a failed run (a commit that could not be written).
    if syncer.take_back(origin, &root) | syncer.take_dirty(origin) {
        syncer.sync_origin(origin, Path::new(""))?;
    }

    let mut files: HashSet<Vec<u8>> = HashSet::new();
    let mut subtrees: HashSet<PathBuf> = HashSet::new();
    let mut rescan_all = false;
    let mut first_event: Option<Instant> = None;
    let mut last_event = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let mut fds = [PollFd::new(inotify.as_fd(), PollFlags::POLLIN)];
        let timeout = PollTimeout::try_from(Duration::from_millis(100)).unwrap_or(PollTimeout::MAX);
        match poll(&mut fds, timeout) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e).context("poll on inotify"),
        }
        loop {
            let events = match inotify.read_events() {
                Ok(ev) => ev,
                Err(nix::errno::Errno::EAGAIN) => break,
                Err(e) => return Err(e).context("reading inotify events"),
            };
            for ev in events {
                let now = Instant::now();
                first_event.get_or_insert(now);
                last_event = now;
                if ev.mask.contains(F::IN_Q_OVERFLOW) {
                    warn!(origin = %root.display(), "inotify queue overflowed; rescanning the origin");
                    rescan_all = true;
                    continue;
                }
                let root_event = dirs
                    .get(&ev.wd.as_raw())
                    .is_some_and(|d| d.as_os_str().is_empty());
                if root_event
                    && ev
                        .mask
                        .intersects(F::IN_DELETE_SELF | F::IN_MOVE_SELF | F::IN_UNMOUNT)
                {
                    // The origin itself went away (moved, deleted, its
                    // filesystem unmounted): keep its files, watch again
                    // (with backoff) until it is back, then rescan.
                    if syncer.origin_usable(origin, &root)? {
                        // Replaced at once: still rescan it on restart.
                        syncer
                            .offline
                            .lock()
                            .insert(origin, "its directory was replaced".into());
                    }
                    anyhow::bail!("origin {} went away", root.display());
                }
                if ev.mask.contains(F::IN_IGNORED) {
                    dirs.remove(&ev.wd.as_raw());
                    continue;
                }
                let Some(dir) = dirs.get(&ev.wd.as_raw()).cloned() else {
                    continue;
                };
                let Some(name) = ev.name else { continue };
                let rel = dir.join(&name);
                if ev.mask.contains(F::IN_ISDIR) {
                    if ev.mask.intersects(F::IN_DELETE | F::IN_MOVED_FROM) {
                        // Its watches (same inodes) are re-registered under the
                        // new path if it moved within the origin.
                        dirs.retain(|_, p| !p.starts_with(&rel));
                    }
                    if ev.mask.intersects(F::IN_CREATE | F::IN_MOVED_TO) {
                        add_tree(&mut dirs, &rel)?;
                    }
                    subtrees.insert(rel);
                } else {
                    files.insert(rel.as_os_str().as_bytes().to_vec());
                }
            }
        }
        let Some(first) = first_event else { continue };
        // Apply after `debounce` of quiet, or at most 10 debounce windows after the first event.
        if last_event.elapsed() < debounce && first.elapsed() < debounce * 10 {
            continue;
        }
        if rescan_all {
            syncer.sync_origin(origin, Path::new(""))?;
        } else {
            for sub in &subtrees {
                syncer.sync_origin(origin, sub)?;
            }
            syncer.sync_files(origin, &files)?;
        }
        debug!(
            files = files.len(),
            subtrees = subtrees.len(),
            rescan_all,
            "changes applied"
        );
        files.clear();
        subtrees.clear();
        rescan_all = false;
        first_event = None;
    }
    Ok(())
}

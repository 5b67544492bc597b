//! Keeping the catalog in step with the origins.
//!
//! - `Syncer::sync_origin` is a delta scan: it walks an origin (or a subtree),
//!   compares every audio file's (size, mtime, origin inode) with the catalog,
//!   probes only what changed (in parallel), and commits in batches. Each
//!   commit is a checkpoint: a killed scan resumes by skipping what is
//!   already committed. Files that vanished are removed only after a walk
//!   that saw their directory, so an unreachable origin never empties the tree.
//! - `watch_local` follows a local origin with inotify (debounced; a queue
//!   overflow triggers a rescan of the origin, never silence).
//! - `poll_network` rescans an origin on a network filesystem periodically.
//! - `sync_remote` (file `remote`) applies the listing of a remote origin
//!   (S3, WebDAV), and `poll_remote` lists it periodically and at once when
//!   its health checks find it back.
//! - `follow_origin` picks one of them once the origin can be seen; the
//!   task supervisor (`tasks`) restarts a watcher that fails, with backoff.
//!
//! After every commit the kernel is told which names and inodes to forget,
//! through the catalog's `InvalidationSink` port (the data plane implements
//! it; sync never imports the server).
//!
//! Files: `syncer` (the writer and its commits), `delta` (delta scans),
//! `inotify`, `follow` (polling, and the choice between the two).
//! May use: scan, origins, catalog, model, config, events, sys.
//!
//! In detail: keeps the catalog in step with the origins.
//! `Syncer::sync_origin` is a delta scan (walk, compare size/mtime/inode with
//! the catalog, probe only what changed, commit every `checkpoint_files` — a
//! killed scan resumes by skipping what was committed; removals only for
//! directories the walk could read, so an unreachable origin never empties
//! the tree). `origin_usable` says whether an origin can be scanned: its root
//! must be readable, and an empty root on another device than at its last
//! full scan (`origin_dev/<id>` in `meta`) while the catalog holds its files
//! is a share that is not mounted, never "everything was deleted". Such an
//! origin is marked away (one log line and event per reason), its files stay
//! and are served from the catalog; its watcher task fails and is retried
//! with backoff, and once the origin is back (`take_back`) the watcher
//! rescans it in full after its watches are in place. `follow_origin` is that
//! watcher task: it picks inotify or polling each time it starts, once the
//! origin can be seen; inotify on the root itself (moved, deleted, unmounted)
//! ends it the same way. `watch_local` (inotify, debounced, queue overflow →
//! rescan of the origin) and `poll_network` (origins on NFS/SMB/FUSE) run
//! under `tasks::supervise`, which restarts them with backoff (sleeping in
//! steps, so a stop is never held up), lists them by name in the status
//! (`watch- origin-N`, one token per incarnation), and returns the thread
//! handle (shutdown reports the ones still winding down). Long scans check
//! the stop flag at every checkpoint. Every commit with changes is an event.

mod delta;
mod feed;
mod follow;
mod inotify;
mod remote;
mod syncer;
mod warm;

#[cfg(test)]
mod tests;

pub use follow::{WatchMode, follow_origin, poll_network, poll_remote};
pub use inotify::{WatchLimit, watch_local};
pub use remote::RemoteSource;
pub use syncer::{SyncCounters, Syncer};

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

mod delta;
mod follow;
mod inotify;
mod syncer;

#[cfg(test)]
mod tests;

pub use follow::{WatchMode, follow_origin, poll_network};
pub use inotify::watch_local;
pub use syncer::{SyncCounters, Syncer};

//! Deadlines, poll intervals and fixed names of the bench.

use std::time::Duration;

/// How long `musicfs mount` may take to answer its first readdir.
pub(super) const MOUNT_READY_TIMEOUT: Duration = Duration::from_secs(600);
/// How long an unmount (and the mount process exiting after it) may take.
pub(super) const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `cargo build` may take (it may wait on a lock held by another cargo).
pub(super) const BUILD_TIMEOUT: Duration = Duration::from_secs(3600);
/// Poll interval of the bindfs mount wait.
pub(super) const POLL: Duration = Duration::from_millis(5);
/// Poll interval of the readiness (first answered readdir) and visibility waits.
pub(super) const READY_POLL: Duration = Duration::from_millis(1);
/// Deadline of the scale-row waits other than the initial scan: a start with the persistent state
/// dir, a log line, a change showing up in the mount (the reconcile gets more per track).
pub(super) const BIG_WAIT: Duration = Duration::from_secs(60);
/// Log filter of the mount whose catalog commits are timed (`checkpoint committed` is a debug line).
pub(super) const SYNC_DEBUG_LOG: &str = "info,musicfs_engine::sync=debug";
/// Quiet time after the reconcile before the idle RSS is read.
pub(super) const IDLE_BEFORE_RSS: Duration = Duration::from_secs(2);
/// Album artist given to the retagged tracks (files that have it are never picked again).
pub(super) const RETAG_ARTIST: &str = "Bench Retag";
/// The retagged tracks are taken from every RETAG_STRIDE-th manifest line first (spread out).
pub(super) const RETAG_STRIDE: usize = 97;
/// Buffer of the read-every-file loop.
pub(super) const READ_BUF: usize = 128 * 1024;
/// The file the results are recorded in, at the workspace root.
pub(super) const RECORD_FILE: &str = "BENCHMARKS.md";
pub(super) const SECTION_END: &str = "<!-- /bench -->";
/// Buffer of the whole-file reads of the cache rows.
pub(super) const CACHE_READ_BUF: usize = 1024 * 1024;
/// What the media-server-like probe reads at the start and at the end of every file.
pub(super) const PROBE_BYTES: usize = 64 * 1024;
/// How long sshd may take to listen, and sshfs to mount and list the export.
pub(super) const SHARE_START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long one ffmpeg encode of a cache-library track may take.
pub(super) const FFMPEG_TIMEOUT: Duration = Duration::from_secs(600);
/// How long one `musicfs cache status|clear` may take.
pub(super) const CACHE_CMD_TIMEOUT: Duration = Duration::from_secs(30);
/// The chunk cache counts as settled (writer and read-ahead done) once its figures stay the same
/// for this long ...
pub(super) const CACHE_QUIET: Duration = Duration::from_millis(500);
/// ... waiting at most this long.
pub(super) const CACHE_SETTLE_TIMEOUT: Duration = Duration::from_secs(60);

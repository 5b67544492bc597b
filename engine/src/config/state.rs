//! The state directory's layout, and the environment that `musicfs mount`
//! hands the engines it starts: the contract between the supervisor, the
//! engine and the command-line clients.

use std::path::{Path, PathBuf};

/// The engine's data-plane socket (the shim connects here).
pub fn engine_socket(state_dir: &Path) -> PathBuf {
    state_dir.join("engine.sock")
}

/// The engine's control socket (`musicfs status`, `events`, ...).
pub fn control_socket(state_dir: &Path) -> PathBuf {
    state_dir.join("control.sock")
}

/// The supervisor's socket (`musicfs engine swap`, `reload`, `shutdown`
/// under `musicfs mount`).
pub fn supervisor_socket(state_dir: &Path) -> PathBuf {
    state_dir.join("supervisor.sock")
}

/// The lock that makes one engine per state directory.
pub fn lock_file(state_dir: &Path) -> PathBuf {
    state_dir.join("engine.lock")
}

/// The catalog.
pub fn catalog_file(state_dir: &Path) -> PathBuf {
    state_dir.join("catalog.redb")
}

/// Set by `musicfs mount` on the engines it starts: its pid. The
/// configuration is the supervisor's, so a SIGHUP sent to such an engine
/// is passed on to it.
pub const SUPERVISOR_PID_ENV: &str = "MUSICFS_SUPERVISOR_PID";

/// Set by `musicfs mount`: why it started this engine (`mount`, `engine
/// swap`, a crash or a missed heartbeat of the previous one).
pub const START_REASON_ENV: &str = "MUSICFS_START_REASON";

/// How far the first scan is ("FOUND PROBED"), while it runs: `musicfs
/// mount` draws it as a progress bar on a terminal.
pub fn first_scan_progress_file(state_dir: &Path) -> PathBuf {
    state_dir.join("first-scan.progress")
}

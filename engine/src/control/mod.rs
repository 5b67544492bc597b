//! The control plane: `STATE/control.sock` (owner-only), Cap'n Proto
//! frames (`ControlRequest` / `ControlResponse` in `schema/musicfs.capnp`).
//! - `status`: the catalog, origins (with a bounded reachability check),
//!   supervised tasks, counters;
//! - `shutdown`: the ordered stop, with a drain deadline;
//! - `reload`: a new configuration (validated; hot fields applied);
//! - `events`: the event log, optionally followed.
//!
//! One thread per connection (at most `MAX_CONNECTIONS`), so a follower
//! never holds up a status. `musicfs status|metrics|shutdown|reload|events`
//! are its clients (`client`).
//!
//! The server talks to a `Handle` that the runtime gives it, never to the
//! runtime itself. May use: config, events, tasks, sys.
//!
//! In detail: the control plane: `STATE/control.sock` (mode 0600, Cap'n Proto
//! `ControlRequest`/`ControlResponse` frames, one thread per connection, at
//! most 32). `status` gathers the catalog totals, how the previous engine
//! closed the catalog, origins (reachability from `origins::probe_dirs`:
//! parallel, 1 s deadline, at most one probe per origin, so a dead NFS server
//! neither hangs it nor piles up threads), supervised tasks
//! (`tasks::task_states`), cache figures and counters; `shutdown` is the
//! ordered stop with a drain deadline; `reload` takes a whole configuration
//! (JSON) or re-reads the engine's own; `events` streams the event log (and
//! follows it). The CLI renders the status as a table, stable JSON, or
//! Prometheus text (`musicfs metrics`). Under `musicfs mount`, `musicfs
//! shutdown` and `musicfs reload` go to the supervisor (`supervisor.sock`),
//! which owns the configuration and the order of the stop. An engine that
//! systemd runs directly (`SYSTEMD_EXEC_PID` is its own pid, no supervisor)
//! refuses `shutdown` and names the `systemctl stop` to use instead (its unit
//! would restart it and leave the shim mounted).

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use serde::Serialize;

use crate::config::Config;
use crate::config::reload::ReloadReport;

mod cache;
mod client;
mod server;

pub use cache::{CacheAnswer, ChunkCacheView, cache_request};

pub use client::{
    EngineRefused, NotRunning, fetch_status, request_reload, request_shutdown, send_shutdown,
    stream_events,
};
pub use server::serve;

/// What the control plane asks of the running engine (the runtime
/// implements it).
pub trait Handle: Send + Sync {
    /// The state directory (its control socket lives there).
    fn state_dir(&self) -> &Path;
    /// The engine's status, with a bounded look at each origin.
    fn status(&self) -> Result<Status>;
    /// A new configuration (`None`: re-read the engine's own sources).
    fn reload(&self, new: Option<Config>) -> Result<ReloadReport>;
    /// Starts the ordered stop, draining for `drain`; `Err` says why this
    /// engine must not stop itself (and how to stop it).
    fn shutdown(&self, drain: Duration) -> Result<(), String>;
    /// Whether the engine is stopping.
    fn stopping(&self) -> bool;
    /// The chunk cache's status, if one is open.
    fn cache_status(&self) -> Option<crate::content::CacheStatus>;
    /// Checks every cached chunk (`repair`: fetches bad ones again).
    fn cache_verify(
        &self,
        repair: bool,
        progress: &mut dyn FnMut(u64, u64),
        cancel: &std::sync::atomic::AtomicBool,
    ) -> Result<crate::content::VerifyReport>;
    /// Removes every chunk; returns the bytes freed.
    fn cache_clear(&self) -> Result<u64>;
    /// Keeps the files under `path` (relative to the mount) off the
    /// eviction list, or stops; returns how many files.
    fn cache_pin(&self, path: &[u8], pinned: bool) -> Result<u64>;
}

/// The engine's status, as `musicfs status --json` prints it (stable keys).
#[derive(Debug, Serialize)]
pub struct Status {
    pub engine_version: String,
    pub pid: u32,
    pub uptime_ms: u64,
    pub state_dir: String,
    pub files: u64,
    pub nodes: u64,
    pub bytes: u64,
    pub scan_complete: bool,
    pub connected_shims: u32,
    /// "new", "clean" or "unclean": how the previous engine left the catalog.
    pub catalog_previous_close: String,
    pub in_flight: u32,
    pub template: String,
    /// Why catalog writes fail ("" while they work), and since when (ms
    /// since the epoch; 0 while they work).
    pub catalog_write_error: String,
    pub catalog_write_since_ms: u64,
    /// Why the state directory's last write probe failed ("" if it worked).
    pub state_dir_error: String,
    /// The chunk cache (none when every origin is a local disk).
    pub chunk_cache: Option<ChunkCacheView>,
    /// Cache figures (gauges), by name.
    pub cache: Vec<(String, u64)>,
    pub origins: Vec<OriginState>,
    pub tasks: Vec<TaskInfo>,
    pub counters: Vec<(String, u64)>,
}

#[derive(Debug, Serialize)]
pub struct OriginState {
    pub id: u32,
    pub path: String,
    pub reachable: bool,
    pub local: bool,
}

#[derive(Debug, Serialize)]
pub struct TaskInfo {
    pub name: String,
    pub running: bool,
    pub restarts: u32,
    pub last_error: String,
}

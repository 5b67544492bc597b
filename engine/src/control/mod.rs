//! The control plane: `STATE/control.sock` (owner-only), Cap'n Proto RPC
//! (`EngineGate` and `Engine` in `schema/musicfs.capnp`).
//! - the gate's `hello` checks the control protocol versions and hands out
//!   the `Engine` capability;
//! - `status`: the catalog, origins (with a bounded reachability check),
//!   supervised tasks, counters, the chunk cache;
//! - `shutdown`: the ordered stop, with a drain deadline (refused under
//!   systemd, naming the `systemctl stop` to use);
//! - `reload`: a new configuration (validated; hot fields applied);
//! - `events` and `subscribe` (the client's listener is called for each
//!   event, one call at a time: flow control by the RPC);
//! - `cacheVerify` returns a `Job`: progress to the client's listener, then
//!   the result; dropped or cancelled, it stops.
//!
//! One thread runs it all (`server`: a current-thread tokio runtime with a
//! `LocalSet`; a connection is a task, at most `MAX_CONNECTIONS`); calls
//! that may wait run on the blocking pool. `client` holds the synchronous
//! clients the command line uses; `convert` the status and events in and
//! out of their structs; `cache` the chunk cache's view.
//!
//! The server talks to a `Handle` that the runtime gives it, never to the
//! runtime itself. May use: config, content, events, tasks, sys.

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use serde::Serialize;

use crate::config::Config;
use crate::config::reload::ReloadReport;

mod cache;
mod client;
mod convert;
mod rpc;
mod server;

pub use cache::ChunkCacheView;
pub use client::{
    CacheAnswer, cache_request, fetch_metrics, our_peer, remote, search_rebuild, search_request,
    with_gate,
};
pub use rpc::{ProgressForwarder, check_peer, server_connection, server_peer};

pub use client::{
    EngineRefused, NotRunning, fetch_status, request_reload, request_shutdown, send_shutdown,
    stream_events,
};
pub use server::{MAX_CONNECTIONS, serve};

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
    /// The Prometheus text exposition of the engine's metrics.
    fn metrics(&self) -> Result<String>;
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
    /// The tree paths of the tracks matching `query` (the live index).
    fn search(&self, query: &str) -> Result<Vec<String>>;
    /// Rebuilds the search index from the catalog; returns the tracks
    /// indexed. `cancel` stops the wait.
    fn search_rebuild(
        &self,
        progress: &mut dyn FnMut(u64, u64),
        cancel: &std::sync::atomic::AtomicBool,
    ) -> Result<u64>;
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
    /// The change feed's targets.
    pub notify: Vec<crate::notify::TargetStatus>,
}

#[derive(Debug, Serialize)]
pub struct OriginState {
    pub id: u32,
    pub path: String,
    pub reachable: bool,
    pub local: bool,
    pub kind: String,
    pub health: String,
    pub error: String,
}

#[derive(Debug, Serialize)]
pub struct TaskInfo {
    pub name: String,
    pub running: bool,
    pub restarts: u32,
    pub last_error: String,
}

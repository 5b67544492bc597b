//! The engine's figures that live outside this room, as plain data: the
//! control plane fills a `Snapshot` from the status, `render` exports it.

/// Figures of the running engine at one moment (see `render`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// Seconds since the engine started.
    pub uptime_seconds: f64,
    /// Audio files in the catalog.
    pub files: u64,
    /// Nodes of the virtual tree.
    pub nodes: u64,
    /// Bytes of all audio files in the catalog.
    pub audio_bytes: u64,
    /// The first scan has finished.
    pub scan_complete: bool,
    pub connected_shims: u64,
    /// Data-plane requests read and not answered yet.
    pub in_flight_requests: u64,
    /// Catalog writes fail (a full state disk).
    pub catalog_writes_failing: bool,
    /// The state directory's last write probe worked.
    pub state_dir_writable: bool,
    pub origins: Vec<OriginFigures>,
    pub tasks: Vec<TaskFigures>,
    /// Other gauges, by name without the `musicfs_` prefix (the status's
    /// `cache`: listing_cache_dirs, open_origin_files, catalog_cache_bytes,
    /// ...). A name ending in `_percent` is exported as `_ratio` (over 100).
    pub gauges: Vec<(String, u64)>,
    /// Monotonic counts, by name without the prefix and without `_total`
    /// (the status's `counters`: requests, probed, commits, reloads, ...);
    /// exported as `musicfs_NAME_total`. Those the data plane records here
    /// itself (`requests`, `opens`, `reads`, `read_bytes`) are exported from
    /// the recorded counters and the values given here are ignored.
    pub counters: Vec<(String, u64)>,
    /// The chunk cache, if one is open.
    pub chunk_cache: Option<ChunkCacheFigures>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OriginFigures {
    /// The origin's directory (the `origin` label).
    pub path: String,
    pub reachable: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskFigures {
    /// The task's name (the `task` label).
    pub name: String,
    pub running: bool,
    /// Restarts since the engine started.
    pub restarts: u64,
}

/// The chunk cache's figures, by name (the status's chunk cache figures:
/// used_bytes, max_bytes, chunks, free_percent, hits, misses, ...). Those
/// in `CHUNK_CACHE_COUNTERS` are counters, the rest gauges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChunkCacheFigures {
    /// Bypassed: its disk is not healthy, reads go to the origins.
    pub bypassed: bool,
    pub figures: Vec<(String, u64)>,
}

/// The chunk cache's figures that only grow (exported as counters).
pub const CHUNK_CACHE_COUNTERS: [&str; 10] = [
    "hits",
    "misses",
    "corrupt",
    "missing",
    "written",
    "skipped",
    "evicted",
    "disk_errors",
    "bypassed_reads",
    "read_ahead",
];

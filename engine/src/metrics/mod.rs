//! Metrics by the Prometheus conventions: what the data plane records as it
//! answers (a latency histogram per request kind, one per origin for the
//! fetches that go to an origin, the request counters), and the text that
//! `musicfs metrics` prints (`render`), encoded with prometheus-client in
//! the Prometheus text format (0.0.4).
//!
//! Rank 0: every room may record into it; it uses no other room. The
//! figures that live elsewhere (catalog totals, origins, tasks, the chunk
//! cache, the syncer's counts) come in as a `Snapshot` of plain numbers and
//! names, which the control plane fills from the engine's status.
//!
//! The recorded metrics are one process-wide set of handles (`recorded`, a
//! `static` behind a `OnceLock`) rather than a struct the data plane owns:
//! an engine is one process with one data plane, any room (serve, content,
//! sync later) records without a handle being threaded through its
//! constructors, and the control plane renders without reaching into the
//! data plane's state. Each handle is pre-created: a request costs one
//! `Instant::now`, one histogram observe (an uncontended lock and a bucket
//! search) and a counter add, with no allocation and no label lookup.
//!
//! Conventions: counters are of type `counter` and end in `_total`; units
//! are in the names (`_seconds`, `_bytes`, `_ratio`); every name starts
//! with `musicfs_`.

mod record;
mod render;
mod snapshot;

pub use record::{
    BUCKETS, Op, observe_origin_fetch, observe_request, record_open, record_read,
    record_read_bytes, record_request,
};
pub use render::render;
pub use snapshot::{CHUNK_CACHE_COUNTERS, ChunkCacheFigures, OriginFigures, Snapshot, TaskFigures};

#[cfg(test)]
mod tests;

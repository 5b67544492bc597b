//! Content (the chunk cache): what bytes a handle on a file of a network
//! origin reads. Chunks addressed by blake3 on a local disk under
//! `cache_dir`, written atomically (a temporary file in `tmp/`, fsync,
//! rename) by one writer thread, a manifest per content version and a chunk
//! index in redb beside them (`index`), every chunk checked against its hash
//! on every read from the disk and fetched again from the origin when it is
//! corrupt or gone, the size accounted from the index, eviction least
//! recently used first (read times persisted in batches), pins, a scrubber,
//! and a bypass while the cache disk is unhealthy (`health`, after JuiceFS).
//!
//! Files: `layout` (the chunks of a file, the key of a content version),
//! `index` (redb tables), `health` (normal, unstable, down), `cache` (the
//! store: get, put, writer, probe, eviction, verify, scrub).
//!
//! Local origins never come here: they keep passthrough. This room reads
//! no origin itself: the data plane fetches and offers chunks (`put`), and
//! repair takes a fetch function. May use: config, events, sys.

mod cache;
mod health;
mod index;
mod layout;
mod probe;
mod repair;
mod writer;

#[cfg(test)]
mod tests;

pub use cache::{CacheStatus, ChunkCache, Counters, Refetch, Settings, VerifyReport};
pub use health::State;
pub use index::{ContentInfo, Hash};
pub use layout::{BODY_CHUNK_BYTES, ContentKey, HEAD_BYTES, Layout, MAX_CHUNK_BYTES, TAIL_BYTES};

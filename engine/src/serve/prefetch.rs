//! Prefetch: when a track of a cached origin is opened, the heads of the
//! next `prefetch_tracks` files of its directory (the album, in tree
//! order) are fetched into the chunk cache in the background, so the next
//! track of a sequential play opens and starts from the cache.
//!
//! Bounded: at most `PREFETCH_MAX` heads in flight or queued in all, each
//! job on its origin's own pool (behind the open that asked, never in front
//! of a reader), a head at most once at a time (`begin_read_ahead`). Not
//! started while the cache is bypassed (its disk unstable or down), for an
//! origin that does not answer (a stuck pool, a remote origin that is not
//! ready), or for a file already cached.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tracing::debug;

use crate::serve::cached::{CACHE_POOL, READ_AHEAD_MAX, cached_file, fetch_chunk};
use crate::serve::files::origin_of;
use crate::serve::pools::Turn;
use crate::serve::shared::{Shared, bump};

/// Heads being prefetched (queued or running) at most, in all.
const PREFETCH_MAX: usize = 4;
static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// After an open of `ino` (a file of a cached origin).
pub(super) fn after_open(shared: &Arc<Shared>, ino: u64) {
    let n = shared.prefetch_tracks.load(Ordering::Relaxed);
    if n == 0 {
        return;
    }
    let Some(cache) = shared.content.get() else {
        return;
    };
    if !cache.usable() {
        return;
    }
    let Ok(Some(node)) = shared.store.node(ino) else {
        return;
    };
    let Ok(siblings) = shared.store.children(node.parent) else {
        return;
    };
    let Some(at) = siblings.iter().position(|c| c.ino == ino) else {
        return;
    };
    let next = siblings[at + 1..]
        .iter()
        .filter(|c| !c.is_dir)
        .take(n)
        .map(|c| c.ino);
    for next_ino in next {
        let Ok(origin) = origin_of(shared, next_ino) else {
            continue;
        };
        if !origin.cached || origin.size_bytes == 0 || origin.range.is_some() {
            continue;
        }
        let table = shared.origins.snapshot();
        if table.readiness(origin.id) != 0 || !shared.pools.answering(origin.id) {
            debug!(
                ino = next_ino,
                "no prefetch: its origin does not answer now"
            );
            continue;
        }
        let f = cached_file(
            shared,
            next_ino,
            origin.version,
            &origin,
            origin.size_bytes,
            origin.mtime_ns,
        );
        if cache.contains(&f.key, 0) {
            continue;
        }
        if IN_FLIGHT.fetch_add(1, Ordering::AcqRel) >= PREFETCH_MAX {
            IN_FLIGHT.fetch_sub(1, Ordering::AcqRel);
            debug!(
                ino = next_ino,
                "no prefetch: {PREFETCH_MAX} already in flight"
            );
            return;
        }
        if !cache.begin_read_ahead(&f.key, 0, READ_AHEAD_MAX) {
            IN_FLIGHT.fetch_sub(1, Ordering::AcqRel);
            debug!(
                ino = next_ino,
                "no prefetch: being read ahead, or too many read-aheads"
            );
            continue;
        }
        debug!(ino = next_ino, "prefetching the head");
        let sh = shared.clone();
        let pool = f.pool(shared);
        debug_assert_ne!(pool, CACHE_POOL);
        shared.pools.submit(
            pool,
            Box::new(move |turn| {
                if let Some(cache) = sh.content.get() {
                    // Checked again: the cache may have been bypassed, or
                    // the origin stopped answering, while this waited.
                    if matches!(turn, Turn::Run) && cache.usable() && !cache.contains(&f.key, 0) {
                        match fetch_chunk(&sh, cache, &f, 0, false) {
                            Ok(_) => bump(&sh.counters.prefetched, 1),
                            Err(errno) => debug!(ino = f.ino, errno, "prefetch failed"),
                        }
                    }
                    cache.end_read_ahead(&f.key, 0);
                }
                IN_FLIGHT.fetch_sub(1, Ordering::AcqRel);
            }),
        );
    }
}

//! Opening and reading files of cached origins (network filesystems, or
//! `cache = true`): chunks come from the chunk cache when it has them
//! (verified), else from the origin, a chunk at a time, and are offered to
//! the cache; sequential readers get the next chunks fetched ahead. A file
//! whose every chunk is cached opens and reads without its origin, so it
//! reads right while the share is away or hung.
//!
//! Two steps per request: the cache step runs on the cache's own pool
//! (never behind a hung origin); only what it cannot serve goes to the
//! origin's pool, under `cache_fetch_timeout_ms` (see `reply`).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tracing::debug;

use crate::catalog::split_file_key;
use crate::content::{ChunkCache, ContentInfo, ContentKey, Layout};
use crate::metrics;
use crate::origins::OpenFile;
use crate::serve::copies::{Source, read_chunk, sources_of};
use crate::serve::files::Origin;
use crate::serve::pools::Turn;
use crate::serve::reply::Reply;
use crate::serve::shared::{MAX_READ_BYTES, Shared, bump};
use crate::serve::wire::{errno_of, error_frame, respond};

/// The pool that serves cache hits (an id no origin has).
pub(super) const CACHE_POOL: u32 = u32::MAX;
/// Chunks fetched ahead of a sequential reader.
const READ_AHEAD_CHUNKS: u32 = 4;
/// Chunks being read ahead at most, in all.
pub(super) const READ_AHEAD_MAX: usize = 16;
/// Cached handles remembered at most (past it, unpinned ones are dropped and
/// found again from the catalog).
const HANDLES_MAX: usize = 16 * 1024;

/// One content version of a file of a cached origin, as a handle reads it.
pub(super) struct CachedFile {
    pub(super) ino: u64,
    /// The handle's version (its `fh`).
    pub(super) version: u64,
    pub(super) origin: u32,
    pub(super) path: PathBuf,
    pub(super) key: ContentKey,
    pub(super) layout: Layout,
    pub(super) info: ContentInfo,
    /// Every copy of the file (this origin's first), by priority.
    pub(super) sources: Vec<Source>,
    /// Remote copies' ETags (by origin), learnt at their first fetch
    /// (`serve::remote`).
    pub(super) etags: parking_lot::Mutex<HashMap<u32, Option<String>>>,
    /// The origin the last fetch came from (u32::MAX: none yet).
    pub(super) served: std::sync::atomic::AtomicU32,
    /// Where the last read ended (sequential reads get read-ahead).
    next_offset: AtomicU64,
    /// 1 + the chunk whose read-ahead was scheduled last (once per chunk).
    ahead: std::sync::atomic::AtomicU32,
    /// An album cover: the (offset, length) of the origin file it serves.
    range: Option<(u64, u64)>,
    /// The chunk the last read used, verified: a sequential reader's next
    /// requests (the kernel asks 128 KiB at a time) are answered from it on
    /// the connection thread, with no lookup.
    memo: parking_lot::Mutex<Option<(u32, Arc<[u8]>)>>,
}

impl CachedFile {
    /// The copies in the order to try now: ready origins first, then by
    /// priority.
    pub(super) fn sources_now(&self, shared: &Shared) -> Vec<&Source> {
        let table = shared.origins.snapshot();
        let mut v: Vec<&Source> = self.sources.iter().collect();
        v.sort_by_key(|s| (table.readiness(s.origin), table.priority(s.origin)));
        v
    }

    /// The pool a fetch runs on: the first copy's origin's.
    pub(super) fn pool(&self, shared: &Shared) -> u32 {
        self.sources_now(shared)
            .first()
            .map_or(self.origin, |s| s.origin)
    }

    fn memo(&self, i: u32) -> Option<Arc<[u8]>> {
        match &*self.memo.lock() {
            Some((at, bytes)) if *at == i => Some(bytes.clone()),
            _ => None,
        }
    }

    fn remember(&self, i: u32, bytes: &Arc<[u8]>) {
        let mut memo = self.memo.lock();
        if memo.is_none() {
            // Bounded in all: past MEMOS_MAX handles, no more memos.
            if MEMOS.fetch_add(1, Ordering::AcqRel) >= MEMOS_MAX {
                MEMOS.fetch_sub(1, Ordering::AcqRel);
                return;
            }
        }
        *memo = Some((i, bytes.clone()));
    }
}

impl Drop for CachedFile {
    fn drop(&mut self) {
        if self.memo.get_mut().is_some() {
            MEMOS.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// Handles holding a memo chunk now, and at most (64 MiB of chunks).
static MEMOS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
const MEMOS_MAX: usize = 64;

type Held = (Arc<CachedFile>, u32);

/// The cached handles of this engine, with how many opens hold each.
#[derive(Default)]
pub(super) struct CachedHandles {
    /// (inode, version) -> the file and its opens.
    map: parking_lot::Mutex<HashMap<(u64, u64), Held>>,
}

impl CachedHandles {
    fn get(&self, ino: u64, fh: u64) -> Option<Arc<CachedFile>> {
        self.map.lock().get(&(ino, fh)).map(|(f, _)| f.clone())
    }

    fn insert(&self, file: Arc<CachedFile>, pin: bool) -> Arc<CachedFile> {
        let mut map = self.map.lock();
        if map.len() >= HANDLES_MAX {
            map.retain(|_, (_, pins)| *pins > 0);
        }
        let entry = map
            .entry((file.ino, file.version))
            .or_insert_with(|| (file, 0));
        if pin {
            entry.1 = entry.1.saturating_add(1);
        }
        entry.0.clone()
    }

    pub(super) fn release(&self, ino: u64, fh: u64) {
        let mut map = self.map.lock();
        if let Some((_, pins)) = map.get_mut(&(ino, fh)) {
            *pins = pins.saturating_sub(1);
            if *pins == 0 {
                map.remove(&(ino, fh));
            }
        }
    }
}

pub(super) fn cached_file(
    shared: &Shared,
    ino: u64,
    version: u64,
    origin: &Origin,
    size_bytes: u64,
    mtime_ns: i64,
) -> CachedFile {
    let rel = split_file_key(&origin.file_key).map_or(&[][..], |(_, r)| r);
    CachedFile {
        sources: sources_of(shared, ino, origin, (version, size_bytes, mtime_ns)),
        etags: parking_lot::Mutex::new(HashMap::new()),
        served: std::sync::atomic::AtomicU32::new(u32::MAX),
        ino,
        version,
        origin: origin.id,
        path: origin.path.clone(),
        key: ContentKey::of(&origin.file_key, size_bytes, mtime_ns),
        layout: Layout::new(size_bytes),
        info: ContentInfo {
            origin: origin.id,
            rel_path: rel.to_vec(),
            size_bytes,
            mtime_ns,
        },
        next_offset: AtomicU64::new(0),
        ahead: std::sync::atomic::AtomicU32::new(0),
        memo: parking_lot::Mutex::new(None),
        range: origin.range,
    }
}

/// The chunk cache, if this file's origin is read through it.
pub(super) fn cache_for<'a>(shared: &'a Shared, origin: &Origin) -> Option<&'a Arc<ChunkCache>> {
    if origin.cached {
        shared.content.get()
    } else {
        None
    }
}

/// The cached file behind a read's handle: `None` if the handle is not one
/// of a cached origin. After an engine restart the handle is found again
/// from the catalog, if the catalog still has its version.
pub(super) fn handle(shared: &Shared, ino: u64, fh: u64) -> Option<Result<Arc<CachedFile>, i32>> {
    shared.content.get()?;
    if let Some(f) = shared.cached_handles.get(ino, fh) {
        return Some(Ok(f));
    }
    if shared
        .fds
        .get(ino, fh)
        .is_some_and(|f| !f.cached_origin(shared))
    {
        return None;
    }
    let origin = match crate::serve::files::origin_of(shared, ino) {
        Ok(o) if o.cached => o,
        Ok(_) => return None,
        Err(errno) => return Some(Err(errno)),
    };
    if origin.version != fh {
        return Some(Err(libc::ESTALE));
    }
    let f = cached_file(shared, ino, fh, &origin, origin.size_bytes, origin.mtime_ns);
    Some(Ok(shared.cached_handles.insert(Arc::new(f), false)))
}

trait CachedOrigin {
    fn cached_origin(&self, shared: &Shared) -> bool;
}

impl CachedOrigin for OpenFile {
    fn cached_origin(&self, shared: &Shared) -> bool {
        shared.origins.snapshot().is_cached(self.origin)
    }
}

fn opened_frame(id: u64, fh: u64) -> Vec<u8> {
    respond(id, 0, |r| {
        let mut o = r.init_opened();
        o.set_fh(fh);
        o.set_keep_cache(true);
        o.set_fd_attached(false);
    })
}

fn read_only(flags: u32) -> bool {
    flags & (libc::O_WRONLY | libc::O_RDWR | libc::O_TRUNC | libc::O_APPEND) as u32 == 0
}

/// The cache step of an open: answered here if every chunk of the
/// catalog's version is cached (no origin is touched), else `None`.
pub(super) fn open_from_cache(
    shared: &Shared,
    id: u64,
    ino: u64,
    flags: u32,
    origin: &Origin,
) -> Option<Vec<u8>> {
    if !read_only(flags) {
        return Some(error_frame(id, libc::EROFS));
    }
    let cache = cache_for(shared, origin)?;
    let f = cached_file(
        shared,
        ino,
        origin.version,
        origin,
        origin.size_bytes,
        origin.mtime_ns,
    );
    if !cache.complete(&f.key, f.layout) {
        return None;
    }
    bump(&shared.counters.opens, 1);
    metrics::record_open();
    shared.cached_handles.insert(Arc::new(f), true);
    Some(opened_frame(id, origin.version))
}

/// The origin step of an open: opens the origin file (which learns its
/// version from the file itself) and answers with that version.
pub(super) fn open_from_origin(shared: &Shared, id: u64, ino: u64, origin: &Origin) -> Vec<u8> {
    bump(&shared.counters.opens, 1);
    metrics::record_open();
    if origin.remote {
        // A remote object opens at the catalog's version without a round
        // trip: every fetch asks for exactly that version (`serve::remote`).
        let file = cached_file(
            shared,
            ino,
            origin.version,
            origin,
            origin.size_bytes,
            origin.mtime_ns,
        );
        shared.cached_handles.insert(Arc::new(file), true);
        return opened_frame(id, origin.version);
    }
    let opened = match shared.fds.get(ino, origin.version) {
        Some(f) => Ok(f),
        None => shared.fds.open(ino, origin.id, &origin.path, false),
    };
    match opened {
        Ok(f) => {
            shared.fds.pin(ino, f.version);
            let file = cached_file(shared, ino, f.version, origin, f.size_bytes, f.mtime_ns);
            shared.cached_handles.insert(Arc::new(file), true);
            opened_frame(id, f.version)
        }
        Err(e) => {
            debug!(ino, path = %origin.path.display(), "open failed: {e}");
            shared.note_error(ino, format_args!("open {}: {e}", origin.path.display()));
            let errno = match e.raw_os_error() {
                Some(libc::ENOENT | libc::ENOTDIR)
                    if crate::serve::files::origin_away(&origin.root) =>
                {
                    libc::EIO
                }
                _ => errno_of(&e),
            };
            error_frame(id, errno)
        }
    }
}

/// The bytes a read wants, as (chunk index, offset in it, length) parts.
fn parts(f: &CachedFile, offset: u64, size: u32) -> Vec<(u32, usize, usize)> {
    let end = (offset + u64::from(size.min(MAX_READ_BYTES))).min(f.layout.size_bytes);
    let mut out = Vec::new();
    let mut at = offset;
    while at < end {
        let i = f.layout.index_of(at);
        let (start, len) = f.layout.range(i);
        let take = (start + len).min(end) - at;
        out.push((i, (at - start) as usize, take as usize));
        at += take;
    }
    out
}

/// A read answered from the handle's last chunk alone (no lookup, no
/// disk), or `None`.
pub(super) fn read_from_memo(f: &CachedFile, offset: u64, size: u32) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(size.min(MAX_READ_BYTES) as usize);
    for (i, at, len) in parts(f, offset, size) {
        let chunk = f.memo(i)?;
        out.extend_from_slice(&chunk[at..at + len]);
    }
    Some(out)
}

/// The cache step of a read: every byte from the cache, or `None`.
pub(super) fn read_from_cache(
    shared: &Shared,
    f: &CachedFile,
    offset: u64,
    size: u32,
) -> Option<Vec<u8>> {
    let cache = shared.content.get()?;
    let mut out = Vec::with_capacity(size.min(MAX_READ_BYTES) as usize);
    for (i, at, len) in parts(f, offset, size) {
        let chunk = match f.memo(i) {
            Some(c) => c,
            None => {
                let c = cache.get(&f.key, i, f.layout.range(i).1)?;
                f.remember(i, &c);
                c
            }
        };
        out.extend_from_slice(&chunk[at..at + len]);
    }
    Some(out)
}

/// Fetches chunk `i` of `f` from its origin and offers it to the cache;
/// `demand`: a reader waits for it (a miss), else it is read ahead.
pub(super) fn fetch_chunk(
    shared: &Shared,
    cache: &ChunkCache,
    f: &CachedFile,
    i: u32,
    demand: bool,
) -> Result<Arc<[u8]>, i32> {
    let buf = read_chunk(shared, f, i)?;
    if demand {
        bump(&cache.counters.fetched, 1);
    }
    if !cache.usable() {
        bump(&cache.counters.bypassed_reads, 1);
    }
    let bytes: Arc<[u8]> = buf.into();
    cache.put(&f.key, i, &f.info, bytes.clone());
    Ok(bytes)
}

/// The origin step of a read: cached chunks from the cache, the rest from
/// the origin.
pub(super) fn read_from_origin(
    shared: &Shared,
    f: &CachedFile,
    offset: u64,
    size: u32,
) -> Result<Vec<u8>, i32> {
    let cache = shared.content.get().ok_or(libc::EIO)?;
    let mut out = Vec::with_capacity(size.min(MAX_READ_BYTES) as usize);
    for (i, at, len) in parts(f, offset, size) {
        let chunk_len = f.layout.range(i).1;
        let chunk = match f.memo(i) {
            Some(c) => c,
            None => {
                cache.wait_read_ahead(&f.key, i, Duration::from_secs(5));
                let c = match cache.get(&f.key, i, chunk_len) {
                    Some(c) => c,
                    None => fetch_chunk(shared, cache, f, i, true)?,
                };
                f.remember(i, &c);
                c
            }
        };
        out.extend_from_slice(&chunk[at..at + len]);
    }
    Ok(out)
}

/// After a read of `len` bytes at `offset`: a sequential reader gets the
/// next chunks fetched ahead on the origin's pool (bounded in all).
pub(super) fn read_ahead(shared: &Arc<Shared>, f: &Arc<CachedFile>, offset: u64, len: usize) {
    let end = offset + len as u64;
    let previous = f.next_offset.swap(end, Ordering::AcqRel);
    // Sequential: this read starts where the last one ended (a first read
    // at 0 is not enough: a probe of the head would pull megabytes).
    if previous != offset || offset == 0 || len == 0 {
        return;
    }
    let Some(cache) = shared.content.get() else {
        return;
    };
    let first = f.layout.index_of(offset);
    // Once per chunk, not per request.
    if f.ahead.swap(first + 1, Ordering::AcqRel) == first + 1 {
        return;
    }
    let last = (first + READ_AHEAD_CHUNKS).min(f.layout.count().saturating_sub(1));
    for i in first + 1..=last {
        if !cache.begin_read_ahead(&f.key, i, READ_AHEAD_MAX) {
            continue;
        }
        let (sh, file) = (shared.clone(), f.clone());
        if cache.contains(&f.key, i) {
            // On the cache disk: read and checked into memory ahead of the
            // reader, on the cache's pool.
            let len = f.layout.range(i).1;
            shared.pools.submit(
                CACHE_POOL,
                Box::new(move |turn| {
                    if let Some(cache) = sh.content.get() {
                        if matches!(turn, Turn::Run) {
                            let _ = cache.get(&file.key, i, len);
                        }
                        cache.end_read_ahead(&file.key, i);
                    }
                }),
            );
            continue;
        }
        shared.pools.submit(
            f.pool(shared),
            Box::new(move |turn| {
                if let Some(cache) = sh.content.get() {
                    if matches!(turn, Turn::Run)
                        && !cache.contains(&file.key, i)
                        && fetch_chunk(&sh, cache, &file, i, false).is_ok()
                    {
                        bump(&cache.counters.read_ahead, 1);
                    }
                    cache.end_read_ahead(&file.key, i);
                }
            }),
        );
    }
}

/// Answers a read served from the cache (counted as a hit).
fn hit(sh: &Arc<Shared>, f: &Arc<CachedFile>, reply: &Reply, offset: u64, data: &[u8]) {
    bump(&sh.counters.read_bytes, data.len() as u64);
    metrics::record_read_bytes(data.len() as u64);
    if let Some(c) = sh.content.get() {
        bump(&c.counters.hits, 1);
    }
    reply.send(&respond(reply.id, 0, |mut r| r.set_data(data)));
    read_ahead(sh, f, offset, data.len());
}

/// Runs a read of a cached handle: the cache step on the cache pool, the
/// rest on the origin's pool under the fetch deadline.
pub(super) fn dispatch_read(
    shared: &Arc<Shared>,
    reply: Arc<Reply>,
    f: Arc<CachedFile>,
    offset: u64,
    size: u32,
) {
    // An album cover reads a range of its origin file.
    let (offset, size) = match f.range {
        None => (offset, size),
        Some((base, len)) if offset < len => (
            base + offset,
            u32::try_from((len - offset).min(u64::from(size))).unwrap_or(size),
        ),
        Some(_) => {
            reply.send(&respond(reply.id, 0, |mut r| r.set_data(&[])));
            return;
        }
    };
    // The chunk the last read used: answered here, at once.
    if let Some(data) = read_from_memo(&f, offset, size) {
        bump(&shared.counters.reads, 1);
        metrics::record_read();
        return hit(shared, &f, &reply, offset, &data);
    }
    let sh = shared.clone();
    shared.pools.submit(
        CACHE_POOL,
        Box::new(move |turn| {
            let id = reply.id;
            bump(&sh.counters.reads, 1);
            metrics::record_read();
            if matches!(turn, Turn::Run)
                && let Some(data) = crate::serve::connection::guarded(
                    id,
                    || read_from_cache(&sh, &f, offset, size),
                    || None,
                )
            {
                return hit(&sh, &f, &reply, offset, &data);
            }
            if let Some(c) = sh.content.get() {
                bump(&c.counters.misses, 1);
            }
            sh.deadlines.watch(&reply, sh.fetch_timeout());
            let sh2 = sh.clone();
            sh.pools.submit(
                f.pool(&sh),
                Box::new(move |turn| {
                    let result = match turn {
                        Turn::Run => crate::serve::connection::guarded(
                            id,
                            || read_from_origin(&sh2, &f, offset, size),
                            || Err(libc::EIO),
                        ),
                        Turn::Refused => Err(libc::EIO),
                    };
                    match result {
                        Ok(data) => {
                            bump(&sh2.counters.read_bytes, data.len() as u64);
                            metrics::record_read_bytes(data.len() as u64);
                            reply.send(&respond(id, 0, |mut r| r.set_data(&data)));
                            read_ahead(&sh2, &f, offset, data.len());
                        }
                        Err(errno) => {
                            sh2.note_error(
                                f.ino,
                                format_args!(
                                    "read at {offset}: {}",
                                    std::io::Error::from_raw_os_error(errno)
                                ),
                            );
                            reply.send(&error_frame(id, errno));
                        }
                    }
                }),
            );
        }),
    );
}

/// Runs an open of a file of a cached origin: answered from the cache if
/// it holds the whole file, else by the origin under the fetch deadline.
pub(super) fn dispatch_open(
    shared: &Arc<Shared>,
    reply: Arc<Reply>,
    ino: u64,
    flags: u32,
    origin: Origin,
) {
    let sh = shared.clone();
    shared.pools.submit(
        CACHE_POOL,
        Box::new(move |turn| {
            let id = reply.id;
            if matches!(turn, Turn::Run)
                && let Some(frame) = crate::serve::connection::guarded(
                    id,
                    || open_from_cache(&sh, id, ino, flags, &origin),
                    || None,
                )
            {
                reply.send(&frame);
                return;
            }
            sh.deadlines.watch(&reply, sh.fetch_timeout());
            let sh2 = sh.clone();
            sh.pools.submit(
                origin.id,
                Box::new(move |turn| {
                    let frame = match turn {
                        Turn::Run => {
                            let started = Instant::now();
                            let frame = crate::serve::connection::guarded(
                                id,
                                || open_from_origin(&sh2, id, ino, &origin),
                                || error_frame(id, libc::EIO),
                            );
                            metrics::observe_origin_fetch(
                                origin.id,
                                || Some(origin.root.clone()),
                                started.elapsed(),
                            );
                            frame
                        }
                        Turn::Refused => error_frame(id, libc::EIO),
                    };
                    // Answered EIO by the deadline already, an open that
                    // succeeded late leaves one handle entry and one held
                    // origin file behind (both bounded LRUs).
                    reply.send(&frame);
                }),
            );
        }),
    );
}

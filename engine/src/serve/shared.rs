//! State shared by every connection, and the port through which the
//! catalog's writer reaches the shims' kernels.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use musicfs_schema::response;
use parking_lot::Mutex;
use tracing::info;

use crate::catalog::{InvalidationSink, Invalidations, Store};
use crate::content::ChunkCache;
use crate::metrics::{Op, observe_request};
use crate::origins::{FdCache, Origins};
use crate::serve::cached::CachedHandles;
use crate::serve::dir_handles::DirHandles;
use crate::serve::pools::OriginPools;
use crate::serve::reply::Deadlines;
use crate::serve::wire::{Writer, send};

/// Largest read the engine serves in one request.
pub const MAX_READ_BYTES: u32 = 4 * 1024 * 1024;
/// Largest number of directory entries in one readdir answer.
pub const MAX_READDIR_ENTRIES: u32 = 1024;

/// State shared by every connection.
/// Files whose serving origin is remembered at most.
const SERVED_FROM_MAX: usize = 64 * 1024;

pub struct Shared {
    pub store: Arc<Store>,
    /// Origin directories by origin id, and whether each is on a local
    /// filesystem (then opens and cached reads may run inline on the
    /// connection thread without risking a long stall). Swapped on reload.
    pub origins: Arc<Origins>,
    /// Directory listings snapshotted at opendir, by handle.
    pub(super) dir_handles: DirHandles,
    /// The connected shims: write halves for invalidation notices, and a
    /// handle to stop reading from them at shutdown.
    pub(super) connections: Mutex<Vec<ConnRef>>,
    pub(super) started: Instant,
    /// Kernel cache lifetime for entries and attributes (hot: reload).
    pub entry_ttl_ms: AtomicU32,
    /// Kernel cache lifetime of a miss (a lookup of a name that does not
    /// exist; hot: reload).
    pub negative_ttl_ms: AtomicU32,
    /// Set at shutdown: new connections are refused.
    pub(super) stopping: AtomicBool,
    /// Requests read and not yet answered.
    pub(super) in_flight: AtomicUsize,
    /// Connections that may still read a request (see `Reader`).
    pub(super) readers: AtomicUsize,
    pub(super) fds: FdCache,
    pub counters: Counters,
    /// The chunk cache, once an origin needs it (`set_content`).
    pub(super) content: std::sync::OnceLock<Arc<ChunkCache>>,
    /// The search views (`/.search`, `/.collections`, `/.playlists`).
    pub(super) views: std::sync::OnceLock<Arc<crate::views::Views>>,
    /// Handles on files of cached origins.
    pub(super) cached_handles: CachedHandles,
    /// Which origin served each file last (the `served_from` xattr;
    /// bounded: forgotten past `SERVED_FROM_MAX` files).
    served_from: Mutex<std::collections::HashMap<u64, u32>>,
    /// Album covers' ranges in their origin files, by (inode, version), so
    /// that a handle reads the range of the version it opened: noted by every
    /// lookup of a cover's node (`files::origin_of`), which every open and
    /// every read of a handle this engine did not open passes through.
    /// Never dropped (one per cover version this engine opened).
    cover_ranges: parking_lot::RwLock<std::collections::HashMap<(u64, u64), (u64, u64)>>,
    /// The last error met on each file (the `error` xattr; bounded).
    pub(super) last_errors: crate::serve::xattrs::LastErrors,
    /// Requests waiting on an origin, with their deadline.
    pub(super) deadlines: Deadlines,
    /// Origin I/O, a pool per origin (and one for cache hits).
    pub(super) pools: OriginPools,
    /// The deadline of an origin fetch for a cached origin (ms; hot).
    pub cache_fetch_timeout_ms: AtomicU64,
    /// Tracks after an opened one whose heads are prefetched (hot).
    pub prefetch_tracks: AtomicUsize,
}

/// Request counters, for the log, the status and counter-based tests.
#[derive(Default, Debug)]
pub struct Counters {
    pub requests: std::sync::atomic::AtomicU64,
    pub opens: std::sync::atomic::AtomicU64,
    pub reads: std::sync::atomic::AtomicU64,
    pub read_bytes: std::sync::atomic::AtomicU64,
    /// Origin files actually opened (fd cache misses).
    pub origin_opens: std::sync::atomic::AtomicU64,
    /// Heads of next tracks fetched into the chunk cache (prefetch).
    pub prefetched: std::sync::atomic::AtomicU64,
}

pub(super) fn bump(c: &std::sync::atomic::AtomicU64, n: u64) {
    c.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
}

impl Shared {
    /// One log line with the counters.
    pub fn log_counters(&self) {
        let c = &self.counters;
        let get = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        info!(
            requests = get(&c.requests),
            opens = get(&c.opens),
            reads = get(&c.reads),
            read_bytes = get(&c.read_bytes),
            origin_opens = get(&self.fds.origin_opens),
            "request counters"
        );
    }

    pub fn new(store: Arc<Store>, origins: Arc<Origins>, entry_ttl_ms: u32) -> Arc<Shared> {
        Arc::new(Shared {
            store,
            connections: Mutex::new(Vec::new()),
            dir_handles: DirHandles::default(),
            origins,
            started: Instant::now(),
            entry_ttl_ms: AtomicU32::new(entry_ttl_ms),
            negative_ttl_ms: AtomicU32::new(entry_ttl_ms),
            stopping: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            readers: AtomicUsize::new(0),
            fds: FdCache::default(),
            counters: Counters::default(),
            content: std::sync::OnceLock::new(),
            views: std::sync::OnceLock::new(),
            cached_handles: CachedHandles::default(),
            served_from: Mutex::new(std::collections::HashMap::new()),
            last_errors: crate::serve::xattrs::LastErrors::default(),
            cover_ranges: parking_lot::RwLock::new(std::collections::HashMap::new()),
            deadlines: Deadlines::default(),
            pools: OriginPools::default(),
            cache_fetch_timeout_ms: AtomicU64::new(10_000),
            prefetch_tracks: AtomicUsize::new(2),
        })
    }

    /// Gives the data plane its chunk cache (once; later calls keep the first).
    pub fn set_views(&self, views: Arc<crate::views::Views>) {
        let _ = self.views.set(views);
    }

    pub fn set_content(&self, cache: Arc<ChunkCache>) {
        let _ = self.content.set(cache);
    }

    /// The chunk cache, if one is open.
    pub fn content(&self) -> Option<&Arc<ChunkCache>> {
        self.content.get()
    }

    pub(super) fn fetch_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.cache_fetch_timeout_ms.load(Ordering::Relaxed))
    }

    /// Number of connected shims (greeted as such; the supervisor's
    /// heartbeat connections are not counted).
    pub fn shim_count(&self) -> usize {
        let mut conns = self.connections.lock();
        conns.retain(|c| c.writer.strong_count() > 0);
        conns
            .iter()
            .filter(|c| c.shim.load(Ordering::Acquire))
            .count()
    }

    /// Origin files held open for reads (the fd cache).
    pub fn open_origin_files(&self) -> usize {
        self.fds.open_files()
    }

    /// The most origin files held open (hot: `open_files_max`).
    pub fn open_files_max(&self) -> usize {
        self.fds.capacity()
    }

    pub fn set_open_files_max(&self, files: usize) {
        self.fds.set_capacity(files);
    }

    /// Requests read and not answered yet.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Shutdown, first step: refuse new connections and stop reading new
    /// requests (what is already in a socket buffer is still read and
    /// answered; the shim replays anything else to the next engine).
    pub fn stop_taking_requests(&self) {
        self.stopping.store(true, Ordering::Release);
        let conns = self.connections.lock();
        for c in conns.iter() {
            let _ = c.ctl.shutdown(std::net::Shutdown::Read);
        }
    }

    /// Shutdown, second step: waits until every connection has read what
    /// was already in its socket buffer (and hit the end of it) and every
    /// request read has been answered, or `deadline`. Returns how many were
    /// still in flight. Only then may the catalog close: a request read
    /// after it closed would fail (EIO) instead of being served, or
    /// replayed by the shim to the next engine.
    pub fn drain(&self, deadline: Instant) -> usize {
        loop {
            let n = self.in_flight();
            let reading = self.readers.load(Ordering::Acquire);
            if (n == 0 && reading == 0) || Instant::now() >= deadline {
                return n;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    /// A request of kind `op` was read: counted in flight, and timed, until
    /// its `InFlight` drops (after its answer is written).
    pub(super) fn begin_request(self: &Arc<Self>, op: Op) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight {
            shared: self.clone(),
            op,
            read_at: Instant::now(),
        }
    }

    /// Tells every connected shim to drop what its kernel cached for these.
    pub fn invalidate(&self, inval: &Invalidations) {
        if inval.is_empty() {
            return;
        }
        let mut msg = capnp::message::Builder::new_default();
        {
            let mut r = msg.init_root::<response::Builder<'_>>();
            r.set_id(0);
            let mut i = r.init_invalidate();
            let mut entries = i
                .reborrow()
                .init_entries(u32::try_from(inval.entries.len()).unwrap_or(0));
            for (n, (parent, name)) in inval.entries.iter().enumerate() {
                let mut e = entries.reborrow().get(u32::try_from(n).unwrap_or(0));
                e.set_parent(*parent);
                e.set_name(name.as_bytes());
            }
            i.set_everything(inval.everything);
            let mut inodes = i.init_inodes(u32::try_from(inval.inodes.len()).unwrap_or(0));
            for (n, ino) in inval.inodes.iter().enumerate() {
                inodes.set(u32::try_from(n).unwrap_or(0), *ino);
            }
        }
        let frame = musicfs_schema::to_frame(&msg);
        let writers: Vec<Writer> = {
            let mut conns = self.connections.lock();
            conns.retain(|c| c.writer.strong_count() > 0);
            conns.iter().filter_map(|c| c.writer.upgrade()).collect()
        };
        for w in writers {
            send(&w, &frame);
        }
    }

    /// Notes that `origin` served file `ino`.
    pub(super) fn note_served_from(&self, ino: u64, origin: u32) {
        let mut m = self.served_from.lock();
        if m.len() >= SERVED_FROM_MAX {
            m.clear();
        }
        m.insert(ino, origin);
    }

    pub(super) fn note_cover(&self, handle: (u64, u64), offset: u64, len: u64) {
        if self.cover_ranges.read().get(&handle) != Some(&(offset, len)) {
            self.cover_ranges.write().insert(handle, (offset, len));
        }
    }

    /// The range of its origin file that cover `ino` serves.
    pub(super) fn cover_range(&self, handle: (u64, u64)) -> Option<(u64, u64)> {
        self.cover_ranges.read().get(&handle).copied()
    }

    /// Notes the last error of file `ino` (its `user.musicfs.error`).
    pub(super) fn note_error(&self, ino: u64, what: impl std::fmt::Display) {
        self.last_errors.note(ino, what.to_string());
    }

    /// The origin that served file `ino` last, if it is remembered.
    pub(super) fn served_from(&self, ino: u64) -> Option<u32> {
        self.served_from.lock().get(&ino).copied()
    }

    pub fn origin_path(&self, origin: u32, rel: &[u8]) -> Option<PathBuf> {
        let root = self.origins.root(origin)?;
        if crate::origins::remote::is_remote(&root) {
            // The object's URL: the origin's without its query, then the path.
            let url = root.to_string_lossy();
            let base = url
                .split('?')
                .next()
                .unwrap_or_default()
                .trim_end_matches('/');
            return Some(PathBuf::from(format!(
                "{base}/{}",
                String::from_utf8_lossy(rel)
            )));
        }
        Some(root.join(OsStr::from_bytes(rel)))
    }
}

/// A connected client, as the shared state knows it.
pub(super) struct ConnRef {
    pub(super) writer: std::sync::Weak<Mutex<UnixStream>>,
    /// Another handle on the socket, to shut its read side down at stop.
    pub(super) ctl: UnixStream,
    /// Said hello as a shim.
    pub(super) shim: Arc<AtomicBool>,
}

/// One request being served; dropped once its answer is written, which
/// records its latency (`metrics::observe_request`).
pub(super) struct InFlight {
    shared: Arc<Shared>,
    op: Op,
    read_at: Instant,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        observe_request(self.op, self.read_at.elapsed());
        self.shared.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A connection that may still read requests: counted from its accept
/// until its reader ends, so that the drain waits for requests that were
/// already in a socket buffer at the stop.
pub(super) struct Reader(Arc<Shared>);

impl Reader {
    pub(super) fn new(shared: &Arc<Shared>) -> Reader {
        shared.readers.fetch_add(1, Ordering::AcqRel);
        Reader(shared.clone())
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.0.readers.fetch_sub(1, Ordering::AcqRel);
    }
}

impl InvalidationSink for Shared {
    fn invalidate(&self, inval: &Invalidations) {
        Shared::invalidate(self, inval);
    }
}

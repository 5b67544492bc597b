//! The chunk store: chunk files on the cache disk, addressed by blake3,
//! written atomically by one writer thread, verified on every read from the
//! disk, evicted least recently used first, and bypassed while the disk is
//! unhealthy.

use std::collections::{HashMap, HashSet};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::time::{Duration, Instant};

use anyhow::Result;
use parking_lot::{Mutex, RwLock};
use tracing::{info, warn};

use crate::content::health::{Health, Transition};
use crate::content::index::{ContentInfo, Hash, Index, Put};
use crate::content::layout::{ContentKey, Layout};

/// Verified chunks kept in memory (a sequential reader reads each chunk
/// from the disk, and checks it, once rather than once per request).
pub(super) const HOT_BYTES: usize = 16 * 1024 * 1024;
/// Chunks waiting for the writer; past this, new chunks are not cached
/// (the reader already has its bytes).
pub(super) const WRITE_QUEUE: usize = 64;
/// Chunks written per index transaction at most.
pub(super) const WRITE_BATCH: usize = 32;
/// How often read times reach the index (and how much a crash can lose).
pub(super) const TOUCH_FLUSH: Duration = Duration::from_secs(5);
/// How often the free space of the cache disk is looked at.
pub(super) const SPACE_CHECK: Duration = Duration::from_secs(1);
/// Recently fetched chunks not yet in the index, at most.
pub(super) const RECENT_MAX: usize = 4096;

/// Where the cache lives and how big it may grow.
#[derive(Clone, Debug)]
pub struct Settings {
    pub dir: PathBuf,
    /// The most bytes of chunks kept.
    pub max_bytes: u64,
    /// Eviction starts when the cache disk has less free space than this;
    /// at half of it, no more chunks are written.
    pub min_free_percent: u32,
    /// How often an unhealthy cache disk is probed (500 ms; tests set less).
    pub probe_interval: Duration,
}

/// Counts, for the status and the tests.
#[derive(Default, Debug)]
pub struct Counters {
    /// Read requests served wholly from the cache (memory or disk).
    pub hits: AtomicU64,
    /// Read requests that needed their origin (a chunk was not cached).
    pub misses: AtomicU64,
    /// Chunks fetched from an origin for a reader waiting on it.
    pub fetched: AtomicU64,
    /// Chunks whose bytes on disk did not match their hash.
    pub corrupt: AtomicU64,
    /// Chunks in the index whose file was gone.
    pub missing: AtomicU64,
    /// Chunks written to the disk.
    pub written: AtomicU64,
    /// Chunks not written (queue full, writes stopped, bypassed, no room).
    pub skipped: AtomicU64,
    /// Chunks removed to make room.
    pub evicted: AtomicU64,
    /// I/O errors of the cache disk.
    pub disk_errors: AtomicU64,
    /// Reads served from the origins because the cache was bypassed.
    pub bypassed_reads: AtomicU64,
    /// Chunks read ahead for sequential readers.
    pub read_ahead: AtomicU64,
}

pub(super) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

pub(super) enum Job {
    Put(Put, Arc<[u8]>),
    Forget(Hash),
    Flush(mpsc::Sender<()>),
}

#[derive(Default)]
pub(super) struct Hot {
    chunks: HashMap<Hash, (Arc<[u8]>, u64)>,
    bytes: usize,
    clock: u64,
}

impl Hot {
    pub(super) fn get(&mut self, hash: &Hash) -> Option<Arc<[u8]>> {
        self.clock += 1;
        let now = self.clock;
        let entry = self.chunks.get_mut(hash)?;
        entry.1 = now;
        Some(entry.0.clone())
    }

    pub(super) fn remove(&mut self, hash: &Hash) {
        if let Some(old) = self.chunks.remove(hash) {
            self.bytes -= old.0.len();
        }
    }

    pub(super) fn insert(&mut self, hash: Hash, bytes: Arc<[u8]>) {
        self.clock += 1;
        let len = bytes.len();
        if let Some(old) = self.chunks.insert(hash, (bytes, self.clock)) {
            self.bytes -= old.0.len();
        }
        self.bytes += len;
        while self.bytes > HOT_BYTES {
            let Some(oldest) = self.chunks.iter().min_by_key(|(_, v)| v.1).map(|(k, _)| *k) else {
                break;
            };
            if let Some(old) = self.chunks.remove(&oldest) {
                self.bytes -= old.0.len();
            }
        }
    }
}

/// A chunk fetched from its origin and not yet in the index.
pub(super) struct Recent {
    hash: Hash,
    /// Not on its way to the disk (bypassed, no room, queue full): offered
    /// again when it is read while the disk takes writes.
    unwritten: Option<ContentInfo>,
}

/// What `musicfs cache status` shows.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct CacheStatus {
    pub dir: String,
    /// "normal", "unstable" or "down".
    pub state: String,
    /// Reads go to the origins (the cache disk is unhealthy).
    pub bypassed: bool,
    /// Why it is bypassed, and since when (ms since the epoch).
    pub reason: String,
    pub since_ms: u64,
    /// Why no chunks are written although the cache is used ("" if they are).
    pub writes_stopped: String,
    pub used_bytes: u64,
    pub max_bytes: u64,
    pub chunks: u64,
    pub pinned_files: u64,
    pub free_percent: u32,
    pub min_free_percent: u32,
    pub hits: u64,
    pub misses: u64,
    pub fetched: u64,
    pub corrupt: u64,
    pub missing: u64,
    pub written: u64,
    pub skipped: u64,
    pub evicted: u64,
    pub disk_errors: u64,
    pub bypassed_reads: u64,
    pub read_ahead: u64,
}

/// What a verify found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct VerifyReport {
    pub checked: u64,
    pub bad: u64,
    pub missing: u64,
    pub repaired: u64,
    /// Bad chunks that could not be fetched again (origin away or changed).
    pub unrepaired: u64,
    pub cancelled: bool,
}

/// Fetches chunk `index` of a content version from its origin, for repair.
pub type Refetch<'a> = &'a (dyn Fn(&ContentInfo, u32) -> Option<Vec<u8>> + Sync);

pub struct ChunkCache {
    pub(super) dir: PathBuf,
    pub(super) index: RwLock<Option<Index>>,
    /// The inode of the index file when opened (a cache directory that was
    /// deleted or replaced shows as another inode, or none).
    pub(super) index_ino: AtomicU64,
    pub(super) health: Mutex<Health>,
    pub(super) max_bytes: AtomicU64,
    pub(super) min_free_percent: AtomicU32,
    pub(super) free_percent: AtomicU32,
    pub(super) writes_stopped: Mutex<String>,
    pub(super) hot: Mutex<Hot>,
    /// Chunks fetched but not yet in the index: (key, index) -> hash.
    pub(super) recent: Mutex<HashMap<(ContentKey, u32), Recent>>,
    pub(super) touches: Mutex<HashMap<Hash, u64>>,
    pub(super) tx: SyncSender<Job>,
    pub(super) rx: Mutex<Option<Receiver<Job>>>,
    /// Chunks reported bad once already (one log line each).
    pub(super) logged: Mutex<HashSet<Hash>>,
    /// Chunks being read ahead now.
    pub(super) read_ahead: Mutex<HashSet<(ContentKey, u32)>>,
    pub(super) seq: AtomicU64,
    pub(super) probe_interval: Duration,
    /// The writer thread is running (a flush waits only then).
    pub(super) writing: AtomicBool,
    pub counters: Counters,
}

pub(super) fn hex(hash: &Hash) -> String {
    hash.iter().map(|b| format!("{b:02x}")).collect()
}

pub(super) fn unhex(name: &str) -> Option<Hash> {
    if name.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(name.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

impl ChunkCache {
    /// Opens the cache in `settings.dir`. Never fails: a cache that cannot
    /// be opened is bypassed (with the reason in its status) and probed
    /// until it can.
    pub fn open(settings: &Settings) -> Arc<ChunkCache> {
        let (tx, rx) = mpsc::sync_channel(WRITE_QUEUE);
        let cache = Arc::new(ChunkCache {
            dir: settings.dir.clone(),
            index: RwLock::new(None),
            index_ino: AtomicU64::new(0),
            health: Mutex::new(Health::new(settings.probe_interval)),
            max_bytes: AtomicU64::new(settings.max_bytes),
            min_free_percent: AtomicU32::new(settings.min_free_percent),
            free_percent: AtomicU32::new(100),
            writes_stopped: Mutex::new(String::new()),
            hot: Mutex::new(Hot::default()),
            recent: Mutex::new(HashMap::new()),
            touches: Mutex::new(HashMap::new()),
            tx,
            rx: Mutex::new(Some(rx)),
            logged: Mutex::new(HashSet::new()),
            read_ahead: Mutex::new(HashSet::new()),
            seq: AtomicU64::new(0),
            probe_interval: settings.probe_interval,
            writing: AtomicBool::new(false),
            counters: Counters::default(),
        });
        match cache.open_index() {
            Ok(()) => {
                info!(dir = %cache.dir.display(), used_bytes = cache.used_bytes(), "chunk cache open")
            }
            Err(e) => {
                let why = format!("{e:#}");
                warn!(dir = %cache.dir.display(), "the chunk cache cannot be used ({why}); reads go to the origins until it can");
                crate::events::emit("cache", format!("bypassed: {why}"));
                cache.health.lock().bypass_now(why);
            }
        }
        cache
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub(super) fn index_path(&self) -> PathBuf {
        self.dir.join("index.redb")
    }

    pub(super) fn tmp_dir(&self) -> PathBuf {
        self.dir.join("tmp")
    }

    pub(super) fn chunk_path(&self, hash: &Hash) -> PathBuf {
        let h = hex(hash);
        self.dir.join("chunks").join(&h[..2]).join(h)
    }

    /// Creates the layout, removes leftover temporary files and opens the
    /// index (a corrupt one is started afresh: it is only a cache).
    pub(super) fn open_index(&self) -> Result<()> {
        *self.index.write() = None;
        std::fs::create_dir_all(self.dir.join("chunks"))?;
        let tmp = self.tmp_dir();
        std::fs::create_dir_all(&tmp)?;
        let mut removed = 0;
        for entry in std::fs::read_dir(&tmp)? {
            let entry = entry?;
            if std::fs::remove_file(entry.path()).is_ok() {
                removed += 1;
            }
        }
        if removed > 0 {
            info!(
                removed,
                "removed temporary files left by an engine that stopped while writing chunks"
            );
        }
        let path = self.index_path();
        let index = match Index::open(&path) {
            Ok(i) => i,
            Err(e) if !is_permission(&e) => {
                warn!(path = %path.display(), "the cache index cannot be read ({e:#}); starting the cache afresh");
                std::fs::remove_file(&path)?;
                let trash = self
                    .dir
                    .join(format!("chunks.old-{}", crate::sys::time::now_ms()));
                std::fs::rename(self.dir.join("chunks"), &trash)?;
                std::fs::create_dir_all(self.dir.join("chunks"))?;
                std::thread::Builder::new()
                    .name("musicfs-cache-trash".into())
                    .spawn(move || {
                        let _ = std::fs::remove_dir_all(trash);
                    })?;
                Index::open(&path)?
            }
            Err(e) => return Err(e),
        };
        let ino = std::fs::metadata(&path)?.ino();
        self.index_ino.store(ino, Ordering::Release);
        *self.index.write() = Some(index);
        Ok(())
    }

    /// Whether the cache disk is used now.
    pub fn usable(&self) -> bool {
        self.health.lock().usable()
    }

    pub fn used_bytes(&self) -> u64 {
        self.with_index(|i| i.used_bytes()).unwrap_or(0)
    }

    pub fn set_limits(&self, max_bytes: u64, min_free_percent: u32) {
        self.max_bytes.store(max_bytes, Ordering::Release);
        self.min_free_percent
            .store(min_free_percent, Ordering::Release);
    }

    /// Runs `f` on the index; an error is a cache-disk error (counted).
    pub(super) fn with_index<T>(&self, f: impl FnOnce(&Index) -> Result<T>) -> Option<T> {
        let guard = self.index.read();
        let index = guard.as_ref()?;
        match f(index) {
            Ok(t) => Some(t),
            Err(e) => {
                drop(guard);
                self.disk_error(&format!("cache index: {e:#}"));
                None
            }
        }
    }

    pub(super) fn disk_error(&self, why: &str) {
        bump(&self.counters.disk_errors);
        let t = self.health.lock().error(why.to_string());
        if t == Transition::Bypassed {
            warn!(dir = %self.dir.display(), "the cache disk fails ({why}): bypassed, reads go to the origins until it is healthy again");
            crate::events::emit("cache", format!("bypassed: {why}"));
        }
    }

    pub(super) fn log_bad_once(&self, hash: &Hash, what: &str) {
        let mut logged = self.logged.lock();
        if logged.len() > 100_000 {
            logged.clear();
        }
        if logged.insert(*hash) {
            warn!(chunk = %hex(hash), "cached chunk {what}: fetching it again from the origin");
        }
    }

    pub(super) fn touch(&self, hash: Hash) {
        let mut touches = self.touches.lock();
        if touches.len() < 1_000_000 {
            touches.insert(hash, crate::sys::time::now_ms());
        }
    }

    /// Chunk `index` of `key`, verified, if the cache has it: from memory,
    /// or from the disk checked against its hash. A chunk that is corrupt
    /// or gone is counted, removed and reported as a miss.
    pub fn get(&self, key: &ContentKey, index: u32, len: u64) -> Option<Arc<[u8]>> {
        let recent = self.recent.lock().get(&(*key, index)).map(|r| r.hash);
        if let Some(hash) = recent
            && let Some(bytes) = self.hot.lock().get(&hash)
            && bytes.len() as u64 == len
        {
            self.touch(hash);
            let unwritten = self
                .recent
                .lock()
                .get_mut(&(*key, index))
                .and_then(|r| r.unwritten.take());
            if let Some(info) = unwritten {
                self.offer(key, index, hash, info, bytes.clone());
            }
            return Some(bytes);
        }
        if !self.usable() {
            return None;
        }
        let (hash, size) = self.with_index(|i| i.lookup(key, index))??;
        if u64::from(size) != len {
            return None;
        }
        if let Some(bytes) = self.hot.lock().get(&hash) {
            self.touch(hash);
            return Some(bytes);
        }
        match std::fs::read(self.chunk_path(&hash)) {
            Ok(bytes) if bytes.len() as u64 == len && *blake3::hash(&bytes).as_bytes() == hash => {
                let bytes: Arc<[u8]> = bytes.into();
                self.hot.lock().insert(hash, bytes.clone());
                self.touch(hash);
                Some(bytes)
            }
            Ok(_) => {
                bump(&self.counters.corrupt);
                self.log_bad_once(&hash, "does not match its hash");
                let _ = std::fs::remove_file(self.chunk_path(&hash));
                let _ = self.tx.try_send(Job::Forget(hash));
                None
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                bump(&self.counters.missing);
                self.log_bad_once(&hash, "is gone from the disk");
                let _ = self.tx.try_send(Job::Forget(hash));
                None
            }
            Err(e) => {
                self.disk_error(&format!("reading a chunk: {e}"));
                None
            }
        }
    }

    /// Offers chunk `index` of `key`, just fetched from its origin, to the
    /// cache: kept in memory at once, written to the disk by the writer if
    /// the disk is healthy and has room (else simply not cached).
    pub fn put(&self, key: &ContentKey, index: u32, info: &ContentInfo, bytes: Arc<[u8]>) {
        let hash = *blake3::hash(&bytes).as_bytes();
        self.hot.lock().insert(hash, bytes.clone());
        {
            let mut recent = self.recent.lock();
            if recent.len() >= RECENT_MAX {
                recent.clear();
            }
            recent.insert(
                (*key, index),
                Recent {
                    hash,
                    unwritten: None,
                },
            );
        }
        self.offer(key, index, hash, info.clone(), bytes);
    }

    /// Queues a chunk for the writer, or notes it as unwritten.
    pub(super) fn offer(
        &self,
        key: &ContentKey,
        index: u32,
        hash: Hash,
        info: ContentInfo,
        bytes: Arc<[u8]>,
    ) {
        let put = Put {
            key: *key,
            index,
            hash,
            size_bytes: u32::try_from(bytes.len()).unwrap_or(u32::MAX),
            info,
        };
        if !self.usable() || !self.writes_stopped.lock().is_empty() {
            return self.unwritten(put);
        }
        if let Err(
            mpsc::TrySendError::Full(Job::Put(put, _))
            | mpsc::TrySendError::Disconnected(Job::Put(put, _)),
        ) = self.tx.try_send(Job::Put(put, bytes))
        {
            self.unwritten(put);
        }
    }

    /// A chunk that did not reach the disk: counted, and offered again on
    /// its next read.
    pub(super) fn unwritten(&self, put: Put) {
        bump(&self.counters.skipped);
        if let Some(r) = self.recent.lock().get_mut(&(put.key, put.index))
            && r.hash == put.hash
        {
            r.unwritten = Some(put.info);
        }
    }

    /// Whether chunk `index` of `key` is cached (no disk read, no check).
    pub fn contains(&self, key: &ContentKey, index: u32) -> bool {
        if self.recent.lock().contains_key(&(*key, index)) {
            return true;
        }
        self.usable()
            && self
                .with_index(|i| i.lookup(key, index))
                .flatten()
                .is_some()
    }

    /// Marks chunk `index` of `key` as being read ahead; false if it
    /// already is, or if `max` chunks are being read ahead.
    pub fn begin_read_ahead(&self, key: &ContentKey, index: u32, max: usize) -> bool {
        let mut set = self.read_ahead.lock();
        set.len() < max && set.insert((*key, index))
    }

    pub fn end_read_ahead(&self, key: &ContentKey, index: u32) {
        self.read_ahead.lock().remove(&(*key, index));
    }

    /// Waits (at most `timeout`) while chunk `index` of `key` is being read
    /// ahead, so that a reader does not fetch it a second time.
    pub fn wait_read_ahead(&self, key: &ContentKey, index: u32, timeout: Duration) {
        let until = Instant::now() + timeout;
        while self.read_ahead.lock().contains(&(*key, index)) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// The bytes of a content version that are in the cache.
    pub fn cached_bytes(&self, key: &ContentKey) -> u64 {
        if !self.usable() {
            return 0;
        }
        self.with_index(|i| i.cached_chunks(key))
            .map_or(0, |c| c.iter().map(|(_, _, s)| u64::from(*s)).sum())
    }

    /// Whether every chunk of a content version is in the cache (an open
    /// then needs no origin).
    pub fn complete(&self, key: &ContentKey, layout: Layout) -> bool {
        if layout.count() == 0 {
            return true;
        }
        self.usable()
            && self
                .with_index(|i| i.cached_chunks(key))
                .is_some_and(|c| c.len() == layout.count() as usize)
    }

    /// The status figures.
    pub fn status(&self) -> CacheStatus {
        let h = self.health.lock();
        let (state, reason, since_ms, usable) = (h.state, h.reason.clone(), h.since_ms, h.usable());
        drop(h);
        let (used, chunks, pinned) = self
            .with_index(|i| {
                Ok((
                    i.used_bytes()?,
                    i.chunk_count()?,
                    i.pinned_hashes()?.0 as u64,
                ))
            })
            .unwrap_or_default();
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        CacheStatus {
            dir: self.dir.display().to_string(),
            state: state.as_str().to_string(),
            bypassed: !usable,
            reason,
            since_ms,
            writes_stopped: self.writes_stopped.lock().clone(),
            used_bytes: used,
            max_bytes: self.max_bytes.load(Ordering::Relaxed),
            chunks,
            pinned_files: pinned,
            free_percent: self.free_percent_now().unwrap_or(0),
            min_free_percent: self.min_free_percent.load(Ordering::Relaxed),
            hits: get(&c.hits),
            misses: get(&c.misses),
            fetched: get(&c.fetched),
            corrupt: get(&c.corrupt),
            missing: get(&c.missing),
            written: get(&c.written),
            skipped: get(&c.skipped),
            evicted: get(&c.evicted),
            disk_errors: get(&c.disk_errors),
            bypassed_reads: get(&c.bypassed_reads),
            read_ahead: get(&c.read_ahead),
        }
    }

    /// Every chunk in LRU order (oldest first), for tests.
    pub fn lru_order(&self) -> Vec<Hash> {
        self.with_index(|i| i.lru_order()).unwrap_or_default()
    }
}

fn is_permission(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::PermissionDenied)
            || c.to_string().contains("Permission denied")
    })
}

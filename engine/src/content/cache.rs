//! The chunk store: chunk files on the cache disk, addressed by blake3,
//! written atomically by one writer thread, verified on every read from the
//! disk, evicted least recently used first, and bypassed while the disk is
//! unhealthy.

use std::collections::{HashMap, HashSet};
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::time::{Duration, Instant};

use anyhow::Result;
use parking_lot::{Mutex, RwLock};
use tracing::{info, warn};

use crate::content::health::{Health, State, Transition};
use crate::content::index::{Batch, ContentInfo, Hash, Index, Put};
use crate::content::layout::{ContentKey, Layout};

/// Verified chunks kept in memory (a sequential reader reads each chunk
/// from the disk, and checks it, once rather than once per request).
const HOT_BYTES: usize = 16 * 1024 * 1024;
/// Chunks waiting for the writer; past this, new chunks are not cached
/// (the reader already has its bytes).
const WRITE_QUEUE: usize = 64;
/// Chunks written per index transaction at most.
const WRITE_BATCH: usize = 32;
/// How often read times reach the index (and how much a crash can lose).
const TOUCH_FLUSH: Duration = Duration::from_secs(5);
/// How often the free space of the cache disk is looked at.
const SPACE_CHECK: Duration = Duration::from_secs(1);
/// Recently fetched chunks not yet in the index, at most.
const RECENT_MAX: usize = 4096;

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
    /// Chunks served from the cache (memory or disk).
    pub hits: AtomicU64,
    /// Chunks fetched from an origin because they were not cached.
    pub misses: AtomicU64,
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

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

enum Job {
    Put(Put, Arc<[u8]>),
    Forget(Hash),
    Flush(mpsc::Sender<()>),
}

#[derive(Default)]
struct Hot {
    chunks: HashMap<Hash, (Arc<[u8]>, u64)>,
    bytes: usize,
    clock: u64,
}

impl Hot {
    fn get(&mut self, hash: &Hash) -> Option<Arc<[u8]>> {
        self.clock += 1;
        let now = self.clock;
        let entry = self.chunks.get_mut(hash)?;
        entry.1 = now;
        Some(entry.0.clone())
    }

    fn remove(&mut self, hash: &Hash) {
        if let Some(old) = self.chunks.remove(hash) {
            self.bytes -= old.0.len();
        }
    }

    fn insert(&mut self, hash: Hash, bytes: Arc<[u8]>) {
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
    dir: PathBuf,
    index: RwLock<Option<Index>>,
    /// The inode of the index file when opened (a cache directory that was
    /// deleted or replaced shows as another inode, or none).
    index_ino: AtomicU64,
    health: Mutex<Health>,
    max_bytes: AtomicU64,
    min_free_percent: AtomicU32,
    free_percent: AtomicU32,
    writes_stopped: Mutex<String>,
    hot: Mutex<Hot>,
    /// Chunks fetched but not yet in the index: (key, index) -> hash.
    recent: Mutex<HashMap<(ContentKey, u32), Hash>>,
    touches: Mutex<HashMap<Hash, u64>>,
    tx: SyncSender<Job>,
    rx: Mutex<Option<Receiver<Job>>>,
    /// Chunks reported bad once already (one log line each).
    logged: Mutex<HashSet<Hash>>,
    /// Chunks being read ahead now.
    pub(super) read_ahead: Mutex<HashSet<(ContentKey, u32)>>,
    seq: AtomicU64,
    probe_interval: Duration,
    pub counters: Counters,
}

fn hex(hash: &Hash) -> String {
    hash.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(name: &str) -> Option<Hash> {
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

    fn index_path(&self) -> PathBuf {
        self.dir.join("index.redb")
    }

    fn tmp_dir(&self) -> PathBuf {
        self.dir.join("tmp")
    }

    fn chunk_path(&self, hash: &Hash) -> PathBuf {
        let h = hex(hash);
        self.dir.join("chunks").join(&h[..2]).join(h)
    }

    /// Creates the layout, removes leftover temporary files and opens the
    /// index (a corrupt one is started afresh: it is only a cache).
    fn open_index(&self) -> Result<()> {
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
    fn with_index<T>(&self, f: impl FnOnce(&Index) -> Result<T>) -> Option<T> {
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

    fn disk_error(&self, why: &str) {
        bump(&self.counters.disk_errors);
        let t = self.health.lock().error(why.to_string());
        if t == Transition::Bypassed {
            warn!(dir = %self.dir.display(), "the cache disk fails ({why}): bypassed, reads go to the origins until it is healthy again");
            crate::events::emit("cache", format!("bypassed: {why}"));
        }
    }

    fn log_bad_once(&self, hash: &Hash, what: &str) {
        let mut logged = self.logged.lock();
        if logged.len() > 100_000 {
            logged.clear();
        }
        if logged.insert(*hash) {
            warn!(chunk = %hex(hash), "cached chunk {what}: fetching it again from the origin");
        }
    }

    fn touch(&self, hash: Hash) {
        let mut touches = self.touches.lock();
        if touches.len() < 1_000_000 {
            touches.insert(hash, crate::sys::time::now_ms());
        }
    }

    /// Chunk `index` of `key`, verified, if the cache has it: from memory,
    /// or from the disk checked against its hash. A chunk that is corrupt
    /// or gone is counted, removed and reported as a miss.
    pub fn get(&self, key: &ContentKey, index: u32, len: u64) -> Option<Arc<[u8]>> {
        let recent = self.recent.lock().get(&(*key, index)).copied();
        if let Some(hash) = recent
            && let Some(bytes) = self.hot.lock().get(&hash)
            && bytes.len() as u64 == len
        {
            bump(&self.counters.hits);
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
            bump(&self.counters.hits);
            self.touch(hash);
            return Some(bytes);
        }
        match std::fs::read(self.chunk_path(&hash)) {
            Ok(bytes) if bytes.len() as u64 == len && *blake3::hash(&bytes).as_bytes() == hash => {
                let bytes: Arc<[u8]> = bytes.into();
                self.hot.lock().insert(hash, bytes.clone());
                bump(&self.counters.hits);
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
            recent.insert((*key, index), hash);
        }
        if !self.usable() || !self.writes_stopped.lock().is_empty() {
            bump(&self.counters.skipped);
            return;
        }
        let put = Put {
            key: *key,
            index,
            hash,
            size_bytes: u32::try_from(bytes.len()).unwrap_or(u32::MAX),
            info: info.clone(),
        };
        if self.tx.try_send(Job::Put(put, bytes)).is_err() {
            bump(&self.counters.skipped);
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

    /// Writes one chunk: a temporary file in `tmp/`, fsync, rename.
    fn write_chunk(&self, hash: &Hash, bytes: &[u8]) -> io::Result<()> {
        let path = self.chunk_path(hash);
        let tmp = self.tmp_dir().join(format!(
            "{}.{}.{}",
            &hex(hash)[..16],
            std::process::id(),
            self.seq.fetch_add(1, Ordering::Relaxed)
        ));
        let write = |tmp: &Path| -> io::Result<()> {
            let mut f = std::fs::File::create(tmp)?;
            f.write_all(bytes)?;
            f.sync_data()?;
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::rename(tmp, &path)
        };
        let mut result = write(&tmp);
        if result
            .as_ref()
            .is_err_and(|e| e.kind() == io::ErrorKind::NotFound)
        {
            // The cache directory was removed under us: make it again.
            std::fs::create_dir_all(self.tmp_dir())?;
            result = write(&tmp);
        }
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }

    /// Free space of the cache disk, in percent.
    fn free_percent_now(&self) -> Option<u32> {
        let s = nix::sys::statvfs::statvfs(&self.dir).ok()?;
        let blocks = s.blocks() as u64;
        if blocks == 0 {
            return None;
        }
        Some(((s.blocks_available() as u64).saturating_mul(100) / blocks) as u32)
    }

    /// Removes least recently used chunks (never pinned ones) until
    /// `used + need <= max` and the disk has its free space; false if it
    /// cannot make that room.
    fn make_room(&self, need: u64) -> bool {
        let max = self.max_bytes.load(Ordering::Acquire);
        if need > max {
            return false;
        }
        let min_free = self.min_free_percent.load(Ordering::Acquire);
        let mut pinned: Option<HashSet<Hash>> = None;
        loop {
            let Some(used) = self.with_index(|i| i.used_bytes()) else {
                return false;
            };
            let free_low = self.free_percent_now().is_some_and(|f| f < min_free);
            if used + need <= max && !free_low {
                return true;
            }
            if pinned.is_none() {
                pinned = Some(
                    self.with_index(|i| i.pinned_hashes())
                        .map(|p| p.1)
                        .unwrap_or_default(),
                );
            }
            let keep = pinned.as_ref().map_or_else(HashSet::new, Clone::clone);
            let Some(victims) = self.with_index(|i| i.oldest(64, &keep)) else {
                return false;
            };
            if victims.is_empty() {
                return used + need <= max;
            }
            let mut batch = Batch::default();
            for (hash, _) in victims {
                match std::fs::remove_file(self.chunk_path(&hash)) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => {
                        self.disk_error(&format!("removing a chunk: {e}"));
                        return false;
                    }
                }
                bump(&self.counters.evicted);
                batch.forget.push(hash);
            }
            if self.with_index(|i| i.commit(&batch)).is_none() {
                return false;
            }
        }
    }

    /// Looks at the free space: below half the watermark, no more writes.
    fn check_space(&self) {
        let Some(free) = self.free_percent_now() else {
            return;
        };
        self.free_percent.store(free, Ordering::Relaxed);
        let min_free = self.min_free_percent.load(Ordering::Acquire);
        let why = if free < min_free / 2 {
            format!(
                "the cache disk has {free}% free, below the critical {}%",
                min_free / 2
            )
        } else {
            String::new()
        };
        let mut stopped = self.writes_stopped.lock();
        if *stopped != why {
            if why.is_empty() {
                info!("the cache disk has room again: caching resumes");
            } else {
                warn!("{why}: no more chunks are written (reads still use what is cached)");
            }
            crate::events::emit(
                "cache",
                if why.is_empty() {
                    "writes resume".to_string()
                } else {
                    why.clone()
                },
            );
            *stopped = why;
        }
        if free < min_free {
            self.make_room(0);
        }
    }

    /// The writer: takes chunks off the queue, writes them, commits them to
    /// the index in batches with the read times, and keeps the size and the
    /// free space within bounds. Returns at `stop` after a last flush.
    pub fn run_writer(&self, stop: &AtomicBool) -> Result<()> {
        let Some(rx) = self.rx.lock().take() else {
            anyhow::bail!("the cache writer runs once");
        };
        let result = self.writer_loop(&rx, stop);
        *self.rx.lock() = Some(rx);
        result
    }

    fn writer_loop(&self, rx: &Receiver<Job>, stop: &AtomicBool) -> Result<()> {
        self.reclaim_orphans(stop);
        let mut last_flush = Instant::now();
        let mut last_space = Instant::now() - SPACE_CHECK;
        loop {
            let first = match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(job) => Some(job),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => return Ok(()),
            };
            let stopping = stop.load(Ordering::Relaxed);
            let mut jobs: Vec<Job> = first.into_iter().collect();
            while jobs.len() < WRITE_BATCH {
                match rx.try_recv() {
                    Ok(j) => jobs.push(j),
                    Err(_) => break,
                }
            }
            if last_space.elapsed() >= SPACE_CHECK {
                last_space = Instant::now();
                if self.usable() {
                    self.check_space();
                }
            }
            let mut batch = Batch::default();
            let mut acks = Vec::new();
            let need: u64 = jobs
                .iter()
                .map(|j| match j {
                    Job::Put(p, _) => u64::from(p.size_bytes),
                    _ => 0,
                })
                .sum();
            let room = need == 0 || (self.usable() && self.make_room(need));
            for job in jobs {
                match job {
                    Job::Put(put, bytes) => {
                        if !room || !self.usable() {
                            bump(&self.counters.skipped);
                            continue;
                        }
                        match self.write_chunk(&put.hash, &bytes) {
                            Ok(()) => {
                                bump(&self.counters.written);
                                batch.puts.push(put);
                            }
                            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => {
                                bump(&self.counters.skipped);
                                self.check_space();
                                self.make_room(bytes.len() as u64 * 4);
                            }
                            Err(e) => {
                                bump(&self.counters.skipped);
                                self.disk_error(&format!("writing a chunk: {e}"));
                            }
                        }
                    }
                    Job::Forget(hash) => batch.forget.push(hash),
                    Job::Flush(ack) => acks.push(ack),
                }
            }
            if last_flush.elapsed() >= TOUCH_FLUSH || !acks.is_empty() || stopping {
                last_flush = Instant::now();
                batch.touches = self.touches.lock().drain().collect();
            }
            if !batch.is_empty() && self.usable() {
                let done: Vec<(ContentKey, u32)> =
                    batch.puts.iter().map(|p| (p.key, p.index)).collect();
                if self.with_index(|i| i.commit(&batch)).is_some() {
                    let mut recent = self.recent.lock();
                    for k in done {
                        recent.remove(&k);
                    }
                }
            }
            for ack in acks {
                let _ = ack.send(());
            }
            if stopping {
                return Ok(());
            }
        }
    }

    /// Waits (bounded) until every chunk queued so far is written and the
    /// read times are in the index.
    pub fn flush(&self, timeout: Duration) -> bool {
        let (tx, rx) = mpsc::channel();
        if self.tx.send(Job::Flush(tx)).is_err() {
            return false;
        }
        rx.recv_timeout(timeout).is_ok()
    }

    /// Chunk files the index does not know (written just before a crash,
    /// before their commit) are removed; the index is the size account.
    fn reclaim_orphans(&self, stop: &AtomicBool) {
        let Ok(dirs) = std::fs::read_dir(self.dir.join("chunks")) else {
            return;
        };
        let mut removed = 0u64;
        for d in dirs.flatten() {
            let Ok(files) = std::fs::read_dir(d.path()) else {
                continue;
            };
            for f in files.flatten() {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let name = f.file_name();
                let known = unhex(&name.to_string_lossy())
                    .and_then(|h| self.with_index(|i| i.has_chunk(&h)));
                if known == Some(false) || (known.is_none() && self.usable()) {
                    if std::fs::remove_file(f.path()).is_ok() {
                        removed += 1;
                    }
                }
            }
        }
        if removed > 0 {
            info!(
                removed,
                "removed chunk files the index did not know (left by a crash)"
            );
        }
    }

    /// One probe of the cache disk: write, sync, read back, remove.
    fn probe_once(&self) -> io::Result<()> {
        std::fs::create_dir_all(self.tmp_dir())?;
        std::fs::create_dir_all(self.dir.join("chunks"))?;
        let path = self.tmp_dir().join(format!("probe.{}", std::process::id()));
        let result = (|| {
            let mut f = std::fs::File::create(&path)?;
            f.write_all(b"musicfs cache probe")?;
            f.sync_all()?;
            if std::fs::read(&path)? != b"musicfs cache probe" {
                return Err(io::Error::other("the probe read back other bytes"));
            }
            Ok(())
        })();
        let _ = std::fs::remove_file(&path);
        result
    }

    /// The health probe: while the disk is unhealthy, probes it every
    /// `probe_interval` and reopens the index once it is healthy again;
    /// while healthy, checks every few seconds that the cache directory is
    /// still the one opened (deleted or replaced: opened afresh).
    pub fn run_probe(&self, stop: &AtomicBool) -> Result<()> {
        let mut last_check = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(self.probe_interval);
            let state = self.health.lock().state;
            if state == State::Normal {
                if last_check.elapsed() < Duration::from_secs(2).max(self.probe_interval * 4) {
                    continue;
                }
                last_check = Instant::now();
                let ino = std::fs::metadata(self.index_path()).map(|m| m.ino()).ok();
                if ino != Some(self.index_ino.load(Ordering::Acquire)) {
                    warn!(dir = %self.dir.display(), "the cache directory was removed or replaced: opening it afresh");
                    crate::events::emit(
                        "cache",
                        "the cache directory was removed or replaced; opened afresh",
                    );
                    if let Err(e) = self.open_index() {
                        self.disk_error(&format!("reopening the cache: {e:#}"));
                    }
                }
                continue;
            }
            let t = match self.probe_once() {
                Ok(()) => self.health.lock().ok(),
                Err(e) => self.health.lock().error(format!("probe: {e}")),
            };
            let t = if t == Transition::None {
                self.health.lock().tick()
            } else {
                t
            };
            match t {
                Transition::Restored => match self.open_index() {
                    Ok(()) => {
                        info!(dir = %self.dir.display(), "the cache disk is healthy again: caching resumes");
                        crate::events::emit("cache", "restored: the cache disk is healthy again");
                    }
                    Err(e) => {
                        self.health
                            .lock()
                            .bypass_now(format!("reopening the cache: {e:#}"));
                    }
                },
                Transition::Down => {
                    warn!(dir = %self.dir.display(), "the cache disk has been unstable for 30 minutes: down");
                    crate::events::emit("cache", "down: unstable for 30 minutes");
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Removes every chunk (pinned ones too) and returns the bytes freed.
    pub fn clear(&self) -> Result<u64> {
        let guard = self.index.read();
        let index = guard.as_ref().ok_or_else(|| {
            anyhow::anyhow!("the cache is bypassed: {}", self.health.lock().reason)
        })?;
        let used = index.used_bytes()?;
        index.clear()?;
        drop(guard);
        *self.hot.lock() = Hot::default();
        self.recent.lock().clear();
        let chunks = self.dir.join("chunks");
        if let Ok(dirs) = std::fs::read_dir(&chunks) {
            for d in dirs.flatten() {
                let _ = std::fs::remove_dir_all(d.path());
            }
        }
        Ok(used)
    }

    /// Keeps (or stops keeping) content versions off the eviction list.
    pub fn pin(&self, keys: &[ContentKey], pinned: bool) -> Result<()> {
        let guard = self.index.read();
        let index = guard.as_ref().ok_or_else(|| {
            anyhow::anyhow!("the cache is bypassed: {}", self.health.lock().reason)
        })?;
        index.set_pins(keys, pinned)
    }

    /// Checks cached chunks against their hashes: every content version's
    /// chunks (or, with `limit`, at most that many chunks after `cursor` in
    /// hash order, for the scrubber). A bad or missing chunk is removed; with
    /// `refetch` it is fetched again and written back. `progress(done,
    /// total)` is called as it goes; `cancel` stops it.
    pub fn verify(
        &self,
        refetch: Option<Refetch<'_>>,
        progress: &mut dyn FnMut(u64, u64),
        cancel: &AtomicBool,
    ) -> Result<VerifyReport> {
        let contents = {
            let guard = self.index.read();
            let index = guard.as_ref().ok_or_else(|| {
                anyhow::anyhow!("the cache is bypassed: {}", self.health.lock().reason)
            })?;
            let mut all = Vec::new();
            for (key, info) in index.contents()? {
                let chunks = index.cached_chunks(&key)?;
                all.push((key, info, chunks));
            }
            all
        };
        let total: u64 = contents.iter().map(|c| c.2.len() as u64).sum();
        let mut report = VerifyReport::default();
        let mut done = 0;
        progress(0, total);
        for (key, info, chunks) in contents {
            for (idx, hash, size) in chunks {
                if cancel.load(Ordering::Relaxed) {
                    report.cancelled = true;
                    return Ok(report);
                }
                report.checked += 1;
                let good = match std::fs::read(self.chunk_path(&hash)) {
                    Ok(b) => b.len() == size as usize && *blake3::hash(&b).as_bytes() == hash,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        report.missing += 1;
                        false
                    }
                    Err(e) => return Err(anyhow::anyhow!("reading a chunk: {e}")),
                };
                if !good {
                    if !matches!(std::fs::metadata(self.chunk_path(&hash)), Err(ref e) if e.kind() == io::ErrorKind::NotFound)
                    {
                        report.bad += 1;
                        bump(&self.counters.corrupt);
                    }
                    let _ = std::fs::remove_file(self.chunk_path(&hash));
                    self.hot.lock().remove(&hash);
                    let mut batch = Batch::default();
                    batch.forget.push(hash);
                    let mut repaired = false;
                    if let Some(fetch) = refetch
                        && let Some(bytes) = fetch(&info, idx)
                        && *blake3::hash(&bytes).as_bytes() == hash
                        && self.write_chunk(&hash, &bytes).is_ok()
                    {
                        batch.forget.clear();
                        batch.puts.push(Put {
                            key,
                            index: idx,
                            hash,
                            size_bytes: size,
                            info: info.clone(),
                        });
                        repaired = true;
                    }
                    self.with_index(|i| i.commit(&batch));
                    if repaired {
                        report.repaired += 1;
                    } else if refetch.is_some() {
                        report.unrepaired += 1;
                    }
                }
                done += 1;
                progress(done, total);
            }
        }
        Ok(report)
    }

    /// The scrubber: checks at most `chunks` chunks after `cursor` (in hash
    /// order, wrapping) and removes bad ones (the next read fetches them
    /// again). Returns the new cursor and how many were bad.
    pub fn scrub(&self, cursor: Option<Hash>, chunks: usize) -> (Option<Hash>, u64) {
        if !self.usable() {
            return (cursor, 0);
        }
        let Some(mut batch) = self.with_index(|i| i.chunks_after(cursor, chunks)) else {
            return (cursor, 0);
        };
        if batch.is_empty() && cursor.is_some() {
            return (None, 0);
        }
        let mut bad = 0;
        let mut forget = Batch::default();
        let next = batch.last().map(|(h, _)| *h);
        for (hash, size) in batch.drain(..) {
            let good = std::fs::read(self.chunk_path(&hash))
                .is_ok_and(|b| b.len() == size as usize && *blake3::hash(&b).as_bytes() == hash);
            if !good {
                bad += 1;
                bump(&self.counters.corrupt);
                self.log_bad_once(&hash, "failed the scrubber's check");
                let _ = std::fs::remove_file(self.chunk_path(&hash));
                self.hot.lock().remove(&hash);
                forget.forget.push(hash);
            }
        }
        if !forget.forget.is_empty() {
            self.with_index(|i| i.commit(&forget));
        }
        (next, bad)
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

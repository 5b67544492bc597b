//! Keeping the catalog in step with the origins.
//!
//! - `Syncer::sync_origin` is a delta scan: it walks an origin (or a subtree),
//!   compares every audio file's (size, mtime, origin inode) with the catalog,
//!   probes only what changed (in parallel), and commits in batches. Each
//!   commit is a checkpoint: a killed scan resumes by skipping what is
//!   already committed. Files that vanished are removed only after a walk
//!   that saw their directory, so an unreachable origin never empties the tree.
//! - `watch_local` follows a local origin with inotify (debounced; a queue
//!   overflow triggers a rescan of the origin, never silence).
//! - `poll_network` rescans an origin on a network filesystem periodically.
//! - `supervise` restarts a watcher that fails, with backoff.
//!
//! After every commit the kernel is told which names and inodes to forget.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tracing::{debug, error, info, warn};

use crate::model::FileRecord;
use crate::origins::Origins;
use crate::scan::{is_audio_file, probe_file};
use crate::server::Shared;
use crate::store::{KnownFile, Store, file_key};

#[derive(Default, Debug)]
pub struct SyncCounters {
    /// Files whose tags were read.
    pub probed: AtomicU64,
    /// Files found unchanged (no probe).
    pub unchanged: AtomicU64,
    pub removed: AtomicU64,
    pub commits: AtomicU64,
    pub full_scans: AtomicU64,
}

pub struct Syncer {
    pub store: Arc<Store>,
    shared: Option<Arc<Shared>>,
    /// Origin directories by origin id (swapped on reload).
    pub origins: Arc<Origins>,
    /// Ids of origins no longer configured: their files go at the next sync.
    stale_origins: parking_lot::Mutex<Vec<u32>>,
    /// Probe threads (hot: reload).
    pub threads: AtomicUsize,
    /// Files probed per checkpoint commit (hot: reload).
    pub checkpoint_files: AtomicUsize,
    /// Set at shutdown: long scans stop at the next checkpoint.
    stop: Arc<AtomicBool>,
    pub counters: SyncCounters,
    /// Serialises writers (scan, watcher, poller).
    write_lock: parking_lot::Mutex<()>,
    /// Origins found unreachable: their files are kept, and the origin is
    /// rescanned once it is back (the watcher retries with backoff).
    /// (origin id -> why, logged when it changes)
    offline: parking_lot::Mutex<HashMap<u32, String>>,
}

/// An mtime this far in the future is not trusted (the clock jumped, or the
/// file came from a machine with a wrong clock): the fingerprint decides.
const MTIME_FUTURE_TOLERANCE_NS: i64 = 60 * 1_000_000_000;

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// Whether an origin file is unchanged since the catalog saw it: same size,
/// mtime and inode; when the mtime looks wrong, also the same fingerprint.
fn unchanged(known: Option<&KnownFile>, abs: &Path, meta: &std::fs::Metadata) -> bool {
    let Some(k) = known else { return false };
    let mtime_ns = meta.mtime() * 1_000_000_000 + meta.mtime_nsec();
    if (k.size, k.mtime_ns, k.ino) != (meta.len(), mtime_ns, meta.ino()) {
        return false;
    }
    if mtime_ns <= now_ns() + MTIME_FUTURE_TOLERANCE_NS {
        return true;
    }
    let fp = std::fs::File::open(abs).and_then(|f| crate::scan::fingerprint_file(&f, meta.len()));
    fp.is_ok_and(|fp| fp == k.fingerprint)
}

impl Syncer {
    pub fn new(
        store: Arc<Store>,
        origins: Arc<Origins>,
        threads: usize,
        checkpoint_files: usize,
    ) -> Syncer {
        Syncer {
            store,
            shared: None,
            origins,
            stale_origins: parking_lot::Mutex::new(Vec::new()),
            threads: AtomicUsize::new(threads.max(1)),
            checkpoint_files: AtomicUsize::new(checkpoint_files.max(1)),
            stop: Arc::new(AtomicBool::new(false)),
            counters: SyncCounters::default(),
            write_lock: parking_lot::Mutex::new(()),
            offline: parking_lot::Mutex::new(HashMap::new()),
        }
    }

    /// Whether an origin's root can be scanned: a readable directory, and
    /// not an empty one on another device than at its last full scan while
    /// the catalog holds its files (that is the mountpoint of a share or
    /// disk that is not mounted right now, and must not be taken as "every
    /// file was deleted"). Records the answer: an origin that is away is
    /// reported once per reason, and `take_back` is true once it is back.
    pub fn origin_usable(&self, origin: u32, root: &Path) -> Result<bool> {
        let why = match std::fs::read_dir(root).map(|mut d| d.next().is_none()) {
            Err(e) => Some(format!("cannot read its directory: {e}")),
            Ok(true) => {
                let dev_now = std::fs::metadata(root).map(|m| m.dev()).ok();
                let dev_before = self.store.origin_device(origin)?;
                if dev_before.is_some()
                    && dev_now != dev_before
                    && !self.store.file_stats(origin, b"")?.is_empty()
                {
                    Some("its directory is empty and on another filesystem than at the last scan (not mounted?), but the catalog holds its files".into())
                } else {
                    None
                }
            }
            Ok(false) => {
                // A catalog from before devices were recorded learns it now
                // (a full pass records it too, and keeps it current).
                if self.store.origin_device(origin)?.is_none()
                    && let Ok(m) = std::fs::metadata(root)
                {
                    self.store.set_origin_device(origin, m.dev())?;
                }
                None
            }
        };
        let mut offline = self.offline.lock();
        match why {
            Some(why) => {
                if offline.get(&origin) != Some(&why) {
                    warn!(origin = %root.display(), "origin is not reachable ({why}); its files are kept and served from the catalog, and it is rescanned once it is back");
                    crate::events::emit(
                        "origin",
                        format!("origin {} is not reachable: {why}", root.display()),
                    );
                    offline.insert(origin, why);
                }
                Ok(false)
            }
            None => Ok(true),
        }
    }

    /// Whether `origin` was unreachable and is usable again (then a full
    /// rescan is due; the mark is cleared).
    pub fn take_back(&self, origin: u32, root: &Path) -> bool {
        let was = self.offline.lock().remove(&origin).is_some();
        if was {
            self.origins.refresh();
            info!(origin = %root.display(), "origin is reachable again; rescanning it");
            crate::events::emit("origin", format!("origin {} is back", root.display()));
        }
        was
    }

    /// Whether `origin` was found unreachable and is not caught up yet.
    pub fn is_offline(&self, origin: u32) -> bool {
        self.offline.lock().contains_key(&origin)
    }

    /// The root directory of an origin.
    pub fn origin_root(&self, origin: u32) -> Result<PathBuf> {
        self.origins
            .root(origin)
            .with_context(|| format!("origin {origin} is not configured"))
    }

    /// Origins whose files must go (no longer configured).
    pub fn set_stale_origins(&self, ids: Vec<u32>) {
        *self.stale_origins.lock() = ids;
    }

    /// The flag that stops long scans (at the next checkpoint) at shutdown.
    pub fn set_stop(&mut self, stop: Arc<AtomicBool>) {
        self.stop = stop;
    }

    fn check_stop(&self) -> Result<()> {
        if self.stop.load(Ordering::Relaxed) {
            anyhow::bail!("stopping");
        }
        Ok(())
    }

    /// Removes the files of origins that are no longer configured (one commit).
    pub fn remove_origins(&self, ids: &[u32]) -> Result<()> {
        for id in ids {
            let keys = self.store.origin_file_keys(*id)?;
            if !keys.is_empty() {
                info!(
                    origin_id = id,
                    files = keys.len(),
                    "origin no longer configured; removing its files"
                );
                crate::events::emit(
                    "origin",
                    format!(
                        "origin {id} no longer configured: {} files removed",
                        keys.len()
                    ),
                );
                self.commit(Vec::new(), &keys, false)?;
            }
        }
        Ok(())
    }

    /// Where invalidations go once the data plane serves.
    pub fn set_shared(&mut self, shared: Arc<Shared>) {
        self.shared = Some(shared);
    }

    fn commit(&self, upserts: Vec<FileRecord>, removals: &[Vec<u8>], complete: bool) -> Result<()> {
        let t = Instant::now();
        let (n_up, n_rm) = (upserts.len(), removals.len());
        let inval = {
            let _w = self.write_lock.lock();
            self.store.apply(upserts, removals, complete)?
        };
        self.counters.commits.fetch_add(1, Ordering::Relaxed);
        self.counters
            .removed
            .fetch_add(n_rm as u64, Ordering::Relaxed);
        let files = self.store.file_count().unwrap_or(0);
        debug!(
            upserts = n_up,
            removals = n_rm,
            files,
            elapsed_us = t.elapsed().as_micros() as u64,
            "checkpoint committed"
        );
        if n_up + n_rm > 0 {
            crate::events::emit(
                "change",
                format!("{n_up} files added or changed, {n_rm} removed ({files} in the catalog)"),
            );
        }
        if let Some(shared) = &self.shared {
            shared.invalidate(&inval);
        }
        Ok(())
    }

    /// Re-lays the tree out with a new path template (one commit) and tells
    /// the kernel to forget the old names.
    pub fn set_template(&self, template: crate::template::Template) -> Result<()> {
        let inval = {
            let _w = self.write_lock.lock();
            self.store.set_template(template)?
        };
        if let Some(shared) = &self.shared {
            shared.invalidate(&inval);
        }
        Ok(())
    }

    /// Probes `jobs` in parallel.
    fn probe(&self, jobs: Vec<(u32, PathBuf, Vec<u8>)>) -> Vec<FileRecord> {
        let n = jobs.len();
        if n == 0 {
            return Vec::new();
        }
        let next = AtomicU64::new(0);
        let jobs = &jobs;
        let mut out = Vec::with_capacity(n);
        std::thread::scope(|s| {
            let threads = self.threads.load(Ordering::Relaxed).max(1);
            let workers: Vec<_> = (0..threads.min(n))
                .map(|_| {
                    s.spawn(|| {
                        let mut mine = Vec::new();
                        loop {
                            let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                            let Some((origin, abs, rel)) = jobs.get(i) else { break };
                            match probe_file(*origin, abs, rel.clone()) {
                                Ok(rec) => {
                                    if let Some(e) = &rec.probe_error {
                                        warn!(path = %abs.display(), "unreadable tags, listed by file name: {e}");
                                    }
                                    mine.push(rec);
                                }
                                // Gone between the walk and the probe: the next sync removes it.
                                Err(e) => debug!(path = %abs.display(), "cannot probe: {e}"),
                            }
                        }
                        mine
                    })
                })
                .collect();
            for w in workers {
                match w.join() {
                    Ok(mut v) => out.append(&mut v),
                    Err(_) => error!("a probe worker panicked; its files wait for the next sync"),
                }
            }
        });
        self.counters
            .probed
            .fetch_add(out.len() as u64, Ordering::Relaxed);
        out
    }

    /// Delta-syncs every origin; marks the scan complete at the end.
    pub fn sync_all(&self) -> Result<()> {
        let t = Instant::now();
        let probed_before = self.counters.probed.load(Ordering::Relaxed);
        let table = self.origins.snapshot();
        for (origin, root) in table.iter() {
            self.check_stop()?;
            if let Err(e) = self.sync_origin(origin, Path::new("")) {
                warn!(origin = %root.display(), "sync failed: {e:#}");
            }
        }
        self.check_stop()?;
        let stale = std::mem::take(&mut *self.stale_origins.lock());
        self.remove_origins(&stale)?;
        self.commit(Vec::new(), &[], true)?;
        self.counters.full_scans.fetch_add(1, Ordering::Relaxed);
        release_free_memory();
        let (files, nodes, bytes) = self.store.totals()?;
        let probed = self.counters.probed.load(Ordering::Relaxed) - probed_before;
        info!(
            files,
            nodes,
            bytes,
            probed,
            elapsed_ms = t.elapsed().as_millis() as u64,
            "sync finished"
        );
        crate::events::emit(
            "sync",
            format!(
                "full sync finished in {} ms: {files} files, {probed} probed",
                t.elapsed().as_millis()
            ),
        );
        Ok(())
    }

    /// Delta-syncs `sub` (a relative directory; empty = everything) of one origin.
    pub fn sync_origin(&self, origin: u32, sub: &Path) -> Result<()> {
        self.sync_origin_pruned(origin, sub, None)
    }

    /// `sync_origin`, optionally pruned by directory mtimes: `dir_mtimes`
    /// holds each directory's mtime from the previous pass; the files of a
    /// directory whose mtime did not change are not stat'ed (no file can have
    /// been added, removed or renamed there). In-place edits do not change a
    /// directory's mtime, so callers make every few passes unpruned.
    pub fn sync_origin_pruned(
        &self,
        origin: u32,
        sub: &Path,
        mut dir_mtimes: Option<&mut HashMap<PathBuf, i64>>,
    ) -> Result<()> {
        let root = self.origin_root(origin)?;
        let start = root.join(sub);
        let mut prefix = sub.as_os_str().as_bytes().to_vec();
        if !prefix.is_empty() {
            prefix.push(b'/');
        }
        if !self.origin_usable(origin, &root)? {
            return Ok(());
        }
        if sub.as_os_str().is_empty() {
            // A full pass over an origin that was away: it is caught up now.
            self.take_back(origin, &root);
            if let Ok(m) = std::fs::metadata(&root) {
                self.store.set_origin_device(origin, m.dev())?;
            }
        }
        let known = self.store.file_stats(origin, &prefix)?;
        let mut seen: HashSet<Vec<u8>> = HashSet::with_capacity(known.len());
        // Directories that could not be read: files under them are kept.
        let mut unreadable: Vec<Vec<u8>> = Vec::new();
        let mut jobs = Vec::new();
        let mut quiet_dirs: HashSet<PathBuf> = HashSet::new();
        if start.is_dir() {
            let walker = walkdir::WalkDir::new(&start)
                .follow_links(false)
                .sort_by_file_name();
            for entry in walker {
                let entry = match entry {
                    Ok(e) => e,
                    Err(e) => {
                        let p = e
                            .path()
                            .map(Path::to_path_buf)
                            .unwrap_or_else(|| start.clone());
                        warn!(path = %p.display(), "skipped unreadable directory entry: {e}");
                        if let Ok(rel) = p.strip_prefix(&root) {
                            unreadable.push(rel.as_os_str().as_bytes().to_vec());
                        }
                        continue;
                    }
                };
                if entry.file_type().is_dir()
                    && let Some(map) = dir_mtimes.as_deref_mut()
                    && let Ok(m) = entry.metadata()
                {
                    let mtime = m.mtime() * 1_000_000_000 + m.mtime_nsec();
                    let path = entry.path().to_path_buf();
                    if map.insert(path.clone(), mtime) == Some(mtime) {
                        quiet_dirs.insert(path);
                    }
                    continue;
                }
                if !entry.file_type().is_file() || !is_audio_file(entry.file_name().as_bytes()) {
                    continue;
                }
                let Ok(rel) = entry.path().strip_prefix(&root) else {
                    continue;
                };
                let rel = rel.as_os_str().as_bytes().to_vec();
                if known.contains_key(&rel)
                    && entry
                        .path()
                        .parent()
                        .is_some_and(|p| quiet_dirs.contains(p))
                {
                    seen.insert(rel);
                    self.counters.unchanged.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let Ok(meta) = entry.metadata() else { continue };
                let same = unchanged(known.get(&rel), entry.path(), &meta);
                seen.insert(rel.clone());
                if same {
                    self.counters.unchanged.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                jobs.push((origin, entry.into_path(), rel));
                if jobs.len() >= self.checkpoint_files.load(Ordering::Relaxed) {
                    self.check_stop()?;
                    let recs = self.probe(std::mem::take(&mut jobs));
                    self.commit(recs, &[], false)?;
                }
            }
        }
        let recs = self.probe(jobs);
        let removals: Vec<Vec<u8>> = known
            .keys()
            .filter(|rel| !seen.contains(*rel))
            .filter(|rel| !unreadable.iter().any(|u| rel.starts_with(u)))
            .map(|rel| file_key(origin, rel))
            .collect();
        if !recs.is_empty() || !removals.is_empty() {
            self.commit(recs, &removals, false)?;
        }
        Ok(())
    }

    /// Applies changes to single files (from a watcher): probes those that
    /// exist and changed, removes those that are gone.
    pub fn sync_files(&self, origin: u32, rels: &HashSet<Vec<u8>>) -> Result<()> {
        let root = self.origin_root(origin)?;
        let mut jobs = Vec::new();
        let mut removals = Vec::new();
        for rel in rels {
            let name = rel.rsplit(|b| *b == b'/').next().unwrap_or(rel);
            if !is_audio_file(name) {
                continue;
            }
            let abs = root.join(OsStr::from_bytes(rel));
            let key = file_key(origin, rel);
            match std::fs::symlink_metadata(&abs) {
                Ok(m) if m.is_file() => {
                    let known = self.store.file(&key)?.map(|e| KnownFile {
                        size: e.rec.size_bytes,
                        mtime_ns: e.rec.mtime_ns,
                        ino: e.rec.origin_ino,
                        fingerprint: e.rec.fingerprint,
                    });
                    if !unchanged(known.as_ref(), &abs, &m) {
                        jobs.push((origin, abs, rel.clone()));
                    }
                }
                _ => {
                    if self.store.file(&key)?.is_some() {
                        removals.push(key);
                    }
                }
            }
        }
        let recs = self.probe(jobs);
        if !recs.is_empty() || !removals.is_empty() {
            self.commit(recs, &removals, false)?;
        }
        Ok(())
    }
}

/// Gives memory freed after a scan (the maps of known and seen files) back
/// to the system, so the idle engine stays small.
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns unused heap pages to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Runs `task` on its own thread until it returns `Ok` or `stop` is set,
/// restarting it with backoff when it fails or panics (1 s, doubling to 60 s;
/// reset after a healthy 5 minutes). The task is listed under `name` in the
/// status while it exists; the returned handle lets shutdown wait for it.
pub fn supervise(
    name: impl Into<String>,
    stop: Arc<AtomicBool>,
    task: impl Fn() -> Result<()> + Send + 'static,
) -> Option<std::thread::JoinHandle<()>> {
    let key: String = name.into();
    // A task restarted under the same name (a watcher after a reload) gets
    // a new token; the old thread, winding down, must not touch its entry.
    static NEXT_TOKEN: AtomicU64 = AtomicU64::new(1);
    let token = NEXT_TOKEN.fetch_add(1, Ordering::Relaxed);
    TASKS.lock().insert(
        key.clone(),
        TaskState {
            running: true,
            restarts: 0,
            last_error: String::new(),
            token,
        },
    );
    let remove = move |key: &str| {
        let mut tasks = TASKS.lock();
        if tasks.get(key).is_some_and(|t| t.token == token) {
            tasks.remove(key);
        }
    };
    let thread_name = format!("musicfs-{key}");
    let name = key.clone();
    let spawned = std::thread::Builder::new()
        .name(thread_name)
        .spawn(move || {
            let mut backoff = Duration::from_secs(1);
            let record = |error: Option<String>, running: bool| {
                if let Some(t) = TASKS.lock().get_mut(&key)
                    && t.token == token
                {
                    t.running = running;
                    if let Some(e) = error {
                        t.restarts += 1;
                        t.last_error = e;
                    }
                }
            };
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(&task));
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let why = match outcome {
                    Ok(Ok(())) => break,
                    Ok(Err(e)) => format!("{e:#}"),
                    Err(_) => "panicked".to_string(),
                };
                error!(
                    task = %key,
                    "failed: {why}; restarting in {} s",
                    backoff.as_secs()
                );
                crate::events::emit(
                    "task",
                    format!(
                        "{key} failed ({why}); restarting in {} s",
                        backoff.as_secs()
                    ),
                );
                record(Some(why), true);
                if started.elapsed() > Duration::from_secs(300) {
                    backoff = Duration::from_secs(1);
                }
                // Sleep in steps, so that a stop is never held up by a backoff.
                let until = Instant::now() + backoff;
                while Instant::now() < until && !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(50));
                }
                backoff = (backoff * 2).min(Duration::from_secs(60));
            }
            if stop.load(Ordering::Relaxed) {
                // Stopped on purpose (shutdown, or its origin went away).
                remove(&key);
            } else {
                record(None, false);
            }
        });
    match spawned {
        Ok(h) => Some(h),
        Err(e) => {
            error!(task = %name, "cannot start: {e}");
            remove(&name);
            None
        }
    }
}

/// A supervised background task, as the status shows it.
#[derive(Clone, Debug)]
pub struct TaskState {
    pub running: bool,
    pub restarts: u32,
    pub last_error: String,
    /// Which incarnation of the name this is.
    token: u64,
}

static TASKS: parking_lot::Mutex<std::collections::BTreeMap<String, TaskState>> =
    parking_lot::Mutex::new(std::collections::BTreeMap::new());

/// Every supervised task with its state.
pub fn task_states() -> Vec<(String, TaskState)> {
    TASKS
        .lock()
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Fault injection: `MUSICFS_FAULT=watch-fail-once` makes the first watcher
/// start fail, to show that the supervisor restarts it.
fn injected_watch_fault() -> bool {
    static FIRED: AtomicBool = AtomicBool::new(false);
    std::env::var("MUSICFS_FAULT").is_ok_and(|f| f.split(',').any(|f| f == "watch-fail-once"))
        && !FIRED.swap(true, Ordering::Relaxed)
}

/// Follows a local origin with inotify until `stop`.
pub fn watch_local(
    syncer: &Syncer,
    origin: u32,
    debounce: Duration,
    stop: &AtomicBool,
) -> Result<()> {
    if injected_watch_fault() {
        anyhow::bail!("injected fault (MUSICFS_FAULT=watch-fail-once)");
    }
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use nix::sys::inotify::{AddWatchFlags as F, InitFlags, Inotify};
    use std::os::fd::AsFd;

    let root = syncer.origin_root(origin)?;
    let inotify =
        Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK).context("inotify_init")?;
    let mask = F::IN_CLOSE_WRITE
        | F::IN_CREATE
        | F::IN_DELETE
        | F::IN_MOVED_FROM
        | F::IN_MOVED_TO
        | F::IN_ATTRIB
        | F::IN_DELETE_SELF
        | F::IN_MOVE_SELF
        | F::IN_ONLYDIR;
    let mut dirs: HashMap<i32, PathBuf> = HashMap::new(); // wd -> relative dir
    let add_tree = |dirs: &mut HashMap<i32, PathBuf>, rel: &Path| -> Result<()> {
        for entry in walkdir::WalkDir::new(root.join(rel)).follow_links(false) {
            let Ok(entry) = entry else { continue };
            if !entry.file_type().is_dir() {
                continue;
            }
            match inotify.add_watch(entry.path(), mask) {
                Ok(wd) => {
                    let r = entry
                        .path()
                        .strip_prefix(&root)
                        .unwrap_or(Path::new(""))
                        .to_path_buf();
                    dirs.insert(wd.as_raw(), r);
                }
                Err(nix::errno::Errno::ENOSPC) => {
                    anyhow::bail!(
                        "inotify watch limit reached (fs.inotify.max_user_watches); raise it"
                    );
                }
                Err(e) => debug!(path = %entry.path().display(), "cannot watch: {e}"),
            }
        }
        Ok(())
    };
    if !syncer.origin_usable(origin, &root)? {
        // The supervisor retries with backoff; the catalog keeps serving.
        anyhow::bail!("origin {} is not reachable", root.display());
    }
    add_tree(&mut dirs, Path::new(""))?;
    info!(origin = %root.display(), directories = dirs.len(), "watching for changes");
    // Back after being away: catch up on what changed meanwhile (the
    // watches are in place first, so nothing is missed in between).
    if syncer.take_back(origin, &root) {
        syncer.sync_origin(origin, Path::new(""))?;
    }

    let mut files: HashSet<Vec<u8>> = HashSet::new();
    let mut subtrees: HashSet<PathBuf> = HashSet::new();
    let mut rescan_all = false;
    let mut first_event: Option<Instant> = None;
    let mut last_event = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let mut fds = [PollFd::new(inotify.as_fd(), PollFlags::POLLIN)];
        let timeout = PollTimeout::try_from(Duration::from_millis(100)).unwrap_or(PollTimeout::MAX);
        match poll(&mut fds, timeout) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e).context("poll on inotify"),
        }
        loop {
            let events = match inotify.read_events() {
                Ok(ev) => ev,
                Err(nix::errno::Errno::EAGAIN) => break,
                Err(e) => return Err(e).context("reading inotify events"),
            };
            for ev in events {
                let now = Instant::now();
                first_event.get_or_insert(now);
                last_event = now;
                if ev.mask.contains(F::IN_Q_OVERFLOW) {
                    warn!(origin = %root.display(), "inotify queue overflowed; rescanning the origin");
                    rescan_all = true;
                    continue;
                }
                let root_event = dirs
                    .get(&ev.wd.as_raw())
                    .is_some_and(|d| d.as_os_str().is_empty());
                if root_event
                    && ev
                        .mask
                        .intersects(F::IN_DELETE_SELF | F::IN_MOVE_SELF | F::IN_UNMOUNT)
                {
                    // The origin itself went away (moved, deleted, its
                    // filesystem unmounted): keep its files, watch again
                    // (with backoff) until it is back, then rescan.
                    if syncer.origin_usable(origin, &root)? {
                        // Replaced at once: still rescan it on restart.
                        syncer
                            .offline
                            .lock()
                            .insert(origin, "its directory was replaced".into());
                    }
                    anyhow::bail!("origin {} went away", root.display());
                }
                if ev.mask.contains(F::IN_IGNORED) {
                    dirs.remove(&ev.wd.as_raw());
                    continue;
                }
                let Some(dir) = dirs.get(&ev.wd.as_raw()).cloned() else {
                    continue;
                };
                let Some(name) = ev.name else { continue };
                let rel = dir.join(&name);
                if ev.mask.contains(F::IN_ISDIR) {
                    if ev.mask.intersects(F::IN_DELETE | F::IN_MOVED_FROM) {
                        // Its watches (same inodes) are re-registered under the
                        // new path if it moved within the origin.
                        dirs.retain(|_, p| !p.starts_with(&rel));
                    }
                    if ev.mask.intersects(F::IN_CREATE | F::IN_MOVED_TO) {
                        add_tree(&mut dirs, &rel)?;
                    }
                    subtrees.insert(rel);
                } else {
                    files.insert(rel.as_os_str().as_bytes().to_vec());
                }
            }
        }
        let Some(first) = first_event else { continue };
        // Apply after `debounce` of quiet, or at most 10 debounce windows after the first event.
        if last_event.elapsed() < debounce && first.elapsed() < debounce * 10 {
            continue;
        }
        if rescan_all {
            syncer.sync_origin(origin, Path::new(""))?;
        } else {
            for sub in &subtrees {
                syncer.sync_origin(origin, sub)?;
            }
            syncer.sync_files(origin, &files)?;
        }
        debug!(
            files = files.len(),
            subtrees = subtrees.len(),
            rescan_all,
            "changes applied"
        );
        files.clear();
        subtrees.clear();
        rescan_all = false;
        first_event = None;
    }
    Ok(())
}

/// Every this many polls, one pass stats every file (in-place edits do not
/// change a directory's mtime).
const FULL_POLL_EVERY: u32 = 12;

/// How a watcher follows its origin (`watch` in the configuration).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WatchMode {
    Inotify,
    Poll,
    /// inotify on a local filesystem, polling on a network one.
    Auto,
}

/// Follows one origin until `stop`: fails (to be retried with backoff by
/// its supervisor) while the origin is unreachable; then inotify or polling,
/// chosen now that the origin's filesystem can be seen.
pub fn follow_origin(
    syncer: &Syncer,
    origin: u32,
    mode: WatchMode,
    debounce: Duration,
    interval: Duration,
    stop: &AtomicBool,
) -> Result<()> {
    let root = syncer.origin_root(origin)?;
    if !syncer.origin_usable(origin, &root)? {
        anyhow::bail!("origin {} is not reachable", root.display());
    }
    let inotify = match mode {
        WatchMode::Inotify => true,
        WatchMode::Poll => false,
        WatchMode::Auto => {
            let local = crate::origin_io::is_local_fs(&root);
            if !local {
                info!(origin = %root.display(), "origin is on a network filesystem; polling instead of inotify");
            }
            local
        }
    };
    if inotify {
        watch_local(syncer, origin, debounce, stop)
    } else {
        poll_network(syncer, origin, interval, stop)
    }
}

/// Rescans an origin on a network filesystem every `interval` until `stop`,
/// pruned by directory mtimes except every `FULL_POLL_EVERY`th pass.
pub fn poll_network(
    syncer: &Syncer,
    origin: u32,
    interval: Duration,
    stop: &AtomicBool,
) -> Result<()> {
    let root = syncer.origin_root(origin)?;
    info!(origin = %root.display(), interval_s = interval.as_secs(), "polling for changes (network filesystem)");
    if syncer.take_back(origin, &root) {
        syncer.sync_origin(origin, Path::new(""))?;
    }
    let mut dir_mtimes: HashMap<PathBuf, i64> = HashMap::new();
    let mut passes: u32 = 0;
    loop {
        if syncer.is_offline(origin) {
            // Gone during the last pass: retried by the supervisor with
            // backoff (seconds, not a whole poll interval), rescanned once back.
            anyhow::bail!("origin {} went away", root.display());
        }
        let until = Instant::now() + interval;
        while Instant::now() < until {
            if stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(200).min(interval));
        }
        passes += 1;
        if passes.is_multiple_of(FULL_POLL_EVERY) {
            dir_mtimes.clear();
        }
        syncer.sync_origin_pruned(origin, Path::new(""), Some(&mut dir_mtimes))?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::template::{DEFAULT_TEMPLATE, Template};
    use std::io::Write;

    fn syncer(dir: &Path, origin: &Path) -> Syncer {
        let store = Store::open(
            &dir.join("c.redb"),
            Template::parse(DEFAULT_TEMPLATE).unwrap(),
        )
        .unwrap();
        Syncer::new(
            Arc::new(store),
            Origins::new(vec![Some(origin.to_path_buf())]),
            2,
            100,
        )
    }

    fn rewrite(path: &Path, byte: u8, mtime: std::time::SystemTime) {
        let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
        f.write_all(&vec![byte; 10_000]).unwrap();
        f.set_modified(mtime).unwrap();
    }

    /// Same size, same (future) mtime, same inode, new content: the
    /// fingerprint catches it; a file with a sane mtime is trusted.
    #[test]
    fn future_mtime_is_checked_by_fingerprint() {
        let dir = tempfile::tempdir().unwrap();
        let origin = dir.path().join("o");
        std::fs::create_dir(&origin).unwrap();
        let future = std::time::SystemTime::now() + Duration::from_secs(86_400);
        let past = std::time::SystemTime::now() - Duration::from_secs(86_400);
        for (name, t) in [("future.mp3", future), ("past.mp3", past)] {
            std::fs::write(origin.join(name), vec![1u8; 10_000]).unwrap();
            rewrite(&origin.join(name), 1, t);
        }
        let s = syncer(dir.path(), &origin);
        s.sync_all().unwrap();
        assert_eq!(s.counters.probed.load(Ordering::Relaxed), 2);
        // Unchanged: nothing probed, even for the future mtime.
        s.sync_all().unwrap();
        assert_eq!(s.counters.probed.load(Ordering::Relaxed), 2);
        rewrite(&origin.join("future.mp3"), 2, future);
        rewrite(&origin.join("past.mp3"), 2, past);
        s.sync_all().unwrap();
        assert_eq!(
            s.counters.probed.load(Ordering::Relaxed),
            3,
            "only the file with the untrustworthy mtime is re-read"
        );
    }

    /// A task restarted under the same name keeps its status entry when the
    /// old incarnation winds down; a stopped task leaves the status.
    #[test]
    fn restarted_task_keeps_its_status_entry() {
        let (old_stop, new_stop) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
        );
        let wait = |stop: Arc<AtomicBool>| {
            move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Ok(())
            }
        };
        let old = supervise("test-same-name", old_stop.clone(), wait(old_stop.clone())).unwrap();
        let new = supervise("test-same-name", new_stop.clone(), wait(new_stop.clone())).unwrap();
        old_stop.store(true, Ordering::Relaxed);
        old.join().unwrap();
        let listed = |name: &str| {
            task_states()
                .into_iter()
                .any(|(n, t)| n == name && t.running)
        };
        assert!(
            listed("test-same-name"),
            "the new task vanished from the status"
        );
        new_stop.store(true, Ordering::Relaxed);
        new.join().unwrap();
        assert!(!task_states().iter().any(|(n, _)| n == "test-same-name"));
    }

    /// An unreachable origin keeps what the catalog knows.
    #[test]
    fn vanished_origin_does_not_empty_the_catalog() {
        let dir = tempfile::tempdir().unwrap();
        let origin = dir.path().join("o");
        std::fs::create_dir(&origin).unwrap();
        std::fs::write(origin.join("a.mp3"), b"x").unwrap();
        let s = syncer(dir.path(), &origin);
        s.sync_all().unwrap();
        assert_eq!(s.store.file_count().unwrap(), 1);
        std::fs::rename(&origin, dir.path().join("elsewhere")).unwrap();
        s.sync_all().unwrap();
        assert_eq!(s.store.file_count().unwrap(), 1);
    }
}

#[cfg(test)]
mod prune_tests {
    use super::*;
    use crate::template::{DEFAULT_TEMPLATE, Template};

    /// A pruned pass stats no file in a directory whose mtime is unchanged,
    /// yet sees additions and deletions (they change the directory's mtime).
    #[test]
    fn pruned_pass_skips_quiet_directories_and_sees_new_files() {
        let dir = tempfile::tempdir().unwrap();
        let origin = dir.path().join("o");
        std::fs::create_dir_all(origin.join("a")).unwrap();
        std::fs::create_dir_all(origin.join("b")).unwrap();
        std::fs::write(origin.join("a/1.mp3"), b"1").unwrap();
        std::fs::write(origin.join("b/2.mp3"), b"2").unwrap();
        let store = Store::open(
            &dir.path().join("c.redb"),
            Template::parse(DEFAULT_TEMPLATE).unwrap(),
        )
        .unwrap();
        let s = Syncer::new(
            Arc::new(store),
            Origins::new(vec![Some(origin.clone())]),
            1,
            100,
        );
        let mut mtimes = HashMap::new();
        s.sync_origin_pruned(0, Path::new(""), Some(&mut mtimes))
            .unwrap();
        assert_eq!(s.store.file_count().unwrap(), 2);
        // Let the directory mtime tick, then change b only.
        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(origin.join("b/3.mp3"), b"3").unwrap();
        std::fs::remove_file(origin.join("b/2.mp3")).unwrap();
        let unchanged_before = s.counters.unchanged.load(Ordering::Relaxed);
        s.sync_origin_pruned(0, Path::new(""), Some(&mut mtimes))
            .unwrap();
        let keys: Vec<Vec<u8>> = s.store.file_stats(0, b"").unwrap().into_keys().collect();
        assert_eq!(keys.len(), 2);
        assert!(keys.contains(&b"a/1.mp3".to_vec()) && keys.contains(&b"b/3.mp3".to_vec()));
        assert_eq!(s.counters.probed.load(Ordering::Relaxed), 3);
        // a/1.mp3 was kept without a stat (its directory is quiet).
        assert_eq!(
            s.counters.unchanged.load(Ordering::Relaxed),
            unchanged_before + 1
        );
    }
}

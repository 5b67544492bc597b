//! The catalog's writer: commits (checkpoints) with their invalidations,
//! probes in parallel, full syncs, and which origins are away.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::{Context, Result};
use tracing::{debug, error, info, warn};

use crate::catalog::{InvalidationSink, Store};
use crate::model::FileRecord;
use crate::model::template::Template;
use crate::origins::Origins;
use crate::scan::{AudioExtensions, probe_file};

#[derive(Default, Debug)]
pub struct SyncCounters {
    /// Files found that need their tags read (the scan's work so far).
    pub found: AtomicU64,
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
    /// Where invalidations go once the data plane serves.
    sink: Option<Arc<dyn InvalidationSink>>,
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
    /// Origins whose last watcher run failed (a commit that could not be
    /// written, an error mid-way): the next run rescans them in full, so
    /// no change is lost.
    dirty: parking_lot::Mutex<std::collections::HashSet<u32>>,
    /// Which files are listed (hot: reload).
    pub extensions: parking_lot::RwLock<Arc<AudioExtensions>>,
    /// Serialises writers (scan, watcher, poller).
    write_lock: parking_lot::Mutex<()>,
    /// Origins found unreachable: their files are kept, and the origin is
    /// rescanned once it is back (the watcher retries with backoff).
    /// (origin id -> why, logged when it changes)
    pub(super) offline: parking_lot::Mutex<HashMap<u32, String>>,
    /// The chunk cache: files of cached origins get their head and tail
    /// chunks cached as they are probed.
    content: std::sync::OnceLock<Arc<crate::content::ChunkCache>>,
    /// The change feed, if `[notify]` names a target.
    notifier: std::sync::OnceLock<Arc<crate::notify::Notifier>>,
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
            sink: None,
            origins,
            stale_origins: parking_lot::Mutex::new(Vec::new()),
            threads: AtomicUsize::new(threads.max(1)),
            checkpoint_files: AtomicUsize::new(checkpoint_files.max(1)),
            stop: Arc::new(AtomicBool::new(false)),
            counters: SyncCounters::default(),
            write_lock: parking_lot::Mutex::new(()),
            extensions: parking_lot::RwLock::new(Arc::new(AudioExtensions::default())),
            dirty: parking_lot::Mutex::new(std::collections::HashSet::new()),
            offline: parking_lot::Mutex::new(HashMap::new()),
            content: std::sync::OnceLock::new(),
            notifier: std::sync::OnceLock::new(),
        }
    }

    /// The chunk cache, if there is one.
    pub(super) fn content(&self) -> Option<&crate::content::ChunkCache> {
        self.content.get().map(|c| &**c)
    }

    /// The flag that stops long scans.
    pub(super) fn stop_flag(&self) -> &AtomicBool {
        &self.stop
    }

    /// Gives the syncer the change feed (once).
    pub fn set_notifier(&self, n: Arc<crate::notify::Notifier>) {
        let _ = self.notifier.set(n);
    }

    /// The change feed, if there is one.
    pub fn notifier(&self) -> Option<&Arc<crate::notify::Notifier>> {
        self.notifier.get()
    }

    /// Gives the syncer the chunk cache (once).
    pub fn set_content(&self, cache: Arc<crate::content::ChunkCache>) {
        let _ = self.content.set(cache);
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
                if dev_before.is_some() && dev_now != dev_before && self.store.has_files(origin)? {
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

    /// Why `origin` was found unreachable, if it is not caught up yet.
    pub fn offline_reason(&self, origin: u32) -> Option<String> {
        self.offline.lock().get(&origin).cloned()
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

    /// The watcher of `origin` failed: what it had not applied is redone by
    /// a full pass when it starts again.
    pub fn mark_dirty(&self, origin: u32) {
        self.dirty.lock().insert(origin);
    }

    /// Whether `origin` needs a full pass (the mark is cleared).
    pub fn take_dirty(&self, origin: u32) -> bool {
        self.dirty.lock().remove(&origin)
    }

    /// The extensions of the files listed (the next sync applies them).
    pub fn set_extensions(&self, exts: AudioExtensions) {
        *self.extensions.write() = Arc::new(exts);
    }

    /// The extensions of the files listed.
    pub fn extensions(&self) -> Arc<AudioExtensions> {
        self.extensions.read().clone()
    }

    /// Origins whose files must go (no longer configured).
    pub fn set_stale_origins(&self, ids: Vec<u32>) {
        *self.stale_origins.lock() = ids;
    }

    /// The flag that stops long scans (at the next checkpoint) at shutdown.
    pub fn set_stop(&mut self, stop: Arc<AtomicBool>) {
        self.stop = stop;
    }

    pub(super) fn check_stop(&self) -> Result<()> {
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
    pub fn set_sink(&mut self, sink: Arc<dyn InvalidationSink>) {
        self.sink = Some(sink);
    }

    pub(super) fn commit(
        &self,
        upserts: Vec<FileRecord>,
        removals: &[Vec<u8>],
        complete: bool,
    ) -> Result<()> {
        let t = Instant::now();
        let (n_up, n_rm) = (upserts.len(), removals.len());
        let inval = {
            let _w = self.write_lock.lock();
            match self.notifier.get() {
                Some(n) => {
                    let feed = crate::sync::feed::Feed::before(&self.store, &upserts, removals);
                    let inval = self.store.apply(upserts, removals, complete)?;
                    n.send(&feed.after(&self.store));
                    inval
                }
                None => self.store.apply(upserts, removals, complete)?,
            }
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
        if let Some(sink) = &self.sink {
            sink.invalidate(&inval);
        }
        Ok(())
    }

    /// Re-lays the tree out with a new path template (one commit) and tells
    /// the kernel to forget the old names.
    pub fn set_template(&self, template: Template) -> Result<()> {
        let inval = {
            let _w = self.write_lock.lock();
            self.store.set_template(template)?
        };
        if let Some(sink) = &self.sink {
            sink.invalidate(&inval);
        }
        Ok(())
    }

    /// Probes `jobs` in parallel.
    pub(super) fn probe(&self, jobs: Vec<(u32, PathBuf, Vec<u8>)>) -> Vec<FileRecord> {
        let n = jobs.len();
        if n == 0 {
            return Vec::new();
        }
        let next = AtomicU64::new(0);
        let jobs = &jobs;
        let table = self.origins.snapshot();
        let cache = self.content.get();
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
                                    if let Some(c) = cache.filter(|_| table.is_cached(*origin)) {
                                        crate::sync::warm::warm_head_and_tail(c, &rec, abs);
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
        // Folder images (cover sources) are not tracks: not counted.
        let tracks = out.iter().filter(|r| !r.is_image).count();
        self.counters
            .probed
            .fetch_add(tracks as u64, Ordering::Relaxed);
        out
    }

    /// Delta-syncs every origin; marks the scan complete at the end.
    pub fn sync_all(&self) -> Result<()> {
        let t = Instant::now();
        let probed_before = self.counters.probed.load(Ordering::Relaxed);
        let table = self.origins.snapshot();
        // Each origin on its own thread: one that hangs (a NAS that stops
        // answering) holds up only itself; the others commit meanwhile. A
        // single origin syncs here (no thread, and no second malloc arena
        // holding on to the scan's memory).
        let sync_one = |origin: u32, root: &Path| {
            if self.check_stop().is_err() {
                return;
            }
            if let Err(e) = self.sync_origin(origin, Path::new("")) {
                warn!(origin = %root.display(), "sync failed: {e:#}");
            }
        };
        let origins: Vec<(u32, &Path)> = table.iter().collect();
        if let [(origin, root)] = origins.as_slice() {
            sync_one(*origin, root);
        } else {
            std::thread::scope(|s| {
                for (origin, root) in &origins {
                    s.spawn(|| sync_one(*origin, root));
                }
            });
        }
        self.check_stop()?;
        let stale = std::mem::take(&mut *self.stale_origins.lock());
        self.remove_origins(&stale)?;
        self.commit(Vec::new(), &[], true)?;
        self.counters.full_scans.fetch_add(1, Ordering::Relaxed);
        crate::sys::memory::release_free_memory();
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
}

//! The index's one writer: a thread that applies the catalog's commits
//! (what each commit's invalidations name, read again from the catalog),
//! commits with a payload (format, catalog generation, commit sequence),
//! and rebuilds the index from the catalog when it is missing, corrupt, of
//! another version or behind the catalog. The mount never waits for it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use parking_lot::{Condvar, Mutex};
use tantivy::{Index, IndexWriter, Term};
use tracing::{info, warn};

use crate::catalog::{Invalidations, Store, Track};
use crate::views::index::{INDEX_FORMAT, Payload, Searchable, document, schema};

/// The writer's memory budget (tantivy splits it over its threads).
const WRITER_HEAP_BYTES: usize = 32 * 1024 * 1024;
/// Changes queued beyond this many inodes are dropped for a rebuild.
const PENDING_MAX: usize = 200_000;

/// What the worker is asked to do, gathered while it is busy.
#[derive(Default)]
struct Pending {
    inodes: BTreeSet<u64>,
    seq: u64,
    rebuild: bool,
    /// Rebuilds asked for by `musicfs search rebuild`, counted: a waiter
    /// is done when `rebuilds_done` reaches its number.
    rebuilds_asked: u64,
}

/// The index as the rest of the views room sees it.
pub struct Worker {
    /// `<state dir>/search`.
    root: PathBuf,
    store: Arc<Store>,
    /// The index queries read (None: none usable yet).
    pub(super) current: parking_lot::RwLock<Option<Arc<Searchable>>>,
    pending: Mutex<Pending>,
    wake: Condvar,
    pub(super) rebuilding: AtomicBool,
    pub(super) progress_done: AtomicU64,
    pub(super) progress_total: AtomicU64,
    rebuilds_done: AtomicU64,
    /// Origin id -> its path or URL (for the `origin` field).
    origin_name: Box<dyn Fn(u32) -> String + Send + Sync>,
}

impl Worker {
    pub fn new(
        state_dir: &Path,
        store: Arc<Store>,
        origin_name: Box<dyn Fn(u32) -> String + Send + Sync>,
    ) -> Worker {
        Worker {
            root: state_dir.join("search"),
            store,
            current: parking_lot::RwLock::new(None),
            pending: Mutex::new(Pending::default()),
            wake: Condvar::new(),
            rebuilding: AtomicBool::new(false),
            progress_done: AtomicU64::new(0),
            progress_total: AtomicU64::new(0),
            rebuilds_done: AtomicU64::new(0),
            origin_name,
        }
    }

    fn live_dir(&self) -> PathBuf {
        self.root.join(format!("v{INDEX_FORMAT}"))
    }

    /// Queues what a commit changed (never blocks the caller).
    pub fn committed(&self, inval: &Invalidations) {
        let mut p = self.pending.lock();
        if inval.everything {
            p.rebuild = true;
        }
        p.seq = p.seq.max(inval.commit_seq);
        p.inodes.extend(inval.inodes.iter().copied());
        p.inodes
            .extend(inval.entries.iter().map(|(parent, _)| *parent));
        if p.inodes.len() > PENDING_MAX {
            p.inodes.clear();
            p.rebuild = true;
        }
        drop(p);
        self.wake.notify_one();
    }

    /// Asks for a rebuild; returns its ticket for `rebuilt`.
    pub fn ask_rebuild(&self) -> u64 {
        let mut p = self.pending.lock();
        p.rebuild = true;
        p.rebuilds_asked += 1;
        let ticket = self.rebuilds_done.load(Ordering::Acquire) + 1;
        drop(p);
        self.wake.notify_one();
        ticket
    }

    pub fn rebuilt(&self, ticket: u64) -> bool {
        self.rebuilds_done.load(Ordering::Acquire) >= ticket
    }

    /// The worker's loop, until `stop`: opens the index (or rebuilds it),
    /// then applies changes as they come, calling `changed` after each
    /// commit. Errors end the loop (the task supervisor restarts it with a
    /// fresh open).
    pub fn run(&self, stop: &AtomicBool, changed: &dyn Fn()) -> Result<()> {
        std::fs::create_dir_all(&self.root)
            .with_context(|| format!("cannot create {}", self.root.display()))?;
        self.remove_other_versions();
        let mut writer = match self.open_in_step() {
            Ok(w) => w,
            Err(why) => {
                info!("search index: {why:#}; rebuilding it from the catalog");
                self.rebuild()?
            }
        };
        changed();
        loop {
            let (inodes, seq, rebuild, asked) = {
                let mut p = self.pending.lock();
                let deadline = Instant::now() + Duration::from_millis(200);
                while p.inodes.is_empty() && !p.rebuild && !stop.load(Ordering::Relaxed) {
                    if self.wake.wait_until(&mut p, deadline).timed_out() {
                        break;
                    }
                }
                let p = std::mem::take(&mut *p);
                (p.inodes, p.seq, p.rebuild, p.rebuilds_asked)
            };
            if rebuild {
                drop(writer);
                writer = self.rebuild()?;
                self.rebuilds_done.fetch_add(asked.max(1), Ordering::AcqRel);
                changed();
            } else if !inodes.is_empty() || (seq > 0 && seq > self.applied_seq()) {
                // A commit that changed nothing still moves the sequence
                // the index must record (else the next start rebuilds).
                self.apply(&mut writer, &inodes, seq)?;
                if !inodes.is_empty() {
                    changed();
                }
            }
            if stop.load(Ordering::Relaxed) {
                return Ok(());
            }
        }
    }

    /// Opens the live index if it is ours, whole, and holds the catalog's
    /// last commit.
    fn open_in_step(&self) -> Result<IndexWriter> {
        let dir = self.live_dir();
        if !dir.join("meta.json").exists() {
            anyhow::bail!("no index at {}", dir.display());
        }
        // Checked through an index of its own, dropped at once: the check
        // reads every file through its maps, and through the live reader's
        // maps those pages would stay in the engine's RSS (at 1M tracks, over
        // 100 MB of an index that queries touch only a little of).
        let damaged = Index::open_in_dir(&dir)
            .with_context(|| format!("cannot open the search index {}", dir.display()))?
            .validate_checksum()
            .context("cannot check the index")?;
        if !damaged.is_empty() {
            anyhow::bail!("{} damaged files in the index", damaged.len());
        }
        let s = Searchable::open(&dir)?;
        let want = Payload {
            format: INDEX_FORMAT,
            generation: self.store.generation(),
            seq: self.store.commit_seq()?,
        };
        match s.payload() {
            Some(p) if p == want => {}
            Some(p) => anyhow::bail!("the index is of {p:?}, the catalog is at {want:?}"),
            None => anyhow::bail!("the index has no payload"),
        }
        let writer = s.index.writer(WRITER_HEAP_BYTES)?;
        *self.current.write() = Some(Arc::new(s));
        info!(dir = %dir.display(), "search index open, in step with the catalog");
        Ok(writer)
    }

    /// Index directories of other formats, and builds left by a kill.
    fn remove_other_versions(&self) {
        let live = self.live_dir();
        let Ok(rd) = std::fs::read_dir(&self.root) else {
            return;
        };
        for e in rd.flatten() {
            if e.path() != live {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }

    /// Builds a new index from the catalog beside the live one, then puts
    /// it in its place. Queries read the old index (if any) meanwhile.
    fn rebuild(&self) -> Result<IndexWriter> {
        self.rebuilding.store(true, Ordering::Release);
        let r = self.rebuild_inner();
        self.rebuilding.store(false, Ordering::Release);
        r
    }

    fn rebuild_inner(&self) -> Result<IndexWriter> {
        let started = Instant::now();
        let (total, _, _) = self.store.totals()?;
        self.progress_total.store(total, Ordering::Relaxed);
        self.progress_done.store(0, Ordering::Relaxed);
        let build = self.root.join(format!("v{INDEX_FORMAT}.build"));
        let _ = std::fs::remove_dir_all(&build);
        std::fs::create_dir_all(&build)?;
        let (schema, fields) = schema();
        let index = Index::create_in_dir(&build, schema)?;
        crate::views::index::register_tokenizer(&index);
        let mut writer: IndexWriter = index.writer(WRITER_HEAP_BYTES)?;
        let mut n = 0u64;
        let seq = self.store.for_each_track(|t: Track| {
            let origin = (self.origin_name)(t.entry.rec.origin);
            writer.add_document(document(&fields, &t, &origin))?;
            n += 1;
            if n.is_multiple_of(1024) {
                self.progress_done.store(n, Ordering::Relaxed);
            }
            Ok(())
        })?;
        self.commit(&mut writer, seq)?;
        writer.wait_merging_threads()?;
        drop(index);
        // Into place: the old one aside, the new one in, the old one gone.
        let live = self.live_dir();
        let old = self.root.join(format!("v{INDEX_FORMAT}.old"));
        let _ = std::fs::remove_dir_all(&old);
        if live.exists() {
            std::fs::rename(&live, &old)?;
        }
        std::fs::rename(&build, &live)?;
        let s = Searchable::open(&live)?;
        let writer = s.index.writer(WRITER_HEAP_BYTES)?;
        *self.current.write() = Some(Arc::new(s));
        let _ = std::fs::remove_dir_all(&old);
        self.progress_done.store(n, Ordering::Relaxed);
        self.progress_total.store(n, Ordering::Relaxed);
        let ms = started.elapsed().as_millis() as u64;
        info!(tracks = n, ms, "search index rebuilt from the catalog");
        crate::events::emit("search", format!("index rebuilt: {n} tracks in {ms} ms"));
        Ok(writer)
    }

    /// The catalog commit the open index last recorded.
    fn applied_seq(&self) -> u64 {
        self.current
            .read()
            .as_ref()
            .and_then(|s| s.payload())
            .map_or(0, |p| p.seq)
    }

    fn commit(&self, writer: &mut IndexWriter, seq: u64) -> Result<()> {
        let payload = Payload {
            format: INDEX_FORMAT,
            generation: self.store.generation(),
            seq,
        };
        let mut prepared = writer.prepare_commit()?;
        prepared.set_payload(&serde_json::to_string(&payload)?);
        prepared.commit()?;
        Ok(())
    }

    /// Reads the named inodes again from the catalog: a file is indexed
    /// anew, a directory's files are, a node that is gone leaves.
    fn apply(&self, writer: &mut IndexWriter, inodes: &BTreeSet<u64>, seq: u64) -> Result<()> {
        let Some(current) = self.current.read().clone() else {
            return Ok(());
        };
        let f = &current.fields;
        for &ino in inodes {
            match self.store.node(ino)? {
                Some(n) if n.is_dir => {
                    writer.delete_term(Term::from_field_u64(f.parent, ino));
                    for c in self.store.children(ino)?.iter().filter(|c| !c.is_dir) {
                        writer.delete_term(Term::from_field_u64(f.ino, c.ino));
                        self.add(writer, f, c.ino)?;
                    }
                }
                Some(_) => {
                    writer.delete_term(Term::from_field_u64(f.ino, ino));
                    self.add(writer, f, ino)?;
                }
                None => {
                    writer.delete_term(Term::from_field_u64(f.ino, ino));
                    writer.delete_term(Term::from_field_u64(f.parent, ino));
                }
            }
        }
        let seq = seq.max(current.payload().map_or(0, |p| p.seq));
        self.commit(writer, seq)?;
        if let Err(e) = current.reader.reload() {
            warn!("search index: cannot reload the reader: {e}");
        }
        Ok(())
    }

    fn add(
        &self,
        writer: &mut IndexWriter,
        f: &crate::views::index::Fields,
        ino: u64,
    ) -> Result<()> {
        if let Some(t) = self.store.track(ino)? {
            let origin = (self.origin_name)(t.entry.rec.origin);
            writer.add_document(document(f, &t, &origin))?;
        }
        Ok(())
    }
}

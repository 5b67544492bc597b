//! Opening and closing the catalog, its schema, and its meta records.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, bail};
use parking_lot::{MappedRwLockReadGuard, Mutex, RwLock, RwLockReadGuard};
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata};
use tracing::{debug, info, warn};

use crate::catalog::listing::ListingCache;
use crate::catalog::records::{Invalidations, PreviousClose};
use crate::catalog::tables::{
    CHILDREN, DB_CACHE_BYTES, FILES, INODES, META, NODES, ORIGINS, ROOT_INO, SCHEMA_VERSION,
    child_value, split_file_key, template_hash,
};
use crate::catalog::tree::ensure_root;
use crate::model::template::Template;
use crate::sys::time::now_ms;

/// The catalog and the tree in it.
pub struct Store {
    /// `None` once closed. Every transaction holds a read guard for its
    /// whole life, so `close` waits for the ones in flight (bounded).
    pub(super) db: RwLock<Option<Database>>,
    /// Hot: a reload may change it (`set_template`).
    pub(super) template: RwLock<Template>,
    pub(super) listings: Mutex<ListingCache>,
    /// How the previous engine left the catalog.
    pub(super) previous_close: PreviousClose,
    /// The catalog file (reopened after a failed write).
    path: PathBuf,
    /// Set by `close`: the database is gone for good.
    closed: AtomicBool,
    /// Writes fail since (ms since the epoch), and why; None while they work.
    write_failure: Mutex<Option<(u64, String)>>,
    /// This catalog's generation, given with every entry: drawn when the
    /// catalog is created, so inode numbers of a rebuilt catalog never name
    /// what the kernel cached from the one before (it takes an entry with
    /// another generation as a new inode).
    pub(super) generation: u64,
    /// Read-ahead of the file for cold walks.
    prefetch: super::prefetch::Prefetch,
    /// Album directories get covers (`cover_art`; `set_cover_art`).
    pub(super) covers: AtomicBool,
}

/// Free space a reopen after a failed write waits for: a reopen drops the
/// database that reads are served from, so it is tried only when it can
/// succeed.
const REOPEN_MIN_FREE_BYTES: u64 = 4 * 1024 * 1024;

/// The catalog's redb file, opened with our settings.
fn open_database(path: &Path) -> std::result::Result<Database, redb::DatabaseError> {
    let mut builder = Database::builder();
    builder.set_cache_size(DB_CACHE_BYTES);
    builder.set_repair_callback(|session| {
        if session.progress() == 0.0 {
            warn!("catalog was not closed cleanly and has no allocator record: full repair");
        }
    });
    builder.create(path)
}

/// Schema 5 to 6: sets `CHILD_DIR` on the `children` value of every
/// directory. Returns how many.
fn mark_child_dirs(txn: &redb::WriteTransaction) -> Result<u64> {
    let mut children = txn.open_table(CHILDREN)?;
    let nodes = txn.open_table(NODES)?;
    let mut dirs: Vec<(Vec<u8>, u64)> = Vec::new();
    for row in children.iter()? {
        let (k, v) = row?;
        let ino = v.value();
        let is_dir = match nodes.get(ino)? {
            Some(n) => postcard::from_bytes::<crate::catalog::records::NodeRec>(n.value())
                .map(|n| n.is_dir)
                .unwrap_or(false),
            None => false,
        };
        if is_dir {
            dirs.push((k.value().to_vec(), ino));
        }
    }
    for (k, ino) in &dirs {
        children.insert(k.as_slice(), child_value(*ino, true))?;
    }
    Ok(dirs.len() as u64)
}

/// A generation for a new catalog: the clock and the pid, mixed, never 0
/// or 1 (what engines before generations gave every entry).
fn new_generation() -> u64 {
    let seed = (crate::sys::time::now_ns() as u64) ^ (u64::from(std::process::id()) << 40);
    let g = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(29);
    g.max(2)
}

/// Whether an open failure is corruption: the only kind that moves a
/// catalog aside (permissions, a full disk or a newer schema never do).
fn is_corrupt(e: &anyhow::Error) -> bool {
    // redb: `Corrupted`, or an `InvalidData` I/O error ("Not a redb
    // database"); ours: a record that does not decode.
    io_cause(e).is_some_and(|io| io.kind() == std::io::ErrorKind::InvalidData)
        || e.chain().any(|c| {
            let m = c.to_string();
            m.starts_with("DB corrupted")
                || m == "corrupt node record"
                || m == "corrupt file record"
        })
}

/// The I/O error at the root of `e`, if there is one.
fn io_cause(e: &anyhow::Error) -> Option<&std::io::Error> {
    fn of_storage(s: &redb::StorageError) -> Option<&std::io::Error> {
        match s {
            redb::StorageError::Io(io) => Some(io),
            _ => None,
        }
    }
    e.chain().find_map(|c| {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            return Some(io);
        }
        if let Some(s) = c.downcast_ref::<redb::StorageError>() {
            return of_storage(s);
        }
        if let Some(redb::DatabaseError::Storage(s)) = c.downcast_ref::<redb::DatabaseError>() {
            return of_storage(s);
        }
        if let Some(redb::TransactionError::Storage(s)) = c.downcast_ref::<redb::TransactionError>()
        {
            return of_storage(s);
        }
        if let Some(redb::CommitError::Storage(s)) = c.downcast_ref::<redb::CommitError>() {
            return of_storage(s);
        }
        if let Some(redb::TableError::Storage(s)) = c.downcast_ref::<redb::TableError>() {
            return of_storage(s);
        }
        None
    })
}

/// Why a write failed, in one short phrase.
fn write_error_text(e: &anyhow::Error) -> String {
    match io_cause(e) {
        Some(io) => io.to_string(),
        None => format!("{e:#}"),
    }
}

impl Store {
    /// Opens (or creates) the catalog. Fails on a corrupt file, an unknown
    /// schema version or missing permissions; see `open_or_rebuild`.
    pub fn open(path: &Path, template: Template) -> Result<Store> {
        let db = match open_database(path) {
            Ok(db) => db,
            Err(e) => {
                let e = anyhow::Error::new(e);
                if io_cause(&e).is_some_and(|io| io.kind() == std::io::ErrorKind::PermissionDenied)
                {
                    bail!(
                        "cannot open the catalog {}: permission denied for this user (uid {}); give the state directory back to the user that runs musicfs (chown -R) or run musicfs as its owner",
                        path.display(),
                        nix::unistd::geteuid()
                    );
                }
                return Err(e.context(format!("cannot open catalog {}", path.display())));
            }
        };
        let mut store = Store {
            db: RwLock::new(Some(db)),
            template: RwLock::new(template),
            listings: Mutex::new(ListingCache::default()),
            previous_close: PreviousClose::New,
            path: path.to_path_buf(),
            closed: AtomicBool::new(false),
            write_failure: Mutex::new(None),
            generation: 0,
            prefetch: Default::default(),
            covers: AtomicBool::new(true),
        };
        (store.previous_close, store.generation) = store.init_schema(path)?;
        Ok(store)
    }

    /// The open database, for one transaction (hold the guard as long as
    /// the transaction). Recursive: never waits behind a pending `close`
    /// while the same thread holds another guard.
    pub(super) fn db(&self) -> Result<MappedRwLockReadGuard<'_, Database>> {
        RwLockReadGuard::try_map(self.db.read_recursive(), Option::as_ref)
            .map_err(|_| anyhow::anyhow!("the catalog is closed (engine stopping)"))
    }

    /// How the engine before this one left the catalog.
    pub fn previous_close(&self) -> PreviousClose {
        self.previous_close
    }

    /// Reads the catalog file ahead of a walk (see `prefetch`): the data
    /// plane calls it when a listing of the root starts.
    pub fn read_ahead(&self) {
        self.prefetch.start(&self.path);
    }

    /// Closes the catalog in order: waits (up to `timeout`) for transactions
    /// in flight, records the clean close and closes the database, so the
    /// next open has nothing to recover. Later calls fail with "closed".
    pub fn close(&self, timeout: std::time::Duration) -> Result<()> {
        self.prefetch.join();
        let Some(mut guard) = self.db.try_write_for(timeout) else {
            bail!(
                "a catalog transaction did not finish within {} ms",
                timeout.as_millis()
            );
        };
        self.closed.store(true, Ordering::Release);
        let Some(db) = guard.take() else {
            return Ok(());
        };
        let mut txn = db.begin_write()?;
        txn.set_quick_repair(true);
        txn.open_table(META)?.insert("clean_close", 1)?;
        txn.commit()?;
        db.close().context("closing the catalog")?;
        Ok(())
    }

    /// Opens the catalog; a corrupt catalog is moved aside (one log line says
    /// where) and a new one is created, to be filled by a scan. Any other
    /// failure (permissions, no space, a newer schema) is refused with its
    /// reason and never discards the catalog (its inodes are the paths').
    pub fn open_or_rebuild(path: &Path, template: Template) -> Result<Store> {
        match Store::open(path, template.clone()) {
            Ok(s) => Ok(s),
            // Only corruption: a permission error, a full disk or a newer
            // schema is refused with its reason, and the catalog stays.
            Err(e) if !is_corrupt(&e) => Err(e),
            Err(e) => {
                let aside = path.with_extension(format!(
                    "redb.broken-{}",
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs())
                ));
                std::fs::rename(path, &aside).with_context(|| {
                    format!(
                        "catalog {} is unusable ({e:#}) and cannot be moved aside",
                        path.display()
                    )
                })?;
                warn!(
                    "catalog {} is unusable ({e:#}); moved it to {} and rebuilding from the origins",
                    path.display(),
                    aside.display()
                );
                Store::open(path, template)
            }
        }
    }

    /// The generation of every inode of this catalog.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    fn init_schema(&self, path: &Path) -> Result<(PreviousClose, u64)> {
        let db = self.db()?;
        let mut txn = db.begin_write()?;
        // Every commit records the allocator state, so that reopening after a
        // kill is a quick repair, not a full one.
        txn.set_quick_repair(true);
        let mut rebuild_tree = false;
        let previous;
        let generation;
        {
            let mut meta = txn.open_table(META)?;
            let version = meta.get("schema_version")?.map(|v| v.value());
            previous = match (version, meta.get("clean_close")?.map(|v| v.value())) {
                (None, _) => PreviousClose::New,
                (Some(_), Some(1)) => PreviousClose::Clean,
                _ => PreviousClose::Unclean,
            };
            // Until the next orderly close, a reopen means a crash.
            meta.insert("clean_close", 0)?;
            match version {
                None => {
                    meta.insert("schema_version", SCHEMA_VERSION)?;
                    meta.insert("next_ino", ROOT_INO + 1)?;
                    meta.insert("scan_complete", 0)?;
                    meta.insert("node_count", 1)?;
                }
                Some(old @ (1..=4)) => {
                    // Older record encodings: drop records and tree, rescan;
                    // the inode table carries over, so paths keep their inodes.
                    info!(
                        "migrating catalog {} from schema {old} to {SCHEMA_VERSION}: rescanning",
                        path.display()
                    );
                    txn.delete_table(FILES)?;
                    txn.delete_table(NODES)?;
                    txn.delete_table(CHILDREN)?;
                    meta.insert("schema_version", SCHEMA_VERSION)?;
                    meta.insert("scan_complete", 0)?;
                    meta.insert("file_count", 0)?;
                    meta.insert("total_bytes", 0)?;
                    meta.insert("node_count", 1)?;
                }
                Some(5) => {
                    // Schema 6 marks directories in `children`: set the
                    // mark on every directory's entry (no rescan).
                    let dirs = mark_child_dirs(&txn)?;
                    info!(
                        "migrated catalog {} from schema 5 to {SCHEMA_VERSION}: {dirs} directories marked",
                        path.display()
                    );
                    meta.insert("schema_version", SCHEMA_VERSION)?;
                }
                Some(SCHEMA_VERSION) => {}
                Some(v) => bail!(
                    "catalog {} has schema version {v}, newer than this engine's {SCHEMA_VERSION}; it is kept as it is: run the engine that wrote it (or a newer one)",
                    path.display()
                ),
            }
            let known = meta.get("generation")?.map(|v| v.value());
            generation = match known {
                Some(g) => g,
                None => {
                    let g = new_generation();
                    meta.insert("generation", g)?;
                    g
                }
            };
            let th = template_hash(&self.template.read());
            if meta.get("template_hash")?.map(|v| v.value()) != Some(th) {
                rebuild_tree = version.is_some();
                meta.insert("template_hash", th)?;
            }
            txn.open_table(INODES)?;
            txn.open_table(ORIGINS)?;
            txn.open_table(FILES)?;
            txn.open_table(NODES)?;
            txn.open_table(CHILDREN)?;
        }
        ensure_root(&txn)?;
        if rebuild_tree {
            info!("path template changed: rebuilding the tree from the catalog");
            self.rebuild_tree_in(&txn, &self.template.read())?;
        }
        txn.commit()?;
        Ok((previous, generation))
    }

    /// Runs a write; after a failed one (a full or failing disk: redb then
    /// refuses every write until reopened) the database is reopened first,
    /// once the disk has room. Reads keep serving what is committed; the
    /// writer retries its changes. The failure and the recovery are logged
    /// once each, and shown by `write_failure` (the status).
    pub(super) fn writing<T>(&self, op: impl FnOnce() -> Result<T>) -> Result<T> {
        if self.write_failure.lock().is_some()
            && let Err(e) = self.reopen()
        {
            debug!("catalog not reopened yet: {e:#}");
        }
        let out = op();
        match &out {
            Ok(_) => {
                if let Some((since, why)) = self.write_failure.lock().take() {
                    let secs = now_ms().saturating_sub(since) / 1000;
                    info!("catalog writes work again (they failed for {secs} s: {why})");
                    crate::events::emit(
                        "catalog",
                        format!("catalog writes work again after {secs} s"),
                    );
                }
            }
            Err(e) if self.closed.load(Ordering::Acquire) => {
                debug!("write after the catalog closed: {e:#}");
            }
            Err(e) => {
                let why = write_error_text(e);
                let mut failure = self.write_failure.lock();
                match &mut *failure {
                    Some((_, old)) => *old = why,
                    None => {
                        warn!(
                            "catalog writes failing: {why}; reads serve what is committed, and the changes are applied again once a write works"
                        );
                        crate::events::emit("catalog", format!("catalog writes failing: {why}"));
                        *failure = Some((now_ms(), why));
                    }
                }
            }
        }
        out
    }

    /// Closes and reopens the database after a failed write (redb refuses
    /// writes until then), if the state disk has room for it.
    fn reopen(&self) -> Result<()> {
        let dir = self.path.parent().unwrap_or(Path::new("/"));
        let st = nix::sys::statvfs::statvfs(dir).context("statvfs of the state directory")?;
        let free = st.blocks_available().saturating_mul(st.fragment_size());
        if free < REOPEN_MIN_FREE_BYTES {
            bail!("only {free} bytes free on the state disk");
        }
        let Some(mut guard) = self.db.try_write_for(std::time::Duration::from_secs(5)) else {
            bail!("catalog transactions did not finish within 5 s");
        };
        if self.closed.load(Ordering::Acquire) {
            bail!("the catalog is closed");
        }
        drop(guard.take());
        let mut last = None;
        for _ in 0..3 {
            match open_database(&self.path) {
                Ok(db) => {
                    *guard = Some(db);
                    info!("catalog reopened after a failed write");
                    return Ok(());
                }
                Err(e) => {
                    last = Some(e);
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
            }
        }
        bail!(
            "cannot reopen the catalog {}: {}",
            self.path.display(),
            last.map(|e| e.to_string()).unwrap_or_default()
        )
    }

    /// Since when (ms since the epoch) and why catalog writes fail, if they do.
    pub fn write_failure(&self) -> Option<(u64, String)> {
        self.write_failure.lock().clone()
    }

    /// Changes the path template at run time: the tree is rebuilt from the
    /// file records in one commit (inodes stay with their paths). Returns
    /// what the kernel must forget: everything (and, for shims that cannot
    /// drop everything, every name under the root and the root).
    pub fn set_template(&self, template: Template) -> Result<Invalidations> {
        self.writing(|| self.set_template_now(template))
    }

    fn set_template_now(&self, template: Template) -> Result<Invalidations> {
        let mut inval = Invalidations::default();
        let db = self.db()?;
        let mut txn = db.begin_write()?;
        txn.set_quick_repair(true);
        {
            let children = txn.open_table(CHILDREN)?;
            let lo = ROOT_INO.to_be_bytes();
            let hi = (ROOT_INO + 1).to_be_bytes();
            for row in children.range(lo.as_slice()..hi.as_slice())? {
                let (k, _) = row?;
                let name = String::from_utf8_lossy(&k.value()[8..]).into_owned();
                inval.entries.push((ROOT_INO, name));
            }
        }
        txn.open_table(META)?
            .insert("template_hash", template_hash(&template))?;
        self.rebuild_tree_in(&txn, &template)?;
        txn.commit()?;
        inval.inodes.push(ROOT_INO);
        // Directories keep their inodes across the rebuild, their listings
        // do not: the kernel drops everything it cached.
        inval.everything = true;
        *self.template.write() = template;
        info!("path template changed: tree rebuilt");
        Ok(inval)
    }

    /// The origin roots the catalog has ids for.
    pub fn known_origins(&self) -> Result<std::collections::HashSet<std::path::PathBuf>> {
        let db = self.db()?;
        let txn = db.begin_read()?;
        let table = txn.open_table(ORIGINS)?;
        let mut out = std::collections::HashSet::new();
        for row in table.iter()? {
            let (k, _) = row?;
            out.insert(std::path::PathBuf::from(k.value()));
        }
        Ok(out)
    }

    /// Gives every configured origin its id (keeping known ones). Returns the
    /// origins indexed by id (`None` for ids not configured any more) and the
    /// ids that are no longer configured.
    pub fn assign_origins(
        &self,
        configured: &[std::path::PathBuf],
    ) -> Result<(Vec<Option<std::path::PathBuf>>, Vec<u32>)> {
        self.writing(|| self.assign_origins_now(configured))
    }

    #[allow(clippy::type_complexity)]
    fn assign_origins_now(
        &self,
        configured: &[std::path::PathBuf],
    ) -> Result<(Vec<Option<std::path::PathBuf>>, Vec<u32>)> {
        let db = self.db()?;
        let mut txn = db.begin_write()?;
        txn.set_quick_repair(true);
        let mut by_id: Vec<Option<std::path::PathBuf>> = Vec::new();
        let mut stale = Vec::new();
        {
            let mut table = txn.open_table(ORIGINS)?;
            let mut known: HashMap<String, u32> = HashMap::new();
            for row in table.iter()? {
                let (k, v) = row?;
                known.insert(k.value().to_string(), v.value());
            }
            let mut next = known.values().max().map_or(0, |m| m + 1);
            let mut wanted = std::collections::HashSet::new();
            for path in configured {
                let key = path.to_string_lossy().into_owned();
                let id = match known.get(&key) {
                    Some(id) => *id,
                    None => {
                        let id = next;
                        next += 1;
                        table.insert(key.as_str(), id)?;
                        known.insert(key.clone(), id);
                        id
                    }
                };
                wanted.insert(id);
                if by_id.len() <= id as usize {
                    by_id.resize(id as usize + 1, None);
                }
                by_id[id as usize] = Some(path.clone());
            }
            stale.extend(known.values().copied().filter(|id| !wanted.contains(id)));
        }
        txn.commit()?;
        stale.sort_unstable();
        Ok((by_id, stale))
    }

    /// Keys of every file of an origin.
    pub fn origin_file_keys(&self, origin: u32) -> Result<Vec<Vec<u8>>> {
        let db = self.db()?;
        let txn = db.begin_read()?;
        let files = txn.open_table(FILES)?;
        let lo = origin.to_be_bytes();
        let mut out = Vec::new();
        for row in files.range(lo.as_slice()..)? {
            let (k, _) = row?;
            let key = k.value();
            if split_file_key(key).is_none_or(|(o, _)| o != origin) {
                break;
            }
            out.push(key.to_vec());
        }
        Ok(out)
    }

    /// The listing cache: (directories, entries) held, and the catalog's
    /// page cache size in bytes.
    pub fn cache_figures(&self) -> (u64, u64, u64) {
        let c = self.listings.lock();
        (c.map.len() as u64, c.entries as u64, DB_CACHE_BYTES as u64)
    }

    /// The listing cache's limit in entries, and a new one (applied at once:
    /// the oldest listings go until it fits).
    pub fn listing_cache_limit(&self) -> usize {
        self.listings.lock().limit
    }

    pub fn set_listing_cache_limit(&self, entries: usize) {
        let mut c = self.listings.lock();
        c.limit = entries.max(1);
        c.evict(None);
    }

    /// The path template in use.
    pub fn template(&self) -> Template {
        self.template.read().clone()
    }

    /// Whether a full scan has completed at least once.
    pub fn scan_complete(&self) -> Result<bool> {
        let db = self.db()?;
        let txn = db.begin_read()?;
        let meta = txn.open_table(META)?;
        Ok(meta.get("scan_complete")?.is_some_and(|v| v.value() == 1))
    }

    /// The device (`st_dev`) of origin `origin`'s root at its last full scan.
    pub fn origin_device(&self, origin: u32) -> Result<Option<u64>> {
        let db = self.db()?;
        let txn = db.begin_read()?;
        let meta = txn.open_table(META)?;
        Ok(meta
            .get(format!("origin_dev/{origin}").as_str())?
            .map(|v| v.value()))
    }

    /// Records the device of an origin's root (written only when it changed).
    pub fn set_origin_device(&self, origin: u32, dev: u64) -> Result<()> {
        if self.origin_device(origin)? == Some(dev) {
            return Ok(());
        }
        self.writing(|| self.set_origin_device_now(origin, dev))
    }

    fn set_origin_device_now(&self, origin: u32, dev: u64) -> Result<()> {
        let db = self.db()?;
        let mut txn = db.begin_write()?;
        txn.set_quick_repair(true);
        txn.open_table(META)?
            .insert(format!("origin_dev/{origin}").as_str(), dev)?;
        txn.commit()?;
        Ok(())
    }

    pub fn file_count(&self) -> Result<u64> {
        let db = self.db()?;
        let txn = db.begin_read()?;
        Ok(txn.open_table(FILES)?.len()?)
    }
}

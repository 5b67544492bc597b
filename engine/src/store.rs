//! The catalog (redb) and the virtual tree that lives in it.
//!
//! Tables (schema version 3):
//! - `meta`: schema version, `next_ino`, `scan_complete`, template hash,
//!   `clean_close` (1 only between an orderly close and the next open),
//!   `origin_dev/<id>` (the device of an origin's root at its last full
//!   scan: an empty root on another device is a share that is not mounted);
//! - `inodes`: virtual path -> inode, for ever (an inode is never reused);
//! - `files`: origin file key (origin index BE + relative path) -> `FileEntry`;
//! - `nodes`: inode -> `NodeRec` (parent, name, kind, attributes);
//! - `children`: parent inode BE + name -> child inode (sorted listing).
//!
//! Requests read the tree through short read transactions and a bounded hot
//! cache of directory listings; nothing loads the whole tree at start. The
//! sync thread is the only writer: it applies changes in O(changed) inside
//! one write transaction per batch, then invalidates the cache entries it
//! touched and returns what the kernel must forget.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use parking_lot::{MappedRwLockReadGuard, Mutex, RwLock, RwLockReadGuard};
use redb::{
    Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
    WriteTransaction,
};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::model::FileRecord;
use crate::template::{Template, with_collision_suffix};

pub const SCHEMA_VERSION: u64 = 3;
pub const ROOT_INO: u64 = 1;

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const INODES: TableDefinition<&str, u64> = TableDefinition::new("inodes");
const FILES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("files");
const NODES: TableDefinition<u64, &[u8]> = TableDefinition::new("nodes");
const CHILDREN: TableDefinition<&[u8], u64> = TableDefinition::new("children");
/// Origin directory (as configured) -> the id used in file keys. An id is
/// never given to another directory, so reordering or removing origins in
/// the configuration can never make a key point into the wrong directory.
const ORIGINS: TableDefinition<&str, u32> = TableDefinition::new("origins");

/// Directory entries kept in the hot listing cache, in total (default of
/// `listing_cache_entries`).
pub const LISTING_CACHE_ENTRIES: usize = 256 * 1024;
/// redb's page cache.
const DB_CACHE_BYTES: usize = 16 * 1024 * 1024;

/// A file in the catalog: its record and the inode of its node.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FileEntry {
    pub rec: FileRecord,
    pub ino: u64,
}

/// A node of the virtual tree.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRec {
    pub parent: u64,
    pub name: String,
    /// The name the template asked for (before a collision suffix); lets a
    /// directory be found again by the name its files want.
    pub wanted: String,
    pub is_dir: bool,
    /// For files: the `files` key of the origin file.
    pub file_key: Vec<u8>,
    pub size_bytes: u64,
    pub mtime_ns: i64,
    /// For files: the content version (open handle).
    pub version: u64,
}

/// What the catalog knows of an origin file's identity on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KnownFile {
    pub size: u64,
    pub mtime_ns: i64,
    pub ino: u64,
    pub fingerprint: u64,
}

/// One entry of a directory listing.
#[derive(Clone, Debug)]
pub struct Child {
    pub name: Arc<str>,
    pub ino: u64,
    pub is_dir: bool,
}

pub fn file_key(origin: u32, rel: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(4 + rel.len());
    k.extend_from_slice(&origin.to_be_bytes());
    k.extend_from_slice(rel);
    k
}

pub fn split_file_key(key: &[u8]) -> Option<(u32, &[u8])> {
    let origin = u32::from_be_bytes(key.get(..4)?.try_into().ok()?);
    Some((origin, &key[4..]))
}

fn child_key(parent: u64, name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + name.len());
    k.extend_from_slice(&parent.to_be_bytes());
    k.extend_from_slice(name.as_bytes());
    k
}

fn template_hash(t: &Template) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in t.source().bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// What changed in the tree, for the kernel's caches.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Invalidations {
    /// (parent, name) entries that vanished or now point elsewhere.
    pub entries: Vec<(u64, String)>,
    /// Inodes whose attributes or content changed.
    pub inodes: Vec<u64>,
}

impl Invalidations {
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.inodes.is_empty()
    }
}

struct ListingCache {
    map: HashMap<u64, Arc<Vec<Child>>>,
    order: VecDeque<u64>,
    entries: usize,
    /// Most entries held (hot: `set_listing_cache_limit`).
    limit: usize,
}

impl Default for ListingCache {
    fn default() -> Self {
        ListingCache {
            map: HashMap::new(),
            order: VecDeque::new(),
            entries: 0,
            limit: LISTING_CACHE_ENTRIES,
        }
    }
}

impl ListingCache {
    fn get(&mut self, ino: u64) -> Option<Arc<Vec<Child>>> {
        self.map.get(&ino).cloned()
    }

    fn insert(&mut self, ino: u64, list: Arc<Vec<Child>>) {
        if let Some(old) = self.map.insert(ino, list.clone()) {
            self.entries -= old.len();
        } else {
            self.order.push_back(ino);
        }
        self.entries += list.len();
        self.evict(Some(ino));
    }

    /// Drops the oldest listings until the cache is within its limit; `keep`
    /// (the one just inserted) stays even when it alone is over it.
    fn evict(&mut self, keep: Option<u64>) {
        while self.entries > self.limit {
            let Some(victim) = self.order.pop_front() else {
                break;
            };
            if Some(victim) == keep && self.order.is_empty() {
                self.order.push_back(victim);
                break;
            }
            if let Some(old) = self.map.remove(&victim) {
                self.entries -= old.len();
            }
        }
    }

    fn remove(&mut self, ino: u64) {
        if let Some(old) = self.map.remove(&ino) {
            self.entries -= old.len();
            self.order.retain(|i| *i != ino);
        }
    }
}

/// The catalog and the tree in it.
pub struct Store {
    /// `None` once closed. Every transaction holds a read guard for its
    /// whole life, so `close` waits for the ones in flight (bounded).
    db: RwLock<Option<Database>>,
    /// Hot: a reload may change it (`set_template`).
    template: RwLock<Template>,
    listings: Mutex<ListingCache>,
    /// How the previous engine left the catalog.
    previous_close: PreviousClose,
}

/// How the catalog was left by the engine before this one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PreviousClose {
    /// A new catalog.
    New,
    /// Closed in order (`Store::close`): nothing to recover.
    Clean,
    /// The previous engine died (kill, crash, power): redb recovered the
    /// last commit on open.
    Unclean,
}

impl PreviousClose {
    pub fn as_str(self) -> &'static str {
        match self {
            PreviousClose::New => "new",
            PreviousClose::Clean => "clean",
            PreviousClose::Unclean => "unclean",
        }
    }
}

impl Store {
    /// Opens (or creates) the catalog. Fails on a corrupt file, an unknown
    /// schema version or missing permissions; see `open_or_rebuild`.
    pub fn open(path: &Path, template: Template) -> Result<Store> {
        let mut builder = Database::builder();
        builder.set_cache_size(DB_CACHE_BYTES);
        builder.set_repair_callback(|session| {
            if session.progress() == 0.0 {
                warn!("catalog was not closed cleanly and has no allocator record: full repair");
            }
        });
        let db = builder
            .create(path)
            .with_context(|| format!("cannot open catalog {}", path.display()))?;
        let mut store = Store {
            db: RwLock::new(Some(db)),
            template: RwLock::new(template),
            listings: Mutex::new(ListingCache::default()),
            previous_close: PreviousClose::New,
        };
        store.previous_close = store.init_schema(path)?;
        Ok(store)
    }

    /// The open database, for one transaction (hold the guard as long as
    /// the transaction). Recursive: never waits behind a pending `close`
    /// while the same thread holds another guard.
    fn db(&self) -> Result<MappedRwLockReadGuard<'_, Database>> {
        RwLockReadGuard::try_map(self.db.read_recursive(), Option::as_ref)
            .map_err(|_| anyhow::anyhow!("the catalog is closed (engine stopping)"))
    }

    /// How the engine before this one left the catalog.
    pub fn previous_close(&self) -> PreviousClose {
        self.previous_close
    }

    /// Closes the catalog in order: waits (up to `timeout`) for transactions
    /// in flight, records the clean close and closes the database, so the
    /// next open has nothing to recover. Later calls fail with "closed".
    pub fn close(&self, timeout: std::time::Duration) -> Result<()> {
        let Some(mut guard) = self.db.try_write_for(timeout) else {
            bail!(
                "a catalog transaction did not finish within {} ms",
                timeout.as_millis()
            );
        };
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

    /// Opens the catalog; a catalog that cannot be opened is moved aside (one
    /// log line says where) and a new one is created, to be filled by a scan.
    pub fn open_or_rebuild(path: &Path, template: Template) -> Result<Store> {
        match Store::open(path, template.clone()) {
            Ok(s) => Ok(s),
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

    fn init_schema(&self, path: &Path) -> Result<PreviousClose> {
        let db = self.db()?;
        let mut txn = db.begin_write()?;
        // Every commit records the allocator state, so that reopening after a
        // kill is a quick repair, not a full one.
        txn.set_quick_repair(true);
        let mut rebuild_tree = false;
        let previous;
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
                Some(old @ (1 | 2)) => {
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
                Some(SCHEMA_VERSION) => {}
                Some(v) => bail!(
                    "catalog {} has schema version {v}; this engine knows {SCHEMA_VERSION}",
                    path.display()
                ),
            }
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
        Ok(previous)
    }

    /// Changes the path template at run time: the tree is rebuilt from the
    /// file records in one commit (inodes stay with their paths). Returns
    /// what the kernel must forget: every name under the root, and the root.
    pub fn set_template(&self, template: Template) -> Result<Invalidations> {
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

    // ---------------------------------------------------------------- reads

    pub fn node(&self, ino: u64) -> Result<Option<NodeRec>> {
        let db = self.db()?;
        let txn = db.begin_read()?;
        let nodes = txn.open_table(NODES)?;
        match nodes.get(ino)? {
            Some(v) => Ok(Some(
                postcard::from_bytes(v.value()).context("corrupt node record")?,
            )),
            None => Ok(None),
        }
    }

    pub fn lookup(&self, parent: u64, name: &str) -> Result<Option<(u64, NodeRec)>> {
        let db = self.db()?;
        let txn = db.begin_read()?;
        let children = txn.open_table(CHILDREN)?;
        let Some(ino) = children
            .get(child_key(parent, name).as_slice())?
            .map(|v| v.value())
        else {
            return Ok(None);
        };
        let nodes = txn.open_table(NODES)?;
        match nodes.get(ino)? {
            Some(v) => Ok(Some((
                ino,
                postcard::from_bytes(v.value()).context("corrupt node record")?,
            ))),
            None => Ok(None),
        }
    }

    /// The sorted listing of a directory (cached).
    pub fn children(&self, dir: u64) -> Result<Arc<Vec<Child>>> {
        if let Some(l) = self.listings.lock().get(dir) {
            return Ok(l);
        }
        let db = self.db()?;
        let txn = db.begin_read()?;
        let children = txn.open_table(CHILDREN)?;
        let nodes = txn.open_table(NODES)?;
        let lo = dir.to_be_bytes();
        let hi = (dir + 1).to_be_bytes();
        let mut list = Vec::new();
        for row in children.range(lo.as_slice()..hi.as_slice())? {
            let (k, v) = row?;
            let name = String::from_utf8_lossy(&k.value()[8..]).into_owned();
            let ino = v.value();
            let is_dir = match nodes.get(ino)? {
                Some(n) => postcard::from_bytes::<NodeRec>(n.value())
                    .map(|n| n.is_dir)
                    .unwrap_or(false),
                None => false,
            };
            list.push(Child {
                name: name.into(),
                ino,
                is_dir,
            });
        }
        let list = Arc::new(list);
        self.listings.lock().insert(dir, list.clone());
        Ok(list)
    }

    /// Several nodes in one read transaction.
    pub fn nodes(&self, inos: &[u64]) -> Result<Vec<Option<NodeRec>>> {
        let db = self.db()?;
        let txn = db.begin_read()?;
        let nodes = txn.open_table(NODES)?;
        inos.iter()
            .map(|ino| match nodes.get(*ino)? {
                Some(v) => Ok(Some(
                    postcard::from_bytes(v.value()).context("corrupt node record")?,
                )),
                None => Ok(None),
            })
            .collect()
    }

    pub fn file(&self, key: &[u8]) -> Result<Option<FileEntry>> {
        let db = self.db()?;
        let txn = db.begin_read()?;
        let files = txn.open_table(FILES)?;
        match files.get(key)? {
            Some(v) => Ok(Some(
                postcard::from_bytes(v.value()).context("corrupt file record")?,
            )),
            None => Ok(None),
        }
    }

    /// (size, mtime, origin inode, fingerprint) of every file of `origin`
    /// under `prefix` (relative path bytes; empty = the whole origin).
    pub fn file_stats(&self, origin: u32, prefix: &[u8]) -> Result<HashMap<Vec<u8>, KnownFile>> {
        let db = self.db()?;
        let txn = db.begin_read()?;
        let files = txn.open_table(FILES)?;
        let lo = file_key(origin, prefix);
        let mut out = HashMap::new();
        for row in files.range(lo.as_slice()..)? {
            let (k, v) = row?;
            let key = k.value();
            let Some((o, rel)) = split_file_key(key) else {
                break;
            };
            if o != origin || !rel.starts_with(prefix) {
                break;
            }
            let entry: FileEntry =
                postcard::from_bytes(v.value()).context("corrupt file record")?;
            out.insert(
                rel.to_vec(),
                KnownFile {
                    size: entry.rec.size_bytes,
                    mtime_ns: entry.rec.mtime_ns,
                    ino: entry.rec.origin_ino,
                    fingerprint: entry.rec.fingerprint,
                },
            );
        }
        Ok(out)
    }

    /// (files, nodes, bytes of all files), kept up to date by every write.
    pub fn totals(&self) -> Result<(u64, u64, u64)> {
        let db = self.db()?;
        let txn = db.begin_read()?;
        let meta = txn.open_table(META)?;
        let get = |k: &str| -> Result<u64> { Ok(meta.get(k)?.map_or(0, |v| v.value())) };
        Ok((get("file_count")?, get("node_count")?, get("total_bytes")?))
    }

    // --------------------------------------------------------------- writes

    /// Applies a batch of changes in one transaction: `upserts` (new or
    /// changed files) and `removals` (file keys that are gone). Upserts are
    /// applied in (virtual path, origin path) order, so collision suffixes
    /// do not depend on scan timing. Returns what the kernel must forget.
    pub fn apply(
        &self,
        mut upserts: Vec<FileRecord>,
        removals: &[Vec<u8>],
        mark_scan_complete: bool,
    ) -> Result<Invalidations> {
        let mut inval = Invalidations::default();
        let mut touched_dirs = Vec::new();
        let db = self.db()?;
        let mut txn = db.begin_write()?;
        txn.set_quick_repair(true);
        {
            let mut w = Writer::new(&txn)?;
            for key in removals {
                if let Some(old) = w.take_file(key)? {
                    w.remove_node(old.ino, &mut inval, &mut touched_dirs)?;
                }
            }
            let template = self.template.read();
            let mut rendered: Vec<(Vec<String>, FileRecord)> = upserts
                .drain(..)
                .map(|r| (template.render(&r), r))
                .collect();
            drop(template);
            rendered.sort_by(|a, b| {
                (&a.0, a.1.origin, &a.1.rel_path).cmp(&(&b.0, b.1.origin, &b.1.rel_path))
            });
            for (path, rec) in rendered {
                w.upsert(rec, &path, &mut inval, &mut touched_dirs)?;
            }
            if mark_scan_complete {
                w.meta.insert("scan_complete", 1)?;
            }
            w.finish()?;
        }
        txn.commit()?;
        let mut cache = self.listings.lock();
        for d in touched_dirs {
            cache.remove(d);
        }
        Ok(inval)
    }

    /// Rebuilds nodes and children from the file records (template change).
    fn rebuild_tree_in(&self, txn: &WriteTransaction, template: &Template) -> Result<()> {
        let entries: Vec<FileRecord> = {
            let files = txn.open_table(FILES)?;
            let mut v = Vec::new();
            for row in files.iter()? {
                let (_, val) = row?;
                let e: FileEntry =
                    postcard::from_bytes(val.value()).context("corrupt file record")?;
                v.push(e.rec);
            }
            v
        };
        txn.delete_table(NODES)?;
        txn.delete_table(CHILDREN)?;
        txn.open_table(NODES)?;
        txn.open_table(CHILDREN)?;
        txn.open_table(META)?.insert("node_count", 1)?;
        ensure_root(txn)?;
        let mut w = Writer::new(txn)?;
        let mut rendered: Vec<(Vec<String>, FileRecord)> = entries
            .into_iter()
            .map(|r| (template.render(&r), r))
            .collect();
        rendered.sort_by(|a, b| {
            (&a.0, a.1.origin, &a.1.rel_path).cmp(&(&b.0, b.1.origin, &b.1.rel_path))
        });
        let (mut inval, mut dirs) = (Invalidations::default(), Vec::new());
        for (path, rec) in rendered {
            w.take_file(&file_key(rec.origin, &rec.rel_path))?;
            w.upsert(rec, &path, &mut inval, &mut dirs)?;
        }
        w.finish()?;
        self.listings.lock().map.clear();
        Ok(())
    }
}

fn ensure_root(txn: &WriteTransaction) -> Result<()> {
    let mut nodes = txn.open_table(NODES)?;
    if nodes.get(ROOT_INO)?.is_none() {
        let root = NodeRec {
            parent: ROOT_INO,
            name: String::new(),
            wanted: String::new(),
            is_dir: true,
            file_key: Vec::new(),
            size_bytes: 0,
            mtime_ns: now_ns(),
            version: 0,
        };
        nodes.insert(ROOT_INO, postcard::to_allocvec(&root)?.as_slice())?;
    }
    Ok(())
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// The tables of one write transaction, with the tree operations.
struct Writer<'t> {
    meta: redb::Table<'t, &'static str, u64>,
    inodes: redb::Table<'t, &'static str, u64>,
    files: redb::Table<'t, &'static [u8], &'static [u8]>,
    nodes: redb::Table<'t, u64, &'static [u8]>,
    children: redb::Table<'t, &'static [u8], u64>,
    next_ino: u64,
    files_delta: i64,
    nodes_delta: i64,
    bytes_delta: i64,
}

impl<'t> Writer<'t> {
    fn new(txn: &'t WriteTransaction) -> Result<Writer<'t>> {
        let meta = txn.open_table(META)?;
        let next_ino = meta.get("next_ino")?.map_or(ROOT_INO + 1, |v| v.value());
        Ok(Writer {
            meta,
            inodes: txn.open_table(INODES)?,
            files: txn.open_table(FILES)?,
            nodes: txn.open_table(NODES)?,
            children: txn.open_table(CHILDREN)?,
            next_ino,
            files_delta: 0,
            nodes_delta: 0,
            bytes_delta: 0,
        })
    }

    fn finish(mut self) -> Result<()> {
        self.meta.insert("next_ino", self.next_ino)?;
        for (key, delta) in [
            ("file_count", self.files_delta),
            ("node_count", self.nodes_delta),
            ("total_bytes", self.bytes_delta),
        ] {
            let old = self.meta.get(key)?.map_or(0, |v| v.value());
            self.meta.insert(key, old.saturating_add_signed(delta))?;
        }
        Ok(())
    }

    fn put_file(&mut self, key: &[u8], entry: &FileEntry) -> Result<()> {
        let old = self
            .files
            .insert(key, postcard::to_allocvec(entry)?.as_slice())?;
        if old.is_none() {
            self.files_delta += 1;
        }
        self.bytes_delta += entry.rec.size_bytes as i64;
        Ok(())
    }

    fn inode_for(&mut self, path: &str) -> Result<u64> {
        if let Some(v) = self.inodes.get(path)? {
            return Ok(v.value());
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        self.inodes.insert(path, ino)?;
        Ok(ino)
    }

    fn get_node(&self, ino: u64) -> Result<Option<NodeRec>> {
        match self.nodes.get(ino)? {
            Some(v) => Ok(Some(
                postcard::from_bytes(v.value()).context("corrupt node record")?,
            )),
            None => Ok(None),
        }
    }

    fn put_node(&mut self, ino: u64, n: &NodeRec) -> Result<()> {
        if self
            .nodes
            .insert(ino, postcard::to_allocvec(n)?.as_slice())?
            .is_none()
        {
            self.nodes_delta += 1;
        }
        Ok(())
    }

    fn take_file(&mut self, key: &[u8]) -> Result<Option<FileEntry>> {
        let old: Option<FileEntry> = match self.files.remove(key)? {
            Some(v) => Some(postcard::from_bytes(v.value()).context("corrupt file record")?),
            None => None,
        };
        if let Some(e) = &old {
            self.files_delta -= 1;
            self.bytes_delta -= e.rec.size_bytes as i64;
        }
        Ok(old)
    }

    /// The virtual path of a node, components joined by '/'.
    fn path_of(&self, mut ino: u64) -> Result<String> {
        let mut parts = Vec::new();
        while ino != ROOT_INO {
            let Some(n) = self.get_node(ino)? else { break };
            parts.push(n.name);
            ino = n.parent;
        }
        parts.reverse();
        Ok(parts.join("/"))
    }

    fn upsert(
        &mut self,
        rec: FileRecord,
        path: &[String],
        inval: &mut Invalidations,
        dirs: &mut Vec<u64>,
    ) -> Result<()> {
        let key = file_key(rec.origin, &rec.rel_path);
        if let Some(old) = self.take_file(&key)? {
            // Same place in the tree? Then only the attributes change.
            if let Some(mut node) = self.get_node(old.ino)? {
                let same_place = self.wanted_path(old.ino)? == *path;
                if same_place {
                    node.size_bytes = rec.size_bytes;
                    node.mtime_ns = rec.mtime_ns;
                    node.version = rec.version();
                    self.put_node(old.ino, &node)?;
                    inval.inodes.push(old.ino);
                    let ino = old.ino;
                    self.put_file(&key, &FileEntry { rec, ino })?;
                    return Ok(());
                }
            }
            self.remove_node(old.ino, inval, dirs)?;
        }
        let (file_name, dir_names) = path.split_last().context("empty virtual path")?;
        let mut parent = ROOT_INO;
        for name in dir_names {
            parent = self.dir(parent, name, dirs)?;
        }
        let name = self.unique_name(parent, file_name, true)?;
        let full = {
            let p = self.path_of(parent)?;
            if p.is_empty() {
                name.clone()
            } else {
                format!("{p}/{name}")
            }
        };
        let ino = self.inode_for(&full)?;
        let node = NodeRec {
            parent,
            name: name.clone(),
            wanted: file_name.clone(),
            is_dir: false,
            file_key: key.clone(),
            size_bytes: rec.size_bytes,
            mtime_ns: rec.mtime_ns,
            version: rec.version(),
        };
        self.put_node(ino, &node)?;
        self.children
            .insert(child_key(parent, &name).as_slice(), ino)?;
        self.touch_dir(parent, dirs)?;
        inval.entries.push((parent, name));
        self.put_file(&key, &FileEntry { rec, ino })?;
        Ok(())
    }

    /// The template path a node was created for (its ancestors' wanted names).
    fn wanted_path(&self, mut ino: u64) -> Result<Vec<String>> {
        let mut parts = Vec::new();
        while ino != ROOT_INO {
            let Some(n) = self.get_node(ino)? else { break };
            parts.push(n.wanted);
            ino = n.parent;
        }
        parts.reverse();
        Ok(parts)
    }

    /// The directory that files wanting `name` under `parent` live in.
    fn dir(&mut self, parent: u64, name: &str, dirs: &mut Vec<u64>) -> Result<u64> {
        // The plain name, or a suffixed one, holding a directory made for `name`.
        let mut n = 1;
        loop {
            let candidate = if n == 1 {
                name.to_string()
            } else {
                with_collision_suffix(name, false, n)
            };
            match self
                .children
                .get(child_key(parent, &candidate).as_slice())?
                .map(|v| v.value())
            {
                None => break,
                Some(ino) => {
                    if let Some(node) = self.get_node(ino)?
                        && node.is_dir
                        && node.wanted == name
                    {
                        return Ok(ino);
                    }
                }
            }
            n += 1;
        }
        let actual = self.unique_name(parent, name, false)?;
        let full = {
            let p = self.path_of(parent)?;
            if p.is_empty() {
                actual.clone()
            } else {
                format!("{p}/{actual}")
            }
        };
        let ino = self.inode_for(&full)?;
        let node = NodeRec {
            parent,
            name: actual.clone(),
            wanted: name.to_string(),
            is_dir: true,
            file_key: Vec::new(),
            size_bytes: 4096,
            mtime_ns: now_ns(),
            version: 0,
        };
        self.put_node(ino, &node)?;
        self.children
            .insert(child_key(parent, &actual).as_slice(), ino)?;
        self.touch_dir(parent, dirs)?;
        dirs.push(ino);
        Ok(ino)
    }

    fn unique_name(&self, parent: u64, name: &str, is_file: bool) -> Result<String> {
        let mut candidate = name.to_string();
        let mut n = 2;
        while self
            .children
            .get(child_key(parent, &candidate).as_slice())?
            .is_some()
        {
            candidate = with_collision_suffix(name, is_file, n);
            n += 1;
        }
        Ok(candidate)
    }

    fn touch_dir(&mut self, dir: u64, dirs: &mut Vec<u64>) -> Result<()> {
        if let Some(mut n) = self.get_node(dir)? {
            n.mtime_ns = now_ns();
            self.put_node(dir, &n)?;
        }
        dirs.push(dir);
        Ok(())
    }

    /// Removes a node and every directory it leaves empty.
    fn remove_node(
        &mut self,
        ino: u64,
        inval: &mut Invalidations,
        dirs: &mut Vec<u64>,
    ) -> Result<()> {
        let Some(node) = self.get_node(ino)? else {
            return Ok(());
        };
        if self.nodes.remove(ino)?.is_some() {
            self.nodes_delta -= 1;
        }
        self.children
            .remove(child_key(node.parent, &node.name).as_slice())?;
        inval.entries.push((node.parent, node.name.clone()));
        inval.inodes.push(ino);
        self.touch_dir(node.parent, dirs)?;
        dirs.push(ino);
        let parent = node.parent;
        if parent != ROOT_INO && self.is_empty_dir(parent)? {
            self.remove_node(parent, inval, dirs)?;
        }
        Ok(())
    }

    fn is_empty_dir(&self, dir: u64) -> Result<bool> {
        let lo = dir.to_be_bytes();
        let hi = (dir + 1).to_be_bytes();
        Ok(self
            .children
            .range(lo.as_slice()..hi.as_slice())?
            .next()
            .is_none())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{AudioProps, Tags};
    use crate::template::DEFAULT_TEMPLATE;

    fn rec(path: &str, artist: &str, title: &str) -> FileRecord {
        FileRecord {
            origin: 0,
            rel_path: path.as_bytes().to_vec(),
            size_bytes: 10,
            mtime_ns: 5,
            origin_ino: 1,
            fingerprint: 0,
            format: None,
            tags: Tags {
                artist: Some(artist.into()),
                album: Some("Album".into()),
                title: Some(title.into()),
                track: Some(1),
                ..Tags::default()
            },
            props: AudioProps::default(),
            probe_error: None,
        }
    }

    fn open(dir: &Path) -> Store {
        Store::open(
            &dir.join("c.redb"),
            Template::parse(DEFAULT_TEMPLATE).unwrap(),
        )
        .unwrap()
    }

    fn ls(s: &Store, dir: u64) -> Vec<String> {
        s.children(dir)
            .unwrap()
            .iter()
            .map(|c| c.name.to_string())
            .collect()
    }

    fn resolve(s: &Store, path: &str) -> Option<u64> {
        let mut ino = ROOT_INO;
        for part in path.split('/') {
            ino = s.lookup(ino, part).unwrap()?.0;
        }
        Some(ino)
    }

    #[test]
    fn collisions_are_deterministic_whatever_the_batch_order() {
        let dir = tempfile::tempdir().unwrap();
        let files = vec![
            rec("b.flac", "A", "Song"),
            rec("a.flac", "A", "Song"),
            rec("c.flac", "A", "Song"),
        ];
        let s1 = {
            let d = dir.path().join("1");
            std::fs::create_dir(&d).unwrap();
            let s = open(&d);
            s.apply(files.clone(), &[], true).unwrap();
            s
        };
        let mut rev = files;
        rev.reverse();
        let d = dir.path().join("2");
        std::fs::create_dir(&d).unwrap();
        let s2 = open(&d);
        s2.apply(rev, &[], true).unwrap();
        let album = resolve(&s1, "A/Album").unwrap();
        assert_eq!(
            ls(&s1, album),
            ["01 - Song (2).flac", "01 - Song (3).flac", "01 - Song.flac"]
        );
        for name in ls(&s1, album) {
            let k1 = s1
                .node(resolve(&s1, &format!("A/Album/{name}")).unwrap())
                .unwrap()
                .unwrap()
                .file_key;
            let k2 = s2
                .node(resolve(&s2, &format!("A/Album/{name}")).unwrap())
                .unwrap()
                .unwrap()
                .file_key;
            assert_eq!(k1, k2);
        }
    }

    #[test]
    fn changes_apply_incrementally_and_prune_empty_dirs() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path());
        s.apply(
            vec![rec("a.mp3", "A", "One"), rec("b.mp3", "B", "Two")],
            &[],
            true,
        )
        .unwrap();
        let one = resolve(&s, "A/Album/01 - One.mp3").unwrap();
        assert_eq!(ls(&s, ROOT_INO), ["A", "B"]);
        // Retag b.mp3 to artist A: B disappears, A/Album gains it.
        let inval = s.apply(vec![rec("b.mp3", "A", "Two")], &[], false).unwrap();
        assert_eq!(ls(&s, ROOT_INO), ["A"]);
        assert!(
            inval
                .entries
                .iter()
                .any(|(p, n)| *p == ROOT_INO && n == "B")
        );
        assert_eq!(
            ls(&s, resolve(&s, "A/Album").unwrap()),
            ["01 - One.mp3", "01 - Two.mp3"]
        );
        // Modify a.mp3 in place (same tags, new size): same inode, new size.
        let mut changed = rec("a.mp3", "A", "One");
        changed.size_bytes = 99;
        let inval = s.apply(vec![changed], &[], false).unwrap();
        assert_eq!(inval.inodes, [one]);
        assert_eq!(resolve(&s, "A/Album/01 - One.mp3"), Some(one));
        assert_eq!(s.node(one).unwrap().unwrap().size_bytes, 99);
        // Delete everything: only the root is left.
        s.apply(
            vec![],
            &[file_key(0, b"a.mp3"), file_key(0, b"b.mp3")],
            false,
        )
        .unwrap();
        assert!(ls(&s, ROOT_INO).is_empty());
        assert!(s.node(one).unwrap().is_none());
        // The path comes back with its old inode.
        s.apply(vec![rec("a.mp3", "A", "One")], &[], false).unwrap();
        assert_eq!(resolve(&s, "A/Album/01 - One.mp3"), Some(one));
    }

    #[test]
    fn listing_cache_limit_applies_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path());
        let recs: Vec<FileRecord> = (0..20)
            .map(|i| rec(&format!("{i}.mp3"), &format!("Artist {i}"), "T"))
            .collect();
        s.apply(recs, &[], true).unwrap();
        // Root (20 entries) and every artist and album directory (1 each).
        for name in ls(&s, ROOT_INO) {
            let artist = resolve(&s, &name).unwrap();
            ls(&s, resolve(&s, &format!("{name}/Album")).unwrap());
            ls(&s, artist);
        }
        let (dirs, entries, _) = s.cache_figures();
        assert_eq!((dirs, entries), (41, 60));
        // Shrinking drops the oldest listings until it fits.
        s.set_listing_cache_limit(10);
        let (dirs, entries, _) = s.cache_figures();
        assert!(entries <= 10 && dirs == entries, "{dirs} {entries}");
        assert_eq!(s.listing_cache_limit(), 10);
        // A listing larger than the whole limit is still served (and kept
        // alone until the next insert).
        assert_eq!(ls(&s, ROOT_INO).len(), 20);
        let (dirs, entries, _) = s.cache_figures();
        assert_eq!((dirs, entries), (1, 20));
        ls(&s, resolve(&s, "Artist 3").unwrap());
        assert!(s.cache_figures().1 <= 10);
        // Listings stay right whatever was evicted.
        assert_eq!(ls(&s, resolve(&s, "Artist 7").unwrap()), ["Album"]);
    }

    #[test]
    fn reopen_keeps_tree_and_inodes() {
        let dir = tempfile::tempdir().unwrap();
        let ino = {
            let s = open(dir.path());
            s.apply(vec![rec("a.mp3", "A", "One")], &[], true).unwrap();
            resolve(&s, "A/Album/01 - One.mp3").unwrap()
        };
        let s = open(dir.path());
        assert!(s.scan_complete().unwrap());
        assert_eq!(resolve(&s, "A/Album/01 - One.mp3"), Some(ino));
    }

    #[test]
    fn template_change_rebuilds_tree_keeping_known_paths() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = open(dir.path());
            s.apply(vec![rec("a.mp3", "A", "One")], &[], true).unwrap();
        }
        let s = Store::open(
            &dir.path().join("c.redb"),
            Template::parse("{artist}/{title}.{ext}").unwrap(),
        )
        .unwrap();
        assert!(resolve(&s, "A/One.mp3").is_some());
        assert!(resolve(&s, "A/Album").is_none());
    }

    #[test]
    fn unknown_schema_version_is_refused_then_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.redb");
        {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(META)
                .unwrap()
                .insert("schema_version", 99)
                .unwrap();
            txn.commit().unwrap();
        }
        let t = Template::parse(DEFAULT_TEMPLATE).unwrap();
        let err = Store::open(&path, t.clone())
            .err()
            .expect("a future schema was accepted");
        assert!(format!("{err:#}").contains("schema version 99"), "{err:#}");
        let s = Store::open_or_rebuild(&path, t).unwrap();
        assert!(!s.scan_complete().unwrap());
    }

    #[test]
    fn garbage_catalog_is_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.redb");
        std::fs::write(&path, vec![0x42u8; 8192]).unwrap();
        assert!(Store::open(&path, Template::parse(DEFAULT_TEMPLATE).unwrap()).is_err());
        let s = Store::open_or_rebuild(&path, Template::parse(DEFAULT_TEMPLATE).unwrap()).unwrap();
        assert_eq!(s.file_count().unwrap(), 0);
        let aside: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains("broken"))
            .collect();
        assert_eq!(aside.len(), 1);
    }
}

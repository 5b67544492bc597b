//! Opening and closing the catalog, its schema, and its meta records.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use parking_lot::{MappedRwLockReadGuard, Mutex, RwLock, RwLockReadGuard};
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata};
use tracing::{info, warn};

use crate::catalog::listing::ListingCache;
use crate::catalog::records::{Invalidations, PreviousClose};
use crate::catalog::tables::{
    CHILDREN, DB_CACHE_BYTES, FILES, INODES, META, NODES, ORIGINS, ROOT_INO, SCHEMA_VERSION,
    split_file_key, template_hash,
};
use crate::catalog::tree::ensure_root;
use crate::model::template::Template;

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
    pub(super) fn db(&self) -> Result<MappedRwLockReadGuard<'_, Database>> {
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
}

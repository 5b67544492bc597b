//! The request path's reads: short read transactions, listings through the
//! hot cache.

use std::sync::Arc;

use anyhow::{Context, Result};
use redb::ReadableDatabase;

use crate::catalog::known::KnownFiles;
use crate::catalog::records::{Child, FileEntry, KnownFile, NodeRec};
use crate::catalog::store::Store;
use crate::catalog::tables::{
    CHILDREN, FILES, META, NODES, ROOT_INO, child_key, file_key, split_child_value, split_file_key,
};

impl Store {
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
            .map(|v| split_child_value(v.value()).0)
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
        let lo = dir.to_be_bytes();
        let hi = (dir + 1).to_be_bytes();
        let mut list = Vec::new();
        for row in children.range(lo.as_slice()..hi.as_slice())? {
            let (k, v) = row?;
            let name = String::from_utf8_lossy(&k.value()[8..]).into_owned();
            let (ino, is_dir) = split_child_value(v.value());
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

    /// The tree paths (relative to the root) of the nodes of these origin
    /// files, in one read transaction; `None` for a file not in the tree.
    pub fn tree_paths(&self, keys: &[Vec<u8>]) -> Result<Vec<Option<String>>> {
        let db = self.db()?;
        let txn = db.begin_read()?;
        let files = txn.open_table(FILES)?;
        let nodes = txn.open_table(NODES)?;
        keys.iter()
            .map(|key| {
                let Some(v) = files.get(key.as_slice())? else {
                    return Ok(None);
                };
                let entry: FileEntry =
                    postcard::from_bytes(v.value()).context("corrupt file record")?;
                let mut names = Vec::new();
                let mut ino = entry.ino;
                // Bounded: a tree is far shallower than this.
                for _ in 0..256 {
                    if ino == ROOT_INO {
                        names.reverse();
                        return Ok(Some(names.join("/")));
                    }
                    let Some(n) = nodes.get(ino)? else {
                        return Ok(None);
                    };
                    let n: NodeRec =
                        postcard::from_bytes(n.value()).context("corrupt node record")?;
                    names.push(n.name);
                    ino = n.parent;
                }
                Ok(None)
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
    /// Every file of `origin` under `prefix` that the catalog knows, with
    /// what a delta scan compares (packed: see `KnownFiles`).
    pub fn file_stats(&self, origin: u32, prefix: &[u8]) -> Result<KnownFiles> {
        let db = self.db()?;
        let txn = db.begin_read()?;
        let files = txn.open_table(FILES)?;
        let lo = file_key(origin, prefix);
        let mut out = KnownFiles::default();
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
            out.push(
                rel,
                KnownFile {
                    size: entry.rec.size_bytes,
                    mtime_ns: entry.rec.mtime_ns,
                    ino: entry.rec.origin_ino,
                    fingerprint: entry.rec.fingerprint,
                },
            );
        }
        Ok(out.finish())
    }

    /// Whether the catalog holds any file of `origin` (one key read, where
    /// `file_stats` would load them all).
    pub fn has_files(&self, origin: u32) -> Result<bool> {
        let db = self.db()?;
        let txn = db.begin_read()?;
        let files = txn.open_table(FILES)?;
        let lo = file_key(origin, b"");
        let first = files.range(lo.as_slice()..)?.next().transpose()?;
        Ok(first.is_some_and(|(k, _)| split_file_key(k.value()).is_some_and(|(o, _)| o == origin)))
    }

    /// (files, nodes, bytes of all files), kept up to date by every write.
    pub fn totals(&self) -> Result<(u64, u64, u64)> {
        let db = self.db()?;
        let txn = db.begin_read()?;
        let meta = txn.open_table(META)?;
        let get = |k: &str| -> Result<u64> { Ok(meta.get(k)?.map_or(0, |v| v.value())) };
        Ok((get("file_count")?, get("node_count")?, get("total_bytes")?))
    }
}

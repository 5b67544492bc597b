//! Reads for the search index (views): every track with its tree path, the
//! path of one node, when a path was first seen, the commit sequence.

use std::collections::HashMap;

use anyhow::{Context, Result};
use redb::{ReadableDatabase, ReadableTable};

use crate::catalog::records::{FileEntry, NodeRec};
use crate::catalog::store::Store;
use crate::catalog::tables::{FILES, FIRST_SEEN, META, NODES, ROOT_INO};

/// A file of the tree as the search index sees it.
#[derive(Clone, Debug)]
pub struct Track {
    pub ino: u64,
    pub parent: u64,
    /// The tree path, components joined by '/' (no leading '/').
    pub path: String,
    pub entry: FileEntry,
    /// When the path was first seen (ns since the epoch); the file's mtime
    /// for paths older than the table.
    pub first_seen_ns: i64,
}

impl Store {
    /// The commit sequence number (grows with every commit).
    pub fn commit_seq(&self) -> Result<u64> {
        let db = self.db()?;
        let txn = db.begin_read()?;
        let meta = txn.open_table(META)?;
        Ok(meta.get("commit_seq")?.map_or(0, |v| v.value()))
    }

    /// The track at file inode `ino`, if it is one.
    pub fn track(&self, ino: u64) -> Result<Option<Track>> {
        let db = self.db()?;
        let txn = db.begin_read()?;
        let nodes = txn.open_table(NODES)?;
        let get = |ino: u64| -> Result<Option<NodeRec>> {
            match nodes.get(ino)? {
                Some(v) => Ok(Some(
                    postcard::from_bytes(v.value()).context("corrupt node record")?,
                )),
                None => Ok(None),
            }
        };
        let Some(node) = get(ino)? else {
            return Ok(None);
        };
        // A cover names its source file (perhaps a track) but is no track.
        if node.is_dir || node.cover.is_some() {
            return Ok(None);
        }
        let files = txn.open_table(FILES)?;
        let Some(v) = files.get(node.file_key.as_slice())? else {
            return Ok(None);
        };
        let entry: FileEntry = postcard::from_bytes(v.value()).context("corrupt file record")?;
        let mut parts = vec![node.name.clone()];
        let mut at = node.parent;
        while at != ROOT_INO {
            let Some(n) = get(at)? else { break };
            parts.push(n.name);
            at = n.parent;
        }
        parts.reverse();
        let first_seen = txn.open_table(FIRST_SEEN)?;
        let seen = first_seen.get(ino)?.map(|v| v.value());
        Ok(Some(Track {
            ino,
            parent: node.parent,
            path: parts.join("/"),
            first_seen_ns: seen.unwrap_or(entry.rec.mtime_ns),
            entry,
        }))
    }

    /// Calls `each` for every file of the tree, in one read transaction
    /// (a consistent snapshot); returns the commit sequence it saw.
    pub fn for_each_track(&self, mut each: impl FnMut(Track) -> Result<()>) -> Result<u64> {
        let db = self.db()?;
        let txn = db.begin_read()?;
        let seq = txn
            .open_table(META)?
            .get("commit_seq")?
            .map_or(0, |v| v.value());
        let nodes = txn.open_table(NODES)?;
        // Directories first: their paths.
        let mut dirs: HashMap<u64, (u64, String)> = HashMap::new();
        for row in nodes.iter()? {
            let (k, v) = row?;
            let n: NodeRec = postcard::from_bytes(v.value()).context("corrupt node record")?;
            if n.is_dir && k.value() != ROOT_INO {
                dirs.insert(k.value(), (n.parent, n.name));
            }
        }
        let mut paths: HashMap<u64, String> = HashMap::with_capacity(dirs.len());
        paths.insert(ROOT_INO, String::new());
        let path_of = |ino: u64, paths: &mut HashMap<u64, String>| -> String {
            let mut chain = Vec::new();
            let mut at = ino;
            while !paths.contains_key(&at) {
                let Some((parent, name)) = dirs.get(&at) else {
                    break;
                };
                chain.push((at, name.clone()));
                at = *parent;
            }
            let mut base = paths.get(&at).cloned().unwrap_or_default();
            for (ino, name) in chain.into_iter().rev() {
                base = if base.is_empty() {
                    name
                } else {
                    format!("{base}/{name}")
                };
                paths.insert(ino, base.clone());
            }
            base
        };
        let files = txn.open_table(FILES)?;
        let first_seen = txn.open_table(FIRST_SEEN)?;
        for row in nodes.iter()? {
            let (k, v) = row?;
            let n: NodeRec = postcard::from_bytes(v.value()).context("corrupt node record")?;
            if n.is_dir || n.cover.is_some() {
                continue;
            }
            let Some(f) = files.get(n.file_key.as_slice())? else {
                continue;
            };
            let entry: FileEntry =
                postcard::from_bytes(f.value()).context("corrupt file record")?;
            let dir = path_of(n.parent, &mut paths);
            let ino = k.value();
            let seen = first_seen.get(ino)?.map(|v| v.value());
            each(Track {
                ino,
                parent: n.parent,
                path: if dir.is_empty() {
                    n.name
                } else {
                    format!("{dir}/{}", n.name)
                },
                first_seen_ns: seen.unwrap_or(entry.rec.mtime_ns),
                entry,
            })?;
        }
        Ok(seq)
    }
}

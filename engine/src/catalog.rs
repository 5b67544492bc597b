//! The persistent catalog in redb: file records, the virtual-path -> inode map
//! and metadata (schema version, next inode).
//!
//! Inode numbers are never reused: a virtual path keeps its inode for ever, and
//! a new path gets the next number from `next_ino`, which only grows.

use std::path::Path;

use anyhow::{Context, Result, bail};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tracing::info;

use crate::model::FileRecord;
use crate::template::Template;
use crate::tree::{InodeAllocator, ROOT_INO, Tree};

pub const SCHEMA_VERSION: u64 = 1;

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const INODES: TableDefinition<&str, u64> = TableDefinition::new("inodes");
const FILES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("files");

pub struct Catalog {
    db: Database,
}

fn file_key(rec: &FileRecord) -> Vec<u8> {
    let mut k = Vec::with_capacity(4 + rec.rel_path.len());
    k.extend_from_slice(&rec.origin.to_be_bytes());
    k.extend_from_slice(&rec.rel_path);
    k
}

impl Catalog {
    /// Opens (or creates) the catalog at `path`.
    pub fn open(path: &Path) -> Result<Catalog> {
        let db = Database::builder()
            .create(path)
            .with_context(|| format!("cannot open catalog {}", path.display()))?;
        let txn = db.begin_write()?;
        {
            let mut meta = txn.open_table(META)?;
            let version = meta.get("schema_version")?.map(|v| v.value());
            match version {
                None => {
                    meta.insert("schema_version", SCHEMA_VERSION)?;
                    meta.insert("next_ino", ROOT_INO + 1)?;
                }
                Some(SCHEMA_VERSION) => {}
                Some(v) => bail!(
                    "catalog {} has schema version {v}, this engine knows {SCHEMA_VERSION}",
                    path.display()
                ),
            }
            txn.open_table(INODES)?;
            txn.open_table(FILES)?;
        }
        txn.commit()?;
        Ok(Catalog { db })
    }

    /// All file records, in key order.
    pub fn load_files(&self) -> Result<Vec<FileRecord>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(FILES)?;
        let mut out = Vec::new();
        for row in table.iter()? {
            let (_, v) = row?;
            out.push(postcard::from_bytes(v.value()).context("corrupt file record")?);
        }
        Ok(out)
    }

    /// Replaces the file records with `files`, builds the tree with stable
    /// inodes and commits everything in one transaction.
    pub fn rebuild(&self, files: Vec<FileRecord>, template: &Template) -> Result<Tree> {
        let mut txn = self.db.begin_write()?;
        txn.set_quick_repair(true);
        let tree;
        {
            txn.delete_table(FILES)?;
            let mut table = txn.open_table(FILES)?;
            for rec in &files {
                let bytes = postcard::to_allocvec(rec)?;
                table.insert(file_key(rec).as_slice(), bytes.as_slice())?;
            }
            let mut meta = txn.open_table(META)?;
            let next = meta.get("next_ino")?.map_or(ROOT_INO + 1, |v| v.value());
            let mut alloc = TableInodes {
                table: txn.open_table(INODES)?,
                next,
                error: None,
            };
            tree = Tree::build(files, template, &mut alloc);
            if let Some(e) = alloc.error {
                return Err(e).context("inode table");
            }
            meta.insert("next_ino", alloc.next)?;
        }
        txn.commit()?;
        info!(
            files = tree.file_count(),
            nodes = tree.node_count(),
            "catalog committed"
        );
        Ok(tree)
    }
}

struct TableInodes<'t> {
    table: redb::Table<'t, &'static str, u64>,
    next: u64,
    error: Option<redb::StorageError>,
}

impl InodeAllocator for TableInodes<'_> {
    fn inode_for(&mut self, path: &str) -> u64 {
        match self.table.get(path) {
            Ok(Some(v)) => return v.value(),
            Ok(None) => {}
            Err(e) => {
                self.error.get_or_insert(e);
            }
        }
        let ino = self.next;
        self.next += 1;
        if let Err(e) = self.table.insert(path, ino) {
            self.error.get_or_insert(e);
        }
        ino
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{AudioProps, Tags};
    use crate::template::DEFAULT_TEMPLATE;

    fn rec(path: &str, title: &str) -> FileRecord {
        FileRecord {
            origin: 0,
            rel_path: path.as_bytes().to_vec(),
            size_bytes: 3,
            mtime_ns: 1,
            origin_ino: 9,
            format: Some("mp3".into()),
            tags: Tags {
                title: Some(title.into()),
                ..Tags::default()
            },
            props: AudioProps::default(),
            probe_error: None,
        }
    }

    #[test]
    fn inodes_survive_reopen_and_are_never_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.redb");
        let t = Template::parse(DEFAULT_TEMPLATE).unwrap();
        let ino_of = |tree: &Tree, name: &str| {
            let a = tree.lookup(ROOT_INO, "Unknown Artist").unwrap();
            let b = tree.lookup(a, "Unknown Album").unwrap();
            tree.lookup(b, name)
        };
        let first = {
            let c = Catalog::open(&path).unwrap();
            let tree = c
                .rebuild(vec![rec("a.mp3", "One"), rec("b.mp3", "Two")], &t)
                .unwrap();
            ino_of(&tree, "One.mp3").unwrap()
        };
        let c = Catalog::open(&path).unwrap();
        assert_eq!(c.load_files().unwrap().len(), 2);
        // "Two" disappears, "Three" appears: it must not get Two's inode.
        let tree = c
            .rebuild(vec![rec("a.mp3", "One"), rec("c.mp3", "Three")], &t)
            .unwrap();
        assert_eq!(ino_of(&tree, "One.mp3"), Some(first));
        assert!(ino_of(&tree, "Two.mp3").is_none());
        let three = ino_of(&tree, "Three.mp3").unwrap();
        assert!(three > first + 1, "new path got a fresh inode: {three}");
    }
}

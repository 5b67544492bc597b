//! The chunk index: a redb database in the cache directory, beside the
//! chunks it describes (a cache disk that is cleared, replaced or lost takes
//! its index with it; the catalog never depends on either).
//!
//! Tables:
//! - `meta`: schema version, `used_bytes` (the size of every chunk in
//!   `chunks`, kept in the same transactions: the cache's size comes from
//!   here, never from a directory walk);
//! - `chunks`: blake3 hash -> size, last access (ms since the epoch);
//! - `lru`: last access BE + hash -> () (oldest first, for eviction);
//! - `manifests`: content key + chunk index BE -> hash (the manifest of one
//!   content version; an entry whose chunk is gone is a miss, not an error);
//! - `contents`: content key -> where it came from (origin, path, size,
//!   mtime), for verify and repair;
//! - `pins`: content keys kept off the eviction list.

use std::collections::HashSet;
use std::path::Path;

use anyhow::{Context, Result, bail};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::content::layout::ContentKey;

pub type Hash = [u8; 32];

const SCHEMA_VERSION: u64 = 1;
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const CHUNKS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("chunks");
const LRU: TableDefinition<&[u8], ()> = TableDefinition::new("lru");
const MANIFESTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("manifests");
const CONTENTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("contents");
const PINS: TableDefinition<&[u8], ()> = TableDefinition::new("pins");

/// Where a content version came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContentInfo {
    pub origin: u32,
    pub rel_path: Vec<u8>,
    pub size_bytes: u64,
    pub mtime_ns: i64,
}

/// A chunk that was written to the cache disk.
pub struct Put {
    pub key: ContentKey,
    pub index: u32,
    pub hash: Hash,
    pub size_bytes: u32,
    pub info: ContentInfo,
}

/// One write transaction's worth of changes.
#[derive(Default)]
pub struct Batch {
    pub puts: Vec<Put>,
    /// Chunks read, with when.
    pub touches: Vec<(Hash, u64)>,
    /// Chunks removed from the disk (evicted, corrupt or missing).
    pub forget: Vec<Hash>,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.puts.is_empty() && self.touches.is_empty() && self.forget.is_empty()
    }
}

fn manifest_key(key: &ContentKey, index: u32) -> [u8; 20] {
    let mut k = [0u8; 20];
    k[..16].copy_from_slice(&key.0);
    k[16..].copy_from_slice(&index.to_be_bytes());
    k
}

fn lru_key(atime_ms: u64, hash: &Hash) -> [u8; 40] {
    let mut k = [0u8; 40];
    k[..8].copy_from_slice(&atime_ms.to_be_bytes());
    k[8..].copy_from_slice(hash);
    k
}

fn chunk_value(size: u32, atime_ms: u64) -> [u8; 12] {
    let mut v = [0u8; 12];
    v[..4].copy_from_slice(&size.to_le_bytes());
    v[4..].copy_from_slice(&atime_ms.to_le_bytes());
    v
}

fn parse_chunk(v: &[u8]) -> Option<(u32, u64)> {
    Some((
        u32::from_le_bytes(v.get(..4)?.try_into().ok()?),
        u64::from_le_bytes(v.get(4..12)?.try_into().ok()?),
    ))
}

fn hash_of(v: &[u8]) -> Option<Hash> {
    v.try_into().ok()
}

pub struct Index {
    db: Database,
}

impl Index {
    /// Opens (or creates) the index at `path`. A file that is not a redb
    /// database, or one of a newer schema, is an error (the caller moves
    /// the cache aside: it is only a cache).
    pub fn open(path: &Path) -> Result<Index> {
        let mut builder = Database::builder();
        builder.set_cache_size(4 * 1024 * 1024);
        let db = builder
            .create(path)
            .with_context(|| format!("cannot open the cache index {}", path.display()))?;
        let txn = db.begin_write()?;
        {
            let mut meta = txn.open_table(META)?;
            let version = meta.get("schema")?.map(|v| v.value());
            match version {
                None => {
                    meta.insert("schema", SCHEMA_VERSION)?;
                    meta.insert("used_bytes", 0)?;
                }
                Some(SCHEMA_VERSION) => {}
                Some(v) => {
                    bail!("the cache index has schema {v}, this engine knows {SCHEMA_VERSION}")
                }
            }
            txn.open_table(CHUNKS)?;
            txn.open_table(LRU)?;
            txn.open_table(MANIFESTS)?;
            txn.open_table(CONTENTS)?;
            txn.open_table(PINS)?;
        }
        txn.commit()?;
        Ok(Index { db })
    }

    /// Applies a batch in one transaction.
    pub fn commit(&self, batch: &Batch) -> Result<()> {
        let txn = self.db.begin_write()?;
        {
            let mut meta = txn.open_table(META)?;
            let mut used = meta.get("used_bytes")?.map_or(0, |v| v.value());
            let mut chunks = txn.open_table(CHUNKS)?;
            let mut lru = txn.open_table(LRU)?;
            let mut manifests = txn.open_table(MANIFESTS)?;
            let mut contents = txn.open_table(CONTENTS)?;
            // Forgets first: a chunk found bad and fetched again in one
            // batch is forgotten, then put back.
            for hash in &batch.forget {
                let old = chunks
                    .remove(hash.as_slice())?
                    .and_then(|v| parse_chunk(v.value()));
                if let Some((size, atime)) = old {
                    lru.remove(lru_key(atime, hash).as_slice())?;
                    used = used.saturating_sub(u64::from(size));
                }
            }
            for p in &batch.puts {
                let old = chunks
                    .get(p.hash.as_slice())?
                    .and_then(|v| parse_chunk(v.value()));
                let now = crate::sys::time::now_ms();
                if let Some((_, atime)) = old {
                    lru.remove(lru_key(atime, &p.hash).as_slice())?;
                } else {
                    used += u64::from(p.size_bytes);
                }
                chunks.insert(p.hash.as_slice(), chunk_value(p.size_bytes, now).as_slice())?;
                lru.insert(lru_key(now, &p.hash).as_slice(), ())?;
                manifests.insert(manifest_key(&p.key, p.index).as_slice(), p.hash.as_slice())?;
                if contents.get(p.key.0.as_slice())?.is_none() {
                    let info = postcard::to_stdvec(&p.info)?;
                    contents.insert(p.key.0.as_slice(), info.as_slice())?;
                }
            }
            for (hash, atime) in &batch.touches {
                let old = chunks
                    .get(hash.as_slice())?
                    .and_then(|v| parse_chunk(v.value()));
                let Some((size, old_atime)) = old else {
                    continue;
                };
                if old_atime >= *atime {
                    continue;
                }
                lru.remove(lru_key(old_atime, hash).as_slice())?;
                lru.insert(lru_key(*atime, hash).as_slice(), ())?;
                chunks.insert(hash.as_slice(), chunk_value(size, *atime).as_slice())?;
            }
            meta.insert("used_bytes", used)?;
        }
        txn.commit()?;
        Ok(())
    }

    /// The bytes of every chunk in the index.
    pub fn used_bytes(&self) -> Result<u64> {
        let txn = self.db.begin_read()?;
        let meta = txn.open_table(META)?;
        Ok(meta.get("used_bytes")?.map_or(0, |v| v.value()))
    }

    pub fn chunk_count(&self) -> Result<u64> {
        use redb::ReadableTableMetadata;
        let txn = self.db.begin_read()?;
        Ok(txn.open_table(CHUNKS)?.len()?)
    }

    /// The hash of chunk `index` of `key`, if that chunk is in the cache.
    pub fn lookup(&self, key: &ContentKey, index: u32) -> Result<Option<(Hash, u32)>> {
        let txn = self.db.begin_read()?;
        let manifests = txn.open_table(MANIFESTS)?;
        let Some(hash) = manifests
            .get(manifest_key(key, index).as_slice())?
            .and_then(|v| hash_of(v.value()))
        else {
            return Ok(None);
        };
        let chunks = txn.open_table(CHUNKS)?;
        Ok(chunks
            .get(hash.as_slice())?
            .and_then(|v| parse_chunk(v.value()))
            .map(|(size, _)| (hash, size)))
    }

    /// The chunks of `key` that are in the cache: (index, hash, size).
    pub fn cached_chunks(&self, key: &ContentKey) -> Result<Vec<(u32, Hash, u32)>> {
        let txn = self.db.begin_read()?;
        let manifests = txn.open_table(MANIFESTS)?;
        let chunks = txn.open_table(CHUNKS)?;
        let mut out = Vec::new();
        for entry in manifests
            .range(manifest_key(key, 0).as_slice()..=manifest_key(key, u32::MAX).as_slice())?
        {
            let (k, v) = entry?;
            let Some(hash) = hash_of(v.value()) else {
                continue;
            };
            let index = u32::from_be_bytes(k.value()[16..20].try_into()?);
            if let Some((size, _)) = chunks
                .get(hash.as_slice())?
                .and_then(|v| parse_chunk(v.value()))
            {
                out.push((index, hash, size));
            }
        }
        Ok(out)
    }

    /// Whether a chunk is in the index.
    pub fn has_chunk(&self, hash: &Hash) -> Result<bool> {
        let txn = self.db.begin_read()?;
        Ok(txn.open_table(CHUNKS)?.get(hash.as_slice())?.is_some())
    }

    /// Up to `limit` chunks, least recently used first, that are not in
    /// `keep`: (hash, size).
    pub fn oldest(&self, limit: usize, keep: &HashSet<Hash>) -> Result<Vec<(Hash, u32)>> {
        let txn = self.db.begin_read()?;
        let lru = txn.open_table(LRU)?;
        let chunks = txn.open_table(CHUNKS)?;
        let mut out = Vec::new();
        for entry in lru.iter()? {
            let (k, _) = entry?;
            let Some(hash) = hash_of(&k.value()[8..]) else {
                continue;
            };
            if keep.contains(&hash) {
                continue;
            }
            if let Some((size, _)) = chunks
                .get(hash.as_slice())?
                .and_then(|v| parse_chunk(v.value()))
            {
                out.push((hash, size));
            }
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// Every chunk, in LRU order (oldest first): for tests and status.
    pub fn lru_order(&self) -> Result<Vec<Hash>> {
        self.oldest(usize::MAX, &HashSet::new())
            .map(|v| v.into_iter().map(|(h, _)| h).collect())
    }

    /// Up to `limit` chunk hashes after `after` (in hash order): (hash, size).
    pub fn chunks_after(&self, after: Option<Hash>, limit: usize) -> Result<Vec<(Hash, u32)>> {
        let txn = self.db.begin_read()?;
        let chunks = txn.open_table(CHUNKS)?;
        let mut out = Vec::new();
        let start = after.unwrap_or([0u8; 32]);
        for entry in chunks.range(start.as_slice()..)? {
            let (k, v) = entry?;
            let Some(hash) = hash_of(k.value()) else {
                continue;
            };
            if after == Some(hash) {
                continue;
            }
            if let Some((size, _)) = parse_chunk(v.value()) {
                out.push((hash, size));
            }
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// Every content version the cache has seen, with where it came from.
    pub fn contents(&self) -> Result<Vec<(ContentKey, ContentInfo)>> {
        let txn = self.db.begin_read()?;
        let contents = txn.open_table(CONTENTS)?;
        let mut out = Vec::new();
        for entry in contents.iter()? {
            let (k, v) = entry?;
            let Ok(key) = <[u8; 16]>::try_from(k.value()) else {
                continue;
            };
            if let Ok(info) = postcard::from_bytes::<ContentInfo>(v.value()) {
                out.push((ContentKey(key), info));
            }
        }
        Ok(out)
    }

    /// Keeps (or stops keeping) `keys` off the eviction list.
    pub fn set_pins(&self, keys: &[ContentKey], pinned: bool) -> Result<()> {
        let txn = self.db.begin_write()?;
        {
            let mut pins = txn.open_table(PINS)?;
            for key in keys {
                if pinned {
                    pins.insert(key.0.as_slice(), ())?;
                } else {
                    pins.remove(key.0.as_slice())?;
                }
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// The chunks of every pinned content version.
    pub fn pinned_hashes(&self) -> Result<(usize, HashSet<Hash>)> {
        let txn = self.db.begin_read()?;
        let pins = txn.open_table(PINS)?;
        let manifests = txn.open_table(MANIFESTS)?;
        let mut keys = 0;
        let mut out = HashSet::new();
        for entry in pins.iter()? {
            let (k, _) = entry?;
            let Ok(key) = <[u8; 16]>::try_from(k.value()) else {
                continue;
            };
            keys += 1;
            let key = ContentKey(key);
            for m in manifests
                .range(manifest_key(&key, 0).as_slice()..=manifest_key(&key, u32::MAX).as_slice())?
            {
                if let Some(h) = hash_of(m?.1.value()) {
                    out.insert(h);
                }
            }
        }
        Ok((keys, out))
    }

    /// Forgets every chunk, manifest and content (not the pins).
    pub fn clear(&self) -> Result<()> {
        let txn = self.db.begin_write()?;
        {
            txn.delete_table(CHUNKS)?;
            txn.delete_table(LRU)?;
            txn.delete_table(MANIFESTS)?;
            txn.delete_table(CONTENTS)?;
            txn.open_table(CHUNKS)?;
            txn.open_table(LRU)?;
            txn.open_table(MANIFESTS)?;
            txn.open_table(CONTENTS)?;
            txn.open_table(META)?.insert("used_bytes", 0)?;
        }
        txn.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &ContentKey, index: u32, byte: u8, size: u32) -> Put {
        Put {
            key: *key,
            index,
            hash: [byte; 32],
            size_bytes: size,
            info: ContentInfo {
                origin: 0,
                rel_path: b"a.flac".to_vec(),
                size_bytes: 100,
                mtime_ns: 1,
            },
        }
    }

    /// Sizes come from the index; touches reorder the LRU; forgetting a
    /// chunk turns its manifest entry into a miss; pins keep chunks off
    /// the eviction list; all of it survives a reopen.
    #[test]
    fn accounting_lru_and_pins_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.redb");
        let (a, b) = (ContentKey([1; 16]), ContentKey([2; 16]));
        {
            let idx = Index::open(&path).unwrap();
            let mut batch = Batch::default();
            batch.puts.push(put(&a, 0, 10, 100));
            batch.puts.push(put(&a, 1, 11, 200));
            batch.puts.push(put(&b, 0, 12, 300));
            idx.commit(&batch).unwrap();
            assert_eq!(idx.used_bytes().unwrap(), 600);
            // The same chunk again is not counted twice.
            let mut again = Batch::default();
            again.puts.push(put(&b, 1, 12, 300));
            idx.commit(&again).unwrap();
            assert_eq!(idx.used_bytes().unwrap(), 600);
            let mut touch = Batch::default();
            let later = crate::sys::time::now_ms() + 10_000;
            touch.touches.push(([10; 32], later));
            idx.commit(&touch).unwrap();
            idx.set_pins(&[b], true).unwrap();
        }
        let idx = Index::open(&path).unwrap();
        assert_eq!(idx.used_bytes().unwrap(), 600);
        let order = idx.lru_order().unwrap();
        assert_eq!(order.last(), Some(&[10; 32]), "the touched chunk is newest");
        let (pinned_keys, pinned) = idx.pinned_hashes().unwrap();
        assert_eq!(pinned_keys, 1);
        assert!(pinned.contains(&[12; 32]));
        let evictable = idx.oldest(10, &pinned).unwrap();
        assert_eq!(
            evictable.iter().map(|(h, _)| h[0]).collect::<Vec<_>>(),
            [11, 10]
        );
        let mut forget = Batch::default();
        forget.forget.push([11; 32]);
        idx.commit(&forget).unwrap();
        assert_eq!(idx.used_bytes().unwrap(), 400);
        assert_eq!(idx.lookup(&a, 1).unwrap(), None);
        assert_eq!(idx.lookup(&a, 0).unwrap(), Some(([10; 32], 100)));
        assert_eq!(idx.cached_chunks(&b).unwrap().len(), 2);
        assert_eq!(idx.contents().unwrap().len(), 2);
        idx.clear().unwrap();
        assert_eq!(idx.used_bytes().unwrap(), 0);
        assert_eq!(idx.chunk_count().unwrap(), 0);
    }
}

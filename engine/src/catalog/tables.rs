//! The catalog's tables and how their keys are encoded.

use redb::TableDefinition;

use crate::model::template::Template;

pub const SCHEMA_VERSION: u64 = 6;
pub const ROOT_INO: u64 = 1;

pub(super) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
pub(super) const INODES: TableDefinition<&str, u64> = TableDefinition::new("inodes");
pub(super) const FILES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("files");
pub(super) const NODES: TableDefinition<u64, &[u8]> = TableDefinition::new("nodes");
/// Parent inode BE + name -> the child's inode, with `CHILD_DIR` set for a
/// directory (schema 6): a listing is one range read, with no node read per
/// entry (a root of 100k artists lists in milliseconds).
pub(super) const CHILDREN: TableDefinition<&[u8], u64> = TableDefinition::new("children");
/// The bit of a `children` value that marks a directory. Inode numbers are
/// drawn from a counter and never come near it.
pub(super) const CHILD_DIR: u64 = 1 << 63;

/// A `children` value.
pub(super) fn child_value(ino: u64, is_dir: bool) -> u64 {
    if is_dir { ino | CHILD_DIR } else { ino }
}

/// A `children` value's (inode, is a directory).
pub(super) fn split_child_value(v: u64) -> (u64, bool) {
    (v & !CHILD_DIR, v & CHILD_DIR != 0)
}
/// Origin directory (as configured) -> the id used in file keys. An id is
/// never given to another directory, so reordering or removing origins in
/// the configuration can never make a key point into the wrong directory.
pub(super) const ORIGINS: TableDefinition<&str, u32> = TableDefinition::new("origins");
/// Inode -> when its path was first given an inode (ns since the epoch): the
/// "first seen" time of a track (collections' `Recently added`). Catalogs
/// from before it have no row for older paths (readers fall back).
pub(super) const FIRST_SEEN: TableDefinition<u64, i64> = TableDefinition::new("first_seen");

/// redb's page cache.
pub(super) const DB_CACHE_BYTES: usize = 16 * 1024 * 1024;

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

pub(super) fn child_key(parent: u64, name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + name.len());
    k.extend_from_slice(&parent.to_be_bytes());
    k.extend_from_slice(name.as_bytes());
    k
}

pub(super) fn template_hash(t: &Template) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in t.source().bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

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
//!
//! Files: `tables` (table definitions and key encodings), `records` (what
//! the tables hold), `store` (open, close, schema, origins and meta),
//! `reads` (the request path), `tree` (the one writer: batches of changes
//! applied to the tree), `listing` (the hot listing cache).
//!
//! May use: model, config, sys. Never: origins, sync, serve, control.

mod listing;
mod reads;
mod records;
mod store;
mod tables;
mod tree;

#[cfg(test)]
mod tests;

pub use records::{
    Child, FileEntry, InvalidationSink, Invalidations, KnownFile, NodeRec, PreviousClose,
};
pub use store::Store;
pub use tables::{ROOT_INO, SCHEMA_VERSION, file_key, split_file_key};

//! The catalog (redb) and the virtual tree that lives in it.
//!
//! Tables (schema version 3):
//! - `meta`: schema version, `next_ino`, `scan_complete`, template hash,
//!   `generation` (drawn when the catalog is created, given with every entry),
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
//! applied to the tree), `listing` (the hot listing cache), `tracks` (what
//! the search index reads: every track with its tree path, first-seen times
//! in `first_seen`, the commit sequence number in `meta`).
//!
//! May use: model, config, sys. Never: origins, sync, serve, control.
//!
//! In detail: the catalog (redb, schema 3) and the tree inside it: `meta`
//! (schema version, `next_ino`, `scan_complete`, template hash, totals,
//! `clean_close`, `origin_dev/<id>`), `inodes` (virtual path → inode, for
//! ever), `files` (origin key → record + inode), `nodes` (inode → parent,
//! name, kind, attributes) and `children` (parent + name → inode), `origins`
//! (origin directory → the id used in file keys; ids are never reused, so
//! reordering or removing origins cannot point a key at the wrong directory).
//! Requests read it through short read transactions and a bounded cache of
//! directory listings; nothing loads the whole tree. `Store::apply` is the
//! only write path: a batch of upserts and removals in one transaction, in
//! O(changed), returning the names and inodes the kernel must forget. Upserts
//! in a batch are applied in (virtual path, origin path) order so collision
//! suffixes do not depend on probe timing; a template change rebuilds the
//! tree from the records (at open, or at run time through `set_template`);
//! schema 1 and 2 catalogs migrate (records are rescanned, inode numbers
//! kept). The database sits in a `RwLock<Option<Database>>`: every
//! transaction holds a (recursive) read guard, so `close` waits for the ones
//! in flight (bounded), writes `clean_close = 1` and closes redb; the next
//! open reads the flag (`previous_close`: new, clean, unclean) and clears it.

mod covers;
mod known;
mod listing;
mod prefetch;
mod reads;
mod records;
mod store;
mod tables;
mod tracks;
mod tree;

#[cfg(test)]
mod tests;

pub use known::KnownFiles;
pub use records::{
    Child, CoverSource, FileEntry, InvalidationSink, Invalidations, KnownFile, NodeRec,
    PreviousClose,
};
pub use store::Store;
pub use tables::{ROOT_INO, SCHEMA_VERSION, file_key, split_file_key};
pub use tracks::Track;

//! What the catalog holds, and what it tells others.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::model::FileRecord;

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
    /// For an album's cover: where its bytes lie in the origin file named
    /// by `file_key` (a folder image, or a track with an embedded picture);
    /// `size_bytes` is the image's length, `version` the origin file's.
    pub cover: Option<CoverSource>,
}

/// The range of an origin file that a cover node serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoverSource {
    pub offset: u64,
    /// The whole origin file's size (its chunks in the cache are that
    /// file's).
    pub source_size: u64,
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

/// What changed in the tree, for the kernel's caches.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Invalidations {
    /// (parent, name) entries that vanished or now point elsewhere.
    pub entries: Vec<(u64, String)>,
    /// Inodes whose attributes or content changed, and directories whose
    /// listing changed.
    pub inodes: Vec<u64>,
    /// The whole tree may have changed (a template change): the kernel must
    /// drop every name, attribute and listing it holds.
    pub everything: bool,
    /// The catalog's commit sequence number after this commit (0: not a
    /// commit): the search index records the last one it applied.
    pub commit_seq: u64,
}

impl Invalidations {
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.inodes.is_empty() && !self.everything
    }
}

/// Where the tree's writer sends what the kernel must forget: the data
/// plane implements it (it holds the shims' connections). The port keeps
/// sync from depending on the server.
pub trait InvalidationSink: Send + Sync {
    fn invalidate(&self, inval: &Invalidations);
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

//! The bottom of the engine: what it knows about one origin file (the
//! record types) and how a record is named in the tree (`template`). Pure
//! values and functions; depends on nothing in the crate.

use serde::{Deserialize, Serialize};

pub mod template;

/// Tags read from an audio file. Every field is optional: untagged and
/// unreadable files still get a record, with everything `None`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tags {
    pub artist: Option<String>,
    pub album_artist: Option<String>,
    pub album: Option<String>,
    pub title: Option<String>,
    pub year: Option<u32>,
    pub track: Option<u32>,
    pub track_total: Option<u32>,
    pub disc: Option<u32>,
    pub disc_total: Option<u32>,
    pub genre: Option<String>,
    pub compilation: bool,
}

/// Audio properties read from the stream headers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AudioProps {
    pub duration_ms: u64,
    pub bitrate_kbps: Option<u32>,
    pub sample_rate_hz: Option<u32>,
    pub channels: Option<u8>,
}

/// One audio file in one origin.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    /// Index of the origin in the configured origin list.
    pub origin: u32,
    /// Path relative to the origin root, raw bytes (may be non-UTF-8).
    pub rel_path: Vec<u8>,
    pub size_bytes: u64,
    pub mtime_ns: i64,
    /// Inode number of the origin file on its own filesystem.
    pub origin_ino: u64,
    /// Content fingerprint (see `scan::fingerprint_file`), for when an mtime
    /// cannot be trusted.
    pub fingerprint: u64,
    /// Detected content format (e.g. "flac"), if the probe recognised it.
    pub format: Option<String>,
    pub tags: Tags,
    pub props: AudioProps,
    /// Why the tags could not be read, if they could not.
    pub probe_error: Option<String>,
}

impl FileRecord {
    /// A content version for open handles: changes whenever the origin file does.
    pub fn version(&self) -> u64 {
        content_version(self.size_bytes, self.mtime_ns, self.origin_ino)
    }
}

/// The content version of an origin file with this size, mtime and inode:
/// what an open handle is bound to (its file handle). FNV-1a: cheap and
/// stable across restarts; never 0, so 0 can mean "no handle".
pub fn content_version(size_bytes: u64, mtime_ns: i64, origin_ino: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in size_bytes
        .to_le_bytes()
        .iter()
        .chain(mtime_ns.to_le_bytes().iter())
        .chain(origin_ino.to_le_bytes().iter())
    {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h | 1
}

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
    /// Schema 5 (searchable as `composer:`).
    pub composer: Option<String>,
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
    /// Cover art in this file: an audio file's embedded front cover, or a
    /// whole folder image (`is_image`).
    pub art: Option<Art>,
    /// A folder image (`cover.*`, `folder.*`, `front.*`, `album.*`): the
    /// source of its folder's album covers, never a track.
    pub is_image: bool,
}

/// Where an image lies in a file, and its type (by its magic bytes).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Art {
    pub offset: u64,
    pub len: u64,
    /// `jpg`, `png`, `webp`, `gif` or `bmp`.
    pub ext: String,
}

/// The image type of `bytes` by its magic, as a file extension.
pub fn image_ext(bytes: &[u8]) -> Option<&'static str> {
    match bytes {
        [0xff, 0xd8, 0xff, ..] => Some("jpg"),
        [0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a, ..] => Some("png"),
        [
            b'R',
            b'I',
            b'F',
            b'F',
            _,
            _,
            _,
            _,
            b'W',
            b'E',
            b'B',
            b'P',
            ..,
        ] => Some("webp"),
        [b'G', b'I', b'F', b'8', b'7' | b'9', b'a', ..] => Some("gif"),
        [b'B', b'M', ..] if bytes.len() >= 26 => Some("bmp"),
        _ => None,
    }
}

/// Whether a file of this name is a folder image that may be an album's
/// cover: `cover`, `folder`, `front` or `album`, with an image extension
/// (any case).
pub fn is_folder_image(name: &[u8]) -> bool {
    let name = name.rsplit(|b| *b == b'/').next().unwrap_or(name);
    let Some(dot) = name.iter().rposition(|b| *b == b'.') else {
        return false;
    };
    let (stem, ext) = (
        name[..dot].to_ascii_lowercase(),
        name[dot + 1..].to_ascii_lowercase(),
    );
    [&b"cover"[..], b"folder", b"front", b"album"].contains(&stem.as_slice())
        && [&b"jpg"[..], b"jpeg", b"png", b"webp", b"gif", b"bmp"].contains(&ext.as_slice())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_by_magic_and_name() {
        assert_eq!(image_ext(&[0xff, 0xd8, 0xff, 0xe0]), Some("jpg"));
        assert_eq!(image_ext(b"\x89PNG\r\n\x1a\n...."), Some("png"));
        assert_eq!(image_ext(b"RIFF\0\0\0\0WEBPVP8 "), Some("webp"));
        assert_eq!(image_ext(b"GIF89a"), Some("gif"));
        assert_eq!(image_ext(b"fLaC"), None);
        assert!(is_folder_image(b"A/B/Cover.JPG"));
        assert!(is_folder_image(b"folder.png"));
        assert!(!is_folder_image(b"A/back.jpg"));
        assert!(!is_folder_image(b"cover.flac"));
    }
}

//! The manifest `.musicfs-manifest.jsonl`: file kinds, the tag values written, one entry per file.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use lofty::tag::items::Timestamp;
use lofty::tag::{Accessor, ItemKey, Tag};
use serde::{Deserialize, Serialize};

use super::formats::Format;
use super::quirks::Field;

/// Name of the manifest written at the root of the generated library.
pub const MANIFEST_NAME: &str = ".musicfs-manifest.jsonl";

/// What kind of file was generated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A valid, tagged file.
    Normal,
    /// A valid header followed by random garbage (no tags).
    Corrupt,
    /// A tagged file cut in half (`tags` are the values written before cutting).
    Truncated,
    /// A 0-byte file (`format` is the format its extension claims).
    Empty,
    /// A valid file without any tag (Ogg files still carry the mandatory vendor string).
    Untagged,
    /// A valid, tagged file with the extension of another format (e.g. FLAC bytes in `.mp3`):
    /// readable only by sniffing the content (lofty `Probe::guess_file_type`), not by extension.
    Misnamed,
}

/// The tag values written to a file; a missing key means the field was not written.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagValues {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artist: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub album_artist: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub album: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub year: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub track: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub track_total: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disc: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disc_total: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub genre: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compilation: Option<bool>,
}

impl TagValues {
    pub(super) fn is_empty(&self) -> bool {
        *self == TagValues::default()
    }

    pub(super) fn get(&self, field: Field) -> Option<&String> {
        match field {
            Field::Artist => self.artist.as_ref(),
            Field::AlbumArtist => self.album_artist.as_ref(),
            Field::Album => self.album.as_ref(),
            Field::Title => self.title.as_ref(),
            Field::Genre => self.genre.as_ref(),
        }
    }

    pub(super) fn slot(&mut self, field: Field) -> &mut Option<String> {
        match field {
            Field::Artist => &mut self.artist,
            Field::AlbumArtist => &mut self.album_artist,
            Field::Album => &mut self.album,
            Field::Title => &mut self.title,
            Field::Genre => &mut self.genre,
        }
    }

    /// Build the lofty tag for `format` (its primary tag type).
    pub(super) fn to_tag(&self, format: Format) -> Tag {
        let mut tag = Tag::new(format.file_type().primary_tag_type());
        if let Some(v) = &self.artist {
            tag.set_artist(v.clone());
        }
        if let Some(v) = &self.album_artist {
            tag.insert_text(ItemKey::AlbumArtist, v.clone());
        }
        if let Some(v) = &self.album {
            tag.set_album(v.clone());
        }
        if let Some(v) = &self.title {
            tag.set_title(v.clone());
        }
        if let Some(year) = self.year {
            tag.set_date(Timestamp {
                year: u16::try_from(year).unwrap_or(u16::MAX),
                ..Timestamp::default()
            });
        }
        if let Some(v) = self.track {
            tag.set_track(v);
        }
        if let Some(v) = self.track_total {
            tag.set_track_total(v);
        }
        if let Some(v) = self.disc {
            tag.set_disk(v);
        }
        if let Some(v) = self.disc_total {
            tag.set_disk_total(v);
        }
        if let Some(v) = &self.genre {
            tag.set_genre(v.clone());
        }
        if self.compilation == Some(true) {
            tag.insert_text(ItemKey::FlagCompilation, "1".to_owned());
        }
        tag
    }

    /// Read the values back from a lofty tag (the same mapping a reader would use).
    pub fn from_tag(tag: &Tag) -> TagValues {
        TagValues {
            artist: tag.artist().map(|v| v.into_owned()),
            album_artist: tag.get_string(ItemKey::AlbumArtist).map(str::to_owned),
            album: tag.album().map(|v| v.into_owned()),
            title: tag.title().map(|v| v.into_owned()),
            year: tag.date().map(|d| u32::from(d.year)),
            track: tag.track(),
            track_total: tag.track_total(),
            disc: tag.disk(),
            disc_total: tag.disk_total(),
            genre: tag.genre().map(|v| v.into_owned()),
            compilation: tag
                .get_string(ItemKey::FlagCompilation)
                .map(|v| v == "1" || v.eq_ignore_ascii_case("true")),
        }
    }
}

/// One line of the manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestEntry {
    /// Path relative to the library root (lossy UTF-8).
    pub path: String,
    /// Raw bytes of the relative path, hex.
    pub path_hex: String,
    /// Real content format (for `empty` files: the format the name claims).
    pub format: String,
    /// Extension used in the file name.
    pub ext: String,
    pub kind: Kind,
    pub size: u64,
    pub tags: TagValues,
}

impl ManifestEntry {
    /// The raw relative path.
    pub fn raw_path(&self) -> Vec<u8> {
        from_hex(&self.path_hex).expect("manifest path_hex is valid hex")
    }
}

pub(super) fn to_hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn from_hex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Read `DIR/.musicfs-manifest.jsonl`.
pub fn read_manifest(dir: &Path) -> Result<Vec<ManifestEntry>> {
    let text = std::fs::read_to_string(dir.join(MANIFEST_NAME))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).with_context(|| format!("bad manifest line: {l}")))
        .collect()
}

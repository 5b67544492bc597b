//! Tags and properties of the formats lofty does not read, found by their
//! magic bytes (never by extension): DSF and DSDIFF (ID3v2, `dsd`), WMA/ASF
//! (content descriptions, `asf`), Matroska and WebM (`matroska`), TTA, TAK
//! and OptimFROG (APEv2 and ID3v1 at the end, ID3v2 at the start,
//! `apev2`), and MIDI (no tags). Short parsers over bounded reads: every
//! read is at most `MAX_HEADER_READ_BYTES` in all, every length checked
//! against the file and the buffer. ID3v2 itself is parsed by the `id3`
//! crate.

use std::io::{self, SeekFrom};

use crate::model::{AudioProps, Tags};
use crate::scan::tags::{MAX_HEADER_READ_BYTES, Source};

mod apev2;
mod asf;
mod dsd;
mod matroska;

#[cfg(test)]
mod tests;

/// What a reader found: format name, tags, properties.
pub(super) type Found = (String, Tags, AudioProps);

/// Reads `file` if its magic is one of ours: `None` means "not ours, ask
/// lofty".
pub(super) fn read(file: &mut dyn Source, size: u64) -> Option<Result<Found, String>> {
    let mut magic = [0u8; 16];
    let n = read_up_to(file, 0, &mut magic).ok()?;
    let magic = &magic[..n];
    let mut budget = Budget::new(file, size);
    let found = if magic.starts_with(b"DSD ") {
        dsd::read_dsf(&mut budget)
    } else if magic.starts_with(b"FRM8") && magic.get(12..16) == Some(b"DSD ") {
        dsd::read_dff(&mut budget)
    } else if magic.starts_with(&asf::HEADER_GUID) {
        asf::read(&mut budget)
    } else if magic.starts_with(&[0x1a, 0x45, 0xdf, 0xa3]) {
        matroska::read(&mut budget)
    } else if let Some(format) = apev2::format_of(magic, &mut budget) {
        apev2::read(&mut budget, format)
    } else if magic.starts_with(b"MThd") {
        Ok(("midi".to_string(), Tags::default(), AudioProps::default()))
    } else {
        return None;
    };
    Some(found)
}

/// Reads into `buf` at `offset` until it is full or the file ends.
fn read_up_to(file: &mut dyn Source, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
    file.seek(SeekFrom::Start(offset))?;
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Reads of one file under one budget of bytes.
pub(super) struct Budget<'f> {
    file: &'f mut dyn Source,
    size: u64,
    left: u64,
}

impl<'f> Budget<'f> {
    fn new(file: &'f mut dyn Source, size: u64) -> Budget<'f> {
        Budget {
            file,
            size,
            left: MAX_HEADER_READ_BYTES,
        }
    }

    /// The file's size.
    pub(super) fn size(&self) -> u64 {
        self.size
    }

    /// Exactly `len` bytes at `offset`, or an error saying why not (past
    /// the end of the file, over the budget).
    pub(super) fn read(&mut self, offset: u64, len: u64) -> Result<Vec<u8>, String> {
        if offset.checked_add(len).is_none_or(|end| end > self.size) {
            return Err(format!(
                "truncated: {len} bytes at offset {offset} are past the end ({} bytes)",
                self.size
            ));
        }
        if len > self.left {
            return Err(format!(
                "header read budget of {MAX_HEADER_READ_BYTES} bytes exhausted"
            ));
        }
        self.left -= len;
        let mut buf = vec![0u8; usize::try_from(len).map_err(|_| "too large".to_string())?];
        let n = read_up_to(self.file, offset, &mut buf).map_err(|e| e.to_string())?;
        if n != buf.len() {
            return Err(format!("short read at offset {offset}"));
        }
        Ok(buf)
    }
}

/// A checked little cursor over bytes.
pub(super) struct Cursor<'b> {
    bytes: &'b [u8],
    pos: usize,
}

impl<'b> Cursor<'b> {
    pub(super) fn new(bytes: &'b [u8]) -> Cursor<'b> {
        Cursor { bytes, pos: 0 }
    }

    pub(super) fn pos(&self) -> usize {
        self.pos
    }

    pub(super) fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    pub(super) fn take(&mut self, n: usize) -> Result<&'b [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.bytes.len())
            .ok_or_else(|| format!("truncated: wanted {n} bytes at {}", self.pos))?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    pub(super) fn skip(&mut self, n: usize) -> Result<(), String> {
        self.take(n).map(drop)
    }

    pub(super) fn u16le(&mut self) -> Result<u16, String> {
        Ok(u16::from_le_bytes(fixed(self.take(2)?)))
    }

    pub(super) fn u32le(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(fixed(self.take(4)?)))
    }

    pub(super) fn u64le(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(fixed(self.take(8)?)))
    }

    pub(super) fn u16be(&mut self) -> Result<u16, String> {
        Ok(u16::from_be_bytes(fixed(self.take(2)?)))
    }

    pub(super) fn u32be(&mut self) -> Result<u32, String> {
        Ok(u32::from_be_bytes(fixed(self.take(4)?)))
    }

    pub(super) fn u64be(&mut self) -> Result<u64, String> {
        Ok(u64::from_be_bytes(fixed(self.take(8)?)))
    }
}

fn fixed<const N: usize>(s: &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(s);
    a
}

/// Fills `tags` from one (key, value) pair of a format whose keys are
/// names (APEv2, Matroska, ASF); a field already set is kept (the first
/// tag wins), blank values are ignored.
pub(super) fn apply_key(tags: &mut Tags, key: &str, value: &str) {
    let value = value.trim_matches(char::from(0)).trim();
    if value.is_empty() {
        return;
    }
    let set = |slot: &mut Option<String>| {
        if slot.is_none() {
            *slot = Some(value.to_string());
        }
    };
    let (n, total) = numbers(value);
    match key.to_ascii_lowercase().as_str() {
        "title" => set(&mut tags.title),
        "artist" | "author" | "performer" => set(&mut tags.artist),
        "album" | "wm/albumtitle" => set(&mut tags.album),
        "album artist" | "albumartist" | "album_artist" | "wm/albumartist" => {
            set(&mut tags.album_artist)
        }
        "genre" | "wm/genre" => set(&mut tags.genre),
        "year" | "date" | "date_released" | "date_recorded" | "wm/year" => {
            tags.year = tags.year.or_else(|| {
                value
                    .get(..4)
                    .and_then(|y| y.parse().ok())
                    .filter(|y| *y > 0)
            });
        }
        "track" | "tracknumber" | "track_number" | "part_number" | "wm/tracknumber" => {
            tags.track = tags.track.or(n);
            tags.track_total = tags.track_total.or(total);
        }
        "totaltracks" | "tracktotal" | "total_parts" => tags.track_total = tags.track_total.or(n),
        "disc" | "discnumber" | "disk" | "wm/partofset" => {
            tags.disc = tags.disc.or(n);
            tags.disc_total = tags.disc_total.or(total);
        }
        "totaldiscs" | "disctotal" => tags.disc_total = tags.disc_total.or(n),
        "compilation" | "wm/iscompilation" => {
            tags.compilation |= value == "1" || value.eq_ignore_ascii_case("true")
        }
        _ => {}
    }
}

/// `"3/12"` -> (3, 12); `"7"` -> (7, None).
fn numbers(value: &str) -> (Option<u32>, Option<u32>) {
    let mut parts = value.splitn(2, '/');
    let n = parts.next().and_then(|p| p.trim().parse().ok());
    let total = parts.next().and_then(|p| p.trim().parse().ok());
    (n, total)
}

/// Fills `tags` from an ID3v2 tag in `bytes` (parsed by the `id3` crate).
pub(super) fn apply_id3v2(tags: &mut Tags, bytes: &[u8]) -> Result<(), String> {
    use id3::TagLike;
    let tag = id3::Tag::read_from2(std::io::Cursor::new(bytes)).map_err(|e| e.to_string())?;
    let fill = |slot: &mut Option<String>, v: Option<&str>| {
        if slot.is_none() {
            *slot = v
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(str::to_string);
        }
    };
    fill(&mut tags.title, tag.title());
    fill(&mut tags.artist, tag.artist());
    fill(&mut tags.album, tag.album());
    fill(&mut tags.album_artist, tag.album_artist());
    if tags.genre.is_none() {
        tags.genre = tag
            .genre_parsed()
            .map(|g| g.into_owned())
            .filter(|g| !g.is_empty());
    }
    tags.year = tags.year.or_else(|| {
        tag.year()
            .or_else(|| tag.date_recorded().map(|d| d.year))
            .and_then(|y| u32::try_from(y).ok())
    });
    tags.track = tags.track.or(tag.track());
    tags.track_total = tags.track_total.or(tag.total_tracks());
    tags.disc = tags.disc.or(tag.disc());
    tags.disc_total = tags.disc_total.or(tag.total_discs());
    Ok(())
}

/// The size of an ID3v2 tag from its 10-byte header (with the footer when
/// flagged), or None if `header` is not one.
pub(super) fn id3v2_len(header: &[u8]) -> Option<u64> {
    if header.len() < 10 || &header[..3] != b"ID3" {
        return None;
    }
    let size = header[6..10].iter().try_fold(0u64, |acc, b| {
        (b & 0x80 == 0).then(|| (acc << 7) | u64::from(*b))
    })?;
    let footer = if header[5] & 0x10 != 0 { 10 } else { 0 };
    Some(10 + size + footer)
}

//! Reading tags and stream properties with lofty, with a bound on how much
//! of each file is read.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use lofty::config::{ParseOptions, ParsingMode};
use lofty::file::{AudioFile, FileType, TaggedFileExt};
use lofty::prelude::{Accessor, ItemKey};
use lofty::probe::Probe;

use crate::model::{AudioProps, FileRecord, Tags};
use crate::scan::fingerprint::{fingerprint_file, fingerprint_source};

/// What the tag readers read from: a local file, or a remote object read
/// through the chunk cache.
pub trait Source: Read + Seek {}
impl<T: Read + Seek> Source for T {}

/// Most bytes the tag reader may read from one file. Tags and stream headers
/// live in the first few hundred KiB of real files (cover art aside); a file
/// that needs more is treated as unreadable rather than read whole.
pub const MAX_HEADER_READ_BYTES: u64 = 16 * 1024 * 1024;

/// Stats and probes one file. Errors only when the file cannot even be
/// stat'ed; unreadable tags give a record with `probe_error`.
pub fn probe_file(origin: u32, abs: &Path, rel_path: Vec<u8>) -> io::Result<FileRecord> {
    let file = File::open(abs)?;
    let meta = file.metadata()?;
    let mut rec = FileRecord {
        origin,
        rel_path,
        size_bytes: meta.len(),
        mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
        origin_ino: meta.ino(),
        fingerprint: fingerprint_file(&file, meta.len()).unwrap_or(0),
        format: None,
        tags: Tags::default(),
        props: AudioProps::default(),
        probe_error: None,
        art: None,
        is_image: false,
    };
    if meta.len() == 0 {
        rec.probe_error = Some("empty file".into());
        return Ok(rec);
    }
    let mut file = file;
    if crate::model::is_folder_image(&rec.rel_path) {
        image(&mut rec, &mut file);
        return Ok(rec);
    }
    match read_tags(&mut file, meta.len()) {
        Ok((format, tags, props, art)) => {
            rec.format = Some(format);
            rec.tags = tags;
            rec.props = props;
            rec.art = art;
        }
        Err(e) => rec.probe_error = Some(e),
    }
    Ok(rec)
}

/// Probes a file read through `source` (a remote object, through the
/// chunk cache), with the size, mtime and inode stand-in its listing gave.
pub fn probe_source(
    origin: u32,
    rel_path: Vec<u8>,
    (size_bytes, mtime_ns, origin_ino): (u64, i64, u64),
    mut source: impl Source,
) -> FileRecord {
    let mut rec = FileRecord {
        origin,
        rel_path,
        size_bytes,
        mtime_ns,
        origin_ino,
        fingerprint: 0,
        format: None,
        tags: Tags::default(),
        props: AudioProps::default(),
        probe_error: None,
        art: None,
        is_image: false,
    };
    if size_bytes == 0 {
        rec.probe_error = Some("empty file".into());
        return rec;
    }
    if crate::model::is_folder_image(&rec.rel_path) {
        image(&mut rec, &mut source);
        return rec;
    }
    match fingerprint_source(&mut source, size_bytes) {
        Ok(fp) => rec.fingerprint = fp,
        Err(e) => {
            rec.probe_error = Some(format!("cannot read it: {e}"));
            return rec;
        }
    }
    match read_tags(&mut source, size_bytes) {
        Ok((format, tags, props, art)) => {
            rec.format = Some(format);
            rec.tags = tags;
            rec.props = props;
            rec.art = art;
        }
        Err(e) => rec.probe_error = Some(e),
    }
    rec
}

/// A folder image: never a track, its type by its magic bytes (none: not
/// an image, no cover).
fn image(rec: &mut FileRecord, file: &mut impl Source) {
    rec.is_image = true;
    rec.format = Some("image".into());
    let mut magic = [0u8; 32];
    let mut n = 0;
    let _ = file.seek(SeekFrom::Start(0));
    while n < magic.len() {
        match file.read(&mut magic[n..]) {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k,
        }
    }
    match crate::model::image_ext(&magic[..n]) {
        Some(ext) => {
            rec.art = Some(crate::model::Art {
                offset: 0,
                len: rec.size_bytes,
                ext: ext.to_string(),
            })
        }
        None => {
            rec.probe_error =
                Some("not an image this reader knows (jpg, png, webp, gif, bmp)".into())
        }
    }
}

type Read4 = (String, Tags, AudioProps, Option<crate::model::Art>);

fn read_tags<S: Source>(file: &mut S, size: u64) -> Result<Read4, String> {
    // The formats lofty does not read, by their magic.
    if let Some(found) = crate::scan::containers::read(&mut *file, size) {
        return found.map(|(f, t, p)| (f, t, p, None));
    }
    file.seek(SeekFrom::Start(0)).map_err(|e| e.to_string())?;
    let reader = BoundedReader::new(
        BufReader::with_capacity(64 * 1024, &mut *file),
        MAX_HEADER_READ_BYTES,
    );
    let options = ParseOptions::new()
        .read_cover_art(true)
        .parsing_mode(ParsingMode::Relaxed);
    let tagged = Probe::new(reader)
        .options(options)
        .guess_file_type()
        .map_err(|e| e.to_string())?
        .read()
        .map_err(|e| e.to_string())?;
    let format = format_name(tagged.file_type());
    let mut tags = Tags::default();
    // The primary tag first, then any other tag fills the gaps.
    let mut ordered: Vec<&lofty::tag::Tag> = tagged.primary_tag().into_iter().collect();
    ordered.extend(
        tagged
            .tags()
            .iter()
            .filter(|t| Some(t.tag_type()) != tagged.primary_tag().map(|p| p.tag_type())),
    );
    for tag in ordered {
        fill(&mut tags.artist, tag.artist());
        fill(&mut tags.album, tag.album());
        fill(&mut tags.title, tag.title());
        fill(&mut tags.genre, tag.genre());
        if tags.composer.is_none() {
            tags.composer = tag
                .get_string(ItemKey::Composer)
                .filter(|s| !s.is_empty())
                .map(str::to_string);
        }
        if tags.album_artist.is_none() {
            tags.album_artist = tag
                .get_string(ItemKey::AlbumArtist)
                .filter(|s| !s.is_empty())
                .map(str::to_string);
        }
        tags.year = tags.year.or_else(|| tag.date().map(|d| u32::from(d.year)));
        tags.track = tags.track.or_else(|| tag.track());
        tags.track_total = tags.track_total.or_else(|| tag.track_total());
        tags.disc = tags.disc.or_else(|| tag.disk());
        tags.disc_total = tags.disc_total.or_else(|| tag.disk_total());
        if let Some(c) = tag.get_string(ItemKey::FlagCompilation) {
            tags.compilation |= c == "1" || c.eq_ignore_ascii_case("true");
        }
    }
    let p = tagged.properties();
    let props = AudioProps {
        duration_ms: u64::try_from(p.duration().as_millis()).unwrap_or(u64::MAX),
        bitrate_kbps: p.audio_bitrate(),
        sample_rate_hz: p.sample_rate(),
        channels: p.channels(),
    };
    let art = crate::scan::art::front_cover(&tagged)
        .and_then(|(data, ext)| crate::scan::art::locate(file, size, &data, ext));
    Ok((format, tags, props, art))
}

fn fill(slot: &mut Option<String>, value: Option<std::borrow::Cow<'_, str>>) {
    if slot.is_none()
        && let Some(v) = value.filter(|v| !v.is_empty())
    {
        *slot = Some(v.into_owned());
    }
}

fn format_name(t: FileType) -> String {
    match t {
        FileType::Aac => "aac",
        FileType::Aiff => "aiff",
        FileType::Ape => "ape",
        FileType::Flac => "flac",
        FileType::Mpeg => "mp3",
        FileType::Mp4 => "mp4",
        FileType::Mpc => "mpc",
        FileType::Opus => "opus",
        FileType::Vorbis => "vorbis",
        FileType::Speex => "speex",
        FileType::Wav => "wav",
        FileType::WavPack => "wavpack",
        FileType::Custom(name) => name,
        _ => "unknown",
    }
    .to_string()
}

/// A reader that fails once more than `limit` bytes have been read, so that a
/// hostile or pathological file cannot make the scanner read it whole.
struct BoundedReader<R> {
    inner: R,
    read_bytes: u64,
    limit: u64,
}

impl<R> BoundedReader<R> {
    fn new(inner: R, limit: u64) -> Self {
        BoundedReader {
            inner,
            read_bytes: 0,
            limit,
        }
    }
}

impl<R: Read> Read for BoundedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.read_bytes >= self.limit {
            return Err(io::Error::other(format!(
                "header read budget of {} bytes exhausted",
                self.limit
            )));
        }
        let n = self.inner.read(buf)?;
        self.read_bytes += n as u64;
        Ok(n)
    }
}

impl<R: Seek> Seek for BoundedReader<R> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.inner.seek(pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_reader_stops() {
        let data = vec![1u8; 100];
        let mut r = BoundedReader::new(io::Cursor::new(data), 10);
        let mut buf = [0u8; 8];
        assert_eq!(r.read(&mut buf).unwrap(), 8);
        assert_eq!(r.read(&mut buf).unwrap(), 8);
        assert!(r.read(&mut buf).is_err());
    }
}

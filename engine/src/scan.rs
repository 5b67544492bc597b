//! The origin scanner: walks local origin directories and reads tags with
//! lofty, in parallel, with a bound on how much of each file is read.
//!
//! Bad input never stops a scan: a file whose tags cannot be read still gets a
//! record (with `probe_error` set), so it shows up in the tree by its file
//! name; every such file is logged once and counted. Unreadable directories
//! are logged and skipped.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use lofty::config::{ParseOptions, ParsingMode};
use lofty::file::{AudioFile, FileType, TaggedFileExt};
use lofty::prelude::{Accessor, ItemKey};
use lofty::probe::Probe;
use tracing::{info, warn};

use crate::model::{AudioProps, FileRecord, Tags};

/// Most bytes the tag reader may read from one file. Tags and stream headers
/// live in the first few hundred KiB of real files (cover art aside); a file
/// that needs more is treated as unreadable rather than read whole.
pub const MAX_HEADER_READ_BYTES: u64 = 16 * 1024 * 1024;

/// Extensions (lower case) of the audio formats the scanner looks at.
pub const AUDIO_EXTENSIONS: &[&str] = &[
    "mp3", "mp2", "mp1", "flac", "ogg", "oga", "opus", "spx", "m4a", "m4b", "m4p", "mp4", "aac",
    "alac", "wav", "wave", "aif", "aiff", "aifc", "ape", "wv", "mpc", "mp+", "mpp",
];

pub fn is_audio_file(name: &[u8]) -> bool {
    let (_, ext) = crate::template::split_ext(name);
    ext.is_some_and(|e| {
        AUDIO_EXTENSIONS
            .iter()
            .any(|a| a.as_bytes().eq_ignore_ascii_case(e))
    })
}

/// What a scan found, with counters for the log and the status.
#[derive(Debug, Default)]
pub struct ScanOutcome {
    pub files: Vec<FileRecord>,
    pub unreadable_files: u64,
    pub unreadable_dirs: u64,
    pub elapsed: Duration,
}

/// Scans every origin. `threads` probe workers run in parallel.
pub fn scan_origins(origins: &[PathBuf], threads: usize) -> ScanOutcome {
    let started = Instant::now();
    let unreadable_dirs = AtomicU64::new(0);
    let unreadable_files = AtomicU64::new(0);
    let (tx, rx) = std::sync::mpsc::sync_channel::<(u32, PathBuf, Vec<u8>)>(4096);
    let rx = parking_lot::Mutex::new(rx);
    let threads = threads.max(1);
    let mut files = Vec::new();
    std::thread::scope(|s| {
        let mut workers = Vec::new();
        for _ in 0..threads {
            workers.push(s.spawn(|| {
                let mut out = Vec::new();
                loop {
                    let job = rx.lock().recv();
                    let Ok((origin, abs, rel)) = job else { break };
                    match probe_file(origin, &abs, rel) {
                        Ok(rec) => {
                            if let Some(e) = &rec.probe_error {
                                unreadable_files.fetch_add(1, Ordering::Relaxed);
                                warn!(path = %abs.display(), "unreadable tags, listed by file name: {e}");
                            }
                            out.push(rec);
                        }
                        Err(e) => {
                            unreadable_files.fetch_add(1, Ordering::Relaxed);
                            warn!(path = %abs.display(), "skipped file: {e}");
                        }
                    }
                }
                out
            }));
        }
        for (idx, root) in origins.iter().enumerate() {
            let walker = walkdir::WalkDir::new(root).follow_links(false).into_iter();
            for entry in walker {
                let entry = match entry {
                    Ok(e) => e,
                    Err(e) => {
                        unreadable_dirs.fetch_add(1, Ordering::Relaxed);
                        let path = e
                            .path()
                            .map(|p| p.display().to_string())
                            .unwrap_or_default();
                        warn!(path, "skipped unreadable directory entry: {e}");
                        continue;
                    }
                };
                if !entry.file_type().is_file() || !is_audio_file(entry.file_name().as_bytes()) {
                    continue;
                }
                let rel = entry
                    .path()
                    .strip_prefix(root)
                    .map(|p| p.as_os_str().as_bytes().to_vec())
                    .unwrap_or_default();
                let origin = u32::try_from(idx).unwrap_or(u32::MAX);
                if tx.send((origin, entry.into_path(), rel)).is_err() {
                    break;
                }
            }
        }
        drop(tx);
        for w in workers {
            match w.join() {
                Ok(mut out) => files.append(&mut out),
                Err(_) => {
                    warn!("a scan worker panicked; its files are missing until the next scan")
                }
            }
        }
    });
    let outcome = ScanOutcome {
        files,
        unreadable_files: unreadable_files.into_inner(),
        unreadable_dirs: unreadable_dirs.into_inner(),
        elapsed: started.elapsed(),
    };
    info!(
        tracks = outcome.files.len(),
        unreadable_files = outcome.unreadable_files,
        unreadable_dirs = outcome.unreadable_dirs,
        elapsed_ms = outcome.elapsed.as_millis() as u64,
        "scan finished"
    );
    outcome
}

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
    };
    if meta.len() == 0 {
        rec.probe_error = Some("empty file".into());
        return Ok(rec);
    }
    match read_tags(file) {
        Ok((format, tags, props)) => {
            rec.format = Some(format);
            rec.tags = tags;
            rec.props = props;
        }
        Err(e) => rec.probe_error = Some(e),
    }
    Ok(rec)
}

fn read_tags(file: File) -> Result<(String, Tags, AudioProps), String> {
    let reader = BoundedReader::new(
        BufReader::with_capacity(64 * 1024, file),
        MAX_HEADER_READ_BYTES,
    );
    let options = ParseOptions::new()
        .read_cover_art(false)
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
    Ok((format, tags, props))
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

/// Bytes hashed at each end of a file for its fingerprint.
const FINGERPRINT_EDGE_BYTES: u64 = 4096;

/// A cheap content fingerprint: blake3 of the size and the first and last
/// 4 KiB. Tags live at the ends of audio files, so a retag changes it.
pub fn fingerprint_file(file: &File, size: u64) -> io::Result<u64> {
    use std::os::unix::fs::FileExt;
    let mut h = blake3::Hasher::new();
    h.update(&size.to_le_bytes());
    let mut buf = vec![0u8; FINGERPRINT_EDGE_BYTES as usize];
    let head = size.min(FINGERPRINT_EDGE_BYTES) as usize;
    file.read_exact_at(&mut buf[..head], 0)?;
    h.update(&buf[..head]);
    if size > FINGERPRINT_EDGE_BYTES {
        let tail_len = (size - FINGERPRINT_EDGE_BYTES).min(FINGERPRINT_EDGE_BYTES) as usize;
        file.read_exact_at(&mut buf[..tail_len], size - tail_len as u64)?;
        h.update(&buf[..tail_len]);
    }
    let d = h.finalize();
    Ok(u64::from_le_bytes(
        d.as_bytes()[..8].try_into().unwrap_or([0; 8]),
    ))
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
    fn audio_extensions() {
        assert!(is_audio_file(b"a.FLAC"));
        assert!(is_audio_file(b"x.y.mp3"));
        assert!(!is_audio_file(b"cover.jpg"));
        assert!(!is_audio_file(b"mp3"));
        assert!(!is_audio_file(b".mp3"));
    }

    #[test]
    fn bad_files_get_records_not_errors() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("empty.mp3"), b"").unwrap();
        std::fs::write(dir.path().join("junk.flac"), vec![0x5a; 5000]).unwrap();
        let mut trunc = b"fLaC".to_vec();
        trunc.extend_from_slice(&[0, 0, 0, 34, 1, 2]);
        std::fs::write(dir.path().join("trunc.flac"), trunc).unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/notes.txt"), b"hi").unwrap();
        let out = scan_origins(&[dir.path().to_path_buf()], 2);
        assert_eq!(out.files.len(), 3);
        assert_eq!(out.unreadable_files, 3);
        assert!(out.files.iter().all(|f| f.probe_error.is_some()));
    }

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

//! The origin scanner: walks local origin directories and reads tags with
//! lofty, in parallel, with a bound on how much of each file is read.
//!
//! Bad input never stops a scan: a file whose tags cannot be read still gets a
//! record (with `probe_error` set), so it shows up in the tree by its file
//! name; every such file is logged once and counted. Unreadable directories
//! are logged and skipped.
//!
//! Files: `tags` (lofty, bounded reads), `containers` (the formats lofty
//! does not read: DSF, DSDIFF, WMA, Matroska/WebM, TTA, TAK, OptimFROG,
//! MIDI), `fingerprint` (a cheap content fingerprint). May use: model,
//! config (the default extension list).
//!
//! In detail: `probe_file`: stat + tags with lofty through a `BoundedReader`
//! (at most 16 MiB per file, cover art skipped). A file whose tags fail still
//! gets a `FileRecord` with `probe_error`. `scan_origins` is the one-shot
//! scan behind `musicfs scan` (the benchmark's scan rate).

use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::model::FileRecord;

mod art;
mod containers;
mod fingerprint;
mod tags;

pub use fingerprint::fingerprint_file;
pub use tags::{MAX_HEADER_READ_BYTES, Source, probe_file, probe_source};

/// The extensions of the files the scan lists (from `audio_extensions`),
/// and whether folder images are listed too (`cover_art`).
#[derive(Clone, Debug)]
pub struct AudioExtensions(std::collections::HashSet<Vec<u8>>, bool);

impl AudioExtensions {
    pub fn new<S: AsRef<str>>(list: &[S]) -> AudioExtensions {
        AudioExtensions(
            list.iter()
                .map(|e| e.as_ref().to_ascii_lowercase().into_bytes())
                .collect(),
            false,
        )
    }

    /// These, and folder images (`cover.*`, `folder.*`, `front.*`,
    /// `album.*`), the sources of album covers.
    pub fn with_folder_images(mut self, yes: bool) -> AudioExtensions {
        self.1 = yes;
        self
    }

    /// Whether a file of this name is listed.
    pub fn matches(&self, name: &[u8]) -> bool {
        let (_, ext) = crate::model::template::split_ext(name);
        ext.is_some_and(|e| self.0.contains(&e.to_ascii_lowercase()))
            || (self.1 && crate::model::is_folder_image(name))
    }
}

impl Default for AudioExtensions {
    fn default() -> Self {
        AudioExtensions::new(crate::config::defaults::AUDIO_EXTENSIONS)
    }
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
pub fn scan_origins(origins: &[PathBuf], exts: &AudioExtensions, threads: usize) -> ScanOutcome {
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
                if !entry.file_type().is_file() || !exts.matches(entry.file_name().as_bytes()) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audio_extensions() {
        let e = AudioExtensions::default();
        assert!(e.matches(b"a.FLAC"));
        assert!(e.matches(b"x.y.mp3"));
        for ext in [
            "wma", "dsf", "dff", "tak", "ofr", "tta", "webm", "mka", "mid",
        ] {
            assert!(e.matches(format!("a.{ext}").as_bytes()), "{ext}");
        }
        assert!(!e.matches(b"cover.jpg"));
        assert!(!e.matches(b"mp3"));
        assert!(!e.matches(b".mp3"));
        let only = AudioExtensions::new(&["XYZ"]);
        assert!(only.matches(b"a.xyz") && !only.matches(b"a.mp3"));
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
        let out = scan_origins(&[dir.path().to_path_buf()], &AudioExtensions::default(), 2);
        assert_eq!(out.files.len(), 3);
        assert_eq!(out.unreadable_files, 3);
        assert!(out.files.iter().all(|f| f.probe_error.is_some()));
    }
}

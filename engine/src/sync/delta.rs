//! Delta scans: walk, compare with the catalog, probe what changed, commit
//! in checkpoints; never remove what an unreadable directory hides.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use anyhow::Result;
use tracing::warn;

use crate::catalog::{KnownFile, file_key};
use crate::scan::fingerprint_file;
use crate::sync::syncer::Syncer;

/// An mtime this far in the future is not trusted (the clock jumped, or the
/// file came from a machine with a wrong clock): the fingerprint decides.
const MTIME_FUTURE_TOLERANCE_NS: i64 = 60 * 1_000_000_000;

/// Whether an origin file is unchanged since the catalog saw it: same size,
/// mtime and inode; when the mtime looks wrong, also the same fingerprint.
fn unchanged(known: Option<&KnownFile>, abs: &Path, meta: &std::fs::Metadata) -> bool {
    let Some(k) = known else { return false };
    let mtime_ns = meta.mtime() * 1_000_000_000 + meta.mtime_nsec();
    if (k.size, k.mtime_ns, k.ino) != (meta.len(), mtime_ns, meta.ino()) {
        return false;
    }
    if mtime_ns <= crate::sys::time::now_ns() + MTIME_FUTURE_TOLERANCE_NS {
        return true;
    }
    let fp = std::fs::File::open(abs).and_then(|f| fingerprint_file(&f, meta.len()));
    fp.is_ok_and(|fp| fp == k.fingerprint)
}

impl Syncer {
    /// Delta-syncs `sub` (a relative directory; empty = everything) of one origin.
    pub fn sync_origin(&self, origin: u32, sub: &Path) -> Result<()> {
        self.sync_origin_pruned(origin, sub, None)
    }

    /// `sync_origin`, optionally pruned by directory mtimes: `dir_mtimes`
    /// holds each directory's mtime from the previous pass; the files of a
    /// directory whose mtime did not change are not stat'ed (no file can have
    /// been added, removed or renamed there). In-place edits do not change a
    /// directory's mtime, so callers make every few passes unpruned.
    pub fn sync_origin_pruned(
        &self,
        origin: u32,
        sub: &Path,
        mut dir_mtimes: Option<&mut HashMap<PathBuf, i64>>,
    ) -> Result<()> {
        // A remote origin is listed whole (its listing is cheap to compare).
        if let Some(remote) = self.remote_of(origin) {
            return self.sync_remote(origin, &*remote?);
        }
        let root = self.origin_root(origin)?;
        let exts = self.extensions();
        let start = root.join(sub);
        let mut prefix = sub.as_os_str().as_bytes().to_vec();
        if !prefix.is_empty() {
            prefix.push(b'/');
        }
        if !self.origin_usable(origin, &root)? {
            return Ok(());
        }
        if sub.as_os_str().is_empty() {
            // A full pass over an origin that was away: it is caught up now.
            self.take_back(origin, &root);
            if let Ok(m) = std::fs::metadata(&root) {
                self.store.set_origin_device(origin, m.dev())?;
            }
        }
        // Known files are marked as the walk finds them; the unmarked are
        // the removals.
        let mut known = self.store.file_stats(origin, &prefix)?;
        // Directories that could not be read: files under them are kept.
        let mut unreadable: Vec<Vec<u8>> = Vec::new();
        let mut jobs = Vec::new();
        let mut quiet_dirs: HashSet<PathBuf> = HashSet::new();
        if start.is_dir() {
            let walker = walkdir::WalkDir::new(&start)
                .follow_links(false)
                .sort_by_file_name();
            for entry in walker {
                let entry = match entry {
                    Ok(e) => e,
                    Err(e) => {
                        let p = e
                            .path()
                            .map(Path::to_path_buf)
                            .unwrap_or_else(|| start.clone());
                        warn!(path = %p.display(), "skipped unreadable directory entry: {e}");
                        if let Ok(rel) = p.strip_prefix(&root) {
                            unreadable.push(rel.as_os_str().as_bytes().to_vec());
                        }
                        continue;
                    }
                };
                if entry.file_type().is_dir()
                    && let Some(map) = dir_mtimes.as_deref_mut()
                    && let Ok(m) = entry.metadata()
                {
                    let mtime = m.mtime() * 1_000_000_000 + m.mtime_nsec();
                    let path = entry.path().to_path_buf();
                    if map.insert(path.clone(), mtime) == Some(mtime) {
                        quiet_dirs.insert(path);
                    }
                    continue;
                }
                if !entry.file_type().is_file() || !exts.matches(entry.file_name().as_bytes()) {
                    continue;
                }
                let Ok(rel) = entry.path().strip_prefix(&root) else {
                    continue;
                };
                let rel = rel.as_os_str().as_bytes();
                if known.contains(rel)
                    && entry
                        .path()
                        .parent()
                        .is_some_and(|p| quiet_dirs.contains(p))
                {
                    known.mark_seen(rel);
                    self.counters.unchanged.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let Ok(meta) = entry.metadata() else { continue };
                let same = unchanged(known.get(rel), entry.path(), &meta);
                known.mark_seen(rel);
                let rel = rel.to_vec();
                // Folder images (cover sources) are not tracks: not counted.
                let track = u64::from(!crate::model::is_folder_image(&rel));
                if same {
                    self.counters.unchanged.fetch_add(track, Ordering::Relaxed);
                    continue;
                }
                self.counters.found.fetch_add(track, Ordering::Relaxed);
                jobs.push((origin, entry.into_path(), rel));
                if jobs.len() >= self.checkpoint_files.load(Ordering::Relaxed) {
                    self.check_stop()?;
                    let recs = self.probe(std::mem::take(&mut jobs));
                    self.commit(recs, &[], false)?;
                }
            }
        }
        let recs = self.probe(jobs);
        let removals: Vec<Vec<u8>> = known
            .unseen()
            .filter(|rel| !unreadable.iter().any(|u| rel.starts_with(u)))
            .map(|rel| file_key(origin, rel))
            .collect();
        if !recs.is_empty() || !removals.is_empty() {
            self.commit(recs, &removals, false)?;
        }
        Ok(())
    }

    /// Applies changes to single files (from a watcher): probes those that
    /// exist and changed, removes those that are gone.
    pub fn sync_files(&self, origin: u32, rels: &HashSet<Vec<u8>>) -> Result<()> {
        let root = self.origin_root(origin)?;
        let exts = self.extensions();
        let mut jobs = Vec::new();
        let mut removals = Vec::new();
        for rel in rels {
            let name = rel.rsplit(|b| *b == b'/').next().unwrap_or(rel);
            if !exts.matches(name) {
                continue;
            }
            let abs = root.join(OsStr::from_bytes(rel));
            let key = file_key(origin, rel);
            match std::fs::symlink_metadata(&abs) {
                Ok(m) if m.is_file() => {
                    let known = self.store.file(&key)?.map(|e| KnownFile {
                        size: e.rec.size_bytes,
                        mtime_ns: e.rec.mtime_ns,
                        ino: e.rec.origin_ino,
                        fingerprint: e.rec.fingerprint,
                    });
                    if !unchanged(known.as_ref(), &abs, &m) {
                        let track = u64::from(!crate::model::is_folder_image(rel));
                        self.counters.found.fetch_add(track, Ordering::Relaxed);
                        jobs.push((origin, abs, rel.clone()));
                    }
                }
                _ => {
                    if self.store.file(&key)?.is_some() {
                        removals.push(key);
                    }
                }
            }
        }
        let recs = self.probe(jobs);
        if !recs.is_empty() || !removals.is_empty() {
            self.commit(recs, &removals, false)?;
        }
        Ok(())
    }
}

//! The `user.musicfs.*` status attributes of a file, and the last error
//! the data plane met on each file (the `error` attribute).
//!
//! Every file has the whole set, so `getfattr -d -m user.musicfs` shows
//! them all: `origin` (path or URL), `version` (the content version, the
//! open handle), `cached` (bytes in the chunk cache, or `local` for a local
//! disk, read directly), `served_from` (the copy that served it last, or
//! the one a read would try first), `error` (the last error with its UTC
//! time, else why the tag reader failed; empty when neither), `tags` (JSON),
//! and `format` when the probe recognised one.

use std::collections::HashMap;
use std::os::unix::ffi::OsStrExt;

use parking_lot::Mutex;

use crate::serve::shared::Shared;

/// Files whose last error is remembered (the oldest half is forgotten past it).
const ERRORS_MAX: usize = 16 * 1024;

/// The last error of each file, by inode: (ms since the epoch, what).
#[derive(Default)]
pub(super) struct LastErrors(Mutex<HashMap<u64, (u64, String)>>);

impl LastErrors {
    pub(super) fn note(&self, ino: u64, what: String) {
        let now = crate::sys::time::now_ms();
        let mut m = self.0.lock();
        if m.len() >= ERRORS_MAX {
            let mut times: Vec<u64> = m.values().map(|(t, _)| *t).collect();
            times.sort_unstable();
            let cut = times[times.len() / 2];
            m.retain(|_, (t, _)| *t > cut);
        }
        m.insert(ino, (now, what));
    }

    pub(super) fn get(&self, ino: u64) -> Option<(u64, String)> {
        self.0.lock().get(&ino).cloned()
    }
}

/// `2026-12-02 03:20:00.000 UTC: what`.
fn stamped(ms: u64, what: &str) -> String {
    let secs = i64::try_from(ms / 1000).unwrap_or(i64::MAX);
    format!(
        "{} UTC: {what}",
        crate::sys::time::utc_string(secs, ms % 1000)
    )
}

/// Of the origins holding a copy of file `ino` (`origin`'s, and those the
/// catalog found to be the same file), the one with the highest priority.
fn first_copy(shared: &Shared, ino: u64, origin: u32, rel: &[u8]) -> u32 {
    let table = shared.origins.snapshot();
    table
        .iter()
        .map(|(id, _)| id)
        .filter(|id| {
            *id == origin
                || shared
                    .store
                    .file(&crate::catalog::file_key(*id, rel))
                    .is_ok_and(|e| e.is_some_and(|e| e.ino == ino))
        })
        .min_by_key(|id| table.priority(*id))
        .unwrap_or(origin)
}

/// The `user.musicfs.*` extended attributes of a node (none for
/// directories).
pub(super) fn xattrs(shared: &Shared, ino: u64) -> Vec<(&'static str, Vec<u8>)> {
    let Ok(Some(node)) = shared.store.node(ino) else {
        return Vec::new();
    };
    let Ok(Some(entry)) = shared.store.file(&node.file_key) else {
        return Vec::new();
    };
    let rec = entry.rec;
    let mut out = Vec::new();
    if let Some(path) = shared.origin_path(rec.origin, &rec.rel_path) {
        out.push(("user.musicfs.origin", path.as_os_str().as_bytes().to_vec()));
    }
    out.push((
        "user.musicfs.version",
        format!("{:016x}", node.version).into_bytes(),
    ));
    // The bytes of the file in the chunk cache; `local` for origins read
    // directly (local disks).
    let cached = match shared.content() {
        Some(c) if shared.origins.snapshot().is_cached(rec.origin) => c
            .cached_bytes(&crate::content::ContentKey::of(
                &node.file_key,
                // A cover's chunks are its origin file's.
                node.cover.map_or(node.size_bytes, |c| c.source_size),
                node.mtime_ns,
            ))
            .to_string(),
        _ if shared.origins.snapshot().is_cached(rec.origin) => "0".to_string(),
        _ => "local".to_string(),
    };
    out.push(("user.musicfs.cached", cached.into_bytes()));
    // Where the last fetch came from (a copy on another origin after a
    // failover); until one, the copy a fetch would try first.
    let served = shared
        .served_from(ino)
        .unwrap_or_else(|| first_copy(shared, ino, rec.origin, &rec.rel_path));
    if let Some(path) = shared.origin_path(served, &rec.rel_path) {
        out.push((
            "user.musicfs.served_from",
            path.as_os_str().as_bytes().to_vec(),
        ));
    }
    // The data plane's last error on this file (with its time), else why
    // the tag reader could not read this version's tags (the catalog keeps
    // no time for that: it holds for as long as this version is served).
    let error = match (shared.last_errors.get(ino), &rec.probe_error) {
        (Some((ms, what)), _) => stamped(ms, &what),
        (None, Some(e)) => e.clone(),
        (None, None) => String::new(),
    };
    out.push(("user.musicfs.error", error.into_bytes()));
    out.push((
        "user.musicfs.tags",
        serde_json::to_vec(&rec.tags).unwrap_or_default(),
    ));
    if let Some(f) = &rec.format {
        out.push(("user.musicfs.format", f.as_bytes().to_vec()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_stamped_and_bounded() {
        let e = LastErrors::default();
        for i in 0..(ERRORS_MAX as u64 + 10) {
            e.note(i, format!("error {i}"));
        }
        assert!(e.0.lock().len() <= ERRORS_MAX);
        let last = ERRORS_MAX as u64 + 9;
        assert_eq!(e.get(last).map(|x| x.1), Some(format!("error {last}")));
        let s = stamped(1_764_645_600_123, "open: EIO");
        assert!(s.ends_with(".123 UTC: open: EIO"), "{s}");
        assert!(s.starts_with("2025-12-02 "), "{s}");
    }
}

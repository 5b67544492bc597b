//! Head and tail chunks of files of cached origins go into the chunk cache
//! while the scan reads their tags: that is where a media server's probe
//! reads too, so its first scan of the mount is served from the cache. The
//! bytes are mostly in the page cache already (the tag reader just read
//! them); each chunk is read once, bounded by its size (at most 256 KiB).

use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

use crate::catalog::file_key;
use crate::content::{ChunkCache, ContentInfo, ContentKey, Layout};
use crate::model::FileRecord;

/// Offers the head and tail chunks of `rec` (at `abs`) to `cache`.
pub(super) fn warm_head_and_tail(cache: &ChunkCache, rec: &FileRecord, abs: &Path) {
    let key = ContentKey::of(
        &file_key(rec.origin, &rec.rel_path),
        rec.size_bytes,
        rec.mtime_ns,
    );
    let layout = Layout::new(rec.size_bytes);
    let count = layout.count();
    if count == 0 || !cache.usable() {
        return;
    }
    let Ok(file) = std::fs::File::open(abs) else {
        return;
    };
    // Only the version the record describes.
    let Ok(meta) = file.metadata() else { return };
    if (meta.len(), meta.mtime() * 1_000_000_000 + meta.mtime_nsec())
        != (rec.size_bytes, rec.mtime_ns)
    {
        return;
    }
    let info = ContentInfo {
        origin: rec.origin,
        rel_path: rec.rel_path.clone(),
        size_bytes: rec.size_bytes,
        mtime_ns: rec.mtime_ns,
    };
    let mut wanted = vec![0];
    if count > 1 {
        wanted.push(count - 1);
    }
    for i in wanted {
        if cache.contains(&key, i) {
            continue;
        }
        let (start, len) = layout.range(i);
        let mut buf = vec![0u8; len as usize];
        if file.read_exact_at(&mut buf, start).is_ok() {
            cache.put(&key, i, &info, buf.into());
        }
    }
}

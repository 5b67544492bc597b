//! Chunks of remote objects (S3, WebDAV) for the cached data plane. A
//! handle is bound to the catalog's version of its object; its first fetch
//! learns the object's ETag with a stat and checks that it is that version
//! (size, mtime, ETag), and every fetch asks for exactly that ETag
//! (`If-Match`), so a replaced object is never mixed into a handle's bytes:
//! it fails ESTALE instead.

use std::sync::Arc;

use tracing::warn;

use crate::model::content_version;
use crate::origins::remote::{Remote, etag_ino};
use crate::serve::cached::CachedFile;
use crate::serve::copies::Source;

/// Chunk `i` of `f` from the copy `src` on a remote origin, or the errno
/// a reader sees.
pub(super) fn read_chunk(
    remote: Result<&Arc<Remote>, &str>,
    f: &CachedFile,
    src: &Source,
    i: u32,
) -> Result<Vec<u8>, i32> {
    let remote = remote.map_err(|why| {
        warn!(ino = f.ino, "remote origin cannot be used: {why}");
        libc::EIO
    })?;
    let known = f.etags.lock().get(&src.origin).cloned();
    let etag = match known {
        Some(e) => e,
        None => {
            let st = remote.stat(&src.rel).map_err(|e| {
                warn!(ino = f.ino, path = %src.path.display(), "remote stat failed: {e}");
                e.errno()
            })?;
            let version = content_version(st.size, st.mtime_ns, etag_ino(st.etag.as_deref()));
            if version != src.version {
                warn!(ino = f.ino, path = %src.path.display(), "the object on the server is another version than the catalog's and not all of it is cached: ESTALE");
                return Err(libc::ESTALE);
            }
            f.etags.lock().insert(src.origin, st.etag.clone());
            st.etag
        }
    };
    let (start, len) = f.layout.range(i);
    let bytes = remote
        .read(&src.rel, start, len, etag.as_deref())
        .map_err(|e| {
            warn!(ino = f.ino, path = %src.path.display(), "remote read failed: {e}");
            e.errno()
        })?;
    if bytes.len() as u64 != len {
        warn!(ino = f.ino, path = %src.path.display(), got = bytes.len(), len, "the server sent a short chunk: ESTALE");
        return Err(libc::ESTALE);
    }
    Ok(bytes)
}

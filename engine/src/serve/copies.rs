//! The copies of a cached file and the failover between them: every
//! origin that holds the same relative path, size and fingerprint (the
//! catalog gave them one node) is a copy. A fetch tries ready origins
//! first, then by priority; an error or a missed deadline of one copy
//! fails over to the next in the middle of a read, and the reader sees an
//! error only when every copy failed.

use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Instant;

use tracing::{info, warn};

use crate::catalog::split_file_key;
use crate::metrics;
use crate::origins::OpenFile;
use crate::serve::cached::CachedFile;
use crate::serve::files::Origin;
use crate::serve::shared::Shared;
use crate::serve::wire::errno_of;

/// One copy of a cached file: an origin that holds the same relative
/// path, size and fingerprint (the catalog gave it the same node).
#[derive(Clone, Debug)]
pub(super) struct Source {
    pub(super) origin: u32,
    pub(super) path: PathBuf,
    pub(super) rel: Vec<u8>,
    pub(super) size_bytes: u64,
    pub(super) mtime_ns: i64,
    /// That copy's content version.
    pub(super) version: u64,
}

/// The copies of `origin`'s file at `ino`: its own (at `version`, `size`,
/// `mtime`) and every other origin's the catalog found to be the same file.
pub(super) fn sources_of(
    shared: &Shared,
    ino: u64,
    origin: &Origin,
    own: (u64, u64, i64),
) -> Vec<Source> {
    let rel = split_file_key(&origin.file_key).map_or(&[][..], |(_, r)| r);
    let table = shared.origins.snapshot();
    let mut out = vec![Source {
        origin: origin.id,
        path: origin.path.clone(),
        rel: rel.to_vec(),
        version: own.0,
        size_bytes: own.1,
        mtime_ns: own.2,
    }];
    for (id, _) in table.iter() {
        if id == origin.id {
            continue;
        }
        let Ok(Some(e)) = shared.store.file(&crate::catalog::file_key(id, rel)) else {
            continue;
        };
        if e.ino == ino && e.rec.size_bytes == own.1 {
            out.push(Source {
                origin: id,
                path: shared.origin_path(id, rel).unwrap_or_default(),
                rel: rel.to_vec(),
                version: e.rec.version(),
                size_bytes: e.rec.size_bytes,
                mtime_ns: e.rec.mtime_ns,
            });
        }
    }
    out.sort_by_key(|s| table.priority(s.origin));
    out
}

/// The file of one copy of a cached handle: held, or opened again by path
/// if it is still that copy's content (size and mtime); else ESTALE.
fn origin_file(shared: &Shared, f: &CachedFile, src: &Source) -> Result<OpenFile, i32> {
    if let Some(open) = shared.fds.get(f.ino, src.version) {
        return Ok(open);
    }
    let open = shared
        .fds
        .open(f.ino, src.origin, &src.path, false)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ENOENT) => libc::ESTALE,
            _ => errno_of(&e),
        })?;
    if (open.size_bytes, open.mtime_ns) != (src.size_bytes, src.mtime_ns) {
        warn!(ino = f.ino, path = %src.path.display(), "a handle's version of the file is gone from the origin and not all of it is cached: ESTALE");
        return Err(libc::ESTALE);
    }
    Ok(open)
}

/// The bytes of chunk `i` of `f`, from the first of its copies that gives
/// them (ready origins first, then by priority): an error or a missed
/// deadline of one copy fails over to the next at once (a stall costs one
/// first-byte deadline, not a retry on the same copy), and when every copy
/// failed, each remote copy is tried once more (what a retry on the same
/// server was for). The caller sees an error only after that.
pub(super) fn read_chunk(shared: &Shared, f: &CachedFile, i: u32) -> Result<Vec<u8>, i32> {
    let mut last = libc::EIO;
    let sources = f.sources_now(shared);
    let table = shared.origins.snapshot();
    let second = sources.iter().filter(|s| table.is_remote(s.origin));
    for src in sources.iter().chain(second) {
        let started = Instant::now();
        let fetched = read_chunk_from(shared, f, src, i);
        metrics::observe_origin_fetch(
            src.origin,
            || shared.origins.root(src.origin),
            started.elapsed(),
        );
        match fetched {
            Ok(bytes) => {
                served_by(shared, f, src);
                return Ok(bytes);
            }
            Err(errno) => last = errno,
        }
    }
    Err(last)
}

/// Notes which copy served `f` (the `served_from` xattr; an event when a
/// file is served by another copy than before).
fn served_by(shared: &Shared, f: &CachedFile, src: &Source) {
    let before = f.served.swap(src.origin, Ordering::AcqRel);
    if before == src.origin {
        return;
    }
    shared.note_served_from(f.ino, src.origin);
    let preferred = f.sources.first().map(|s| s.origin);
    if before != u32::MAX || preferred != Some(src.origin) {
        let what = if preferred == Some(src.origin) {
            "back on its first copy"
        } else {
            "served by another copy"
        };
        crate::events::emit(
            "served_from",
            format!("{} {what}: {}", f.path.display(), src.path.display()),
        );
    }
}

/// Chunk `i` of `f` from one copy.
fn read_chunk_from(shared: &Shared, f: &CachedFile, src: &Source, i: u32) -> Result<Vec<u8>, i32> {
    if let Some(remote) = shared.origins.snapshot().remote(src.origin) {
        return crate::serve::remote::read_chunk(remote, f, src, i);
    }
    let mut open = origin_file(shared, f, src)?;
    // A network filesystem that was remounted or reconnected answers
    // ESTALE or ENOTCONN on files opened before: reopened by path (the
    // same version only), a bounded number of times.
    let mut reopens = 0;
    loop {
        match read_exact(f, src, &open, i) {
            Err(Retry(errno)) if reopens < REOPENS_MAX => {
                reopens += 1;
                info!(ino = f.ino, path = %src.path.display(), errno, "origin file went stale; reopening it");
                open = shared
                    .fds
                    .reopen(
                        f.ino,
                        src.version,
                        src.origin,
                        &src.path,
                        (src.size_bytes, src.mtime_ns),
                        // Asked only when the inode changed (a remounted
                        // share may renumber them): the catalog's
                        // fingerprint of this very version, if it has it.
                        |file, size| {
                            shared
                                .store
                                .file(&crate::catalog::file_key(src.origin, &src.rel))
                                .ok()
                                .flatten()
                                .filter(|e| e.rec.version() == src.version)
                                .is_some_and(|e| {
                                    crate::scan::fingerprint_file(file, size)
                                        .is_ok_and(|fp| fp == e.rec.fingerprint)
                                })
                        },
                    )
                    .map_err(|e| {
                        warn!(ino = f.ino, path = %src.path.display(), "reopening the origin file failed: {e}");
                        match e.raw_os_error() {
                            Some(libc::ENOENT) => libc::ESTALE,
                            _ => errno_of(&e),
                        }
                    })?;
            }
            Err(Retry(errno)) => return Err(errno),
            Err(Fail(errno)) => return Err(errno),
            Ok(buf) => return Ok(buf),
        }
    }
}

/// Reopens of one copy's file per fetch at most.
const REOPENS_MAX: u32 = 2;

/// Why a read of an origin file failed: `Retry` after reopening it (ESTALE,
/// ENOTCONN from the filesystem), or `Fail`.
enum ReadError {
    Retry(i32),
    Fail(i32),
}
use ReadError::{Fail, Retry};

/// Chunk `i` of `f` from the open file of copy `src`.
fn read_exact(f: &CachedFile, src: &Source, open: &OpenFile, i: u32) -> Result<Vec<u8>, ReadError> {
    let (start, len) = f.layout.range(i);
    let mut buf = vec![0u8; len as usize];
    let mut filled = 0;
    while filled < buf.len() {
        match open.file.read_at(&mut buf[filled..], start + filled as u64) {
            Ok(0) => {
                warn!(ino = f.ino, path = %src.path.display(), "the origin file is shorter than its version: ESTALE");
                return Err(Fail(libc::ESTALE));
            }
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                let errno = errno_of(&e);
                if matches!(errno, libc::ESTALE | libc::ENOTCONN) {
                    return Err(Retry(errno));
                }
                warn!(ino = f.ino, path = %src.path.display(), "origin read failed: {e}");
                return Err(Fail(errno));
            }
        }
    }
    Ok(buf)
}

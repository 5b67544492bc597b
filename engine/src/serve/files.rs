//! Opening and reading origin files: page-cache hits inline, the rest on
//! the I/O pool; passthrough hands the origin fd to the shim.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tracing::{debug, warn};

use crate::catalog::split_file_key;
use crate::metrics;
use crate::origins::{OpenFile, pread_nowait};
use crate::serve::shared::{MAX_READ_BYTES, Shared, bump};
use crate::serve::wire::{Writer, errno_of, error_frame, respond, send, send_with_fd};

/// The origin file behind a file inode.
pub(super) fn origin_of(shared: &Shared, ino: u64) -> Result<Origin, i32> {
    let node = match shared.store.node(ino) {
        Ok(Some(n)) => n,
        Ok(None) => return Err(libc::ESTALE),
        Err(e) => {
            warn!(ino, "catalog read failed: {e:#}");
            return Err(libc::EIO);
        }
    };
    if node.is_dir {
        return Err(libc::EISDIR);
    }
    let (origin, rel) = split_file_key(&node.file_key).ok_or(libc::EIO)?;
    let table = shared.origins.snapshot();
    // An origin removed by a reload: its files are on their way out.
    let root = table.root(origin).ok_or(libc::ESTALE)?;
    // An album cover: a range of its origin file, which is what is opened.
    let range = node.cover.map(|c| (c.offset, node.size_bytes));
    let size_bytes = node.cover.map_or(node.size_bytes, |c| c.source_size);
    if let Some((base, len)) = range {
        shared.note_cover((ino, node.version), base, len);
    }
    Ok(Origin {
        id: origin,
        root: root.to_path_buf(),
        path: root.join(OsStr::from_bytes(rel)),
        version: node.version,
        local: table.is_local(origin),
        cached: table.is_cached(origin),
        remote: table.is_remote(origin),
        size_bytes,
        mtime_ns: node.mtime_ns,
        file_key: node.file_key,
        range,
    })
}

/// A read of an album cover's file, in its origin file: the offset moved
/// by the cover's, the size cut at its end; `None` past its end.
pub(super) fn cover_window(
    shared: &Shared,
    handle: (u64, u64),
    offset: u64,
    size: u32,
) -> Option<(u64, u32)> {
    match shared.cover_range(handle) {
        None => Some((offset, size)),
        Some((base, len)) if offset < len => Some((
            base + offset,
            u32::try_from((len - offset).min(u64::from(size))).unwrap_or(size),
        )),
        Some(_) => None,
    }
}

/// The origin file behind a file node, read once per request.
pub(super) struct Origin {
    /// The origin's id (its I/O pool).
    pub(super) id: u32,
    /// The origin's root directory.
    pub(super) root: PathBuf,
    pub(super) path: PathBuf,
    /// The catalog's version of the file, its size and mtime.
    pub(super) version: u64,
    pub(super) size_bytes: u64,
    pub(super) mtime_ns: i64,
    pub(super) file_key: Vec<u8>,
    /// On a local filesystem: may be opened and read inline.
    pub(super) local: bool,
    /// Read through the chunk cache.
    pub(super) cached: bool,
    /// A remote origin (S3, WebDAV): no file to open.
    pub(super) remote: bool,
    /// An album cover: (offset, length) of the origin file it serves
    /// (`size_bytes` and `version` are then the origin file's).
    pub(super) range: Option<(u64, u64)>,
}

/// Opens a file. With `passthrough` (and a local origin) the origin file goes
/// back with the answer, for the kernel to read directly.
pub(super) fn open(
    shared: &Shared,
    id: u64,
    ino: u64,
    flags: u32,
    passthrough: bool,
    origin: Origin,
) -> (Vec<u8>, Option<Arc<File>>) {
    bump(&shared.counters.opens, 1);
    metrics::record_open();
    if flags & (libc::O_WRONLY | libc::O_RDWR | libc::O_TRUNC | libc::O_APPEND) as u32 != 0 {
        return (error_frame(id, libc::EROFS), None);
    }
    let Origin {
        id: id_of_origin,
        root,
        path,
        version,
        local,
        range,
        ..
    } = origin;
    // Open now, so that a vanished origin file fails the open(2), not a
    // later read. The handle is the version of the file actually opened
    // (the catalog may not have seen a change yet), pinned until release.
    let opened = match shared.fds.get(ino, version) {
        Some(f) => Ok(f),
        None => shared.fds.open(ino, id_of_origin, &path, local),
    };
    match opened {
        Ok(f) => {
            if f.version != version {
                debug!(ino, path = %path.display(), "the origin file changed since the catalog saw it; this handle reads it as it is now");
            }
            shared.fds.pin(ino, f.version);
            let attach = passthrough && local && range.is_none();
            let frame = respond(id, 0, |r| {
                let mut o = r.init_opened();
                o.set_fh(f.version);
                o.set_keep_cache(true);
                o.set_fd_attached(attach);
            });
            (frame, attach.then_some(f.file))
        }
        Err(e) => {
            // A listed file whose whole origin is away (a NAS that is down):
            // an I/O error, not "no such file".
            let errno = match e.raw_os_error() {
                Some(libc::ENOENT | libc::ENOTDIR) if origin_away(&root) => {
                    warn!(path = %path.display(), origin = %root.display(), "cannot open: the origin is not reachable (EIO)");
                    libc::EIO
                }
                _ => errno_of(&e),
            };
            debug!(ino, path = %path.display(), "open failed: {e}");
            shared.note_error(ino, format_args!("open {}: {e}", path.display()));
            (error_frame(id, errno), None)
        }
    }
}

/// Whether an origin's root is missing, or an empty directory (a share that
/// is not mounted). Asked only after an open failed.
pub(super) fn origin_away(root: &Path) -> bool {
    std::fs::read_dir(root).map_or(true, |mut d| d.next().is_none())
}

pub(super) fn send_open(writer: &Writer, (frame, file): (Vec<u8>, Option<Arc<File>>)) {
    match file {
        Some(f) => send_with_fd(writer, &frame, &f),
        None => send(writer, &frame),
    }
}

/// Answers a read from the page cache without waiting, if the handle's file
/// `f` (held open) is on a local origin and every requested byte is cached;
/// `None` means "send it to the pool".
pub(super) fn read_cached(
    shared: &Shared,
    id: u64,
    (ino, f): (u64, &OpenFile),
    offset: u64,
    size: u32,
) -> Option<Vec<u8>> {
    if !f.local {
        return None;
    }
    let Some((offset, size)) = cover_window(shared, (ino, f.version), offset, size) else {
        return Some(respond(id, 0, |mut r| r.set_data(&[])));
    };
    let want = (size.min(MAX_READ_BYTES) as u64).min(f.size_bytes.saturating_sub(offset)) as usize;
    let mut buf = vec![0u8; want];
    let n = if want == 0 {
        0
    } else {
        pread_nowait(&f.file, &mut buf, offset).ok()?
    };
    if n != want {
        return None;
    }
    bump(&shared.counters.reads, 1);
    bump(&shared.counters.read_bytes, n as u64);
    metrics::record_read();
    metrics::record_read_bytes(n as u64);
    Some(respond(id, 0, |mut r| r.set_data(&buf)))
}

/// The file a handle reads: the one it opened, or (after an engine restart,
/// or once evicted) the file at its path if that is still the same version.
/// Another version there means the handle's file is gone: ESTALE, never
/// another file's bytes.
/// `held`: the file already looked up for this handle, if it was held.
fn handle_file(
    shared: &Shared,
    ino: u64,
    fh: u64,
    held: Option<OpenFile>,
) -> Result<OpenFile, i32> {
    if let Some(f) = held.or_else(|| shared.fds.get(ino, fh)) {
        return Ok(f);
    }
    let Origin {
        id, path, local, ..
    } = origin_of(shared, ino)?;
    let f = shared.fds.open(ino, id, &path, local).map_err(|e| {
        debug!(ino, path = %path.display(), "cannot reopen for a read: {e}");
        shared.note_error(ino, format_args!("reopen {}: {e}", path.display()));
        match e.raw_os_error() {
            Some(libc::ENOENT) => libc::ESTALE,
            _ => errno_of(&e),
        }
    })?;
    if f.version != fh {
        warn!(ino, path = %path.display(), "a handle's version of the file is gone (replaced while no engine held it open): ESTALE");
        shared.note_error(
            ino,
            format_args!("{}: the handle's version is gone (ESTALE)", path.display()),
        );
        return Err(libc::ESTALE);
    }
    shared.fds.pin(ino, fh);
    Ok(f)
}

/// A read on the pool; `held` as for `handle_file`.
pub(super) fn read(
    shared: &Shared,
    id: u64,
    (ino, fh, held): (u64, u64, Option<OpenFile>),
    offset: u64,
    size: u32,
) -> Vec<u8> {
    bump(&shared.counters.reads, 1);
    metrics::record_read();
    let f = match handle_file(shared, ino, fh, held) {
        Ok(f) => f,
        Err(errno) => return error_frame(id, errno),
    };
    // After `handle_file`: its lookup of the node knows a cover's range.
    let Some((offset, size)) = cover_window(shared, (ino, f.version), offset, size) else {
        return respond(id, 0, |mut r| r.set_data(&[]));
    };
    let size = size.min(MAX_READ_BYTES) as usize;
    let result = (|| -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; size];
        let mut filled = 0;
        while filled < size {
            match f.file.read_at(&mut buf[filled..], offset + filled as u64) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        buf.truncate(filled);
        Ok(buf)
    })();
    match result {
        Ok(buf) => {
            bump(&shared.counters.read_bytes, buf.len() as u64);
            metrics::record_read_bytes(buf.len() as u64);
            respond(id, 0, |mut r| r.set_data(&buf))
        }
        Err(e) => {
            warn!(ino, "origin read failed: {e}");
            shared.note_error(ino, format_args!("read at {offset}: {e}"));
            error_frame(id, errno_of(&e))
        }
    }
}

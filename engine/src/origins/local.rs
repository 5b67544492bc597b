//! Origin file access for the data plane: the open origin files by content
//! version (pinned by open handles, an LRU besides), reads that never wait for the disk, and local-filesystem detection.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::config::defaults::OPEN_FILES_MAX;
use crate::model::content_version;

/// Origin files kept open, by (inode, content version): the file each open
/// handle reads (pinned while the handle is open, so a handle keeps reading
/// the version it opened even after the origin file is replaced), and an
/// LRU of recently used ones for the next open. Bounded: at most `capacity`
/// unpinned files and `PINNED_MAX` pinned ones; a handle whose file was
/// evicted is reopened by path on its next read, and fails with ESTALE if
/// the file there is another version by then.
#[derive(Default)]
pub struct FdCache {
    inner: Mutex<FdCacheInner>,
    pub origin_opens: std::sync::atomic::AtomicU64,
}

/// Handles whose files are kept open at most (a bound on the engine's fds;
/// past it the least recently used handle's file closes and is reopened by
/// path if that handle reads again).
pub const PINNED_MAX: usize = 16 * 1024;

/// One open origin file.
#[derive(Clone)]
pub struct OpenFile {
    pub file: Arc<File>,
    /// Its content version (`model::content_version` of its fstat).
    pub version: u64,
    /// Its size and mtime when opened.
    pub size_bytes: u64,
    pub mtime_ns: i64,
    /// On a local filesystem: may be read inline without risking a stall.
    pub local: bool,
    /// The origin it belongs to (its I/O runs on that origin's pool).
    pub origin: u32,
}

struct Held {
    open: OpenFile,
    used: u64,
    /// Open handles on it (forgotten at a restart: then 0 until a read
    /// pins it again).
    pins: u32,
}

struct FdCacheInner {
    clock: u64,
    files: HashMap<(u64, u64), Held>,
    /// Most unpinned files held open (hot: `set_capacity`).
    capacity: usize,
}

impl Default for FdCacheInner {
    fn default() -> Self {
        FdCacheInner {
            clock: 0,
            files: HashMap::new(),
            capacity: OPEN_FILES_MAX,
        }
    }
}

impl FdCacheInner {
    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// Closes the least recently used files of one kind (pinned or not)
    /// until at most `keep` of that kind are open.
    fn shrink(&mut self, pinned: bool, keep: usize) {
        // The common case (within the bound) allocates and sorts nothing.
        let count = self
            .files
            .values()
            .filter(|h| (h.pins > 0) == pinned)
            .count();
        if count <= keep {
            return;
        }
        // One over (every open of a new file once the cache is full): the
        // oldest found in one pass, nothing allocated or sorted.
        if count == keep + 1 {
            let oldest = self
                .files
                .iter()
                .filter(|(_, h)| (h.pins > 0) == pinned)
                .min_by_key(|(_, h)| h.used)
                .map(|(k, _)| *k);
            if let Some(k) = oldest {
                self.files.remove(&k);
            }
            return;
        }
        let mut of_kind: Vec<((u64, u64), u64)> = self
            .files
            .iter()
            .filter(|(_, h)| (h.pins > 0) == pinned)
            .map(|(k, h)| (*k, h.used))
            .collect();
        if of_kind.len() <= keep {
            return;
        }
        of_kind.sort_unstable_by_key(|(_, used)| *used);
        let excess = of_kind.len() - keep;
        for (k, _) in of_kind.into_iter().take(excess) {
            self.files.remove(&k);
        }
    }
}

impl FdCache {
    /// Origin files held open now.
    pub fn open_files(&self) -> usize {
        self.inner.lock().files.len()
    }

    /// The most unpinned origin files held open.
    pub fn capacity(&self) -> usize {
        self.inner.lock().capacity
    }

    /// A new limit, applied at once (the least recently used unpinned files
    /// close; reads that hold one keep it until they finish).
    pub fn set_capacity(&self, files: usize) {
        let mut inner = self.inner.lock();
        inner.capacity = files.max(1);
        let keep = inner.capacity;
        inner.shrink(false, keep);
    }

    /// The open file of version `version` of inode `ino`, if one is held.
    pub fn get(&self, ino: u64, version: u64) -> Option<OpenFile> {
        let mut inner = self.inner.lock();
        let now = inner.tick();
        let held = inner.files.get_mut(&(ino, version))?;
        held.used = now;
        Some(held.open.clone())
    }

    /// Opens the file at `path` for inode `ino` and learns its version from
    /// the open file itself; held (unpinned) for later opens and reads.
    /// `origin`: the origin it belongs to; `local`: that origin is on a
    /// local filesystem.
    pub fn open(&self, ino: u64, origin: u32, path: &Path, local: bool) -> io::Result<OpenFile> {
        let file = File::open(path)?;
        let meta = file.metadata()?;
        self.origin_opens
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mtime_ns = meta.mtime() * 1_000_000_000 + meta.mtime_nsec();
        let open = OpenFile {
            version: content_version(meta.len(), mtime_ns, meta.ino()),
            size_bytes: meta.len(),
            mtime_ns,
            local,
            origin,
            file: Arc::new(file),
        };
        let mut inner = self.inner.lock();
        let now = inner.tick();
        let key = (ino, open.version);
        if let Some(held) = inner.files.get_mut(&key) {
            // Raced with another open of the same version: keep the first.
            held.used = now;
            return Ok(held.open.clone());
        }
        let keep = inner.capacity - 1;
        inner.shrink(false, keep);
        inner.files.insert(
            key,
            Held {
                open: open.clone(),
                used: now,
                pins: 0,
            },
        );
        Ok(open)
    }

    /// Opens `path` again in place of the held file of version `version`
    /// of `ino` (a network filesystem answered ESTALE or ENOTCONN on the
    /// old one: a remount, a reconnect). Only the same content is taken,
    /// else ESTALE: the same version, or, since a remounted share may
    /// number its inodes anew (sshfs does), the same size and mtime
    /// (`size_mtime`) and content that `same_content` accepts (the caller
    /// compares the catalog's fingerprint of that version). The handles
    /// that pinned the old file keep their pins.
    pub fn reopen(
        &self,
        ino: u64,
        version: u64,
        origin: u32,
        path: &Path,
        size_mtime: (u64, i64),
        same_content: impl FnOnce(&File, u64) -> bool,
    ) -> io::Result<OpenFile> {
        let file = File::open(path)?;
        let meta = file.metadata()?;
        self.origin_opens
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mtime_ns = meta.mtime() * 1_000_000_000 + meta.mtime_nsec();
        if content_version(meta.len(), mtime_ns, meta.ino()) != version {
            let same = (meta.len(), mtime_ns) == size_mtime && same_content(&file, meta.len());
            if !same {
                return Err(io::Error::from_raw_os_error(libc::ESTALE));
            }
        }
        let open = OpenFile {
            version,
            size_bytes: meta.len(),
            mtime_ns,
            local: false,
            origin,
            file: Arc::new(file),
        };
        let mut inner = self.inner.lock();
        let now = inner.tick();
        match inner.files.get_mut(&(ino, version)) {
            Some(held) => {
                held.open = open.clone();
                held.used = now;
            }
            None => {
                let keep = inner.capacity - 1;
                inner.shrink(false, keep);
                inner.files.insert(
                    (ino, version),
                    Held {
                        open: open.clone(),
                        used: now,
                        pins: 0,
                    },
                );
            }
        }
        Ok(open)
    }

    /// A handle opened version `version` of `ino`: its file stays open
    /// until the handle is released (`unpin`).
    pub fn pin(&self, ino: u64, version: u64) {
        let mut inner = self.inner.lock();
        let now = inner.tick();
        let newly = match inner.files.get_mut(&(ino, version)) {
            Some(held) => {
                held.used = now;
                held.pins = held.pins.saturating_add(1);
                held.pins == 1
            }
            None => false,
        };
        if newly {
            inner.shrink(true, PINNED_MAX);
        }
    }

    /// A handle on version `version` of `ino` was released.
    pub fn unpin(&self, ino: u64, version: u64) {
        let mut inner = self.inner.lock();
        let Some(held) = inner.files.get_mut(&(ino, version)) else {
            return;
        };
        held.pins = held.pins.saturating_sub(1);
        if held.pins == 0 {
            let keep = inner.capacity;
            inner.shrink(false, keep);
        }
    }
}

/// Whether `path` is on a local filesystem (not NFS, SMB, FUSE, ...), where a
/// syscall cannot hang for long.
pub fn is_local_fs(path: &Path) -> bool {
    const NETWORK_MAGICS: &[i64] = &[
        0x6969,      // NFS
        0x517b,      // SMB
        0xff53_4d42, // CIFS
        0xfe53_4d42, // SMB2
        0x6573_5546, // FUSE (sshfs, rclone, ...)
        0x00c3_6400, // Ceph
        0x5346_414f, // AFS
        0x0102_1997, // 9p
        0x0bd0_0bd0, // Lustre
    ];
    match nix::sys::statfs::statfs(path) {
        Ok(s) => !NETWORK_MAGICS.contains(&s.filesystem_type().0),
        Err(_) => false,
    }
}

/// `pread` that never waits for the disk: RWF_NOWAIT fails with EAGAIN unless
/// the data is already in the page cache.
pub fn pread_nowait(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    use std::os::fd::AsRawFd;
    let iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let off = i64::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: iov points into `buf`, which outlives the call; the fd is open.
    let n = unsafe { libc::preadv2(file.as_raw_fd(), &iov, 1, off, libc::RWF_NOWAIT) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fd_cache_keeps_at_most_its_capacity_and_shrinks_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let cache = FdCache::default();
        let paths: Vec<_> = (0..8)
            .map(|i| {
                let p = dir.path().join(format!("{i}"));
                std::fs::write(&p, [i as u8]).unwrap();
                p
            })
            .collect();
        cache.set_capacity(4);
        let versions: Vec<u64> = paths
            .iter()
            .enumerate()
            .map(|(i, p)| cache.open(i as u64, 0, p, true).unwrap().version)
            .collect();
        assert_eq!(cache.open_files(), 4);
        // The most recently used stay: 4..8 are hits.
        for (i, v) in versions.iter().enumerate().skip(4) {
            assert!(cache.get(i as u64, *v).is_some(), "{i} was evicted");
        }
        assert!(cache.get(0, versions[0]).is_none());
        cache.set_capacity(2);
        assert_eq!((cache.open_files(), cache.capacity()), (2, 2));
    }

    /// A pinned file is the version it was opened at, whatever happens to
    /// the path, and stays open beyond the LRU's capacity until unpinned.
    #[test]
    fn pinned_versions_outlive_a_replaced_file_and_the_lru() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("track.mp3");
        std::fs::write(&path, b"old bytes").unwrap();
        let cache = FdCache::default();
        cache.set_capacity(1);
        let old = cache.open(7, 0, &path, true).unwrap();
        cache.pin(7, old.version);
        let tmp = dir.path().join("tmp");
        std::fs::write(&tmp, b"new bytes, longer").unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        let new = cache.open(7, 0, &path, true).unwrap();
        assert_ne!(new.version, old.version);
        assert_eq!(new.size_bytes, 17);
        // Other files come and go through the LRU of one.
        for i in 0..4 {
            let p = dir.path().join(format!("other{i}"));
            std::fs::write(&p, [i]).unwrap();
            cache.open(100 + u64::from(i), 0, &p, true).unwrap();
        }
        let held = cache
            .get(7, old.version)
            .expect("the pinned version was closed");
        let mut buf = [0u8; 9];
        std::os::unix::fs::FileExt::read_exact_at(&*held.file, &mut buf, 0).unwrap();
        assert_eq!(&buf, b"old bytes");
        // Released, it is one more LRU entry: the next open evicts it.
        cache.unpin(7, old.version);
        assert!(cache.open_files() <= 1);
        let p = dir.path().join("last");
        std::fs::write(&p, b"x").unwrap();
        cache.open(200, 0, &p, true).unwrap();
        assert!(cache.get(7, old.version).is_none());
    }
}

//! Origin file access for the data plane: a bounded LRU of open origin
//! files, reads that never wait for the disk, and local-filesystem detection.

use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::config::defaults::OPEN_FILES_MAX;

/// A small LRU of open origin files, keyed by inode.
#[derive(Default)]
pub struct FdCache {
    inner: Mutex<FdCacheInner>,
    pub origin_opens: std::sync::atomic::AtomicU64,
}

struct FdCacheInner {
    clock: u64,
    files: std::collections::HashMap<u64, (Arc<File>, u64, u64)>, // ino -> (file, version, last use)
    /// Most files held open (hot: `set_capacity`).
    capacity: usize,
}

impl Default for FdCacheInner {
    fn default() -> Self {
        FdCacheInner {
            clock: 0,
            files: std::collections::HashMap::new(),
            capacity: OPEN_FILES_MAX,
        }
    }
}

impl FdCacheInner {
    /// Closes the least recently used files until at most `keep` are open.
    fn shrink_to(&mut self, keep: usize) {
        while self.files.len() > keep {
            let Some(oldest) = self
                .files
                .iter()
                .min_by_key(|(_, (_, _, used))| *used)
                .map(|(k, _)| *k)
            else {
                break;
            };
            self.files.remove(&oldest);
        }
    }
}

impl FdCache {
    /// Origin files held open now.
    pub fn open_files(&self) -> usize {
        self.inner.lock().files.len()
    }

    /// The most origin files held open.
    pub fn capacity(&self) -> usize {
        self.inner.lock().capacity
    }

    /// A new limit, applied at once (the least recently used files close;
    /// reads that hold one keep it until they finish).
    pub fn set_capacity(&self, files: usize) {
        let mut inner = self.inner.lock();
        inner.capacity = files.max(1);
        let keep = inner.capacity;
        inner.shrink_to(keep);
    }

    pub fn get(&self, ino: u64, version: u64, path: &Path) -> io::Result<Arc<File>> {
        {
            let mut inner = self.inner.lock();
            inner.clock += 1;
            let now = inner.clock;
            if let Some((f, v, used)) = inner.files.get_mut(&ino)
                && *v == version
            {
                *used = now;
                return Ok(f.clone());
            }
        }
        let file = Arc::new(File::open(path)?);
        self.origin_opens
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut inner = self.inner.lock();
        // A stale version of this file makes no room for others.
        inner.files.remove(&ino);
        let keep = inner.capacity - 1;
        inner.shrink_to(keep);
        let now = inner.clock;
        inner.files.insert(ino, (file.clone(), version, now));
        Ok(file)
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
        for (i, p) in paths.iter().enumerate() {
            cache.get(i as u64, 1, p).unwrap();
        }
        assert_eq!(cache.open_files(), 4);
        // The most recently used stay: 4..8 are hits.
        let opens = |c: &FdCache| c.origin_opens.load(std::sync::atomic::Ordering::Relaxed);
        let before = opens(&cache);
        for (i, p) in paths.iter().enumerate().skip(4) {
            cache.get(i as u64, 1, p).unwrap();
        }
        assert_eq!(opens(&cache), before);
        cache.set_capacity(2);
        assert_eq!((cache.open_files(), cache.capacity()), (2, 2));
        // A new content version is a miss, and the limit holds.
        cache.get(7, 2, &paths[7]).unwrap();
        assert_eq!(opens(&cache), before + 1);
        assert_eq!(cache.open_files(), 2);
    }
}

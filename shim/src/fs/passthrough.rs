//! Open handles and the kernel's caches. A handle is the content version
//! it opened (the engine's file handle), so two handles of one inode may
//! read different files: passthrough backing ids are kept per (inode,
//! version), and at most one version of an inode reads through the page
//! cache at a time (a handle of another version meanwhile reads direct).

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};

use fuser::{BackingId, FileHandle, FopenFlags, ReplyOpen};
use parking_lot::Mutex;
use tracing::warn;

/// Inodes remembered by the page-cache table when none of their handles is
/// open (their cached version); past it those are forgotten, and the next
/// open of one drops what the kernel cached (safe, costs a re-read).
const PAGE_CACHE_INODES_MAX: usize = 64 * 1024;

/// Kernel passthrough for local origins: the engine hands over the origin
/// file and the kernel reads it directly, without a round trip per read.
/// A handle reads the content version it opened, so backing ids are kept
/// per (inode, version), shared by the handles of that version and counted.
///
/// The kernel (Linux 6.18) takes one backing file per inode while any
/// handle on it is open, and fails any other open of that inode (EIO to the
/// caller): so an open of a new version while a handle of the old one is
/// still open fails, and is never served the old bytes. Once the old
/// handles close (the kernel drops its backing at close, before our
/// release arrives) the new version opens normally.
pub(super) struct Passthrough {
    pub(super) enabled: AtomicBool,
    /// (ino, version) -> (backing id, open handles)
    pub(super) backing: Mutex<HashMap<(u64, u64), (BackingId, u32)>>,
}

impl Passthrough {
    pub(super) fn new(enabled: bool) -> Passthrough {
        Passthrough {
            enabled: AtomicBool::new(enabled),
            backing: Mutex::new(HashMap::new()),
        }
    }

    /// Replies to an open of version `fh` with the origin file `fd`, by
    /// passthrough if the kernel takes it, else as a plain open through
    /// `cache`.
    pub(super) fn reply(
        &self,
        reply: ReplyOpen,
        ino: u64,
        fh: u64,
        fd: &OwnedFd,
        cache: &PageCache,
    ) {
        let mut table = self.backing.lock();
        if let Some((id, opens)) = table.get_mut(&(ino, fh)) {
            *opens += 1;
            return reply.opened_passthrough(FileHandle(fh), FopenFlags::empty(), id);
        }
        if let Some(((_, old), (_, opens))) = table.iter().find(|((i, _), _)| *i == ino) {
            warn!(
                ino,
                old_version = *old,
                open_handles = *opens,
                "the file changed while handles of its previous version may still be open by passthrough; the kernel takes one backing file per inode, so until they close this open fails (passthrough = false avoids it)"
            );
        }
        match reply.open_backing(fd) {
            Ok(id) => {
                reply.opened_passthrough(FileHandle(fh), FopenFlags::empty(), &id);
                table.insert((ino, fh), (id, 1));
            }
            Err(e) => {
                if self.enabled.swap(false, Ordering::Relaxed) {
                    warn!("kernel passthrough unavailable ({e}); reads go through the engine");
                }
                reply.opened(FileHandle(fh), cache.open(ino, fh, true).0);
            }
        }
    }

    /// A handle of version `fh` was released; false if it was not a
    /// passthrough handle.
    pub(super) fn release(&self, ino: u64, fh: u64) -> bool {
        let mut table = self.backing.lock();
        let Some((_, opens)) = table.get_mut(&(ino, fh)) else {
            return false;
        };
        *opens -= 1;
        if *opens == 0 {
            table.remove(&(ino, fh));
        }
        true
    }
}

/// Per inode: whose bytes its page cache holds, and the open handles by
/// version.
#[derive(Default)]
struct InodeCache {
    cached: u64,
    open: HashMap<u64, u32>,
}

/// The page cache policy for handles read through the shim.
#[derive(Default)]
pub(super) struct PageCache {
    inodes: Mutex<HashMap<u64, InodeCache>>,
}

impl PageCache {
    /// The open flags for a handle of version `fh` of `ino`:
    /// - no handle of another version is open: it reads through the page
    ///   cache, kept if it already holds this version (and the engine lets
    ///   it keep it), else dropped by the kernel at this open;
    /// - another version is open and the cache holds this one: kept;
    /// - another version owns the cache: this handle reads direct, so the
    ///   two never see each other's pages.
    ///
    /// Also says whether this open takes the cache over from another
    /// version: then the kernel's attributes must be dropped first, since
    /// short reads of the other (shorter) version may have cut its size.
    pub(super) fn open(&self, ino: u64, fh: u64, engine_keeps: bool) -> (FopenFlags, bool) {
        let mut inodes = self.inodes.lock();
        if inodes.len() >= PAGE_CACHE_INODES_MAX && !inodes.contains_key(&ino) {
            inodes.retain(|_, c| !c.open.is_empty());
        }
        let c = inodes.entry(ino).or_default();
        let others = c.open.keys().any(|v| *v != fh);
        let mut switched = false;
        let flags = if !others {
            let keep = c.cached == fh && engine_keeps;
            switched = c.cached != 0 && c.cached != fh;
            c.cached = fh;
            if keep {
                FopenFlags::FOPEN_KEEP_CACHE
            } else {
                FopenFlags::empty()
            }
        } else if c.cached == fh {
            FopenFlags::FOPEN_KEEP_CACHE
        } else {
            FopenFlags::FOPEN_DIRECT_IO
        };
        *c.open.entry(fh).or_insert(0) += 1;
        (flags, switched)
    }

    /// A handle of version `fh` of `ino` was released.
    pub(super) fn release(&self, ino: u64, fh: u64) {
        let mut inodes = self.inodes.lock();
        let Some(c) = inodes.get_mut(&ino) else {
            return;
        };
        if let Some(n) = c.open.get_mut(&fh) {
            *n -= 1;
            if *n == 0 {
                c.open.remove(&fh);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One version reads through the cache at a time; a second version
    /// open at once reads direct; once alone, a new version drops the
    /// cache and takes it over.
    #[test]
    fn one_version_per_inode_reads_through_the_page_cache() {
        let c = PageCache::default();
        let (empty, keep, direct) = (
            FopenFlags::empty(),
            FopenFlags::FOPEN_KEEP_CACHE,
            FopenFlags::FOPEN_DIRECT_IO,
        );
        assert_eq!(c.open(5, 11, true), (empty, false)); // nothing cached yet
        assert_eq!(c.open(5, 11, true), (keep, false));
        assert_eq!(c.open(5, 22, true), (direct, false));
        c.release(5, 11);
        c.release(5, 11);
        // 22 is still open (direct); a second 22 is alone among versions
        // and takes the cache over from 11.
        assert_eq!(c.open(5, 22, true), (empty, true));
        c.release(5, 22);
        c.release(5, 22);
        assert_eq!(c.open(5, 22, true), (keep, false));
        assert_eq!(c.open(6, 22, true), (empty, false));
        assert_eq!(c.open(6, 22, false), (empty, false));
    }
}

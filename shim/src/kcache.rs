//! What the kernel caches for the shim, and how the shim makes it forget.
//!
//! The engine pushes a notice for every change it commits, so the kernel
//! may keep names, attributes, misses and directory listings for a long
//! TTL. Two things no single notice covers are handled here:
//! - a new engine (a restart or a swap) may have changes the old one never
//!   told (a crash between commit and notice, a rebuilt catalog): on every
//!   engine after the first, the kernel drops everything;
//! - a template change rewrites the whole tree: the engine says so
//!   (`everything`) and the kernel drops everything.
//!
//! "Everything" is `FUSE_NOTIFY_INC_EPOCH` (Linux 6.16, protocol 7.44):
//! every cached name, found or missing, is looked up again at its next use;
//! then an attribute and page invalidation of the root and of every
//! directory whose listing the kernel may hold (`FOPEN_CACHE_DIR`). None of
//! these waits on a kernel lock, so any thread may run them. A kernel
//! without the epoch notice cannot drop all names at once: there the TTLs
//! are clamped to `TTL_WITHOUT_EPOCH`.

use std::collections::HashSet;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tracing::{debug, info, warn};

/// `FUSE_NOTIFY_INC_EPOCH` (include/uapi/linux/fuse.h, 7.44).
const FUSE_NOTIFY_INC_EPOCH: i32 = 8;
/// The kernel protocol minor that has it.
pub const EPOCH_MINOR: u32 = 44;
/// The longest TTL given to a kernel that cannot drop all names at once.
pub const TTL_WITHOUT_EPOCH: Duration = Duration::from_secs(1);
/// Directories remembered as possibly cached. Past it, a listing cached
/// later is dropped at "everything" by its directory's new mtime alone
/// (the kernel compares it when the name is looked up again).
const DIRS_MAX: usize = 512 * 1024;
/// Listing ends remembered (directories being read at once, in effect).
const EOF_MAX: usize = 4096;

/// A cache of the shim's that notices about inodes must reach (the open
/// cache: reopens answered without the engine).
pub trait OpenCache: Send + Sync {
    /// `ino` changed.
    fn forget(&self, ino: u64);
    /// Anything may have changed.
    fn forget_all(&self);
}

#[derive(Default)]
pub struct KernelCache {
    /// Directories the kernel may hold a listing of (they were read).
    dirs: Mutex<HashSet<u64>>,
    dirs_full_logged: AtomicBool,
    /// The kernel takes `FUSE_NOTIFY_INC_EPOCH`.
    epoch: AtomicBool,
    /// The kernel's lack of it was logged.
    minor_logged: AtomicBool,
    /// The FUSE device (a duplicate of the session's fd) and the notifier.
    kernel: OnceLock<(OwnedFd, fuser::Notifier)>,
    /// Directories whose last answer ended their listing, with the offset
    /// after it: the kernel's next readdir there (at the end) is answered
    /// here, empty, until a notice names the directory.
    eof: Mutex<std::collections::HashMap<u64, u64>>,
    /// The open cache, told of every inode notice as it arrives.
    opens: OnceLock<std::sync::Arc<dyn OpenCache>>,
}

impl KernelCache {
    /// At INIT: whether the kernel has the epoch notice.
    /// Also for a connection taken over (no INIT: the minor handed over),
    /// and for each replay of the INIT; logged once.
    pub fn set_kernel_minor(&self, minor: u32) {
        let has = minor >= EPOCH_MINOR;
        self.epoch.store(has, Ordering::Relaxed);
        if !has && !self.minor_logged.swap(true, Ordering::Relaxed) {
            info!(
                minor,
                "the kernel cannot drop all cached names at once (FUSE 7.{EPOCH_MINOR}, Linux 6.16): kernel cache TTLs are capped at {} ms",
                TTL_WITHOUT_EPOCH.as_millis()
            );
        }
    }

    /// Once the session exists: the device to write notices to.
    pub fn attach(&self, fd: OwnedFd, notifier: fuser::Notifier) {
        let _ = self.kernel.set((fd, notifier));
    }

    /// The open cache to tell of changed inodes.
    pub fn set_open_cache(&self, c: std::sync::Arc<dyn OpenCache>) {
        let _ = self.opens.set(c);
    }

    /// The engine says `ino` changed: reopens go to the engine again. Run
    /// as the notice arrives (the kernel's own invalidation follows on the
    /// notice thread).
    pub fn forget_inode(&self, ino: u64) {
        self.eof.lock().remove(&ino);
        if let Some(c) = self.opens.get() {
            c.forget(ino);
        }
    }

    /// The engine went away: until one answers again, every open goes to
    /// it (and waits, or fails at its deadline), as none is validated.
    pub fn forget_opens(&self) {
        if let Some(c) = self.opens.get() {
            c.forget_all();
        }
    }

    /// The TTL to give the kernel for one the engine chose.
    pub fn ttl(&self, engine: Duration) -> Duration {
        if self.epoch.load(Ordering::Relaxed) {
            engine
        } else {
            engine.min(TTL_WITHOUT_EPOCH)
        }
    }

    /// Directory `ino` is being read: the kernel may cache its listing.
    pub fn note_dir(&self, ino: u64) {
        let mut dirs = self.dirs.lock();
        if dirs.len() < DIRS_MAX {
            dirs.insert(ino);
        } else if !dirs.contains(&ino) && !self.dirs_full_logged.swap(true, Ordering::Relaxed) {
            warn!(
                "{DIRS_MAX} directories read: later ones are dropped from the kernel's cache by their mtime alone"
            );
        }
    }

    /// The engine's answer for `ino` ended its listing: `offset` is the end.
    pub fn note_eof(&self, ino: u64, offset: u64) {
        let mut eof = self.eof.lock();
        if eof.len() >= EOF_MAX {
            eof.clear();
        }
        eof.insert(ino, offset);
    }

    /// Whether a readdir of `ino` at `offset` is at the end of a listing
    /// the engine just gave (then it is answered empty, without a round
    /// trip: the cold walk's second readdir of every directory).
    pub fn take_eof(&self, ino: u64, offset: u64) -> bool {
        let mut eof = self.eof.lock();
        if eof.get(&ino) == Some(&offset) {
            eof.remove(&ino);
            return true;
        }
        false
    }

    /// Makes the kernel drop every name, attribute and listing it cached
    /// (see the module doc): the open cache and the names at once (one
    /// notice); returns the directories whose listings are to be dropped
    /// next (`invalidate_dirs`: one notice each, so a caller on the path
    /// of requests hands them to the notice thread). `why` goes to the log.
    #[must_use]
    pub fn forget_everything(&self, why: &str) -> Vec<u64> {
        self.eof.lock().clear();
        if let Some(c) = self.opens.get() {
            c.forget_all();
        }
        let Some((fd, _)) = self.kernel.get() else {
            return Vec::new(); // no session yet: nothing cached
        };
        if self.epoch.load(Ordering::Relaxed)
            && let Err(e) = inc_epoch(fd)
        {
            warn!("the kernel refused to drop its cached names ({e}); TTLs now capped");
            self.epoch.store(false, Ordering::Relaxed);
        }
        let mut dirs: Vec<u64> = {
            let mut d = self.dirs.lock();
            self.dirs_full_logged.store(false, Ordering::Relaxed);
            d.drain().filter(|i| *i != 1).collect()
        };
        dirs.insert(0, 1);
        info!(
            directories = dirs.len(),
            "{why}: the kernel drops every cached name, attribute and listing"
        );
        dirs
    }

    /// Drops the attributes and cached listings of `dirs`.
    pub fn invalidate_dirs(&self, dirs: &[u64]) {
        let Some((_, notifier)) = self.kernel.get() else {
            return;
        };
        for &ino in dirs {
            match notifier.inval_inode(fuser::INodeNo(ino), 0, 0) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => debug!(ino, "invalidation not delivered: {e}"),
            }
        }
    }
}

/// Writes the 16-byte `FUSE_NOTIFY_INC_EPOCH` notice (a `fuse_out_header`
/// with unique 0 and the code in `error`).
fn inc_epoch(fd: &OwnedFd) -> std::io::Result<()> {
    let mut buf = [0u8; 16];
    buf[0..4].copy_from_slice(&16u32.to_ne_bytes());
    buf[4..8].copy_from_slice(&FUSE_NOTIFY_INC_EPOCH.to_ne_bytes());
    // SAFETY: write(2) of a 16-byte stack buffer to an fd we own.
    let n = unsafe { libc::write(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if n as usize != buf.len() {
        return Err(std::io::Error::other("short write of the epoch notice"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_are_capped_without_the_epoch_notice() {
        let k = KernelCache::default();
        let long = Duration::from_secs(4 * 3600);
        k.set_kernel_minor(40);
        assert_eq!(k.ttl(long), TTL_WITHOUT_EPOCH);
        k.set_kernel_minor(EPOCH_MINOR);
        assert_eq!(k.ttl(long), long);
    }

    #[test]
    fn a_listing_end_is_answered_once_and_dropped_by_a_notice() {
        let k = KernelCache::default();
        k.note_eof(7, 12);
        assert!(!k.take_eof(7, 11));
        assert!(k.take_eof(7, 12));
        assert!(!k.take_eof(7, 12), "answered once");
        k.note_eof(7, 12);
        k.forget_inode(7);
        assert!(!k.take_eof(7, 12), "a notice about the directory drops it");
    }

    #[test]
    fn the_directory_set_is_bounded() {
        let k = KernelCache::default();
        for i in 0..(DIRS_MAX as u64 + 10) {
            k.note_dir(i);
        }
        assert_eq!(k.dirs.lock().len(), DIRS_MAX);
        assert!(k.forget_everything("test").is_empty());
        // Without a session nothing is sent, and the set stays for the
        // first real one.
        assert_eq!(k.dirs.lock().len(), DIRS_MAX);
    }
}

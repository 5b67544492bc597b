//! The kernel passthrough table: one backing id per inode while any handle is open.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};

use fuser::{BackingId, FileHandle, FopenFlags, ReplyOpen};
use parking_lot::Mutex;
use tracing::warn;

/// Kernel passthrough for local origins: the engine hands over the origin
/// file and the kernel reads it directly, without a round trip per read.
/// The kernel wants one backing id per inode while any handle is open, so
/// this table shares them and counts the opens.
pub(super) struct Passthrough {
    pub(super) enabled: AtomicBool,
    pub(super) backing: Mutex<HashMap<u64, (BackingId, u32)>>,
}

impl Passthrough {
    /// Replies to an open with the origin file `fd`, by passthrough if the
    /// kernel takes it, else as a plain open.
    pub(super) fn reply(&self, reply: ReplyOpen, ino: u64, fh: u64, fd: &OwnedFd) {
        let mut table = self.backing.lock();
        if let Some((id, opens)) = table.get_mut(&ino) {
            *opens += 1;
            return reply.opened_passthrough(FileHandle(fh), FopenFlags::empty(), id);
        }
        match reply.open_backing(fd) {
            Ok(id) => {
                reply.opened_passthrough(FileHandle(fh), FopenFlags::empty(), &id);
                table.insert(ino, (id, 1));
            }
            Err(e) => {
                if self.enabled.swap(false, Ordering::Relaxed) {
                    warn!("kernel passthrough unavailable ({e}); reads go through the engine");
                }
                reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE);
            }
        }
    }

    pub(super) fn release(&self, ino: u64) {
        let mut table = self.backing.lock();
        if let Some((_, opens)) = table.get_mut(&ino) {
            *opens -= 1;
            if *opens == 0 {
                table.remove(&ino);
            }
        }
    }
}

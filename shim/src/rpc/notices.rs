//! The engine's notices (responses with id 0): what the kernel must
//! forget, queued for their own thread (an entry invalidation can wait on a
//! directory lock that an in-flight lookup holds, and that lookup's answer
//! comes through the reader thread), and the shim's own caches told at
//! once.

use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::sync::mpsc::SyncSender;

use musicfs_schema::response;
use tracing::{debug, warn};

use super::State;
use crate::kcache::KernelCache;

/// What the kernel must forget.
pub enum Notice {
    Entry(u64, Vec<u8>),
    Inode(u64),
    /// Directories whose listings go (after "everything").
    Dirs(Vec<u64>),
}

/// Starts the notice thread; returns its queue.
pub(super) fn start(
    notifier: fuser::Notifier,
    kcache: Arc<KernelCache>,
) -> std::io::Result<SyncSender<Notice>> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<Notice>(64 * 1024);
    std::thread::Builder::new()
        .name("musicfs-notify".into())
        .spawn(move || {
            for notice in rx {
                let res = match &notice {
                    Notice::Entry(parent, name) => notifier
                        .inval_entry(fuser::INodeNo(*parent), std::ffi::OsStr::from_bytes(name)),
                    Notice::Inode(ino) => notifier.inval_inode(fuser::INodeNo(*ino), 0, 0),
                    Notice::Dirs(dirs) => {
                        kcache.invalidate_dirs(dirs);
                        Ok(())
                    }
                };
                // ENOENT: the kernel had nothing cached for it, which is fine.
                if let Err(e) = res
                    && e.raw_os_error() != Some(libc::ENOENT)
                {
                    debug!("invalidation not delivered: {e}");
                }
            }
        })?;
    Ok(tx)
}

/// Drops everything the kernel cached: the names at once, the listings
/// from the notice thread (one notice per directory: not on the path of
/// requests), or here if its queue is full.
pub(super) fn forget_everything(state: &State, k: &KernelCache, why: &str) {
    let dirs = k.forget_everything(why);
    let Some(tx) = state.notices.lock().clone() else {
        return k.invalidate_dirs(&dirs);
    };
    use std::sync::mpsc::TrySendError;
    if let Err(
        TrySendError::Full(Notice::Dirs(dirs)) | TrySendError::Disconnected(Notice::Dirs(dirs)),
    ) = tx.try_send(Notice::Dirs(dirs))
    {
        k.invalidate_dirs(&dirs);
    }
}

/// Queues an engine notice (id 0) for the kernel.
pub(super) fn notice(state: &State, resp: response::Reader<'_>) {
    let Ok(response::Invalidate(inv)) = resp.which() else {
        return;
    };
    let Some(tx) = state.notices.lock().clone() else {
        return;
    };
    let mut queued = Vec::new();
    if let Ok(entries) = inv.get_entries() {
        for e in entries.iter() {
            if let Ok(name) = e.get_name() {
                queued.push(Notice::Entry(e.get_parent(), name.to_vec()));
            }
        }
    }
    if let Ok(inodes) = inv.get_inodes() {
        if let Some(k) = state.kcache.get() {
            for ino in inodes.iter() {
                k.forget_inode(ino);
            }
        }
        queued.extend(inodes.iter().map(Notice::Inode));
    }
    if inv.get_everything()
        && let Some(k) = state.kcache.get()
    {
        forget_everything(state, k, "the engine rebuilt the tree");
    }
    for n in queued {
        if tx.try_send(n).is_err() {
            warn!("invalidation queue full; dropping everything the kernel cached instead");
            if let Some(k) = state.kcache.get() {
                forget_everything(state, k, "invalidation queue full");
            }
            break;
        }
    }
}

//! Open directory handles and the listing each one saw at opendir.

use std::sync::Arc;

use parking_lot::Mutex;

use crate::catalog::Child;

/// A listing snapshot: the directory inode and its children then.
type Snapshot = (u64, Arc<Vec<Child>>);

/// Open directory handles and their listing snapshots (bounded: the oldest
/// go first; a handle without a snapshot reads the current listing).
pub(super) struct DirHandles {
    /// Handles start at a per-engine random base, so a handle that a previous
    /// engine gave out does not name one of ours. (next handle, open handles)
    inner: Mutex<(u64, std::collections::BTreeMap<u64, Snapshot>)>,
}

impl Default for DirHandles {
    fn default() -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            ^ (u64::from(std::process::id()) << 32);
        // 32 random-ish high bits, a counter below.
        DirHandles {
            inner: Mutex::new((
                (seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32) << 32,
                Default::default(),
            )),
        }
    }
}

/// Open directory handles kept at most.
const DIR_HANDLES_MAX: usize = 4096;

impl DirHandles {
    pub(super) fn open(&self, ino: u64, listing: Arc<Vec<Child>>) -> u64 {
        let mut inner = self.inner.lock();
        inner.0 = inner.0.wrapping_add(1);
        let fh = inner.0;
        inner.1.insert(fh, (ino, listing));
        while inner.1.len() > DIR_HANDLES_MAX {
            inner.1.pop_first();
        }
        fh
    }

    /// The snapshot of `fh`, if it is ours and lists `ino`.
    pub(super) fn get(&self, fh: u64, ino: u64) -> Option<Arc<Vec<Child>>> {
        match self.inner.lock().1.get(&fh) {
            Some((i, l)) if *i == ino => Some(l.clone()),
            _ => None,
        }
    }

    pub(super) fn release(&self, fh: u64) {
        self.inner.lock().1.remove(&fh);
    }
}

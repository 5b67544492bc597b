//! Directory listings as a reader saw them when it started: by open
//! directory handle (shims that send opendir), or by a snapshot id carried
//! in the readdir offsets (shims that let the kernel open directories
//! without asking, so there is no handle).

use std::collections::VecDeque;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::catalog::Child;

/// A listing snapshot: the directory inode and its children then.
type Snapshot = (u64, Arc<Vec<Child>>);

/// Open directory handles and listing snapshots (both bounded: the oldest
/// go first; a reader without one reads the current listing).
pub(super) struct DirHandles {
    inner: Mutex<Inner>,
}

struct Inner {
    /// Handles start at a per-engine random base, so a handle that a
    /// previous engine gave out does not name one of ours.
    next_fh: u64,
    handles: std::collections::BTreeMap<u64, Snapshot>,
    /// Snapshot ids, from a per-engine random start (31 bits, never 0).
    next_sid: u32,
    snapshots: VecDeque<(u32, Snapshot)>,
}

/// Open directory handles kept at most.
const DIR_HANDLES_MAX: usize = 4096;
/// Offset-carried snapshots kept at most. Only listings longer than one
/// readdir answer get one.
const SNAPSHOTS_MAX: usize = 1024;
/// A readdir offset is `snapshot id << SID_SHIFT | position`; id 0 is a
/// plain position in the current listing.
const SID_SHIFT: u32 = 32;
const SID_MASK: u32 = 0x7fff_ffff;

impl Default for DirHandles {
    fn default() -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            ^ (u64::from(std::process::id()) << 32);
        let mixed = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        DirHandles {
            inner: Mutex::new(Inner {
                // 32 random-ish high bits, a counter below.
                next_fh: (mixed >> 32) << 32,
                handles: Default::default(),
                next_sid: (mixed as u32) & SID_MASK,
                snapshots: VecDeque::new(),
            }),
        }
    }
}

/// (snapshot id, position) of a readdir offset.
pub(super) fn split_offset(offset: u64) -> (u32, u64) {
    (
        ((offset >> SID_SHIFT) as u32) & SID_MASK,
        offset & u64::from(u32::MAX),
    )
}

/// The readdir offset of `position` in snapshot `sid` (0: the listing).
pub(super) fn join_offset(sid: u32, position: u64) -> u64 {
    (u64::from(sid) << SID_SHIFT) | (position & u64::from(u32::MAX))
}

impl DirHandles {
    pub(super) fn open(&self, ino: u64, listing: Arc<Vec<Child>>) -> u64 {
        let mut inner = self.inner.lock();
        inner.next_fh = inner.next_fh.wrapping_add(1);
        let fh = inner.next_fh;
        inner.handles.insert(fh, (ino, listing));
        while inner.handles.len() > DIR_HANDLES_MAX {
            inner.handles.pop_first();
        }
        fh
    }

    /// The snapshot of `fh`, if it is ours and lists `ino`.
    pub(super) fn get(&self, fh: u64, ino: u64) -> Option<Arc<Vec<Child>>> {
        match self.inner.lock().handles.get(&fh) {
            Some((i, l)) if *i == ino => Some(l.clone()),
            _ => None,
        }
    }

    pub(super) fn release(&self, fh: u64) {
        self.inner.lock().handles.remove(&fh);
    }

    /// Keeps `listing` of `ino` for the readers that continue it; returns
    /// its id (never 0), to be carried in the offsets.
    pub(super) fn keep(&self, ino: u64, listing: Arc<Vec<Child>>) -> u32 {
        let mut inner = self.inner.lock();
        inner.next_sid = inner.next_sid.wrapping_add(1) & SID_MASK;
        if inner.next_sid == 0 {
            inner.next_sid = 1;
        }
        let sid = inner.next_sid;
        inner.snapshots.push_back((sid, (ino, listing)));
        while inner.snapshots.len() > SNAPSHOTS_MAX {
            inner.snapshots.pop_front();
        }
        sid
    }

    /// Snapshot `sid`, if it is ours and lists `ino`.
    pub(super) fn snapshot(&self, sid: u32, ino: u64) -> Option<Arc<Vec<Child>>> {
        let inner = self.inner.lock();
        inner
            .snapshots
            .iter()
            .rev()
            .find(|(s, (i, _))| *s == sid && *i == ino)
            .map(|(_, (_, l))| l.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_carry_the_snapshot_and_the_position() {
        for (sid, pos) in [(0, 0), (0, 7), (1, 2), (SID_MASK, u64::from(u32::MAX))] {
            let off = join_offset(sid, pos);
            assert!(off < 1 << 63, "offsets stay positive");
            assert_eq!(split_offset(off), (sid, pos));
        }
    }

    #[test]
    fn snapshots_are_bounded_and_found_by_id_and_directory() {
        let d = DirHandles::default();
        let l = Arc::new(Vec::new());
        let first = d.keep(5, l.clone());
        assert_ne!(first, 0);
        assert!(d.snapshot(first, 5).is_some());
        assert!(d.snapshot(first, 6).is_none());
        for _ in 0..SNAPSHOTS_MAX {
            d.keep(7, l.clone());
        }
        assert!(d.snapshot(first, 5).is_none(), "the oldest went first");
    }
}

//! The handle tables as a successor shim needs them: attached to the
//! takeover state (every change recorded), and rebuilt from a
//! predecessor's state before the first request is read.

use std::os::fd::RawFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::takeover::{Kind, Slot, StateFile};

use super::passthrough::{PageCache, Passthrough};

/// The shim's handle tables (shared with its `ShimFs`).
#[derive(Clone)]
pub struct Tables {
    pub(super) passthrough: Arc<Passthrough>,
    pub(super) page_cache: Arc<PageCache>,
}

impl Tables {
    pub fn passthrough_enabled(&self) -> bool {
        self.passthrough.enabled.load(Ordering::Relaxed)
    }

    pub fn disable_passthrough(&self) {
        self.passthrough.enabled.store(false, Ordering::Relaxed);
    }

    /// The open cache that the kernel cache's notices reach.
    pub fn open_cache(&self) -> Arc<dyn crate::kcache::OpenCache> {
        self.passthrough.clone()
    }

    /// `dev` is the session's /dev/fuse fd: backing ids are closed on it.
    pub fn set_dev(&self, dev: RawFd) {
        self.passthrough.set_dev(dev);
    }

    /// From now on every change goes to `state`.
    pub fn attach(&self, state: &Arc<StateFile>) {
        self.passthrough.attach(state);
        let _ = self.page_cache.store.set(state.clone());
    }

    /// Takes over a predecessor's entries (after `set_dev` and `attach`:
    /// its idle backing ids are closed here). Returns (backing ids with
    /// open handles, inodes with page-cache state).
    pub fn adopt(&self, slots: &[Slot]) -> (usize, usize) {
        let backing = self.passthrough.adopt(slots);
        let mut inodes = self.page_cache.inodes.lock();
        for s in slots {
            match s.kind {
                Kind::Backing | Kind::LocalOpens => {}
                Kind::CacheOpen => {
                    if let Ok(n @ 1..) = u32::try_from(s.value) {
                        inodes.entry(s.ino).or_default().open.insert(s.fh, n);
                    }
                }
                Kind::CacheOwner => inodes.entry(s.ino).or_default().cached = s.value,
            }
        }
        (backing, inodes.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::takeover::Negotiated;

    /// What one shim's tables record, another's adopt: the same
    /// page-cache owners and open counts, so the successor answers the
    /// next open of each as the predecessor would (backing ids: in
    /// `passthrough`'s tests).
    #[test]
    fn tables_survive_through_the_state() {
        let n = Negotiated {
            init_in: [0; 64],
            init_out: [0; 64],
            passthrough: true,
        };
        let state = Arc::new(StateFile::create(&n).unwrap());
        let a = Tables {
            passthrough: Arc::new(Passthrough::new(true)),
            page_cache: Arc::new(PageCache::default()),
        };
        a.attach(&state);
        state.set(Kind::Backing, 5, 11, (9 << 32) | 2);
        let _ = a.page_cache.open(6, 22, true);
        let _ = a.page_cache.open(6, 33, true); // another version: direct
        a.page_cache.release(6, 33);
        let (_, _, slots) = StateFile::open(state.fd().try_clone_to_owned().unwrap()).unwrap();
        let b = Tables {
            passthrough: Arc::new(Passthrough::new(true)),
            page_cache: Arc::new(PageCache::default()),
        };
        b.attach(&state);
        assert_eq!(b.adopt(&slots), (1, 1));
        // 22 is still open and owns the cache: a new version reads direct.
        assert_eq!(
            b.page_cache.open(6, 44, true).0,
            fuser::FopenFlags::FOPEN_DIRECT_IO
        );
        assert_eq!(
            b.page_cache.open(6, 22, true).0,
            fuser::FopenFlags::FOPEN_KEEP_CACHE
        );
    }
}

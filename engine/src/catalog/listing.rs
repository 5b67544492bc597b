//! The hot cache of directory listings, bounded by entries in total.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use crate::catalog::records::Child;
use crate::config::defaults::LISTING_CACHE_ENTRIES;

pub(super) struct ListingCache {
    pub(super) map: HashMap<u64, Arc<Vec<Child>>>,
    order: VecDeque<u64>,
    pub(super) entries: usize,
    /// Most entries held (hot: `set_listing_cache_limit`).
    pub(super) limit: usize,
}

impl Default for ListingCache {
    fn default() -> Self {
        ListingCache {
            map: HashMap::new(),
            order: VecDeque::new(),
            entries: 0,
            limit: LISTING_CACHE_ENTRIES,
        }
    }
}

impl ListingCache {
    pub(super) fn get(&mut self, ino: u64) -> Option<Arc<Vec<Child>>> {
        self.map.get(&ino).cloned()
    }

    pub(super) fn insert(&mut self, ino: u64, list: Arc<Vec<Child>>) {
        if let Some(old) = self.map.insert(ino, list.clone()) {
            self.entries -= old.len();
        } else {
            self.order.push_back(ino);
        }
        self.entries += list.len();
        self.evict(Some(ino));
    }

    /// Drops the oldest listings until the cache is within its limit; `keep`
    /// (the one just inserted) stays even when it alone is over it.
    pub(super) fn evict(&mut self, keep: Option<u64>) {
        while self.entries > self.limit {
            let Some(victim) = self.order.pop_front() else {
                break;
            };
            if Some(victim) == keep && self.order.is_empty() {
                self.order.push_back(victim);
                break;
            }
            if let Some(old) = self.map.remove(&victim) {
                self.entries -= old.len();
            }
        }
    }

    pub(super) fn remove(&mut self, ino: u64) {
        if let Some(old) = self.map.remove(&ino) {
            self.entries -= old.len();
            self.order.retain(|i| *i != ino);
        }
    }
}

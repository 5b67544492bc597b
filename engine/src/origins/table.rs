//! The configured origins by persistent id, shared by the data plane and the
//! syncer. A reload swaps the whole table at once: readers take a snapshot
//! (an `Arc`) and never see half an update.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::RwLock;

use crate::origins::probe::probe_all;

/// One snapshot of the origins, indexed by origin id.

#[derive(Debug, Default)]
pub struct OriginTable {
    roots: Vec<Option<PathBuf>>,
    local: Vec<bool>,
    cached: Vec<bool>,
}

impl OriginTable {
    /// The table for `roots` (by id; `None` for ids not configured);
    /// `cache`: origins whose caching is set (else: network ones are cached).
    pub fn new(roots: Vec<Option<PathBuf>>, cache: &HashMap<PathBuf, bool>) -> OriginTable {
        // Bounded: an origin that hangs counts as not local (network).
        let configured: Vec<PathBuf> = roots.iter().flatten().cloned().collect();
        let mut probes = probe_all(&configured).into_iter();
        let local = roots
            .iter()
            .map(|o| o.is_some() && probes.next().flatten().is_some_and(|p| p.local))
            .collect::<Vec<bool>>();
        let cached = roots
            .iter()
            .zip(&local)
            .map(|(root, local)| {
                root.as_ref()
                    .is_some_and(|r| cache.get(r).copied().unwrap_or(!local))
            })
            .collect();
        OriginTable {
            roots,
            local,
            cached,
        }
    }

    /// Whether origin `id` is read through the chunk cache.
    pub fn is_cached(&self, id: u32) -> bool {
        self.cached.get(id as usize).copied().unwrap_or(false)
    }

    /// Whether any origin is read through the chunk cache.
    pub fn any_cached(&self) -> bool {
        self.cached.iter().any(|c| *c)
    }

    /// The root directory of origin `id`, if it is configured.
    pub fn root(&self, id: u32) -> Option<&Path> {
        self.roots.get(id as usize)?.as_deref()
    }

    /// Whether origin `id` is on a local filesystem (checked when configured).
    pub fn is_local(&self, id: u32) -> bool {
        self.local.get(id as usize).copied().unwrap_or(false)
    }

    /// Every configured origin: (id, root).
    pub fn iter(&self) -> impl Iterator<Item = (u32, &Path)> {
        self.roots.iter().enumerate().filter_map(|(id, r)| {
            r.as_deref()
                .map(|r| (u32::try_from(id).unwrap_or(u32::MAX), r))
        })
    }
}

/// The live origin table, and which origins have their caching set.
#[derive(Debug, Default)]
pub struct Origins(RwLock<Arc<OriginTable>>, RwLock<HashMap<PathBuf, bool>>);

impl Origins {
    pub fn new(roots: Vec<Option<PathBuf>>, cache: HashMap<PathBuf, bool>) -> Arc<Origins> {
        let table = OriginTable::new(roots, &cache);
        Arc::new(Origins(RwLock::new(Arc::new(table)), RwLock::new(cache)))
    }

    /// The current table (cheap: one `Arc` clone).
    pub fn snapshot(&self) -> Arc<OriginTable> {
        self.0.read().clone()
    }

    /// The root of origin `id`, if configured.
    pub fn root(&self, id: u32) -> Option<PathBuf> {
        self.snapshot().root(id).map(Path::to_path_buf)
    }

    /// Replaces the table (reload).
    pub fn replace(&self, roots: Vec<Option<PathBuf>>, cache: HashMap<PathBuf, bool>) {
        let table = Arc::new(OriginTable::new(roots, &cache));
        *self.1.write() = cache;
        *self.0.write() = table;
    }

    /// Looks again at which filesystem each origin is on (an origin that
    /// was away at start could not tell). A reload in between wins.
    pub fn refresh(&self) {
        let before = self.snapshot();
        let cache = self.1.read().clone();
        let table = Arc::new(OriginTable::new(before.roots.clone(), &cache));
        let mut current = self.0.write();
        if Arc::ptr_eq(&current, &before) {
            *current = table;
        }
    }
}

//! The chunk cache as the control plane shows it, in and out of its Cap'n
//! Proto struct.

use std::collections::BTreeMap;

use anyhow::Result;
use musicfs_schema::chunk_cache_status;
use serde::Serialize;

use crate::content::CacheStatus;
use crate::control::convert::{len32, text};

/// The chunk cache as the status shows it (stable keys).
#[derive(Clone, Debug, Default, Serialize)]
pub struct ChunkCacheView {
    pub dir: String,
    /// "normal", "unstable" or "down".
    pub state: String,
    pub bypassed: bool,
    pub reason: String,
    pub since_ms: u64,
    pub writes_stopped: String,
    /// used_bytes, max_bytes, chunks, hits, misses, corrupt, ...
    #[serde(flatten)]
    pub figures: BTreeMap<String, u64>,
}

impl ChunkCacheView {
    pub fn figure(&self, name: &str) -> u64 {
        self.figures.get(name).copied().unwrap_or(0)
    }
}

impl From<&CacheStatus> for ChunkCacheView {
    fn from(s: &CacheStatus) -> Self {
        let figures = [
            ("used_bytes", s.used_bytes),
            ("max_bytes", s.max_bytes),
            ("chunks", s.chunks),
            ("pinned_files", s.pinned_files),
            ("free_percent", u64::from(s.free_percent)),
            ("min_free_percent", u64::from(s.min_free_percent)),
            ("hits", s.hits),
            ("misses", s.misses),
            ("fetched", s.fetched),
            ("corrupt", s.corrupt),
            ("missing", s.missing),
            ("written", s.written),
            ("skipped", s.skipped),
            ("evicted", s.evicted),
            ("disk_errors", s.disk_errors),
            ("bypassed_reads", s.bypassed_reads),
            ("read_ahead", s.read_ahead),
        ];
        ChunkCacheView {
            dir: s.dir.clone(),
            state: s.state.clone(),
            bypassed: s.bypassed,
            reason: s.reason.clone(),
            since_ms: s.since_ms,
            writes_stopped: s.writes_stopped.clone(),
            figures: figures
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
        }
    }
}

pub(super) fn write_view(mut b: chunk_cache_status::Builder<'_>, v: &ChunkCacheView) {
    b.set_dir(&v.dir);
    b.set_state(&v.state);
    b.set_bypassed(v.bypassed);
    b.set_reason(&v.reason);
    b.set_since_ms(v.since_ms);
    b.set_writes_stopped(&v.writes_stopped);
    let mut list = b.init_figures(len32(v.figures.len()));
    for (i, (n, value)) in v.figures.iter().enumerate() {
        let mut e = list.reborrow().get(len32(i));
        e.set_name(n);
        e.set_value(*value);
    }
}

pub(super) fn read_view(r: chunk_cache_status::Reader<'_>) -> Result<Option<ChunkCacheView>> {
    let state = text(r.get_state());
    if state.is_empty() {
        return Ok(None);
    }
    Ok(Some(ChunkCacheView {
        dir: text(r.get_dir()),
        state,
        bypassed: r.get_bypassed(),
        reason: text(r.get_reason()),
        since_ms: r.get_since_ms(),
        writes_stopped: text(r.get_writes_stopped()),
        figures: r
            .get_figures()?
            .iter()
            .map(|c| (text(c.get_name()), c.get_value()))
            .collect(),
    }))
}

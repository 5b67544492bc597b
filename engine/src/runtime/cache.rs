//! The chunk cache in the running engine: opened when an origin needs it,
//! its writer, health probe and scrubber supervised, and the control
//! plane's cache commands (verify with repair from the origins, clear,
//! pin by path).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tracing::info;

use crate::catalog::ROOT_INO;
use crate::config::Config;
use crate::content::{ChunkCache, ContentInfo, ContentKey, Layout, Settings, VerifyReport};
use crate::origins::Origins;
use crate::runtime::core::Runtime;
use crate::tasks::supervise;

/// How often an unhealthy cache disk is probed (`MUSICFS_CACHE_PROBE_MS`
/// overrides it, for tests).
fn probe_interval() -> Duration {
    std::env::var("MUSICFS_CACHE_PROBE_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(Duration::from_millis(500), Duration::from_millis)
}

impl Runtime {
    /// Opens the chunk cache and starts its tasks, if an origin is cached
    /// and no cache is open yet.
    pub(super) fn ensure_cache(&self, config: &Config) -> Result<()> {
        if self.shared.content().is_some() {
            return Ok(());
        }
        if let Some((cache, tasks)) = open_cache(config, &self.syncer.origins, &self.stop)? {
            self.shared.set_content(cache.clone());
            self.syncer.set_content(cache);
            for t in tasks {
                self.own(t);
            }
        }
        Ok(())
    }

    /// Applies the hot cache limits of a reload.
    pub(super) fn apply_cache_limits(&self, config: &Config) {
        if let Some(c) = self.shared.content() {
            c.set_limits(config.cache_max_bytes, config.cache_min_free_percent);
        }
        self.shared
            .cache_fetch_timeout_ms
            .store(config.cache_fetch_timeout_ms, Ordering::Relaxed);
    }

    pub(super) fn cache(&self) -> Result<&Arc<ChunkCache>> {
        self.shared
            .content()
            .context("no chunk cache: every origin is a local disk (set `cache = true` on an origin to cache it)")
    }

    pub(super) fn verify_cache(
        &self,
        repair: bool,
        progress: &mut dyn FnMut(u64, u64),
        cancel: &AtomicBool,
    ) -> Result<VerifyReport> {
        let cache = self.cache()?;
        let refetch = |info: &ContentInfo, index: u32| self.refetch(info, index);
        let report = cache.verify(repair.then_some(&refetch), progress, cancel)?;
        info!(?report, repair, "cache verify");
        crate::events::emit(
            "cache",
            format!(
                "verify: {} checked, {} bad, {} missing, {} repaired{}",
                report.checked,
                report.bad,
                report.missing,
                report.repaired,
                if report.cancelled { " (cancelled)" } else { "" }
            ),
        );
        Ok(report)
    }

    /// Chunk `index` of a content version, read again from its origin if
    /// the origin file is still that version.
    fn refetch(&self, info: &ContentInfo, index: u32) -> Option<Vec<u8>> {
        let root = self.syncer.origins.root(info.origin)?;
        let path = root.join(OsStr::from_bytes(&info.rel_path));
        let file = std::fs::File::open(path).ok()?;
        let meta = file.metadata().ok()?;
        let mtime_ns = meta.mtime() * 1_000_000_000 + meta.mtime_nsec();
        if (meta.len(), mtime_ns) != (info.size_bytes, info.mtime_ns) {
            return None;
        }
        let layout = Layout::new(info.size_bytes);
        if index >= layout.count() {
            return None;
        }
        let (start, len) = layout.range(index);
        let mut buf = vec![0u8; len as usize];
        file.read_exact_at(&mut buf, start).ok()?;
        Some(buf)
    }

    /// Pins (or unpins) every file at or under `path` (relative to the
    /// mount); returns how many.
    pub(super) fn pin_path(&self, path: &[u8], pinned: bool) -> Result<u64> {
        let cache = self.cache()?;
        let store = &self.store;
        let mut ino = ROOT_INO;
        for part in path
            .split(|b| *b == b'/')
            .filter(|p| !p.is_empty() && *p != b".")
        {
            let name = std::str::from_utf8(part).context("not a path of this mount")?;
            ino = match store.lookup(ino, name)? {
                Some((child, _)) => child,
                None => bail!("{} is not in the mount", String::from_utf8_lossy(path)),
            };
        }
        let mut keys = Vec::new();
        let mut todo = vec![ino];
        while let Some(n) = todo.pop() {
            let Some(node) = store.node(n)? else {
                continue;
            };
            if node.is_dir {
                todo.extend(store.children(n)?.iter().map(|c| c.ino));
            } else {
                keys.push(ContentKey::of(
                    &node.file_key,
                    node.size_bytes,
                    node.mtime_ns,
                ));
            }
        }
        cache.pin(&keys, pinned)?;
        Ok(keys.len() as u64)
    }
}

/// Threads of the cache's tasks.
pub(super) type CacheTasks = Vec<Option<std::thread::JoinHandle<()>>>;

/// Opens the chunk cache if an origin is read through it, and starts its
/// writer, health probe and scrubber.
pub(super) fn open_cache(
    config: &Config,
    origins: &Origins,
    stop: &Arc<AtomicBool>,
) -> Result<Option<(Arc<ChunkCache>, CacheTasks)>> {
    if !origins.snapshot().any_cached() {
        return Ok(None);
    }
    let settings = Settings {
        dir: config.resolved_cache_dir()?,
        max_bytes: config.cache_max_bytes,
        min_free_percent: config.cache_min_free_percent,
        probe_interval: probe_interval(),
    };
    let cache = ChunkCache::open(&settings);
    let mut tasks = Vec::new();
    let (c, st) = (cache.clone(), stop.clone());
    tasks.push(supervise("cache-writer", stop.clone(), move || {
        c.run_writer(&st)
    }));
    let (c, st) = (cache.clone(), stop.clone());
    tasks.push(supervise("cache-probe", stop.clone(), move || {
        c.run_probe(&st)
    }));
    let per_hour = config.cache_scrub_chunks_per_hour;
    if per_hour > 0 {
        let (c, st) = (cache.clone(), stop.clone());
        tasks.push(supervise("cache-scrub", stop.clone(), move || {
            scrub(&c, per_hour, &st);
            Ok(())
        }));
    }
    Ok(Some((cache, tasks)))
}

/// Checks `per_hour` chunks an hour, a sixtieth of them every minute.
fn scrub(cache: &ChunkCache, per_hour: u64, stop: &AtomicBool) {
    let per_minute = usize::try_from(per_hour.div_ceil(60)).unwrap_or(usize::MAX);
    let mut cursor = None;
    loop {
        for _ in 0..600 {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let (next, bad) = cache.scrub(cursor, per_minute);
        if bad > 0 {
            crate::events::emit("cache", format!("the scrubber removed {bad} bad chunks"));
        }
        cursor = next;
    }
}

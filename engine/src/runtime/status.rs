//! The control plane's handle on the running engine: status from every
//! room, reload, the ordered stop (refused under systemd).

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Result;
use tracing::info;

use crate::config::Config;
use crate::config::reload::ReloadReport;
use crate::control::{Handle, OriginState, Status, TaskInfo};
use crate::origins::probe_dirs;
use crate::runtime::core::Runtime;
use crate::runtime::signals::systemd_unit;
use crate::tasks::task_states;

fn collect(rt: &Runtime) -> Result<Status> {
    let shared = &rt.shared;
    let syncer = &rt.syncer;
    let (files, nodes, bytes) = shared.store.totals()?;
    let table = syncer.origins.snapshot();
    let paths: Vec<PathBuf> = table
        .iter()
        .filter(|(id, _)| !table.is_remote(*id))
        .map(|(_, p)| p.to_path_buf())
        .collect();
    let mut probes = probe_dirs(&paths).into_iter();
    let origins = table
        .iter()
        .map(|(id, p)| {
            let away = syncer.offline_reason(id);
            let (kind, health, error, answers) = match table.remote(id) {
                Some(Ok(r)) => {
                    let state = r.health.state();
                    let error = r.health.last_error().or(away.clone()).unwrap_or_default();
                    let up = state != crate::origins::remote::State::Offline;
                    (
                        r.spec.scheme.name().to_string(),
                        state.name().to_string(),
                        error,
                        up,
                    )
                }
                Some(Err(why)) => (
                    "remote".to_string(),
                    "offline".to_string(),
                    why.to_string(),
                    false,
                ),
                None => {
                    let answer = probes.next().unwrap_or(Err("not probed".into()));
                    let kind = if table.is_local(id) {
                        "local"
                    } else {
                        "network"
                    };
                    let error = answer.clone().err().or(away.clone()).unwrap_or_default();
                    (kind.to_string(), String::new(), error, answer.is_ok())
                }
            };
            OriginState {
                id,
                path: p.display().to_string(),
                // An empty mountpoint answers stat: the syncer knows it is away.
                reachable: answers && away.is_none(),
                local: table.is_local(id),
                kind,
                health,
                error,
            }
        })
        .collect();
    let tasks = task_states()
        .into_iter()
        .map(|(name, t)| TaskInfo {
            name,
            running: t.running,
            restarts: t.restarts,
            last_error: t.last_error,
        })
        .collect();
    let c = &shared.counters;
    let s = &syncer.counters;
    let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let counters = vec![
        ("requests".into(), get(&c.requests)),
        ("opens".into(), get(&c.opens)),
        ("reads".into(), get(&c.reads)),
        ("read_bytes".into(), get(&c.read_bytes)),
        ("prefetched".into(), get(&c.prefetched)),
        ("probed".into(), get(&s.probed)),
        ("unchanged".into(), get(&s.unchanged)),
        ("removed".into(), get(&s.removed)),
        ("commits".into(), get(&s.commits)),
        ("full_scans".into(), get(&s.full_scans)),
        ("reloads".into(), get(&rt.reloads)),
        (
            "notify_dropped".into(),
            crate::notify::DROPPED.load(Ordering::Relaxed),
        ),
    ];
    let write_failure = rt.store.write_failure();
    Ok(Status {
        engine_version: env!("CARGO_PKG_VERSION").into(),
        pid: std::process::id(),
        uptime_ms: u64::try_from(rt.started.elapsed().as_millis()).unwrap_or(u64::MAX),
        state_dir: rt.state_dir.display().to_string(),
        files,
        nodes,
        bytes,
        scan_complete: shared.store.scan_complete()?,
        connected_shims: u32::try_from(shared.shim_count()).unwrap_or(u32::MAX),
        catalog_previous_close: rt.store.previous_close().as_str().to_string(),
        in_flight: u32::try_from(shared.in_flight()).unwrap_or(u32::MAX),
        template: rt.store.template().source().to_string(),
        catalog_write_error: write_failure.clone().unwrap_or_default().1,
        catalog_write_since_ms: write_failure.map_or(0, |(since, _)| since),
        state_dir_error: rt.state_dir_error.lock().clone(),
        chunk_cache: shared
            .content()
            .map(|c| crate::control::ChunkCacheView::from(&c.status())),
        cache: {
            let (dirs, entries, db) = rt.store.cache_figures();
            vec![
                ("listing_cache_dirs".into(), dirs),
                ("listing_cache_entries".into(), entries),
                (
                    "listing_cache_limit".into(),
                    rt.store.listing_cache_limit() as u64,
                ),
                (
                    "open_origin_files".into(),
                    shared.open_origin_files() as u64,
                ),
                ("open_files_max".into(), shared.open_files_max() as u64),
                ("catalog_cache_bytes".into(), db),
            ]
        },
        origins,
        tasks,
        counters,
        notify: syncer.notifier().map(|n| n.status()).unwrap_or_default(),
    })
}

impl Handle for Runtime {
    fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    fn status(&self) -> Result<Status> {
        collect(self)
    }

    fn reload(&self, new: Option<Config>) -> Result<ReloadReport> {
        Runtime::reload(self, new)
    }

    fn shutdown(&self, drain: Duration) -> Result<(), String> {
        // Under systemd (no `musicfs mount`), the unit would restart an
        // engine that stopped itself and leave the shim mounted: stopping
        // is systemctl's job.
        if let Some(unit) = systemd_unit() {
            return Err(match unit {
                Some(unit) => format!(
                    "this engine runs under systemd ({unit}); stop the mount with `systemctl stop {}`",
                    unit.replacen("musicfs-engine@", "musicfs-shim@", 1)
                ),
                None => "this engine runs under systemd; stop the mount with `systemctl stop musicfs-shim@INSTANCE`".into(),
            });
        }
        info!(
            timeout_ms = u64::try_from(drain.as_millis()).unwrap_or(u64::MAX),
            "shutdown requested over the control socket"
        );
        self.request_stop("shutdown requested", drain);
        Ok(())
    }

    fn stopping(&self) -> bool {
        Runtime::stopping(self)
    }

    fn metrics(&self) -> Result<String> {
        let s = collect(self)?;
        Ok(crate::metrics::render(&crate::metrics::Snapshot {
            uptime_seconds: s.uptime_ms as f64 / 1000.0,
            files: s.files,
            nodes: s.nodes,
            audio_bytes: s.bytes,
            scan_complete: s.scan_complete,
            connected_shims: u64::from(s.connected_shims),
            in_flight_requests: u64::from(s.in_flight),
            catalog_writes_failing: !s.catalog_write_error.is_empty(),
            state_dir_writable: s.state_dir_error.is_empty(),
            origins: s
                .origins
                .iter()
                .map(|o| crate::metrics::OriginFigures {
                    path: o.path.clone(),
                    reachable: o.reachable,
                })
                .collect(),
            tasks: s
                .tasks
                .iter()
                .map(|t| crate::metrics::TaskFigures {
                    name: t.name.clone(),
                    running: t.running,
                    restarts: u64::from(t.restarts),
                })
                .collect(),
            gauges: s.cache.clone(),
            counters: s.counters.clone(),
            chunk_cache: s
                .chunk_cache
                .as_ref()
                .map(|c| crate::metrics::ChunkCacheFigures {
                    bypassed: c.bypassed,
                    figures: c.figures.iter().map(|(k, v)| (k.clone(), *v)).collect(),
                }),
        }))
    }

    fn cache_status(&self) -> Option<crate::content::CacheStatus> {
        self.shared.content().map(|c| c.status())
    }

    fn cache_verify(
        &self,
        repair: bool,
        progress: &mut dyn FnMut(u64, u64),
        cancel: &std::sync::atomic::AtomicBool,
    ) -> Result<crate::content::VerifyReport> {
        self.verify_cache(repair, progress, cancel)
    }

    fn cache_clear(&self) -> Result<u64> {
        let freed = self.cache()?.clear()?;
        crate::events::emit("cache", format!("cleared: {freed} bytes freed"));
        Ok(freed)
    }

    fn cache_pin(&self, path: &[u8], pinned: bool) -> Result<u64> {
        self.pin_path(path, pinned)
    }

    fn search(&self, query: &str) -> Result<Vec<String>> {
        self.views.search_paths(query)
    }

    fn search_rebuild(
        &self,
        progress: &mut dyn FnMut(u64, u64),
        cancel: &std::sync::atomic::AtomicBool,
    ) -> Result<u64> {
        self.views.rebuild(progress, cancel)
    }
}

//! Reloading the configuration: validated whole first; the steps that
//! write the catalog go first, each recorded once in force; the rest after.

use std::path::Path;
use std::sync::atomic::Ordering;

use anyhow::{Context, Result};
use sd_notify::NotifyState;
use tracing::{info, warn};

use crate::config::Config;
use crate::config::reload::{ReloadReport, cold_changes};
use crate::model::template::Template;
use crate::origins::{check_origins_except, load_config};
use crate::runtime::core::Runtime;
use crate::scan::AudioExtensions;
use crate::tasks::supervise;

impl Runtime {
    /// Reloads the configuration: `new`, or the layers it was loaded from.
    /// Everything is validated before anything changes; on error the running
    /// configuration stays and the error says why.
    pub fn reload(&self, new: Option<Config>) -> Result<ReloadReport> {
        let _one = self.reload_lock.lock();
        let _ = sd_notify::notify(&[
            NotifyState::Reloading,
            NotifyState::monotonic_usec_now().unwrap_or(NotifyState::MonotonicUsec(0)),
        ]);
        let outcome = self.reload_inner(new);
        let _ = sd_notify::notify(&[NotifyState::Ready]);
        match &outcome {
            Ok(r) => {
                self.reloads.fetch_add(1, Ordering::Relaxed);
                info!("configuration reloaded: {}", r.summary());
                crate::events::emit("reload", r.summary());
            }
            Err(e) => {
                warn!("reload refused, the running configuration stays: {e:#}");
                crate::events::emit("reload", format!("refused: {e:#}"));
            }
        }
        outcome
    }

    fn reload_inner(&self, new: Option<Config>) -> Result<ReloadReport> {
        // From `musicfs mount`, which compares the cold fields itself (it
        // started this engine with some of them as flags).
        let from_supervisor = new.is_some();
        let new = match new {
            Some(c) => c,
            None => load_config(&self.source)?,
        };
        // Validate everything first. Origins already configured may be
        // unreachable right now (they are served from the catalog); a new
        // one must be there.
        let old = self.config();
        new.validate()?;
        check_origins_except(&new, |p| old.origins.iter().any(|o| o == p))?;
        crate::logging::validate(&new.log_level)?;
        let template = Template::parse(&new.template)?;
        crate::views::validate_collections(&new.collections)?;
        let mut report = ReloadReport::default();
        if !from_supervisor {
            report.restart_needed = cold_changes(&old, &new);
        }
        // The steps that write the catalog (and so can fail) come first;
        // each one that succeeded is recorded in the running configuration,
        // so a failure later never leaves it describing what is not in force.
        let watching_changed = (&old.watch, old.debounce_ms, old.poll_interval_s)
            != (&new.watch, new.debounce_ms, new.poll_interval_s);
        if old.origins == new.origins && old.origin != new.origin {
            let (by_id, _) = self.store.assign_origins(&new.origins)?;
            self.syncer.origins.replace(by_id, new.origin_settings());
            self.config.lock().origin = new.origin.clone();
            self.ensure_cache(&new)?;
            report.applied.push("origin".into());
        }
        if old.origins != new.origins {
            let before = self.syncer.origins.snapshot();
            let (by_id, stale) = self.store.assign_origins(&new.origins)?;
            // From here on the new origins are in force.
            self.config.lock().origins = new.origins.clone();
            self.syncer.origins.replace(by_id, new.origin_settings());
            self.ensure_cache(&new)?;
            let after = self.syncer.origins.snapshot();
            let added: Vec<u32> = after
                .iter()
                .filter(|(id, _)| before.root(*id).is_none())
                .map(|(id, _)| id)
                .collect();
            for (id, root) in before.iter() {
                if after.root(id).is_none() {
                    self.stop_watcher(id);
                    crate::events::emit("origin", format!("removed origin {}", root.display()));
                }
            }
            for (id, root) in after.iter() {
                if added.contains(&id) {
                    crate::events::emit("origin", format!("added origin {}", root.display()));
                    if !watching_changed {
                        self.start_watcher(&new, id);
                    }
                }
            }
            // Scan what was added and drop what was removed, in the background.
            let s = self.syncer.clone();
            let handle = supervise("sync-origins", self.stop.clone(), move || {
                s.remove_origins(&stale)?;
                for id in &added {
                    s.sync_origin(*id, Path::new(""))?;
                }
                Ok(())
            });
            self.own(handle);
            report.applied.push("origins".into());
        }
        if old.template != new.template {
            if crate::sys::fault::injected("reload-template-fail") {
                anyhow::bail!(
                    "cannot apply the template ({} applied already): injected fault (MUSICFS_FAULT=reload-template-fail)",
                    report.applied.join(", ")
                );
            }
            self.syncer.set_template(template).with_context(|| {
                if report.applied.is_empty() {
                    "cannot apply the template".to_string()
                } else {
                    format!(
                        "cannot apply the template ({} applied already)",
                        report.applied.join(", ")
                    )
                }
            })?;
            self.config.lock().template = new.template.clone();
            report.applied.push("template".into());
        }
        // The rest cannot fail once validated.
        if old.log_level != new.log_level {
            crate::logging::set_level(&new.log_level)?;
            report.applied.push("log_level".into());
        }
        if old.entry_ttl_ms != new.entry_ttl_ms {
            self.shared
                .entry_ttl_ms
                .store(new.entry_ttl_ms, Ordering::Relaxed);
            report.applied.push("entry_ttl_ms".into());
        }
        if old.collections != new.collections {
            self.views.set_collections(&new.collections);
            self.config.lock().collections = new.collections.clone();
            report.applied.push("collections".into());
        }
        if old.search_max_results != new.search_max_results {
            self.views.set_max_results(new.search_max_results);
            self.config.lock().search_max_results = new.search_max_results;
            report.applied.push("search_max_results".into());
        }
        if old.negative_ttl_ms != new.negative_ttl_ms {
            self.shared
                .negative_ttl_ms
                .store(new.negative_ttl_ms, Ordering::Relaxed);
            report.applied.push("negative_ttl_ms".into());
        }
        if old.scan_threads != new.scan_threads {
            self.syncer
                .threads
                .store(new.scan_worker_threads(), Ordering::Relaxed);
            report.applied.push("scan_threads".into());
        }
        if old.checkpoint_files != new.checkpoint_files {
            self.syncer
                .checkpoint_files
                .store(new.checkpoint_files, Ordering::Relaxed);
            report.applied.push("checkpoint_files".into());
        }
        if old.listing_cache_entries != new.listing_cache_entries {
            self.store
                .set_listing_cache_limit(new.listing_cache_entries);
            report.applied.push("listing_cache_entries".into());
        }
        if (
            old.cache_max_bytes,
            old.cache_min_free_percent,
            old.cache_fetch_timeout_ms,
        ) != (
            new.cache_max_bytes,
            new.cache_min_free_percent,
            new.cache_fetch_timeout_ms,
        ) {
            self.apply_cache_limits(&new);
            report.applied.push("cache limits".into());
        }
        if old.prefetch_tracks != new.prefetch_tracks {
            self.shared
                .prefetch_tracks
                .store(new.prefetch_tracks, Ordering::Relaxed);
            report.applied.push("prefetch_tracks".into());
        }
        if old.open_files_max != new.open_files_max {
            self.shared.set_open_files_max(new.open_files_max);
            report.applied.push("open_files_max".into());
        }
        if old.audio_extensions != new.audio_extensions {
            self.syncer.set_extensions(
                AudioExtensions::new(&new.audio_extensions).with_folder_images(old.cover_art),
            );
            // A full pass lists what is now included and drops what is not.
            let s = self.syncer.clone();
            let handle = supervise("sync-extensions", self.stop.clone(), move || {
                let ids: Vec<u32> = s.origins.snapshot().iter().map(|(id, _)| id).collect();
                for id in ids {
                    s.sync_origin(id, Path::new(""))?;
                }
                Ok(())
            });
            self.own(handle);
            report.applied.push("audio_extensions".into());
        }
        if watching_changed {
            let ids: Vec<u32> = self.watchers.lock().keys().copied().collect();
            for id in ids {
                self.stop_watcher(id);
            }
            self.start_all_watchers(&new);
            report.applied.push("watch".into());
        }
        *self.config.lock() = new;
        Ok(report)
    }
}

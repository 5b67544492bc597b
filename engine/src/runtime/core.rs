//! The running engine: its configuration, subsystems, watchers and tasks,
//! and the ordered stop.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sd_notify::NotifyState;
use tracing::{debug, info, warn};

use crate::catalog::Store;
use crate::config::Config;
use crate::config::reload::ConfigSource;
use crate::serve::Shared;
use crate::sync::{Syncer, WatchMode, follow_origin};
use crate::tasks::supervise;

/// Why the main thread should stop, and by when.
pub struct StopRequest {
    pub why: String,
    pub drain: Duration,
}

/// The running engine: what reload and shutdown act on.
pub struct Runtime {
    pub(super) config: parking_lot::Mutex<Config>,
    pub(super) source: ConfigSource,
    pub store: Arc<Store>,
    pub shared: Arc<Shared>,
    pub syncer: Arc<Syncer>,
    /// The search index and the virtual directories made from it.
    pub views: Arc<crate::views::Views>,
    pub state_dir: PathBuf,
    pub started: Instant,
    /// Set at shutdown: every background task stops.
    pub(super) stop: Arc<AtomicBool>,
    /// Per-origin watcher stop flags.
    pub(super) watchers: parking_lot::Mutex<HashMap<u32, Arc<AtomicBool>>>,
    /// Threads of supervised tasks (shutdown reports the ones still running).
    pub(super) tasks: parking_lot::Mutex<Vec<JoinHandle<()>>>,
    /// One reload at a time.
    pub(super) reload_lock: parking_lot::Mutex<()>,
    pub reloads: AtomicU64,
    /// Why the state directory's last write probe failed ("" if it worked).
    pub state_dir_error: parking_lot::Mutex<String>,
    pub(super) stop_tx: mpsc::Sender<StopRequest>,
}

impl Runtime {
    /// The configuration in force.
    pub fn config(&self) -> Config {
        self.config.lock().clone()
    }

    /// Whether the engine is stopping.
    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Asks the main thread to stop in order (control plane `shutdown`).
    pub fn request_stop(&self, why: &str, drain: Duration) {
        let _ = self.stop_tx.send(StopRequest {
            why: why.to_string(),
            drain,
        });
    }

    pub(super) fn own(&self, handle: Option<JoinHandle<()>>) {
        let mut tasks = self.tasks.lock();
        tasks.retain(|h| !h.is_finished());
        tasks.extend(handle);
    }

    /// Starts following origin `id` (inotify or polling, per the config).
    pub(super) fn start_watcher(&self, config: &Config, id: u32) {
        let mode = match config.watch.as_str() {
            "off" => return,
            "inotify" => WatchMode::Inotify,
            "poll" => WatchMode::Poll,
            _ => WatchMode::Auto,
        };
        let flag = Arc::new(AtomicBool::new(self.stop.load(Ordering::Relaxed)));
        if let Some(old) = self.watchers.lock().insert(id, flag.clone()) {
            old.store(true, Ordering::Relaxed);
        }
        let s = self.syncer.clone();
        let st = flag.clone();
        let debounce = Duration::from_millis(config.debounce_ms);
        let interval = Duration::from_secs(config.poll_interval_s);
        // inotify or polling is decided each time the task (re)starts, once
        // the origin is reachable: an origin that is away at start cannot
        // tell what filesystem it is on.
        let handle = supervise(format!("watch-origin-{id}"), flag, move || {
            follow_origin(&s, id, mode, debounce, interval, &st)
        });
        self.own(handle);
    }

    pub(super) fn stop_watcher(&self, id: u32) {
        if let Some(flag) = self.watchers.lock().remove(&id) {
            flag.store(true, Ordering::Relaxed);
        }
    }

    pub(super) fn start_all_watchers(&self, config: &Config) {
        let table = self.syncer.origins.snapshot();
        for (id, _) in table.iter() {
            self.start_watcher(config, id);
        }
        if table.iter().next().is_none() {
            warn!("no origins to follow");
        }
        self.start_remote_health();
    }

    /// Health checks of the remote origins (in parallel, under one
    /// deadline, each when it is due: see `origins::remote::health`).
    /// Runs while the engine does; a reload's new remotes are found by the
    /// next round.
    fn start_remote_health(&self) {
        let origins = self.syncer.origins.clone();
        let stop = self.stop.clone();
        let handle = supervise("remote-health", self.stop.clone(), move || {
            while !stop.load(Ordering::Relaxed) {
                origins.check_remotes();
                std::thread::sleep(Duration::from_millis(250));
            }
            Ok(())
        });
        self.own(handle);
    }

    /// The ordered stop: no new requests; in-flight ones answered (until the
    /// drain deadline); background tasks told to stop; the catalog closed
    /// clean. Closing waits for any catalog transaction in flight, so a task
    /// that has not noticed the stop yet can never leave a half-written
    /// commit; what it had not committed is redone by the next start.
    pub(super) fn shutdown(&self, why: &str, drain: Duration) {
        let t = Instant::now();
        let deadline = t + drain;
        info!(
            drain_ms = drain.as_millis() as u64,
            "engine stopping ({why})"
        );
        crate::events::emit("stopping", format!("engine stopping ({why})"));
        let _ = sd_notify::notify(&[NotifyState::Stopping]);
        self.shared.stop_taking_requests();
        // Tasks stop at their next check (a scan: its next checkpoint),
        // while the requests drain.
        self.stop.store(true, Ordering::Relaxed);
        for flag in self.watchers.lock().values() {
            flag.store(true, Ordering::Relaxed);
        }
        if let Some(n) = self.syncer.notifier() {
            // A delivery in flight is abandoned: the feed is advisory.
            n.stop(Duration::from_secs(1));
        }
        let left = self.shared.drain(deadline);
        if let Some(cache) = self.shared.content() {
            // Chunks written and read times in the chunk index.
            cache.flush(Duration::from_secs(2));
        }
        if left > 0 {
            warn!(
                left,
                "requests still in flight at the drain deadline; the shim sends them to the next engine"
            );
        }
        let close_timeout = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_secs(2));
        match self.store.close(close_timeout) {
            Ok(()) => info!("catalog closed cleanly"),
            Err(e) => {
                warn!("the catalog was not closed cleanly ({e:#}); the next start recovers it")
            }
        }
        let tasks: Vec<JoinHandle<()>> = std::mem::take(&mut *self.tasks.lock());
        let running = tasks.iter().filter(|h| !h.is_finished()).count();
        if running > 0 {
            // Only waiting for their stop check (a poll tick, a probe batch);
            // the catalog is closed, so they can no longer write anything.
            debug!(running, "background tasks still winding down at exit");
        }
        self.shared.log_counters();
        let c = &self.syncer.counters;
        info!(
            probed = c.probed.load(Ordering::Relaxed),
            unchanged = c.unchanged.load(Ordering::Relaxed),
            removed = c.removed.load(Ordering::Relaxed),
            commits = c.commits.load(Ordering::Relaxed),
            elapsed_ms = t.elapsed().as_millis() as u64,
            "engine stopped"
        );
    }
}

//! `musicfs engine`: open the catalog, serve at once, keep in step with the origins.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{SigSet, Signal};
use sd_notify::NotifyState;
use tracing::{debug, error, info, warn};

use crate::config::{Config, Overrides};
use crate::origins::Origins;
use crate::server::{Shared, serve};
use crate::store::Store;
use crate::sync::{Syncer, WatchMode, follow_origin, supervise};
use crate::template::Template;

/// Scan worker count: two per core (tag reads wait on I/O as often as on CPU).
pub fn scan_threads(config: &Config) -> usize {
    if config.scan_threads > 0 {
        return config.scan_threads;
    }
    std::thread::available_parallelism().map_or(2, |n| n.get() * 2)
}

/// The engine socket inside a state directory.
pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join("engine.sock")
}

/// Takes the state directory's lock: one engine per state directory. The
/// error names the holder's PID.
pub fn lock_state_dir(state_dir: &Path) -> Result<nix::fcntl::Flock<File>> {
    let path = state_dir.join("engine.lock");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(mut lock) => {
            lock.set_len(0)?;
            lock.rewind()?;
            writeln!(lock, "{}", std::process::id())?;
            Ok(lock)
        }
        Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            bail!(
                "another engine (pid {}) is already using the state directory {}",
                pid.trim(),
                state_dir.display()
            )
        }
        Err((_, e)) => bail!("cannot lock {}: {e}", path.display()),
    }
}

/// Where a reload reads the configuration from: the same layers as at start.
#[derive(Clone, Debug, Default)]
pub struct ConfigSource {
    pub file: Option<PathBuf>,
    pub overrides: Overrides,
}

impl ConfigSource {
    pub fn load(&self) -> Result<Config> {
        let mut c = Config::load(self.file.as_deref(), &self.overrides)?;
        c.absolutize_origins();
        Ok(c)
    }
}

/// What a reload did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReloadReport {
    /// Fields that changed and now apply.
    pub applied: Vec<String>,
    /// Fields that changed but apply only after a restart.
    pub restart_needed: Vec<String>,
}

impl ReloadReport {
    /// One line for the log and the CLI.
    pub fn summary(&self) -> String {
        let mut s = if self.applied.is_empty() {
            "nothing to apply".to_string()
        } else {
            format!("applied: {}", self.applied.join(", "))
        };
        if !self.restart_needed.is_empty() {
            s.push_str(&format!(
                "; changed but applied only after a restart: {}",
                self.restart_needed.join(", ")
            ));
        }
        s
    }
}

/// Fields read once at start, by the shim or the supervisor: a reload names
/// them when they change, and `musicfs mount` (or systemd) must restart.
const COLD_FIELDS: &[&str] = &[
    "mountpoint",
    "state_dir",
    "allow_other",
    "passthrough",
    "engine_wait_timeout_ms",
    "drain_timeout_ms",
];

/// The cold fields that differ between two configurations.
pub fn cold_changes(old: &Config, new: &Config) -> Vec<String> {
    let as_json = |c: &Config| serde_json::to_value(c).unwrap_or_default();
    let (o, n) = (as_json(old), as_json(new));
    COLD_FIELDS
        .iter()
        .filter(|f| o.get(**f) != n.get(**f))
        .map(|f| (*f).to_string())
        .collect()
}

/// Why the main thread should stop, and by when.
pub struct StopRequest {
    pub why: String,
    pub drain: Duration,
}

/// The running engine: what reload and shutdown act on.
pub struct Runtime {
    config: parking_lot::Mutex<Config>,
    source: ConfigSource,
    pub store: Arc<Store>,
    pub shared: Arc<Shared>,
    pub syncer: Arc<Syncer>,
    pub state_dir: PathBuf,
    pub started: Instant,
    /// Set at shutdown: every background task stops.
    stop: Arc<AtomicBool>,
    /// Per-origin watcher stop flags.
    watchers: parking_lot::Mutex<HashMap<u32, Arc<AtomicBool>>>,
    /// Threads of supervised tasks (shutdown reports the ones still running).
    tasks: parking_lot::Mutex<Vec<JoinHandle<()>>>,
    /// One reload at a time.
    reload_lock: parking_lot::Mutex<()>,
    pub reloads: AtomicU64,
    stop_tx: mpsc::Sender<StopRequest>,
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

    fn own(&self, handle: Option<JoinHandle<()>>) {
        let mut tasks = self.tasks.lock();
        tasks.retain(|h| !h.is_finished());
        tasks.extend(handle);
    }

    /// Starts following origin `id` (inotify or polling, per the config).
    fn start_watcher(&self, config: &Config, id: u32) {
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

    fn stop_watcher(&self, id: u32) {
        if let Some(flag) = self.watchers.lock().remove(&id) {
            flag.store(true, Ordering::Relaxed);
        }
    }

    fn start_all_watchers(&self, config: &Config) {
        let table = self.syncer.origins.snapshot();
        for (id, _) in table.iter() {
            self.start_watcher(config, id);
        }
        if table.iter().next().is_none() {
            warn!("no origins to follow");
        }
    }

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
            None => self.source.load()?,
        };
        // Validate everything first. Origins already configured may be
        // unreachable right now (they are served from the catalog); a new
        // one must be there.
        let old = self.config();
        new.validate()?;
        new.check_origins_except(|p| old.origins.iter().any(|o| o == p))?;
        crate::logging::validate(&new.log_level)?;
        let template = Template::parse(&new.template)?;
        let mut report = ReloadReport::default();
        if !from_supervisor {
            report.restart_needed = cold_changes(&old, &new);
        }
        // The steps that write the catalog (and so can fail) come first;
        // each one that succeeded is recorded in the running configuration,
        // so a failure later never leaves it describing what is not in force.
        let watching_changed = (&old.watch, old.debounce_ms, old.poll_interval_s)
            != (&new.watch, new.debounce_ms, new.poll_interval_s);
        if old.origins != new.origins {
            let before = self.syncer.origins.snapshot();
            let (by_id, stale) = self.store.assign_origins(&new.origins)?;
            // From here on the new origins are in force.
            self.config.lock().origins = new.origins.clone();
            self.syncer.origins.replace(by_id);
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
            if std::env::var("MUSICFS_FAULT")
                .is_ok_and(|f| f.split(',').any(|f| f == "reload-template-fail"))
            {
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
        if old.scan_threads != new.scan_threads {
            self.syncer
                .threads
                .store(scan_threads(&new), Ordering::Relaxed);
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
        if old.open_files_max != new.open_files_max {
            self.shared.set_open_files_max(new.open_files_max);
            report.applied.push("open_files_max".into());
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

    /// The ordered stop: no new requests; in-flight ones answered (until the
    /// drain deadline); background tasks told to stop; the catalog closed
    /// clean. Closing waits for any catalog transaction in flight, so a task
    /// that has not noticed the stop yet can never leave a half-written
    /// commit; what it had not committed is redone by the next start.
    fn shutdown(&self, why: &str, drain: Duration) {
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
        let left = self.shared.drain(deadline);
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

/// Default drain deadline for a stop by signal.
pub fn drain_timeout(config: &Config) -> Duration {
    Duration::from_millis(config.drain_timeout_ms)
}

/// Set by `musicfs mount` on the engines it starts: its pid. The
/// configuration is the supervisor's, so a SIGHUP sent to such an engine
/// is passed on to it.
pub const SUPERVISOR_PID_ENV: &str = "MUSICFS_SUPERVISOR_PID";

/// Set by `musicfs mount`: why it started this engine (`mount`, `engine
/// swap`, a crash or a missed heartbeat of the previous one).
pub const START_REASON_ENV: &str = "MUSICFS_START_REASON";

/// The supervisor that started this engine, while it is still our parent.
fn supervisor_pid() -> Option<nix::unistd::Pid> {
    let pid: i32 = std::env::var(SUPERVISOR_PID_ENV).ok()?.parse().ok()?;
    let pid = nix::unistd::Pid::from_raw(pid);
    (pid.as_raw() > 1 && nix::unistd::getppid() == pid).then_some(pid)
}

/// When systemd started this very process as a service's main process
/// (`SYSTEMD_EXEC_PID` is our pid: inherited values name another process)
/// and no `musicfs mount` supervises it: Some, with the service name from
/// `/proc/self/cgroup` if known.
pub fn systemd_unit() -> Option<Option<String>> {
    let exec_pid: Option<u32> = std::env::var("SYSTEMD_EXEC_PID")
        .ok()
        .and_then(|p| p.parse().ok());
    if exec_pid != Some(std::process::id()) || supervisor_pid().is_some() {
        return None;
    }
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    Some(unit_of_cgroup(&cgroup))
}

/// The `.service` unit in a `/proc/self/cgroup` text (cgroup v2 line).
fn unit_of_cgroup(cgroup: &str) -> Option<String> {
    cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))?
        .rsplit('/')
        .find(|seg| seg.ends_with(".service"))
        .map(str::to_string)
}

/// Signals, from one thread: SIGTERM and SIGINT stop (also during the first
/// scan), SIGHUP reloads once the engine runs (under `musicfs mount`, the
/// supervisor reloads: the SIGHUP is passed on to it).
fn start_signal_thread(
    signals: SigSet,
    drain: Duration,
    stop_tx: mpsc::Sender<StopRequest>,
    early_stop: Arc<AtomicBool>,
    runtime: Arc<std::sync::OnceLock<Arc<Runtime>>>,
) -> Result<()> {
    // Reloads run on their own thread, so that a slow one (a template
    // rebuild, an origin check) never holds up a SIGTERM. SIGHUPs that
    // arrive during a reload are folded into one more reload.
    let (reload_tx, reload_rx) = mpsc::sync_channel::<()>(1);
    let rt_for_reloads = runtime.clone();
    std::thread::Builder::new()
        .name("musicfs-reload".into())
        .spawn(move || {
            while reload_rx.recv().is_ok() {
                if let Some(rt) = rt_for_reloads.get() {
                    let _ = rt.reload(None);
                }
            }
        })
        .context("cannot start the reload thread")?;
    std::thread::Builder::new()
        .name("musicfs-signals".into())
        .spawn(move || {
            loop {
                match signals.wait() {
                    Ok(Signal::SIGHUP) => match runtime.get() {
                        Some(_) if let Some(pid) = supervisor_pid() => {
                            info!(
                                supervisor = pid.as_raw(),
                                "SIGHUP: the configuration is the supervisor's; passed on to it"
                            );
                            if let Err(e) = nix::sys::signal::kill(pid, Signal::SIGHUP) {
                                warn!("cannot pass SIGHUP on to the supervisor: {e}");
                            }
                        }
                        Some(_) => {
                            info!("SIGHUP: reloading the configuration");
                            if reload_tx.try_send(()).is_err() {
                                info!("a reload is already queued; this SIGHUP joins it");
                            }
                        }
                        None => {
                            warn!("SIGHUP during start-up ignored: reload once the engine serves")
                        }
                    },
                    Ok(sig) => {
                        early_stop.store(true, Ordering::Relaxed);
                        let _ = stop_tx.send(StopRequest {
                            why: sig.to_string(),
                            drain,
                        });
                    }
                    Err(e) => {
                        error!("sigwait failed: {e}");
                        return;
                    }
                }
            }
        })
        .context("cannot start the signal thread")?;
    Ok(())
}

/// Runs the engine until SIGTERM/SIGINT or a control-plane shutdown.
pub fn run(config: &Config, socket: Option<PathBuf>, source: ConfigSource) -> Result<()> {
    let started = Instant::now();
    // Block the signals before any thread starts; one thread waits for them.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGHUP);
    signals.thread_block().context("cannot block signals")?;

    if config.origins.is_empty() {
        config.check_origins()?; // says what is missing
    }
    let template = Template::parse(&config.template)?;
    let state_dir = config.resolved_state_dir()?;
    std::fs::create_dir_all(&state_dir)
        .with_context(|| format!("cannot create state directory {}", state_dir.display()))?;
    let _lock = lock_state_dir(&state_dir)?;
    let socket = socket.unwrap_or_else(|| socket_path(&state_dir));

    let (stop_tx, stop_rx) = mpsc::channel::<StopRequest>();
    let stop = Arc::new(AtomicBool::new(false));
    let runtime_cell: Arc<std::sync::OnceLock<Arc<Runtime>>> = Arc::new(std::sync::OnceLock::new());
    start_signal_thread(
        signals,
        drain_timeout(config),
        stop_tx.clone(),
        stop.clone(),
        runtime_cell.clone(),
    )?;

    let store = Arc::new(Store::open_or_rebuild(
        &state_dir.join("catalog.redb"),
        template,
    )?);
    let previous = store.previous_close();
    if previous == crate::store::PreviousClose::Unclean {
        info!(
            "the previous engine did not close the catalog (crash or kill); its last commit is kept"
        );
    }
    // An origin the catalog knows may be unreachable (a NAS that is down):
    // its files are served from the catalog. A new one must be there.
    let offline = match store
        .known_origins()
        .and_then(|known| config.check_origins_except(|p| known.contains(p)))
    {
        Ok(offline) => offline,
        Err(e) => {
            if let Err(e) = store.close(Duration::from_secs(5)) {
                warn!("the catalog was not closed cleanly: {e:#}");
            }
            return Err(e);
        }
    };
    for (path, why) in &offline {
        warn!(origin = %path.display(), "origin is not reachable ({why}); serving its files from the catalog until it is back");
    }
    let complete = store.scan_complete()?;
    let (by_id, stale_origins) = store.assign_origins(&config.origins)?;
    let origins = Origins::new(by_id);
    let mut syncer = Syncer::new(
        store.clone(),
        origins.clone(),
        scan_threads(config),
        config.checkpoint_files,
    );
    syncer.set_stale_origins(stale_origins);
    syncer.set_stop(stop.clone());
    if !complete {
        // First start (or an interrupted first scan): fill the catalog before
        // serving, committing checkpoints as it goes.
        info!(
            known_files = store.file_count()?,
            "no complete scan in the catalog; scanning"
        );
        if let Err(e) = syncer.sync_all() {
            if stop.load(Ordering::Relaxed) {
                info!("stopped during the first scan; it resumes from its last checkpoint");
                if let Err(e) = store.close(Duration::from_secs(5)) {
                    warn!("the catalog was not closed cleanly: {e:#}");
                }
                return Ok(());
            }
            return Err(e);
        }
    }
    let shared = Shared::new(store.clone(), origins.clone(), config.entry_ttl_ms);
    shared.set_open_files_max(config.open_files_max);
    store.set_listing_cache_limit(config.listing_cache_entries);
    syncer.set_shared(shared.clone());
    let syncer = Arc::new(syncer);
    let runtime = Arc::new(Runtime {
        config: parking_lot::Mutex::new(config.clone()),
        source,
        store: store.clone(),
        shared: shared.clone(),
        syncer: syncer.clone(),
        state_dir: state_dir.clone(),
        started,
        stop: stop.clone(),
        watchers: parking_lot::Mutex::new(HashMap::new()),
        tasks: parking_lot::Mutex::new(Vec::new()),
        reload_lock: parking_lot::Mutex::new(()),
        reloads: AtomicU64::new(0),
        stop_tx,
    });
    let control_guard = crate::control::serve(runtime.clone())?;
    let socket_guard = serve(shared.clone(), &socket)?;
    let _ = runtime_cell.set(runtime.clone());
    let files = store.file_count()?;
    info!(
        startup_ms = started.elapsed().as_millis() as u64,
        files, "engine ready"
    );
    let why = std::env::var(START_REASON_ENV)
        .ok()
        .filter(|w| !w.is_empty())
        .map(|w| format!("; reason: {w}"))
        .unwrap_or_default();
    crate::events::emit(
        "started",
        format!(
            "engine {} serving {files} files (pid {}, previous close: {}{why})",
            env!("CARGO_PKG_VERSION"),
            std::process::id(),
            previous.as_str()
        ),
    );
    let status = format!("serving {files} files");
    let _ = sd_notify::notify(&[NotifyState::Ready, NotifyState::Status(&status)]);
    if let Some(interval) = sd_notify::watchdog_enabled() {
        // Ping systemd only while the request path answers (a self-ping
        // through the data-plane socket).
        let sock = socket.clone();
        let st = stop.clone();
        std::thread::Builder::new()
            .name("musicfs-watchdog".into())
            .spawn(move || {
                while !st.load(Ordering::Relaxed) {
                    std::thread::sleep(interval / 2);
                    if crate::client::ping(&sock, interval / 2).is_ok() {
                        let _ = sd_notify::notify(&[NotifyState::Watchdog]);
                    }
                }
            })
            .context("cannot start the watchdog thread")?;
    }

    // Follow the origins, then reconcile what changed while we were away.
    runtime.start_all_watchers(config);
    if complete {
        // Reconcile once the shim is back, so that what changed while no
        // engine ran reaches its kernel as invalidations (bounded wait).
        let (s, sh) = (syncer.clone(), shared.clone());
        let handle = supervise("reconcile", stop.clone(), move || {
            let deadline = Instant::now() + Duration::from_secs(2);
            while sh.shim_count() == 0 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            s.sync_all()
        });
        runtime.own(handle);
    }

    // Wait for a stop (signal or control plane); the senders live as long
    // as the runtime and the signal thread.
    let req = stop_rx.recv().unwrap_or(StopRequest {
        why: "no stop channel".into(),
        drain: drain_timeout(config),
    });
    // Socket files go first: nothing new connects to a stopping engine.
    drop(socket_guard);
    runtime.shutdown(&req.why, req.drain);
    drop(control_guard);
    crate::events::emit("stopped", "engine stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_from_cgroup() {
        let v2 =
            "0::/system.slice/system-musicfs\\x2dengine.slice/musicfs-engine@mnt-music.service\n";
        assert_eq!(
            unit_of_cgroup(v2).as_deref(),
            Some("musicfs-engine@mnt-music.service")
        );
        assert_eq!(unit_of_cgroup("0::/user.slice/session-1.scope\n"), None);
        assert_eq!(unit_of_cgroup("1:name=systemd:/x.service\n"), None);
    }
}

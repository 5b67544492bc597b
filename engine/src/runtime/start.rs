//! From a state directory to a serving engine, and the wait for its stop.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{SigSet, Signal};
use sd_notify::NotifyState;
use tracing::{info, warn};

use crate::catalog::{PreviousClose, Store};
use crate::config::Config;
use crate::config::reload::ConfigSource;
use crate::config::state::{START_REASON_ENV, catalog_file, engine_socket, lock_file};
use crate::model::template::Template;
use crate::origins::{Origins, check_origins, check_origins_except};
use crate::runtime::core::{Runtime, StopRequest};
use crate::runtime::signals::start_signal_thread;
use crate::scan::AudioExtensions;
use crate::serve::{Shared, serve};
use crate::sync::Syncer;
use crate::tasks::supervise;
use crate::views::{Tee, Views};

/// Takes the state directory's lock: one engine per state directory. The
/// error names the holder's PID.
pub fn lock_state_dir(state_dir: &Path) -> Result<nix::fcntl::Flock<File>> {
    let path = lock_file(state_dir);
    // An engine that is stopping (its sockets are gone first) still holds
    // the lock while it drains and closes the catalog: a quick restart
    // waits for it, bounded, instead of failing. (One that is starting has
    // no sockets yet either: it is waited for the same way.)
    let deadline = Instant::now() + LOCK_WAIT_FOR_STOPPING;
    let mut waited = false;
    loop {
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
                return Ok(lock);
            }
            Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                let stopping = !engine_socket(state_dir).exists()
                    && !crate::config::state::control_socket(state_dir).exists();
                if !stopping || Instant::now() >= deadline {
                    bail!(
                        "another engine (pid {}) is {} the state directory {}",
                        pid.trim(),
                        if stopping {
                            "still starting or stopping after 15 s, and holds"
                        } else {
                            "already using"
                        },
                        state_dir.display()
                    );
                }
                if !waited {
                    info!(
                        pid = pid.trim(),
                        "waiting for the engine that is stopping to let go of the state directory"
                    );
                    waited = true;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            Err((_, e)) => bail!("cannot lock {}: {e}", path.display()),
        }
    }
}

/// How long a new engine waits for one that is stopping (see `lock_state_dir`).
const LOCK_WAIT_FOR_STOPPING: Duration = Duration::from_secs(15);

/// Runs the engine until SIGTERM/SIGINT or a control-plane shutdown.
pub fn run(config: &Config, socket: Option<PathBuf>, source: ConfigSource) -> Result<()> {
    let started = Instant::now();
    // Block the signals before any thread starts; one thread waits for them.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGHUP);
    signals.thread_block().context("cannot block signals")?;
    // Every open handle keeps its origin file open here.
    let open_files = crate::sys::limits::raise_open_files();
    tracing::debug!(open_files, "open file limit");

    if config.origins.is_empty() {
        check_origins(config)?; // says what is missing
    }
    let template = Template::parse(&config.template)?;
    let state_dir = config.resolved_state_dir()?;
    std::fs::create_dir_all(&state_dir)
        .with_context(|| format!("cannot create state directory {}", state_dir.display()))?;
    let _lock = lock_state_dir(&state_dir)?;
    // A first scan's progress left by an engine that was killed.
    let _ = std::fs::remove_file(crate::config::state::first_scan_progress_file(&state_dir));
    let socket = socket.unwrap_or_else(|| engine_socket(&state_dir));

    let (stop_tx, stop_rx) = mpsc::channel::<StopRequest>();
    let stop = Arc::new(AtomicBool::new(false));
    let runtime_cell: Arc<std::sync::OnceLock<Arc<Runtime>>> = Arc::new(std::sync::OnceLock::new());
    start_signal_thread(
        signals,
        config.drain_timeout(),
        stop_tx.clone(),
        stop.clone(),
        runtime_cell.clone(),
    )?;

    let store = Arc::new(Store::open_or_rebuild(&catalog_file(&state_dir), template)?);
    // The first walk after a start reads the catalog: ahead of it.
    store.read_ahead();
    let previous = store.previous_close();
    // Album covers on or off: a tree built the other way is rebuilt now,
    // before anything is served (a new engine makes the kernel forget all).
    if store.set_cover_art(config.cover_art)?.is_some() {
        info!(
            cover_art = config.cover_art,
            "tree laid out again for cover_art"
        );
    }
    if previous == PreviousClose::Unclean {
        info!(
            "the previous engine did not close the catalog (crash or kill); its last commit is kept"
        );
    }
    // An origin the catalog knows may be unreachable (a NAS that is down):
    // its files are served from the catalog. A new one must be there.
    let offline = match store
        .known_origins()
        .and_then(|known| check_origins_except(config, |p| known.contains(p)))
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
    let origins = Origins::new(by_id, config.origin_settings());
    let mut syncer = Syncer::new(
        store.clone(),
        origins.clone(),
        config.scan_worker_threads(),
        config.checkpoint_files,
    );
    syncer.set_stale_origins(stale_origins);
    syncer.set_extensions(
        AudioExtensions::new(&config.audio_extensions).with_folder_images(config.cover_art),
    );
    syncer.set_stop(stop.clone());
    // Before the first scan: it caches the head and tail chunks of files
    // of cached origins as it reads their tags.
    let cache = crate::runtime::cache::open_cache(config, &origins, &stop)?;
    if let Some((c, _)) = &cache {
        syncer.set_content(c.clone());
    }
    if !complete {
        // First start (or an interrupted first scan): fill the catalog before
        // serving, committing checkpoints as it goes.
        info!(
            known_files = store.file_count()?,
            "no complete scan in the catalog; scanning"
        );
        // Progress for `musicfs mount` to draw (found, probed), every 200 ms
        // and once more at the end; `musicfs mount` removes the file (the
        // next start does, if nothing did).
        let progress = crate::config::state::first_scan_progress_file(&state_dir);
        let done = AtomicBool::new(false);
        let scanned = std::thread::scope(|s| {
            s.spawn(|| {
                loop {
                    let finished = done.load(Ordering::Relaxed);
                    let c = &syncer.counters;
                    let line = format!(
                        "{} {}\n",
                        c.found.load(Ordering::Relaxed),
                        c.probed.load(Ordering::Relaxed)
                    );
                    let tmp = progress.with_extension("tmp");
                    if std::fs::write(&tmp, line).is_ok() {
                        let _ = std::fs::rename(&tmp, &progress);
                    }
                    if finished {
                        return;
                    }
                    for _ in 0..10 {
                        if done.load(Ordering::Relaxed) {
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
            });
            let r = syncer.sync_all();
            done.store(true, Ordering::Relaxed);
            r
        });
        if let Err(e) = scanned {
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
    shared
        .negative_ttl_ms
        .store(config.negative_ttl_ms, Ordering::Relaxed);
    store.set_listing_cache_limit(config.listing_cache_entries);
    // The search index: fed by the same commits, after the kernel's notices.
    // A bad `[collections]` table does not stop the mount (a reload of one
    // is refused): its collections are left out, and the log says why.
    let collections = match crate::views::validate_collections(&config.collections) {
        Ok(()) => config.collections.clone(),
        Err(e) => {
            warn!("the [collections] table is left out: {e:#}");
            Default::default()
        }
    };
    let names = origins.clone();
    let views = Arc::new(Views::new(
        &state_dir,
        store.clone(),
        Box::new(move |id| {
            names
                .root(id)
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        }),
        config.search_max_results,
        &collections,
    ));
    views.set_sink(shared.clone());
    shared.set_views(views.clone());
    syncer.set_sink(Arc::new(Tee {
        kernel: shared.clone(),
        views: views.clone(),
    }));
    // The change feed: what the commits from now on change (a first scan
    // is not announced; a media server reads a new library itself).
    if let Some(n) = crate::notify::Notifier::start(&config.notify)? {
        syncer.set_notifier(n);
    }
    shared
        .cache_fetch_timeout_ms
        .store(config.cache_fetch_timeout_ms, Ordering::Relaxed);
    shared
        .prefetch_tracks
        .store(config.prefetch_tracks, Ordering::Relaxed);
    let syncer = Arc::new(syncer);
    let runtime = Arc::new(Runtime {
        config: parking_lot::Mutex::new(config.clone()),
        source,
        store: store.clone(),
        shared: shared.clone(),
        syncer: syncer.clone(),
        views: views.clone(),
        state_dir: state_dir.clone(),
        started,
        stop: stop.clone(),
        watchers: parking_lot::Mutex::new(HashMap::new()),
        tasks: parking_lot::Mutex::new(Vec::new()),
        reload_lock: parking_lot::Mutex::new(()),
        reloads: AtomicU64::new(0),
        state_dir_error: parking_lot::Mutex::new(String::new()),
        stop_tx,
    });
    if let Some((c, tasks)) = cache {
        shared.set_content(c);
        for t in tasks {
            runtime.own(t);
        }
    }
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
                    if crate::serve::ping(&sock, interval / 2).is_ok() {
                        let _ = sd_notify::notify(&[NotifyState::Watchdog]);
                    }
                }
            })
            .context("cannot start the watchdog thread")?;
    }

    // The index: opened, or rebuilt from the catalog, behind the mount.
    let (v, st) = (views.clone(), stop.clone());
    let handle = supervise("search-index", stop.clone(), move || v.run(&st));
    runtime.own(handle);
    // Follow the origins, then reconcile what changed while we were away.
    runtime.start_all_watchers(config);
    let rt = runtime.clone();
    let st = stop.clone();
    let handle = supervise("state-probe", stop.clone(), move || {
        probe_state_dir(&rt, &st);
        Ok(())
    });
    runtime.own(handle);
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
        drain: config.drain_timeout(),
    });
    // Socket files go first: nothing new connects to a stopping engine.
    drop(socket_guard);
    runtime.shutdown(&req.why, req.drain);
    drop(control_guard);
    crate::events::emit("stopped", "engine stopped");
    Ok(())
}

/// How often the state directory is probed with a small write
/// (`MUSICFS_STATE_PROBE_MS` overrides it, for tests).
fn state_probe_interval() -> Duration {
    std::env::var("MUSICFS_STATE_PROBE_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(Duration::from_secs(30), Duration::from_millis)
}

/// Writes, syncs and removes a small file in the state directory every
/// `state_probe_interval()` until `stop`: a state disk that is full, read-only
/// or gone shows in the status and the events before a catalog write needs it.
fn probe_state_dir(rt: &Runtime, stop: &AtomicBool) {
    let path = rt.state_dir.join(".write-probe");
    loop {
        let result = (|| -> std::io::Result<()> {
            let mut f = File::create(&path)?;
            f.write_all(b"musicfs")?;
            f.sync_all()?;
            std::fs::remove_file(&path)
        })();
        let why = result.err().map(|e| e.to_string()).unwrap_or_default();
        let mut current = rt.state_dir_error.lock();
        if *current != why {
            if why.is_empty() {
                info!(state_dir = %rt.state_dir.display(), "the state directory takes writes again");
                crate::events::emit("state", "the state directory takes writes again");
            } else {
                warn!(state_dir = %rt.state_dir.display(), "the state directory does not take writes: {why}");
                crate::events::emit(
                    "state",
                    format!("the state directory does not take writes: {why}"),
                );
                let _ = std::fs::remove_file(&path);
            }
            *current = why;
        }
        drop(current);
        let until = Instant::now() + state_probe_interval();
        while Instant::now() < until {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

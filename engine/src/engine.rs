//! `musicfs engine`: open the catalog, serve at once, keep in step with the origins.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{SigSet, Signal};
use sd_notify::NotifyState;
use tracing::{info, warn};

use crate::config::Config;
use crate::server::{Shared, is_local_fs, serve};
use crate::store::Store;
use crate::sync::{Syncer, poll_network, supervise, watch_local};
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

/// Runs the engine until SIGTERM/SIGINT.
pub fn run(config: &Config, socket: Option<PathBuf>) -> Result<()> {
    let started = Instant::now();
    // Block the stop signals before any thread starts; the main thread waits for them.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGINT);
    signals.thread_block().context("cannot block signals")?;

    config.check_origins()?;
    let template = Template::parse(&config.template)?;
    let state_dir = config.resolved_state_dir()?;
    std::fs::create_dir_all(&state_dir)
        .with_context(|| format!("cannot create state directory {}", state_dir.display()))?;
    let _lock = lock_state_dir(&state_dir)?;
    let socket = socket.unwrap_or_else(|| socket_path(&state_dir));
    let store = Arc::new(Store::open_or_rebuild(
        &state_dir.join("catalog.redb"),
        template,
    )?);
    let complete = store.scan_complete()?;
    let (origins, stale_origins) = store.assign_origins(&config.origins)?;
    let mut syncer = Syncer::new(
        store.clone(),
        origins.clone(),
        scan_threads(config),
        config.checkpoint_files,
    );
    syncer.set_stale_origins(stale_origins);
    if !complete {
        // First start (or an interrupted first scan): fill the catalog before
        // serving, committing checkpoints as it goes.
        info!(
            known_files = store.file_count()?,
            "no complete scan in the catalog; scanning"
        );
        syncer.sync_all()?;
    }
    let shared = Shared::new(store.clone(), origins.clone(), config.entry_ttl_ms);
    syncer.set_shared(shared.clone());
    let syncer = Arc::new(syncer);
    let _control_guard = crate::control::serve(shared.clone(), syncer.clone(), &state_dir)?;
    let _socket_guard = serve(shared.clone(), &socket)?;
    let files = store.file_count()?;
    info!(
        startup_ms = started.elapsed().as_millis() as u64,
        files, "engine ready"
    );
    let status = format!("serving {files} files");
    let _ = sd_notify::notify(&[NotifyState::Ready, NotifyState::Status(&status)]);
    if let Some(interval) = sd_notify::watchdog_enabled() {
        // Ping systemd only while the request path answers (a self-ping
        // through the data-plane socket).
        let sock = socket.clone();
        std::thread::Builder::new()
            .name("musicfs-watchdog".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(interval / 2);
                    if crate::client::ping(&sock, interval / 2).is_ok() {
                        let _ = sd_notify::notify(&[NotifyState::Watchdog]);
                    }
                }
            })
            .context("cannot start the watchdog thread")?;
    }

    // Follow the origins, then reconcile what changed while we were away.
    let stop = Arc::new(AtomicBool::new(false));
    start_watchers(config, &origins, &syncer, &stop);
    if complete {
        // Reconcile once the shim is back, so that what changed while no
        // engine ran reaches its kernel as invalidations (bounded wait).
        let (s, st, sh) = (syncer.clone(), stop.clone(), shared.clone());
        supervise("reconcile", st, move || {
            let deadline = Instant::now() + Duration::from_secs(2);
            while sh.connection_count() == 0 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            s.sync_all()
        });
    }

    let sig = signals.wait().context("sigwait")?;
    info!("engine stopping on {sig}");
    let _ = sd_notify::notify(&[NotifyState::Stopping]);
    stop.store(true, Ordering::Relaxed);
    shared.log_counters();
    let c = &syncer.counters;
    info!(
        probed = c.probed.load(Ordering::Relaxed),
        unchanged = c.unchanged.load(Ordering::Relaxed),
        removed = c.removed.load(Ordering::Relaxed),
        commits = c.commits.load(Ordering::Relaxed),
        "sync counters"
    );
    info!("engine stopped");
    Ok(())
}

fn start_watchers(
    config: &Config,
    origins: &[Option<PathBuf>],
    syncer: &Arc<Syncer>,
    stop: &Arc<AtomicBool>,
) {
    let debounce = Duration::from_millis(config.debounce_ms);
    let interval = Duration::from_secs(config.poll_interval_s);
    for (idx, root) in origins.iter().enumerate() {
        let Some(root) = root else { continue };
        let origin = u32::try_from(idx).unwrap_or(u32::MAX);
        let use_inotify = match config.watch.as_str() {
            "off" => continue,
            "inotify" => true,
            "poll" => false,
            _ => is_local_fs(root),
        };
        let (s, st) = (syncer.clone(), stop.clone());
        if use_inotify {
            supervise("watch", stop.clone(), move || {
                watch_local(&s, origin, debounce, &st)
            });
        } else {
            if config.watch == "auto" {
                info!(origin = %root.display(), "origin is on a network filesystem; polling instead of inotify");
            }
            supervise("poll", stop.clone(), move || {
                poll_network(&s, origin, interval, &st)
            });
        }
    }
    if config.origins.is_empty() {
        warn!("no origins to follow");
    }
}

//! `musicfs mount`: start the engine, then the shim, then supervise both.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tracing::{error, info, warn};

use crate::config::Config;
use crate::config::reload::ConfigSource;
use crate::config::state::{catalog_file, engine_socket, supervisor_socket};
use crate::origins::check_origins_except;
use crate::supervisor::backoff::Backoff;
use crate::supervisor::children::{
    ENGINE_START_TIMEOUT, default_engine_binary, engine_command, heartbeat_timer, shim_binary,
    stop_child, stop_engine, wait_until,
};
use crate::supervisor::mountpoint::{is_mountpoint, lazy_unmount, prepare_mountpoint};
use crate::supervisor::reload::reload;
use crate::supervisor::requests::{Control, Shims, control_request};
use crate::supervisor::shim::{self, ShimPlace};

/// Runs the pair until a signal, an external unmount or a fatal error.
pub fn run(config: &Config, source: ConfigSource) -> Result<()> {
    let mountpoint = config
        .mountpoint
        .clone()
        .context("no mountpoint given (musicfs mount [--origin DIR]... MOUNTPOINT)")?;
    // With a catalog, origins may be unreachable (served from the catalog;
    // the engine checks which it knows); a new mount needs them all.
    let has_catalog = config
        .resolved_state_dir()
        .is_ok_and(|d| catalog_file(&d).exists());
    for (path, why) in check_origins_except(config, |_| has_catalog)? {
        warn!(origin = %path.display(), "origin is not reachable ({why}); the catalog serves its files until it is back");
    }
    prepare_mountpoint(&mountpoint)?;
    let mountpoint = mountpoint
        .canonicalize()
        .with_context(|| format!("mountpoint {}", mountpoint.display()))?;
    let state_dir = config.resolved_state_dir()?;
    std::fs::create_dir_all(&state_dir)
        .with_context(|| format!("cannot create state directory {}", state_dir.display()))?;
    let socket = engine_socket(&state_dir);
    if socket.as_os_str().len() >= 108 {
        bail!(
            "socket path {} is too long for a unix socket; choose a shorter state_dir",
            socket.display()
        );
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    rt.block_on(supervise(
        config.clone(),
        source,
        &mountpoint,
        &state_dir,
        &socket,
    ))
}

async fn supervise(
    mut config: Config,
    source: ConfigSource,
    mountpoint: &Path,
    state_dir: &Path,
    socket: &Path,
) -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sighup = signal(SignalKind::hangup())?;
    let config = &mut config;

    let _ = std::fs::remove_file(socket);
    let started = Instant::now();
    let mut engine_bin = default_engine_binary()?;
    let control_path = supervisor_socket(state_dir);
    // Owner only: it takes `swap BINARY` and `shutdown`.
    let mut control = crate::supervisor::rpc::serve(state_dir)?;
    let mut engine = engine_command(config, state_dir, socket, &engine_bin, "mount")?
        .spawn()
        .context("cannot start the engine")?;
    // A first scan draws its progress on a terminal while it runs.
    let mut scan_bar = crate::supervisor::progress::FirstScan::new(state_dir);
    let engine_ready = wait_until(&mut engine, "the engine", ENGINE_START_TIMEOUT, || {
        let ready = std::os::unix::net::UnixStream::connect(socket).is_ok();
        scan_bar.update(ready);
        ready
    });
    tokio::select! {
        r = engine_ready => r?,
        _ = sigterm.recv() => { stop_engine(&mut engine, state_dir, config.drain_timeout()).await; return Ok(()); }
        _ = sigint.recv() => { stop_engine(&mut engine, state_dir, config.drain_timeout()).await; return Ok(()); }
    }
    // The shim's connection, held here so that the mount outlives it.
    let place = ShimPlace {
        config: &config.clone(),
        mountpoint,
        socket,
    };
    let (mut shim, mut held) = match shim::start(&place, &shim_binary(), None).await {
        Ok(s) => s,
        Err(e) => {
            stop_engine(&mut engine, state_dir, config.drain_timeout()).await;
            return Err(e.context(format!("cannot start {}", shim_binary().display())));
        }
    };
    info!(
        mountpoint = %mountpoint.display(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "mounted; Ctrl-C or `musicfs unmount` to stop"
    );
    eprintln!(
        "musicfs: mounted at {} (Ctrl-C to unmount)",
        mountpoint.display()
    );
    let status = format!("mounted at {}", mountpoint.display());
    let _ = sd_notify::notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(&status),
    ]);

    // Supervise: restart an engine that exits, kill and replace one that
    // stops answering the heartbeat. The shim parks requests meanwhile.
    let heartbeat_every = Duration::from_millis(config.heartbeat_interval_ms);
    let heartbeat_timeout = Duration::from_millis(config.heartbeat_timeout_ms);
    let mut backoff = Backoff::default();
    let mut engine_started = Instant::now();
    let mut engine_alive = true;
    // Whether the current engine has answered a heartbeat.
    let mut engine_healthy = true;
    let mut heartbeat_timeout = heartbeat_timeout;
    let mut heartbeat = heartbeat_timer(heartbeat_every);
    // Why the next engine is started (its `started` event says so).
    let mut restart_why = String::new();
    // The drain deadline of the final stop (`musicfs shutdown --timeout`).
    let mut drain = config.drain_timeout();
    // When the current shim was killed for a missed heartbeat.
    let mut shim_killed_at: Option<Instant> = None;
    let result = loop {
        tokio::select! {
            _ = sigterm.recv() => { info!("SIGTERM: unmounting"); break Ok(()); }
            _ = sigint.recv() => { info!("interrupted: unmounting"); break Ok(()); }
            _ = sighup.recv() => {
                info!("SIGHUP: reloading the configuration");
                // A stop signal does not wait for a reload to finish.
                tokio::select! {
                    r = reload(config, &source, state_dir) => {
                        if let Ok((_, Some((every, timeout)))) = r {
                            heartbeat = heartbeat_timer(every);
                            heartbeat_timeout = timeout;
                        }
                    }
                    _ = sigterm.recv() => { info!("SIGTERM during a reload: unmounting"); break Ok(()); }
                    _ = sigint.recv() => { info!("interrupted during a reload: unmounting"); break Ok(()); }
                }
            }
            status = shim.child.wait() => {
                let status = match status {
                    Ok(s) if s.success() => { info!("unmounted"); break Ok(()); }
                    Ok(s) => s.to_string(),
                    Err(e) => e.to_string(),
                };
                let Some(h) = held.as_ref() else {
                    error!("the shim exited ({status})");
                    break Err(anyhow::anyhow!("the shim exited ({status})"));
                };
                error!("the shim exited ({status}); a new shim takes the live connection over");
                match shim::replace(&place, &shim, h, &format!("the previous shim exited ({status})")).await {
                    Ok(new) => { shim = new; shim_killed_at = None; }
                    Err(e) => { error!("{e:#}"); break Err(e); }
                }
            }
            status = engine.wait(), if engine_alive => {
                engine_alive = false;
                let up = engine_started.elapsed();
                let delay = backoff.next(up, engine_healthy);
                let status = status.map_or_else(|e| e.to_string(), |s| s.to_string());
                error!(
                    "the engine exited ({status}) after {} ms; restarting it in {} ms (requests wait meanwhile)",
                    up.as_millis(),
                    delay.as_millis()
                );
                if restart_why.is_empty() {
                    restart_why = format!("restart: the previous engine exited ({status}) after {} ms", up.as_millis());
                }
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = sigterm.recv() => { info!("SIGTERM: unmounting"); break Ok(()); }
                    _ = sigint.recv() => { info!("interrupted: unmounting"); break Ok(()); }
                }
                match engine_command(config, state_dir, socket, &engine_bin, &restart_why).and_then(|mut c| c.spawn().context("cannot start the engine")) {
                    Ok(e) => {
                        restart_why.clear();
                        engine = e;
                        engine_alive = true;
                        engine_healthy = false;
                        engine_started = Instant::now();
                        heartbeat.reset();
                    }
                    Err(e) => {
                        // Try again at the next heartbeat tick.
                        error!("{e:#}");
                    }
                }
            }
            Some(asked) = control.recv() => {
                let shims = Shims { place: &place, shim: &mut shim, held: held.as_ref() };
                let outcome = control_request(asked, config, &source, state_dir, socket, &mut engine, &mut engine_bin, shims).await;
                match outcome {
                    Control::Shutdown(d) => {
                        info!("shutdown requested: unmounting");
                        drain = d.unwrap_or(drain);
                        break Ok(());
                    }
                    Control::Swapped => {
                        engine_alive = true;
                        engine_healthy = true;
                        engine_started = Instant::now();
                        heartbeat.reset();
                    }
                    Control::Reloaded(Some((every, timeout))) => {
                        heartbeat = heartbeat_timer(every);
                        heartbeat_timeout = timeout;
                    }
                    Control::Reloaded(None) | Control::Continue => {}
                }
            }
            _ = heartbeat.tick() => {
                if !engine_alive {
                    match engine_command(config, state_dir, socket, &engine_bin, &restart_why).and_then(|mut c| c.spawn().context("cannot start the engine")) {
                        Ok(e) => { restart_why.clear(); engine = e; engine_alive = true; engine_healthy = false; engine_started = Instant::now(); }
                        Err(e) => error!("{e:#}"),
                    }
                    continue;
                }
                let sock = socket.to_path_buf();
                let (answer, shim_answers) = tokio::join!(
                    tokio::task::spawn_blocking(move || crate::serve::ping(&sock, heartbeat_timeout)),
                    shim::answers(&shim, heartbeat_timeout),
                );
                if let Some(h) = held.as_ref()
                    && !shim_answers
                    && matches!(shim.child.try_wait(), Ok(None))
                {
                    match shim_killed_at {
                        None => {
                            error!(
                                "the shim did not answer a heartbeat within {} ms; killing it (its FUSE connection stays held)",
                                heartbeat_timeout.as_millis()
                            );
                            let _ = shim.child.start_kill();
                            shim_killed_at = Some(Instant::now());
                        }
                        // Killed, yet not gone: one of its threads waits in
                        // the kernel (an invalidation behind a lookup that
                        // only a resend can answer). Its successor frees it.
                        Some(at) if at.elapsed() >= heartbeat_timeout => {
                            error!("the killed shim has not exited (a thread waits in the kernel); a new shim takes the connection over beside it");
                            match shim::replace(&place, &shim, h, "the previous shim was killed and did not exit").await {
                                Ok(new) => { shim = new; shim_killed_at = None; }
                                Err(e) => { error!("{e:#}"); break Err(e); }
                            }
                        }
                        Some(_) => {}
                    }
                }
                let hung = match answer {
                    Ok(Ok(_)) => {
                        engine_healthy = true;
                        false
                    }
                    // Not listening yet (starting, scanning a new catalog):
                    // hung only past the start deadline.
                    Ok(Err(crate::serve::PingError::NotListening(_))) => {
                        engine_started.elapsed() > ENGINE_START_TIMEOUT
                    }
                    Ok(Err(e)) => {
                        warn!("engine heartbeat failed: {e}");
                        true
                    }
                    Err(_) => false,
                };
                // A heartbeat that failed because the engine just exited
                // (killed, crashed) is not a hang: the exit branch handles
                // it, with the real exit status as the restart reason.
                let exited = matches!(engine.try_wait(), Ok(Some(_)));
                if hung && !exited {
                    error!(
                        "the engine did not answer a heartbeat within {} ms; killing it",
                        heartbeat_timeout.as_millis()
                    );
                    restart_why = format!(
                        "restart: the previous engine did not answer a heartbeat within {} ms and was killed",
                        heartbeat_timeout.as_millis()
                    );
                    let _ = engine.start_kill();
                }
            }
        }
    };
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    // In order: the shim first (it unmounts, answers what is in flight),
    // then the engine (drains, stops its tasks, closes the catalog).
    stop_child(&mut shim.child, "shim", drain).await;
    // Let the connection go: nobody serves it any more.
    drop(held.take());
    if matches!(std::fs::metadata(mountpoint), Err(e) if e.raw_os_error() == Some(libc::ENOTCONN))
        || is_mountpoint(mountpoint).unwrap_or(false)
    {
        warn!("the mount is still there after the shim stopped; detaching it");
        let _ = lazy_unmount(mountpoint);
    }
    stop_engine(&mut engine, state_dir, drain).await;
    let _ = std::fs::remove_file(&control_path);
    result
}

//! `musicfs mount`: runs the engine and the shim as a supervised pair in the
//! foreground, and takes the mount down cleanly on Ctrl-C or SIGTERM.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::process::{Child, Command};
use tracing::{error, info, warn};

use crate::config::Config;
use crate::engine::{ConfigSource, socket_path};

/// How long the engine may take to scan and start serving.
const ENGINE_START_TIMEOUT: Duration = Duration::from_secs(900);
/// How long the shim may take to mount once the engine serves.
const SHIM_START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a child gets to stop after SIGTERM before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the shim binary is: `$MUSICFS_SHIM`, next to this binary, or on PATH.
pub fn shim_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("MUSICFS_SHIM") {
        return PathBuf::from(p);
    }
    if let Ok(exe) = std::env::current_exe() {
        let sibling = exe.with_file_name("musicfs-shim");
        if sibling.is_file() {
            return sibling;
        }
    }
    PathBuf::from("musicfs-shim")
}

/// Whether `path` is the root of a mount (its device differs from its parent's).
pub fn is_mountpoint(path: &Path) -> std::io::Result<bool> {
    let meta = std::fs::metadata(path)?;
    let parent = path.parent().unwrap_or(Path::new("/"));
    let pmeta = std::fs::metadata(parent)?;
    Ok(meta.dev() != pmeta.dev() || meta.ino() == pmeta.ino())
}

/// What a look at the mountpoint found.
enum MountpointState {
    /// A directory; `mounted`: something is mounted on it.
    Dir {
        mounted: bool,
    },
    /// A FUSE mount whose server is gone (`ENOTCONN`).
    Stale,
    NotDir,
    Unusable(std::io::Error),
}

/// How long the mountpoint may take to answer (a FUSE mount whose server
/// hangs would hang the look for ever).
const MOUNTPOINT_CHECK_TIMEOUT: Duration = Duration::from_secs(5);

fn look_at(mountpoint: &Path) -> MountpointState {
    let stale = |e: &std::io::Error| e.raw_os_error() == Some(libc::ENOTCONN);
    match std::fs::metadata(mountpoint) {
        Ok(m) if m.is_dir() => {
            // stat may answer from the kernel's attribute cache of a dead
            // FUSE mount; listing it cannot.
            if let Err(e) = std::fs::read_dir(mountpoint)
                && stale(&e)
            {
                return MountpointState::Stale;
            }
            MountpointState::Dir {
                mounted: is_mountpoint(mountpoint).unwrap_or(false),
            }
        }
        Ok(_) => MountpointState::NotDir,
        Err(e) if stale(&e) => MountpointState::Stale,
        Err(e) => MountpointState::Unusable(e),
    }
}

/// Checks the mountpoint (bounded), cleaning a stale FUSE mount left by a
/// crash.
pub fn prepare_mountpoint(mountpoint: &Path) -> Result<()> {
    let (tx, rx) = std::sync::mpsc::channel();
    let path = mountpoint.to_path_buf();
    std::thread::Builder::new()
        .name("musicfs-mountpoint".into())
        .spawn(move || {
            let _ = tx.send(look_at(&path));
        })
        .context("cannot start a thread")?;
    let Ok(state) = rx.recv_timeout(MOUNTPOINT_CHECK_TIMEOUT) else {
        bail!(
            "mountpoint {} does not answer within {} s (a FUSE mount whose server hangs?); detach it with `musicfs unmount --lazy {}`",
            mountpoint.display(),
            MOUNTPOINT_CHECK_TIMEOUT.as_secs(),
            mountpoint.display()
        );
    };
    match state {
        MountpointState::Dir { mounted: false } => Ok(()),
        MountpointState::Dir { mounted: true } => bail!(
            "{} is already a mountpoint; unmount it first (musicfs unmount {})",
            mountpoint.display(),
            mountpoint.display()
        ),
        MountpointState::Stale => {
            warn!(
                mountpoint = %mountpoint.display(),
                "stale mount found (transport endpoint is not connected); unmounting it"
            );
            lazy_unmount(mountpoint)
        }
        MountpointState::NotDir => bail!("mountpoint {} is not a directory", mountpoint.display()),
        MountpointState::Unusable(e) => {
            bail!("mountpoint {} cannot be used: {e}", mountpoint.display())
        }
    }
}

/// Detaches a mount (MNT_DETACH as root, `fusermount3 -uz` otherwise).
pub fn lazy_unmount(mountpoint: &Path) -> Result<()> {
    unmount(mountpoint, true)
}

pub fn unmount(mountpoint: &Path, lazy: bool) -> Result<()> {
    if nix::unistd::geteuid().is_root() {
        let flags = if lazy {
            nix::mount::MntFlags::MNT_DETACH
        } else {
            nix::mount::MntFlags::empty()
        };
        return nix::mount::umount2(mountpoint, flags).map_err(|e| match e {
            nix::errno::Errno::EINVAL => anyhow::anyhow!("{} is not mounted", mountpoint.display()),
            nix::errno::Errno::EBUSY => anyhow::anyhow!(
                "{} is busy (files are open); close them or use --lazy",
                mountpoint.display()
            ),
            e => anyhow::anyhow!("cannot unmount {}: {e}", mountpoint.display()),
        });
    }
    let mut cmd = std::process::Command::new("fusermount3");
    cmd.arg(if lazy { "-uz" } else { "-u" }).arg(mountpoint);
    let out = cmd
        .output()
        .context("cannot run fusermount3 (install fuse3)")?;
    if !out.status.success() {
        bail!(
            "cannot unmount {}: {}",
            mountpoint.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Children of `musicfs mount` stop (cleanly, on SIGTERM) if the supervisor
/// itself dies, instead of lingering unmanaged.
fn die_with_parent(cmd: &mut Command) {
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// The engine binary to start: `$MUSICFS_ENGINE_BIN` (an upgrade, or a
/// test's), else this binary.
fn default_engine_binary() -> Result<PathBuf> {
    match std::env::var_os("MUSICFS_ENGINE_BIN") {
        Some(p) => Ok(PathBuf::from(p)),
        None => std::env::current_exe().context("cannot find the musicfs binary"),
    }
}

/// The children's log filter: `$MUSICFS_LOG` when set (it wins over the
/// configuration, as for this process), else the configured level.
fn log_filter(config: &Config) -> String {
    std::env::var("MUSICFS_LOG").unwrap_or_else(|_| config.log_level.clone())
}

/// The supervisor's control socket (engine swap) in a state directory.
pub fn supervisor_socket(state_dir: &Path) -> PathBuf {
    state_dir.join("supervisor.sock")
}

/// The command that starts an engine; `why` reaches its `started` event
/// (`musicfs events`), so the log says why an engine was (re)started.
fn engine_command(
    config: &Config,
    state_dir: &Path,
    socket: &Path,
    exe: &Path,
    why: &str,
) -> Result<Command> {
    let mut cmd = Command::new(exe);
    cmd.arg("engine")
        .arg("--state-dir")
        .arg(state_dir)
        .arg("--socket")
        .arg(socket)
        .arg("--template")
        .arg(&config.template);
    for o in &config.origins {
        cmd.arg("--origin").arg(o);
    }
    cmd.env("MUSICFS_LOG", log_filter(config))
        .env(
            crate::engine::SUPERVISOR_PID_ENV,
            std::process::id().to_string(),
        )
        .env(crate::engine::START_REASON_ENV, why)
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        .env("MUSICFS_ENTRY_TTL_MS", config.entry_ttl_ms.to_string())
        .env("MUSICFS_SCAN_THREADS", config.scan_threads.to_string())
        .env(
            "MUSICFS_CHECKPOINT_FILES",
            config.checkpoint_files.to_string(),
        )
        .env("MUSICFS_WATCH", &config.watch)
        .env(
            "MUSICFS_DRAIN_TIMEOUT_MS",
            config.drain_timeout_ms.to_string(),
        )
        .env("MUSICFS_DEBOUNCE_MS", config.debounce_ms.to_string())
        .env(
            "MUSICFS_POLL_INTERVAL_S",
            config.poll_interval_s.to_string(),
        )
        .stdin(Stdio::null())
        .process_group(0)
        .kill_on_drop(true);
    die_with_parent(&mut cmd);
    Ok(cmd)
}

fn shim_command(config: &Config, mountpoint: &Path, socket: &Path) -> Command {
    let mut cmd = Command::new(shim_binary());
    cmd.arg("--socket")
        .arg(socket)
        .arg("--mountpoint")
        .arg(mountpoint)
        .arg("--engine-wait-timeout-ms")
        .arg(config.engine_wait_timeout_ms.to_string())
        .arg("--drain-timeout-ms")
        .arg(config.drain_timeout_ms.to_string());
    if config.allow_other {
        cmd.arg("--allow-other");
    }
    if !config.passthrough {
        cmd.arg("--no-passthrough");
    }
    cmd.env("MUSICFS_LOG", log_filter(config))
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    die_with_parent(&mut cmd);
    cmd
}

/// Waits for the shim's "READY" line (printed once the mount is live).
async fn wait_shim_ready(shim: &mut Child) -> Result<()> {
    use tokio::io::AsyncBufReadExt;
    let stdout = shim.stdout.take().context("shim stdout")?;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let ready = async {
        loop {
            match lines.next_line().await {
                Ok(Some(l)) if l.trim() == "READY" => return Ok(()),
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => {
                    let status = shim.wait().await?;
                    bail!("the shim exited before it was ready ({status}); see the log above");
                }
            }
        }
    };
    match tokio::time::timeout(SHIM_START_TIMEOUT, ready).await {
        Ok(r) => r,
        Err(_) => bail!(
            "the shim was not ready after {} s",
            SHIM_START_TIMEOUT.as_secs()
        ),
    }
}

async fn wait_until(
    child: &mut Child,
    what: &str,
    timeout: Duration,
    mut ready: impl FnMut() -> bool,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if ready() {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            bail!("{what} exited before it was ready ({status}); see the log above");
        }
        if Instant::now() >= deadline {
            bail!("{what} was not ready after {} s", timeout.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Restart policy. An engine that never answered a heartbeat is a crash
/// loop: immediate, then 250 ms doubling to 10 s. An engine that served is
/// restarted at once, unless restarts pile up (more than 30 in a minute: a
/// request that kills every engine it reaches), which grows the delay the
/// same way. An engine that ran for a healthy minute resets everything.
#[derive(Default)]
struct Backoff {
    failures: u32,
    recent: std::collections::VecDeque<Instant>,
}

const RESTARTS_PER_MINUTE_BEFORE_BACKOFF: usize = 30;

impl Backoff {
    fn next(&mut self, uptime: Duration, was_healthy: bool) -> Duration {
        let now = Instant::now();
        if uptime >= Duration::from_secs(60) {
            self.failures = 0;
            self.recent.clear();
        }
        while self
            .recent
            .front()
            .is_some_and(|t| now.duration_since(*t) > Duration::from_secs(60))
        {
            self.recent.pop_front();
        }
        self.recent.push_back(now);
        if was_healthy {
            self.failures = 0;
        }
        let excess = self
            .recent
            .len()
            .saturating_sub(RESTARTS_PER_MINUTE_BEFORE_BACKOFF) as u32;
        let n = self.failures.max(excess);
        if !was_healthy {
            self.failures = self.failures.saturating_add(1);
        }
        match n {
            0 => Duration::ZERO,
            n => (Duration::from_millis(250) * 2u32.saturating_pow(n - 1))
                .min(Duration::from_secs(10)),
        }
    }
}

/// SIGTERM, then SIGKILL if the child has not exited after `drain` plus
/// `STOP_TIMEOUT` (its own ordered stop is bounded by `drain`).
async fn stop_child(child: &mut Child, what: &str, drain: Duration) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    if let Some(pid) = child.id() {
        let pid = nix::unistd::Pid::from_raw(pid as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    }
    wait_or_kill(child, what, drain + STOP_TIMEOUT).await;
}

async fn wait_or_kill(child: &mut Child, what: &str, limit: Duration) {
    match tokio::time::timeout(limit, child.wait()).await {
        Ok(_) => {}
        Err(_) => {
            warn!(
                "{what} did not stop within {} s; killing it",
                limit.as_secs()
            );
            let _ = child.kill().await;
        }
    }
}

/// The engine's ordered stop with a drain deadline, through its control
/// socket (SIGTERM if that does not answer).
async fn stop_engine(engine: &mut Child, state_dir: &Path, drain: Duration) {
    if let Ok(Some(_)) = engine.try_wait() {
        return;
    }
    let dir = state_dir.to_path_buf();
    let asked = tokio::time::timeout(
        Duration::from_secs(5),
        // Only the request: the waiting is done here, on the child.
        tokio::task::spawn_blocking(move || crate::control::send_shutdown(&dir, drain).map(drop)),
    )
    .await;
    if !matches!(asked, Ok(Ok(Ok(())))) {
        stop_child(engine, "engine", drain).await;
        return;
    }
    wait_or_kill(engine, "engine", drain + STOP_TIMEOUT).await;
}

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
        .is_ok_and(|d| d.join("catalog.redb").exists());
    for (path, why) in config.check_origins_except(|_| has_catalog)? {
        warn!(origin = %path.display(), "origin is not reachable ({why}); the catalog serves its files until it is back");
    }
    prepare_mountpoint(&mountpoint)?;
    let mountpoint = mountpoint
        .canonicalize()
        .with_context(|| format!("mountpoint {}", mountpoint.display()))?;
    let state_dir = config.resolved_state_dir()?;
    std::fs::create_dir_all(&state_dir)
        .with_context(|| format!("cannot create state directory {}", state_dir.display()))?;
    let socket = socket_path(&state_dir);
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
    let _ = std::fs::remove_file(&control_path);
    // Owner only: it takes `swap BINARY` and `shutdown`.
    let control = crate::control::bind_owner_only(&control_path)
        .and_then(|l| {
            l.set_nonblocking(true)?;
            tokio::net::UnixListener::from_std(l)
        })
        .with_context(|| format!("cannot listen on {}", control_path.display()))?;
    let mut engine = engine_command(config, state_dir, socket, &engine_bin, "mount")?
        .spawn()
        .context("cannot start the engine")?;
    let engine_ready = wait_until(&mut engine, "the engine", ENGINE_START_TIMEOUT, || {
        std::os::unix::net::UnixStream::connect(socket).is_ok()
    });
    tokio::select! {
        r = engine_ready => r?,
        _ = sigterm.recv() => { stop_engine(&mut engine, state_dir, drain_timeout(config)).await; return Ok(()); }
        _ = sigint.recv() => { stop_engine(&mut engine, state_dir, drain_timeout(config)).await; return Ok(()); }
    }
    let mut shim = match shim_command(config, mountpoint, socket).spawn() {
        Ok(s) => s,
        Err(e) => {
            stop_engine(&mut engine, state_dir, drain_timeout(config)).await;
            bail!("cannot start {}: {e}", shim_binary().display());
        }
    };
    if let Err(e) = wait_shim_ready(&mut shim).await {
        stop_child(&mut shim, "shim", drain_timeout(config)).await;
        stop_engine(&mut engine, state_dir, drain_timeout(config)).await;
        return Err(e);
    }
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
    let mut drain = drain_timeout(config);
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
            status = shim.wait() => {
                break match status {
                    Ok(s) if s.success() => { info!("unmounted"); Ok(()) }
                    Ok(s) => { error!("the shim exited ({s})"); Err(anyhow::anyhow!("the shim exited ({s})")) }
                    Err(e) => Err(e.into()),
                };
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
            conn = control.accept() => {
                let Ok((stream, _)) = conn else { continue };
                let outcome = control_request(stream, config, &source, state_dir, socket, &mut engine, &mut engine_bin).await;
                match outcome {
                    Ok(Control::Shutdown(d)) => {
                        info!("shutdown requested: unmounting");
                        drain = d.unwrap_or(drain);
                        break Ok(());
                    }
                    Ok(Control::Swapped) => {
                        engine_alive = true;
                        engine_healthy = true;
                        engine_started = Instant::now();
                        heartbeat.reset();
                    }
                    Ok(Control::Reloaded(Some((every, timeout)))) => {
                        heartbeat = heartbeat_timer(every);
                        heartbeat_timeout = timeout;
                    }
                    Ok(Control::Reloaded(None) | Control::Continue) => {}
                    Err(e) => warn!("control request failed: {e:#}"),
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
                let answer = tokio::task::spawn_blocking(move || crate::client::ping(&sock, heartbeat_timeout)).await;
                let hung = match answer {
                    Ok(Ok(_)) => {
                        engine_healthy = true;
                        false
                    }
                    // Not listening yet (starting, scanning a new catalog):
                    // hung only past the start deadline.
                    Ok(Err(crate::client::PingError::NotListening(_))) => {
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
    stop_child(&mut shim, "shim", drain).await;
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

/// How long a new engine may take to answer its first heartbeat during a swap.
const SWAP_HEALTH_TIMEOUT: Duration = Duration::from_secs(60);

/// The heartbeat tick; a late tick is not made up for.
fn heartbeat_timer(every: Duration) -> tokio::time::Interval {
    let mut t = tokio::time::interval(every);
    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    t
}

fn drain_timeout(config: &Config) -> Duration {
    Duration::from_millis(config.drain_timeout_ms)
}

/// Heartbeat settings that a reload changed: (interval, timeout).
type Heartbeat = Option<(Duration, Duration)>;

/// Reloads the configuration from its sources: validated here, applied by
/// the engine (hot fields), then kept for engines started later. The
/// supervisor applies the heartbeat fields itself. On error nothing changes.
/// Returns the summary and the heartbeat change; logs either way.
async fn reload(
    config: &mut Config,
    source: &ConfigSource,
    state_dir: &Path,
) -> Result<(String, Heartbeat)> {
    let outcome = reload_inner(config, source, state_dir).await;
    match &outcome {
        Ok((summary, _)) => info!("configuration reloaded: {summary}"),
        Err(e) => error!("reload refused, the running configuration stays: {e:#}"),
    }
    outcome
}

async fn reload_inner(
    config: &mut Config,
    source: &ConfigSource,
    state_dir: &Path,
) -> Result<(String, Heartbeat)> {
    let mut new = source.load()?;
    // Fields the supervisor resolved at start keep their resolved values.
    new.state_dir = config.state_dir.clone().or(new.state_dir);
    if new.mountpoint.is_none() {
        new.mountpoint = config.mountpoint.clone();
    }
    new.check_origins_except(|p| config.origins.iter().any(|o| o == p))?;
    crate::logging::validate(&new.log_level)?;
    let dir = state_dir.to_path_buf();
    let sent = new.clone();
    let answer = tokio::time::timeout(
        Duration::from_secs(70),
        tokio::task::spawn_blocking(move || crate::control::request_reload(&dir, Some(&sent))),
    )
    .await
    .context("the engine did not answer the reload within 70 s")?
    .context("reload task")?;
    let mut report = match answer {
        Ok(report) => report,
        Err(e) => {
            // The engine validates everything first, but a catalog write can
            // still fail after an earlier step went through: keep what is in
            // force, so that the next engine is started with it.
            adopt_applied(config, &new, state_dir).await;
            return Err(e.context("the engine refused the reload"));
        }
    };
    report.restart_needed = crate::engine::cold_changes(config, &new);
    let mut hb = None;
    if (config.heartbeat_interval_ms, config.heartbeat_timeout_ms)
        != (new.heartbeat_interval_ms, new.heartbeat_timeout_ms)
    {
        hb = Some((
            Duration::from_millis(new.heartbeat_interval_ms),
            Duration::from_millis(new.heartbeat_timeout_ms),
        ));
        report.applied.push("heartbeat".into());
    }
    if config.log_level != new.log_level {
        let _ = crate::logging::set_level(&new.log_level);
    }
    *config = new;
    Ok((report.summary(), hb))
}

/// After a failed reload: takes over the origins and template of `new`
/// that the engine has in force anyway (from its status).
async fn adopt_applied(config: &mut Config, new: &Config, state_dir: &Path) {
    let dir = state_dir.to_path_buf();
    let Ok(Ok(status)) =
        tokio::task::spawn_blocking(move || crate::control::fetch_status(&dir)).await
    else {
        return;
    };
    let running: std::collections::BTreeSet<PathBuf> = status
        .origins
        .iter()
        .map(|o| PathBuf::from(&o.path))
        .collect();
    let wanted: std::collections::BTreeSet<PathBuf> = new.origins.iter().cloned().collect();
    if running == wanted && config.origins != new.origins {
        warn!("the engine applied the new origins before the reload failed; keeping them");
        config.origins = new.origins.clone();
    }
    if status.template == new.template && config.template != new.template {
        warn!("the engine applied the new template before the reload failed; keeping it");
        config.template = new.template.clone();
    }
}

/// What the supervisor does after a control request.
enum Control {
    Continue,
    /// Stop, with this drain deadline (or the configured one).
    Shutdown(Option<Duration>),
    /// A new engine serves.
    Swapped,
    /// The configuration changed (and maybe the heartbeat).
    Reloaded(Heartbeat),
}

/// One control request: a line `swap [BINARY]`, `reload` or `shutdown
/// [DRAIN_MS]`; the answer is one line, `ok ...` or `error ...`.
async fn control_request(
    stream: tokio::net::UnixStream,
    config: &mut Config,
    source: &ConfigSource,
    state_dir: &Path,
    socket: &Path,
    engine: &mut Child,
    engine_bin: &mut PathBuf,
) -> Result<Control> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::BufReader::new(read).read_line(&mut line),
    )
    .await
    .context("no request")??;
    let mut words = line.split_whitespace();
    let mut outcome = Control::Continue;
    let answer = match words.next() {
        Some("shutdown") => {
            let drain = words
                .next()
                .and_then(|w| w.parse().ok())
                .map(Duration::from_millis);
            outcome = Control::Shutdown(drain);
            "ok stopping\n".to_string()
        }
        Some("reload") => match reload(config, source, state_dir).await {
            Ok((summary, hb)) => {
                outcome = Control::Reloaded(hb);
                format!("ok {summary}\n")
            }
            Err(e) => format!("error {e:#}; the running configuration stays\n"),
        },
        Some("swap") => {
            let new = words
                .next()
                .map_or_else(|| engine_bin.clone(), PathBuf::from);
            outcome = Control::Swapped;
            match swap(config, state_dir, socket, engine, engine_bin, new).await {
                Ok(msg) => format!("ok {msg}\n"),
                Err(e) => format!("error {e:#}\n"),
            }
        }
        _ => format!("error unknown request {:?}\n", line.trim()),
    };
    write.write_all(answer.as_bytes()).await?;
    Ok(outcome)
}

/// Waits until the engine at `socket` answers a ping, or fails.
async fn wait_healthy(engine: &mut Child, socket: &Path, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = engine.try_wait()? {
            bail!("the new engine exited ({status})");
        }
        let sock = socket.to_path_buf();
        let ping =
            tokio::task::spawn_blocking(move || crate::client::ping(&sock, Duration::from_secs(2)))
                .await;
        if let Ok(Ok(_)) = ping {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "the new engine did not answer within {} s",
                timeout.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Replaces the engine with one started from `new_bin`. The old engine is
/// asked to stop (the shim parks and then replays what was in flight), the
/// new one must answer a heartbeat; if it does not, it is killed and the old
/// binary started again, and the error says why.
async fn swap(
    config: &Config,
    state_dir: &Path,
    socket: &Path,
    engine: &mut Child,
    engine_bin: &mut PathBuf,
    new_bin: PathBuf,
) -> Result<String> {
    let t = Instant::now();
    // The new binary must at least run.
    let check = tokio::time::timeout(
        Duration::from_secs(10),
        Command::new(&new_bin).arg("--version").output(),
    )
    .await
    .context("the new binary did not answer --version within 10 s")?
    .with_context(|| format!("cannot run {}", new_bin.display()))?;
    if !check.status.success() {
        bail!(
            "{} --version failed ({}); the old engine keeps serving",
            new_bin.display(),
            check.status
        );
    }
    info!(binary = %new_bin.display(), "swapping the engine");
    stop_engine(engine, state_dir, drain_timeout(config)).await;
    let stopped = t.elapsed();
    let mut new = engine_command(config, state_dir, socket, &new_bin, "engine swap")?
        .spawn()
        .with_context(|| format!("cannot start {}", new_bin.display()))?;
    match wait_healthy(&mut new, socket, SWAP_HEALTH_TIMEOUT).await {
        Ok(()) => {
            *engine = new;
            *engine_bin = new_bin;
            let msg = format!(
                "engine swapped to {} in {} ms (old stopped in {} ms)",
                engine_bin.display(),
                t.elapsed().as_millis(),
                stopped.as_millis()
            );
            info!("{msg}");
            Ok(msg)
        }
        Err(why) => {
            error!("swap failed: {why:#}; starting the previous engine again");
            let _ = new.start_kill();
            let _ = new.wait().await;
            let mut old = engine_command(
                config,
                state_dir,
                socket,
                engine_bin,
                "restart after a failed engine swap",
            )?
            .spawn()?;
            wait_healthy(&mut old, socket, SWAP_HEALTH_TIMEOUT)
                .await
                .context("the previous engine did not come back either")?;
            *engine = old;
            Err(why.context(format!(
                "swap to {} failed; the previous engine serves again",
                new_bin.display()
            )))
        }
    }
}

/// `musicfs shutdown` under `musicfs mount`: asks the supervisor to stop in
/// order, then waits (bounded) until it is gone.
pub fn request_shutdown(state_dir: &Path, timeout: Duration) -> Result<()> {
    use std::io::{BufRead, Write};
    let path = supervisor_socket(state_dir);
    let mut stream = std::os::unix::net::UnixStream::connect(&path)
        .with_context(|| format!("no running `musicfs mount` for {}", state_dir.display()))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(format!("shutdown {}\n", timeout.as_millis()).as_bytes())?;
    let mut answer = String::new();
    std::io::BufReader::new(stream).read_line(&mut answer)?;
    if !answer.starts_with("ok") {
        bail!("{}", answer.trim().trim_start_matches("error "));
    }
    // The supervisor removes its socket when it is done.
    let deadline = Instant::now() + timeout + STOP_TIMEOUT * 2;
    while path.exists() {
        if Instant::now() > deadline {
            bail!(
                "the mount did not stop within {} s",
                (timeout + STOP_TIMEOUT * 2).as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// `musicfs reload` under `musicfs mount`: the supervisor reloads its
/// configuration and hands it to the engine. Returns the summary.
pub fn request_reload(state_dir: &Path) -> Result<String> {
    use std::io::{BufRead, Write};
    let path = supervisor_socket(state_dir);
    let mut stream = std::os::unix::net::UnixStream::connect(&path)
        .with_context(|| format!("no running `musicfs mount` for {}", state_dir.display()))?;
    stream.set_read_timeout(Some(Duration::from_secs(90)))?;
    stream.write_all(b"reload\n")?;
    let mut answer = String::new();
    std::io::BufReader::new(stream)
        .read_line(&mut answer)
        .context("no answer from the supervisor")?;
    match answer.trim().strip_prefix("ok ") {
        Some(msg) => Ok(msg.to_string()),
        None => bail!("{}", answer.trim().trim_start_matches("error ")),
    }
}

/// `musicfs engine swap`: asks the supervisor of `state_dir` to swap engines.
pub fn request_swap(state_dir: &Path, binary: Option<&Path>) -> Result<String> {
    use std::io::{BufRead, Write};
    let path = supervisor_socket(state_dir);
    let mut stream = std::os::unix::net::UnixStream::connect(&path).with_context(|| {
        format!(
            "no running `musicfs mount` for state directory {} ({} does not answer)",
            state_dir.display(),
            path.display()
        )
    })?;
    stream.set_read_timeout(Some(SWAP_HEALTH_TIMEOUT * 2 + Duration::from_secs(30)))?;
    let line = match binary {
        Some(b) => format!("swap {}\n", b.display()),
        None => "swap\n".to_string(),
    };
    stream.write_all(line.as_bytes())?;
    let mut answer = String::new();
    std::io::BufReader::new(stream)
        .read_line(&mut answer)
        .context("no answer from the supervisor")?;
    match answer.trim().strip_prefix("ok ") {
        Some(msg) => Ok(msg.to_string()),
        None => bail!("{}", answer.trim().trim_start_matches("error ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crash_loop_backs_off_and_a_healthy_minute_resets() {
        let mut b = Backoff::default();
        let short = Duration::from_secs(1);
        let delays: Vec<u128> = (0..8).map(|_| b.next(short, false).as_millis()).collect();
        assert_eq!(delays, [0, 250, 500, 1000, 2000, 4000, 8000, 10000]);
        assert_eq!(b.next(Duration::from_secs(61), false), Duration::ZERO);
        assert_eq!(b.next(short, false), Duration::from_millis(250));
    }

    #[test]
    fn engines_that_served_restart_at_once_until_restarts_pile_up() {
        let mut b = Backoff::default();
        let short = Duration::from_millis(500);
        for _ in 0..RESTARTS_PER_MINUTE_BEFORE_BACKOFF {
            assert_eq!(b.next(short, true), Duration::ZERO);
        }
        assert_eq!(b.next(short, true), Duration::from_millis(250));
        assert_eq!(b.next(short, true), Duration::from_millis(500));
    }
}

//! The two children: how each is started, waited for and stopped.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::process::{Child, Command};
use tracing::warn;

use crate::config::Config;

/// How long the engine may take to scan and start serving.
pub(super) const ENGINE_START_TIMEOUT: Duration = Duration::from_secs(6 * 3600);
/// How long the shim may take to mount once the engine serves.
pub(super) const SHIM_START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a child gets to stop after SIGTERM before SIGKILL.
pub(super) const STOP_TIMEOUT: Duration = Duration::from_secs(10);

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
pub(super) fn default_engine_binary() -> Result<PathBuf> {
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

/// The command that starts an engine; `why` reaches its `started` event
/// (`musicfs events`), so the log says why an engine was (re)started.
pub(super) fn engine_command(
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
            crate::config::state::SUPERVISOR_PID_ENV,
            std::process::id().to_string(),
        )
        .env(crate::config::state::START_REASON_ENV, why)
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        .env("MUSICFS_ENTRY_TTL_MS", config.entry_ttl_ms.to_string())
        .env(
            "MUSICFS_NEGATIVE_TTL_MS",
            config.negative_ttl_ms.to_string(),
        )
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
            "MUSICFS_LISTING_CACHE_ENTRIES",
            config.listing_cache_entries.to_string(),
        )
        .env("MUSICFS_OPEN_FILES_MAX", config.open_files_max.to_string())
        .env(
            "MUSICFS_AUDIO_EXTENSIONS",
            config.audio_extensions.join(","),
        )
        .env(
            "MUSICFS_POLL_INTERVAL_S",
            config.poll_interval_s.to_string(),
        )
        // The cache directory as this mount resolves it (the engine does
        // not know the mountpoint its default is named after).
        .env("MUSICFS_CACHE_DIR", config.resolved_cache_dir()?)
        .env(
            "MUSICFS_CACHE_MAX_BYTES",
            config.cache_max_bytes.to_string(),
        )
        .env(
            "MUSICFS_CACHE_MIN_FREE_PERCENT",
            config.cache_min_free_percent.to_string(),
        )
        .env(
            "MUSICFS_CACHE_FETCH_TIMEOUT_MS",
            config.cache_fetch_timeout_ms.to_string(),
        )
        .env(
            "MUSICFS_CACHE_SCRUB_CHUNKS_PER_HOUR",
            config.cache_scrub_chunks_per_hour.to_string(),
        )
        .env(
            crate::config::ORIGIN_SETTINGS_ENV,
            serde_json::to_string(&config.origin)?,
        )
        .env(
            "MUSICFS_PREFETCH_TRACKS",
            config.prefetch_tracks.to_string(),
        )
        .env("MUSICFS_COVER_ART", config.cover_art.to_string())
        // The change feed, its paths below the mountpoint unless set.
        .env(crate::config::notify::NOTIFY_ENV, {
            let mut n = config.notify.clone();
            if n.path_prefix.is_none() {
                n.path_prefix.clone_from(&config.mountpoint);
            }
            serde_json::to_string(&n)?
        })
        .env(
            "MUSICFS_SEARCH_MAX_RESULTS",
            config.search_max_results.to_string(),
        )
        .env(
            crate::config::COLLECTIONS_ENV,
            serde_json::to_string(&config.collections)?,
        )
        .stdin(Stdio::null())
        .process_group(0)
        .kill_on_drop(true);
    die_with_parent(&mut cmd);
    Ok(cmd)
}

pub(super) fn shim_command(
    config: &Config,
    mountpoint: &Path,
    socket: &Path,
    binary: &Path,
) -> Command {
    let mut cmd = Command::new(binary);
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
pub(super) async fn wait_shim_ready(shim: &mut Child) -> Result<()> {
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

pub(super) async fn wait_until(
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

/// SIGTERM, then SIGKILL if the child has not exited after `drain` plus
/// `STOP_TIMEOUT` (its own ordered stop is bounded by `drain`).
pub(super) async fn stop_child(child: &mut Child, what: &str, drain: Duration) {
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
pub(super) async fn stop_engine(engine: &mut Child, state_dir: &Path, drain: Duration) {
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

/// Waits until the engine at `socket` answers a ping, or fails.
pub(super) async fn wait_healthy(
    engine: &mut Child,
    socket: &Path,
    timeout: Duration,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = engine.try_wait()? {
            bail!("the new engine exited ({status})");
        }
        let sock = socket.to_path_buf();
        let ping =
            tokio::task::spawn_blocking(move || crate::serve::ping(&sock, Duration::from_secs(2)))
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

/// The heartbeat tick; a late tick is not made up for.
pub(super) fn heartbeat_timer(every: Duration) -> tokio::time::Interval {
    let mut t = tokio::time::interval(every);
    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    t
}

//! Requests on the supervisor socket: swap the engine, reload, shut down.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::process::{Child, Command};
use tracing::{error, info};

use crate::config::Config;
use crate::config::reload::ConfigSource;
use crate::supervisor::children::{engine_command, stop_engine, wait_healthy};
use crate::supervisor::holder::Held;
use crate::supervisor::reload::{Heartbeat, reload};
use crate::supervisor::rpc::{Asked, Request};
use crate::supervisor::shim::{Shim, ShimPlace};

/// How long a new engine may take to answer its first heartbeat during a swap.
pub(super) const SWAP_HEALTH_TIMEOUT: Duration = Duration::from_secs(60);

/// What the supervisor does after a control request.
pub(super) enum Control {
    Continue,
    /// Stop, with this drain deadline (or the configured one).
    Shutdown(Option<Duration>),
    /// A new engine serves.
    Swapped,
    /// The configuration changed (and maybe the heartbeat).
    Reloaded(Heartbeat),
}

/// The shim side of the mount, for `shim swap`.
pub(super) struct Shims<'a, 'b> {
    pub(super) place: &'a ShimPlace<'b>,
    pub(super) shim: &'a mut Shim,
    pub(super) held: Option<&'a Held>,
}

/// One control request from `supervisor.sock` (see `rpc`): answered
/// through its channel; the outcome tells the loop what changed.
#[allow(clippy::too_many_arguments)]
pub(super) async fn control_request(
    asked: Asked,
    config: &mut Config,
    source: &ConfigSource,
    state_dir: &Path,
    socket: &Path,
    engine: &mut Child,
    engine_bin: &mut PathBuf,
    shims: Shims<'_, '_>,
) -> Control {
    let Asked { request, answer } = asked;
    let (outcome, result) = match request {
        Request::Shutdown(drain) => (Control::Shutdown(drain), Ok("stopping".to_string())),
        Request::Reload => match reload(config, source, state_dir).await {
            Ok((summary, hb)) => (Control::Reloaded(hb), Ok(summary)),
            Err(e) => (
                Control::Continue,
                Err(format!("{e:#}; the running configuration stays")),
            ),
        },
        Request::Swap(binary, progress) => {
            let new = binary.unwrap_or_else(|| engine_bin.clone());
            let r = swap(
                config, state_dir, socket, engine, engine_bin, new, &progress,
            )
            .await;
            (Control::Swapped, r.map_err(|e| format!("{e:#}")))
        }
        Request::ShimSwap(binary) => {
            let new = binary.unwrap_or_else(|| shims.shim.binary.clone());
            let r = crate::supervisor::shim::swap(shims.place, shims.shim, shims.held, new).await;
            (Control::Continue, r.map_err(|e| format!("{e:#}")))
        }
    };
    let _ = answer.send(result);
    outcome
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
    progress: &tokio::sync::mpsc::UnboundedSender<(u64, u64)>,
) -> Result<String> {
    const STEPS: u64 = 4;
    let step = |n| {
        let _ = progress.send((n, STEPS));
    };
    step(0);
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
    step(1);
    info!(binary = %new_bin.display(), "swapping the engine");
    stop_engine(engine, state_dir, config.drain_timeout()).await;
    let stopped = t.elapsed();
    step(2);
    let mut new = engine_command(config, state_dir, socket, &new_bin, "engine swap")?
        .spawn()
        .with_context(|| format!("cannot start {}", new_bin.display()))?;
    step(3);
    match wait_healthy(&mut new, socket, SWAP_HEALTH_TIMEOUT).await {
        Ok(()) => {
            step(STEPS);
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

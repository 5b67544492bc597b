//! Signals, and whether this engine runs under systemd or a supervisor.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use anyhow::{Context, Result};
use nix::sys::signal::{SigSet, Signal};
use tracing::{error, info, warn};

use crate::config::state::SUPERVISOR_PID_ENV;
use crate::runtime::core::{Runtime, StopRequest};

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
pub(super) fn start_signal_thread(
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

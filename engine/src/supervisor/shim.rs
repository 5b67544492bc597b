//! The shim as a replaceable child: each shim gets a holder socket (its
//! fd 3); the first mounts and hands over a copy of its connection, every
//! later one (after a crash, a hang, a swap) takes that live connection
//! over. A dead shim is replaced at once; one that stops answering its
//! heartbeat is killed and replaced; the connection stays held throughout.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::process::Child;
use tracing::{error, info, warn};

use crate::config::Config;
use crate::supervisor::children::{shim_command, stop_child, wait_shim_ready};
use crate::supervisor::holder::{self, Held, SHIM_HOLDER_FD};

/// Starts in a row before a dead shim is given up on (its connection is
/// then let go: the mount ends, as it would without a holder).
const RESTARTS_MAX: u32 = 3;

/// A running shim and the supervisor's end of its holder socket.
pub(super) struct Shim {
    pub(super) child: Child,
    pub(super) sock: OwnedFd,
    pub(super) binary: PathBuf,
}

/// Where a shim serves.
pub(super) struct ShimPlace<'a> {
    pub(super) config: &'a Config,
    pub(super) mountpoint: &'a Path,
    pub(super) socket: &'a Path,
}

/// Starts a shim from `binary` that takes `held` over (or mounts afresh
/// when `None`) and waits for its READY line. A fresh shim's connection
/// comes back as the new `Held` (`None`: it cannot outlive the shim).
pub(super) async fn start(
    at: &ShimPlace<'_>,
    binary: &Path,
    held: Option<&Held>,
) -> Result<(Shim, Option<Held>)> {
    let (ours, theirs) = holder::pair()?;
    holder::greet(ours.as_fd(), held).context("cannot greet the new shim")?;
    let mut cmd = shim_command(at.config, at.mountpoint, at.socket, binary);
    cmd.arg("--holder-fd").arg(SHIM_HOLDER_FD.to_string());
    let raw = theirs.as_raw_fd();
    // SAFETY: dup2 and fcntl are async-signal-safe; between fork and exec
    // they only put the holder socket at its fd number, inheritable.
    unsafe {
        cmd.pre_exec(move || {
            if raw == SHIM_HOLDER_FD {
                if libc::fcntl(raw, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(raw, SHIM_HOLDER_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start {}", binary.display()))?;
    drop(theirs);
    if let Err(e) = wait_shim_ready(&mut child).await {
        stop_child(&mut child, "shim", Duration::from_secs(1)).await;
        return Err(e);
    }
    let new_held = match held {
        Some(_) => None,
        None => {
            let sock = holder::dup(&ours)?;
            match tokio::task::spawn_blocking(move || holder::take_hold(sock.as_fd())).await? {
                Ok(Ok(h)) => Some(h),
                Ok(Err(why)) => {
                    warn!("the mount cannot outlive its shim: {why}");
                    None
                }
                Err(e) => {
                    warn!("the shim kept its FUSE fd to itself ({e:#}); the mount ends with it");
                    None
                }
            }
        }
    };
    Ok((
        Shim {
            child,
            sock: ours,
            binary: binary.to_path_buf(),
        },
        new_held,
    ))
}

/// Replaces a shim that died (`why`) with one that takes `held` over, at
/// once; a few tries, then gives up.
pub(super) async fn replace(
    at: &ShimPlace<'_>,
    old: &Shim,
    held: &Held,
    why: &str,
) -> Result<Shim> {
    let t = Instant::now();
    let mut last = None;
    for attempt in 1..=RESTARTS_MAX {
        match start(at, &old.binary, Some(held)).await {
            Ok((new, _)) => {
                info!(
                    elapsed_ms = t.elapsed().as_millis() as u64,
                    attempt, "a new shim took the live FUSE connection over ({why})"
                );
                return Ok(new);
            }
            Err(e) => {
                error!(
                    "a new shim could not take over (attempt {attempt} of {RESTARTS_MAX}): {e:#}"
                );
                last = Some(e);
                tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
            }
        }
    }
    Err(last
        .unwrap_or_else(|| anyhow::anyhow!("no attempt"))
        .context("no new shim could take the FUSE connection over; letting it go"))
}

/// The shim's heartbeat, within `timeout`.
pub(super) async fn answers(shim: &Shim, timeout: Duration) -> bool {
    let Ok(sock) = holder::dup(&shim.sock) else {
        return true;
    };
    tokio::task::spawn_blocking(move || holder::ping(sock.as_fd(), timeout))
        .await
        .unwrap_or(true)
}

/// Whether every thread of `pid` is stopped (state `T` in /proc).
fn stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return true;
    };
    tasks.flatten().all(|t| {
        std::fs::read_to_string(t.path().join("stat")).map_or(true, |s| {
            s.rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('T') || rest.starts_with('t'))
        })
    })
}

fn signal(child: &Child, sig: nix::sys::signal::Signal) {
    if let Some(pid) = child.id() {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig);
    }
}

/// `musicfs shim swap`: the old shim is stopped (SIGSTOP: it reads
/// nothing more and writes nothing more to the state), a new shim from
/// `new_bin` takes the live connection over (the kernel resends to it what
/// the old one had read), then the old one is killed. One writer of the
/// state at a time, and the stall is the new shim's start. If the new
/// shim does not come up, the old one is continued and serves on; if it
/// fails after the old is gone, a shim of the old binary takes over again.
pub(super) async fn swap(
    at: &ShimPlace<'_>,
    shim: &mut Shim,
    held: Option<&Held>,
    new_bin: PathBuf,
) -> Result<String> {
    use nix::sys::signal::Signal;
    let Some(held) = held else {
        anyhow::bail!(
            "this mount's FUSE connection is not held (the kernel cannot resend): a shim swap would end the mount"
        );
    };
    let check = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::process::Command::new(&new_bin)
            .arg("--version")
            .output(),
    )
    .await
    .context("the new shim binary did not answer --version within 10 s")?
    .with_context(|| format!("cannot run {}", new_bin.display()))?;
    if !check.status.success() {
        anyhow::bail!(
            "{} --version failed ({}); the old shim keeps serving",
            new_bin.display(),
            check.status
        );
    }
    let t = Instant::now();
    signal(&shim.child, Signal::SIGSTOP);
    let pid = shim.child.id().unwrap_or(0);
    let deadline = Instant::now() + Duration::from_secs(2);
    while !stopped(pid) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let (mut new, _) = match start(at, &new_bin, Some(held)).await {
        Ok(n) => n,
        Err(e) => {
            // The new shim never read a request: the old one goes on.
            signal(&shim.child, Signal::SIGCONT);
            return Err(e.context(format!(
                "the shim from {} did not take over; the old shim keeps serving",
                new_bin.display()
            )));
        }
    };
    let switched = t.elapsed();
    let _ = shim.child.start_kill();
    let _ = tokio::time::timeout(Duration::from_secs(10), shim.child.wait()).await;
    if answers(&new, Duration::from_secs(5)).await {
        let msg = format!(
            "shim swapped to {} in {} ms",
            new_bin.display(),
            switched.as_millis()
        );
        info!("{msg}");
        std::mem::swap(shim, &mut new);
        return Ok(msg);
    }
    error!("the new shim does not answer; starting the previous shim binary again");
    let _ = new.child.start_kill();
    let _ = tokio::time::timeout(Duration::from_secs(10), new.child.wait()).await;
    let old_bin = shim.binary.clone();
    *shim = replace(at, shim, held, "a failed shim swap").await?;
    anyhow::bail!(
        "the shim from {} did not answer after taking over; the previous binary ({}) serves again",
        new_bin.display(),
        old_bin.display()
    )
}

//! The mountpoint: checked (bounded) before mounting, cleaned of a stale
//! FUSE mount, unmounted.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tracing::warn;

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

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
            "mountpoint {} does not answer within {} s (a FUSE mount whose server hangs?); end it with `musicfs unmount --abort {}`",
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

/// Where fusectl shows the kernel's FUSE connections.
const FUSECTL: &str = "/sys/fs/fuse/connections";

/// Aborts the FUSE connection mounted on `mountpoint` through fusectl
/// (mounting fusectl if it is not), so that every request waiting on it
/// fails at once: the way out of a mount whose server hangs, or died stuck
/// in the kernel (a notice write waiting on a request nobody will answer
/// keeps a killed server's connection open). The mountpoint itself is
/// never touched (it may hang): its connection is found in
/// /proc/self/mountinfo.
pub fn abort_connection(mountpoint: &Path) -> Result<()> {
    let target = std::path::absolute(mountpoint)
        .with_context(|| format!("cannot make {} absolute", mountpoint.display()))?;
    let info = std::fs::read_to_string("/proc/self/mountinfo")
        .context("cannot read /proc/self/mountinfo")?;
    let Some(minor) = fuse_minor(&info, &target) else {
        bail!("{} is not a FUSE mount", target.display());
    };
    let dir = Path::new(FUSECTL);
    if !dir.join(minor.to_string()).exists() {
        nix::mount::mount(
            Some("fusectl"),
            dir,
            Some("fusectl"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .with_context(|| format!("cannot mount fusectl on {FUSECTL}"))?;
    }
    std::fs::write(dir.join(format!("{minor}/abort")), "1")
        .with_context(|| format!("cannot abort FUSE connection {minor} through {FUSECTL}"))?;
    warn!(mountpoint = %target.display(), connection = minor, "FUSE connection aborted");
    Ok(())
}

/// The device minor (the fusectl connection number) of the FUSE mount on
/// `target`, from mountinfo's text (the last mount there wins).
fn fuse_minor(mountinfo: &str, target: &Path) -> Option<u32> {
    let want = target.to_str()?;
    mountinfo
        .lines()
        .rfind(|l| {
            let point = l.split(' ').nth(4).map(crate::sys::mountinfo::unescape);
            let fstype = l.split(" - ").nth(1).and_then(|r| r.split(' ').next());
            point.as_deref() == Some(want) && fstype.is_some_and(|t| t.starts_with("fuse"))
        })
        .and_then(|l| l.split(' ').nth(2)?.split(':').nth(1)?.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_fuse_connection_of_a_mountpoint() {
        let info = "22 1 0:21 / /sys rw - sysfs sysfs rw\n\
                    97 29 0:52 / /srv/my\\040music rw,nosuid - fuse.musicfs musicfs rw\n\
                    98 29 0:53 / /srv/other rw - fuse.sshfs x rw\n";
        assert_eq!(fuse_minor(info, Path::new("/srv/my music")), Some(52));
        assert_eq!(fuse_minor(info, Path::new("/srv/other")), Some(53));
        assert_eq!(fuse_minor(info, Path::new("/sys")), None);
        assert_eq!(fuse_minor(info, Path::new("/srv")), None);
    }
}

//! What a previous shim of the same systemd unit left behind: its FUSE fd
//! and the takeover state, which systemd kept in the fd store and hands
//! back to us (`LISTEN_FDS`, named `fuse` and `fuse-state`), and its mount.
//! With both, the new shim takes the connection over (`take_stored`).
//! A `fuse` fd without its state (a shim of a kernel that cannot resend,
//! or an older shim), or one this shim cannot adopt, is ended instead
//! (`end`): abort the connection (its waiters get `ENOTCONN`), close our
//! copies, ask systemd to drop its own (`FDSTOREREMOVE=1`), and detach the
//! old mount, so a fresh one takes its place cleanly.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use crate::takeover::Handed;
use std::path::{Path, PathBuf};

use tracing::{info, warn};

/// The fds systemd passed us, with their names, if they are for this
/// process (`LISTEN_PID`).
fn listen_fds() -> Vec<(RawFd, String)> {
    let for_us = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        .is_some_and(|p| p == std::process::id());
    let count = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse::<i32>().ok())
        .unwrap_or(0);
    if !for_us || count <= 0 {
        return Vec::new();
    }
    let names = std::env::var("LISTEN_FDNAMES").unwrap_or_default();
    let names: Vec<&str> = names.split(':').collect();
    (0..count.min(64))
        .map(|i| {
            let name = names.get(i as usize).copied().unwrap_or("unknown");
            (3 + i, name.to_string())
        })
        .collect()
}

/// What the fd store handed back: a connection with its state to take
/// over, or nothing (a `fuse` fd without its state is ended here). Call
/// before any thread starts (it edits the environment).
pub fn take_stored(mountpoint: &Path) -> Option<Handed> {
    let fds = listen_fds();
    // SAFETY: only clears variables meant for this process; the transport
    // threads have not started yet, so nothing reads the environment.
    unsafe {
        std::env::remove_var("LISTEN_PID");
        std::env::remove_var("LISTEN_FDS");
        std::env::remove_var("LISTEN_FDNAMES");
    }
    let mut fuse = Vec::new();
    let mut state = Vec::new();
    for (fd, name) in fds {
        // SAFETY: systemd passed these fds to us and nothing else owns them.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        match name.as_str() {
            "fuse" => fuse.push(owned),
            "fuse-state" => state.push(owned),
            _ => {}
        }
    }
    if fuse.len() == 1 && state.len() == 1 {
        let (fuse, state) = (fuse.pop()?, state.pop()?);
        info!("systemd handed back the live FUSE connection of a previous shim; taking it over");
        return Some(Handed { fuse, state });
    }
    if !fuse.is_empty() {
        warn!(
            "systemd handed back the FUSE fd of a previous shim of this mount without its takeover state; ending that connection"
        );
        end(mountpoint, fuse.into_iter().chain(state).collect());
    }
    None
}

/// Ends a stored connection that will not be served again (see the module
/// docs), closing `fds`.
pub fn end(mountpoint: &Path, fds: Vec<OwnedFd>) -> usize {
    let count = fds.len();
    let old = musicfs_mount_at(mountpoint);
    if let Some((_, minor)) = old {
        abort_connection(minor);
    }
    drop(fds);
    for name in ["fuse", "fuse-state"] {
        if let Err(e) = sd_notify::notify(&[
            sd_notify::NotifyState::FdStoreRemove,
            sd_notify::NotifyState::FdName(name),
        ]) {
            warn!("cannot ask systemd to drop the old {name} fd: {e}");
        }
    }
    if let Some((path, _)) = old {
        match nix::mount::umount2(&path, nix::mount::MntFlags::MNT_DETACH) {
            Ok(()) => info!(mountpoint = %path.display(), "detached the previous shim's mount"),
            Err(e) => {
                warn!(mountpoint = %path.display(), "cannot detach the previous shim's mount: {e}")
            }
        }
    }
    count
}

/// Writes to fusectl's `abort` for FUSE connection `minor` (best effort:
/// fusectl may not be mounted).
fn abort_connection(minor: u32) {
    let abort = PathBuf::from(format!("/sys/fs/fuse/connections/{minor}/abort"));
    match std::fs::write(&abort, b"1") {
        Ok(()) => info!(connection = minor, "aborted the previous FUSE connection"),
        Err(e) => warn!(
            connection = minor,
            "cannot abort the previous FUSE connection ({}): {e}",
            abort.display()
        ),
    }
}

/// A `fuse.musicfs` mount at `mountpoint` (from `/proc/self/mountinfo`,
/// which never touches the mount itself: a stat could hang on it), with
/// its device minor (the fusectl connection number).
fn musicfs_mount_at(mountpoint: &Path) -> Option<(PathBuf, u32)> {
    // Resolve the parent only: the mountpoint itself may be the hung mount.
    let parent = mountpoint.parent()?.canonicalize().ok()?;
    let target = parent.join(mountpoint.file_name()?);
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let found = find_mount(&info, &target);
    tracing::debug!(target = %target.display(), ?found, "looked for the previous mount");
    found
}

/// The last musicfs FUSE mount at `target` in a mountinfo text.
fn find_mount(mountinfo: &str, target: &Path) -> Option<(PathBuf, u32)> {
    use std::os::unix::ffi::OsStrExt;
    mountinfo.lines().rev().find_map(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        let dash = fields.iter().position(|f| *f == "-")?;
        let fstype = *fields.get(dash + 1)?;
        let source = *fields.get(dash + 2)?;
        let minor = fields.get(2)?.split(':').nth(1)?.parse().ok()?;
        let at = unescape(fields.get(4)?);
        // fuser's own mount(2) gives type `fuse` and source `musicfs`;
        // fusermount3 gives `fuse.musicfs`.
        let ours = fstype == "fuse.musicfs" || (fstype == "fuse" && source == "musicfs");
        (ours && at.as_slice() == target.as_os_str().as_bytes())
            .then(|| (target.to_path_buf(), minor))
    })
}

/// Undoes mountinfo's octal escapes (`\040` for a space, ...).
fn unescape(field: &str) -> Vec<u8> {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && let Some(v) = std::str::from_utf8(&b[i + 1..i + 4])
                .ok()
                .and_then(|o| u8::from_str_radix(o, 8).ok())
        {
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_our_mount_in_mountinfo() {
        let info = "\
36 35 98:0 / /mnt1 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
80 25 0:61 / /tmp/a\\040b/mnt ro,nosuid,nodev,noatime - fuse.musicfs musicfs ro,user_id=0
81 25 0:62 / /tmp/other ro - fuse.sshfs host: ro
82 25 0:63 / /tmp/plain ro - fuse musicfs ro,user_id=0
83 25 0:64 / /tmp/notours ro - fuse other ro,user_id=0
";
        assert_eq!(
            find_mount(info, Path::new("/tmp/a b/mnt")),
            Some((PathBuf::from("/tmp/a b/mnt"), 61))
        );
        assert_eq!(find_mount(info, Path::new("/tmp/other")), None);
        assert_eq!(
            find_mount(info, Path::new("/tmp/plain")),
            Some((PathBuf::from("/tmp/plain"), 63))
        );
        assert_eq!(find_mount(info, Path::new("/tmp/notours")), None);
        assert_eq!(find_mount(info, Path::new("/mnt1")), None);
    }
}

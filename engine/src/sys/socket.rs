//! Unix sockets that only their owner can use, and their files' lifetime.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

/// Binds a unix socket that only its owner can connect to: created under
/// umask 0177, so there is no moment with looser permissions (a chmod after
/// bind leaves one). The umask is process-wide; files created meanwhile by
/// other threads only come out stricter.
pub fn bind_owner_only(path: &Path) -> std::io::Result<UnixListener> {
    use nix::sys::stat::{Mode, umask};
    let old = umask(Mode::from_bits_truncate(0o177));
    let bound = UnixListener::bind(path);
    umask(old);
    let listener = bound?;
    // Belt and braces (and documents the intent).
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Removes the socket file on drop, so no client connects to a dead engine.
pub struct SocketGuard(PathBuf);

impl SocketGuard {
    pub fn new(path: PathBuf) -> SocketGuard {
        SocketGuard(path)
    }
}

impl Drop for SocketGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

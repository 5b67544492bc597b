//! The fd holder (`musicfs_schema::holder`): `musicfs mount` keeps a copy
//! of the shim's /dev/fuse fd and its takeover state, so the mount lives
//! on when the shim dies, and hands both to the next shim. One
//! `SOCK_SEQPACKET` socketpair per shim; the shim's end is its fd 3.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use musicfs_schema::holder::{self as proto, send};
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};

/// The fd number of the holder socket in the shim.
pub(super) const SHIM_HOLDER_FD: RawFd = 3;

/// A live FUSE connection and its takeover state, held for the next shim.
pub(super) struct Held {
    pub(super) fuse: OwnedFd,
    pub(super) state: OwnedFd,
}

/// A new holder socket: (ours, the shim's).
pub(super) fn pair() -> Result<(OwnedFd, OwnedFd)> {
    socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .context("cannot make the holder socketpair")
}

/// The holder's first word to a new shim: take `held` over, or mount.
pub(super) fn greet(sock: BorrowedFd<'_>, held: Option<&Held>) -> std::io::Result<()> {
    match held {
        Some(h) => send(
            sock,
            proto::ADOPT,
            &[h.fuse.as_raw_fd(), h.state.as_raw_fd()],
        ),
        None => send(sock, proto::MOUNT, &[]),
    }
}

/// What a freshly mounted shim hands over (sent before its READY line):
/// the connection to hold, or why it cannot outlive the shim.
pub(super) fn take_hold(sock: BorrowedFd<'_>) -> Result<std::result::Result<Held, String>> {
    let Some((msg, fds)) = proto::recv(sock, Some(Duration::from_secs(5)))? else {
        bail!("the shim did not hand over its FUSE fd");
    };
    if msg == proto::HOLD {
        let mut fds = fds.into_iter();
        return match (fds.next(), fds.next()) {
            (Some(fuse), Some(state)) => Ok(Ok(Held { fuse, state })),
            _ => bail!("HOLD without its two fds"),
        };
    }
    if msg.starts_with(proto::NOHOLD) {
        let why = String::from_utf8_lossy(&msg[proto::NOHOLD.len()..])
            .trim()
            .to_string();
        return Ok(Err(why));
    }
    bail!(
        "unexpected message from the shim: {:?}",
        String::from_utf8_lossy(&msg)
    )
}

/// Sends `ask` and waits up to `timeout` for `answer` (stale answers of
/// earlier, late exchanges are skipped).
fn exchange(sock: BorrowedFd<'_>, ask: &[u8], answer: &[u8], timeout: Duration) -> bool {
    while let Ok(Some(_)) = proto::recv(sock, Some(Duration::ZERO)) {}
    if send(sock, ask, &[]).is_err() {
        return false;
    }
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match proto::recv(sock, Some(left)) {
            Ok(Some((m, _))) if m == answer => return true,
            Ok(Some(_)) if !left.is_zero() => continue,
            _ => return false,
        }
    }
}

/// The shim's heartbeat: true if it answered within `timeout` (it answers
/// only while its requests are answered in time).
pub(super) fn ping(sock: BorrowedFd<'_>, timeout: Duration) -> bool {
    exchange(sock, proto::PING, proto::PONG, timeout)
}

/// A copy of `fd` for a blocking task.
pub(super) fn dup(fd: impl AsFd) -> std::io::Result<OwnedFd> {
    fd.as_fd().try_clone_to_owned()
}

//! The fd holder protocol between `musicfs mount` (the holder) and its
//! shim: one `SOCK_SEQPACKET` socketpair per shim, the shim's end at the
//! fd number it is given (`--holder-fd`). Every message is one packet: an
//! ASCII tag, and for `ADOPT` and `HOLD` two fds by `SCM_RIGHTS` (the
//! /dev/fuse fd, then the takeover state memfd).
//!
//! - holder -> shim, first: `ADOPT` (take this live connection over) or
//!   `MOUNT` (mount afresh);
//! - shim -> holder, once serving a fresh mount: `HOLD` (keep these), or
//!   `NOHOLD <why>` (the connection cannot outlive this shim);
//! - holder -> shim: `PING`, answered `PONG` only while the shim answers
//!   its requests in time (a hung shim does not answer).

pub const ADOPT: &[u8] = b"ADOPT";
pub const MOUNT: &[u8] = b"MOUNT";
pub const HOLD: &[u8] = b"HOLD";
pub const NOHOLD: &[u8] = b"NOHOLD";
pub const PING: &[u8] = b"PING";
pub const PONG: &[u8] = b"PONG";
/// The longest message (`NOHOLD` with its reason).
pub const MAX_MESSAGE_BYTES: usize = 512;

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};

/// Sends one packet with `fds`.
pub fn send(sock: BorrowedFd<'_>, msg: &[u8], fds: &[RawFd]) -> std::io::Result<()> {
    let cmsg = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &cmsg };
    sendmsg::<()>(
        sock.as_raw_fd(),
        &[IoSlice::new(msg)],
        cmsgs,
        MsgFlags::MSG_NOSIGNAL,
        None,
    )?;
    Ok(())
}

/// Receives one packet and the fds it carries; `None` at end of stream or
/// when nothing came within `timeout`.
pub fn recv(
    sock: BorrowedFd<'_>,
    timeout: Option<Duration>,
) -> std::io::Result<Option<(Vec<u8>, Vec<OwnedFd>)>> {
    if let Some(t) = timeout {
        let mut pfd = [nix::poll::PollFd::new(sock, nix::poll::PollFlags::POLLIN)];
        let ms = u16::try_from(t.as_millis()).unwrap_or(u16::MAX);
        if nix::poll::poll(&mut pfd, nix::poll::PollTimeout::from(ms))? == 0 {
            return Ok(None);
        }
    }
    let mut buf = [0u8; MAX_MESSAGE_BYTES];
    let mut space = nix::cmsg_space!([RawFd; 4]);
    let mut iov = [IoSliceMut::new(&mut buf)];
    let msg = loop {
        match recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Err(nix::errno::Errno::EINTR) => continue,
            r => break r?,
        }
    };
    let mut fds = Vec::new();
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(raw) = c {
            // SAFETY: the kernel just installed these fds for us.
            fds.extend(
                raw.into_iter()
                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
            );
        }
    }
    let n = msg.bytes;
    if n == 0 && fds.is_empty() {
        return Ok(None);
    }
    Ok(Some((buf[..n].to_vec(), fds)))
}

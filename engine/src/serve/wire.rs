//! Frames: building answers, and writing them whole (with an fd attached
//! for passthrough); a client that stops reading is dropped.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use musicfs_schema::response;
use parking_lot::Mutex;
use tracing::{debug, warn};

use crate::catalog::NodeRec;

pub(super) fn errno_of(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

pub(super) fn fill_attr(mut a: musicfs_schema::attr::Builder<'_>, ino: u64, node: &NodeRec) {
    a.set_ino(ino);
    a.set_mtime_ns(node.mtime_ns);
    if node.is_dir {
        a.set_kind(musicfs_schema::NodeKind::Directory);
        a.set_perm(0o555);
        a.set_nlink(2);
        a.set_size_bytes(4096);
        a.set_blocks(8);
    } else {
        a.set_kind(musicfs_schema::NodeKind::File);
        a.set_perm(0o444);
        a.set_nlink(1);
        a.set_size_bytes(node.size_bytes);
        a.set_blocks(node.size_bytes.div_ceil(512));
    }
}

pub(super) fn fill_entry(
    mut e: musicfs_schema::entry::Builder<'_>,
    ino: u64,
    node: &NodeRec,
    ttl_ms: u32,
    generation: u64,
) {
    e.set_generation(generation);
    e.set_entry_ttl_ms(ttl_ms);
    e.set_attr_ttl_ms(ttl_ms);
    fill_attr(e.init_attr(), ino, node);
}

/// A lookup miss: an entry of inode 0, which the kernel keeps as a
/// negative entry for `ttl_ms` (until a notice says the name appeared).
pub(super) fn fill_negative_entry(mut e: musicfs_schema::entry::Builder<'_>, ttl_ms: u32) {
    e.set_entry_ttl_ms(ttl_ms);
    e.init_attr().set_ino(0);
}

/// A connection's write half; responses are written whole under its lock.
pub(super) type Writer = Arc<Mutex<UnixStream>>;

/// Sends a frame with `fd` attached (SCM_RIGHTS on its first byte).
pub(super) fn send_with_fd(writer: &Writer, frame: &[u8], fd: &File) {
    use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
    use std::os::fd::AsRawFd;
    let mut w = writer.lock();
    let fds = [fd.as_raw_fd()];
    let sent = sendmsg::<()>(
        w.as_raw_fd(),
        &[io::IoSlice::new(frame)],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::MSG_NOSIGNAL,
        None,
    );
    let outcome = match sent {
        Ok(n) => w.write_all(&frame[n..]),
        Err(e) => Err(io::Error::from(e)),
    };
    if let Err(e) = outcome {
        undelivered(&w, &e);
    }
}

pub(super) fn send(writer: &Writer, frame: &[u8]) {
    let mut w = writer.lock();
    if let Err(e) = w.write_all(frame) {
        undelivered(&w, &e);
    }
}

/// A response that could not be written whole (the client is gone, or has
/// not read for `WRITE_TIMEOUT`: a stalled shim must not hold the I/O pool):
/// the stream may end in half a frame, so the connection ends. The shim
/// reconnects and replays what it still waits for.
pub(super) fn undelivered(w: &UnixStream, e: &io::Error) {
    if matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    ) {
        warn!(
            "a client has not read its answers for {} s; dropping the connection",
            WRITE_TIMEOUT.as_secs()
        );
    } else {
        debug!("response not delivered: {e}");
    }
    let _ = w.shutdown(std::net::Shutdown::Both);
}

/// How long a response write may wait for the client to read.
pub(super) const WRITE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Builds one response frame.
pub(super) fn respond(id: u64, errno: i32, fill: impl FnOnce(response::Builder<'_>)) -> Vec<u8> {
    let mut msg = capnp::message::Builder::new_default();
    let mut r = msg.init_root::<response::Builder<'_>>();
    r.set_id(id);
    r.set_errno(errno);
    if errno == 0 {
        fill(r);
    } else {
        r.set_none(());
    }
    musicfs_schema::to_frame(&msg)
}

pub(super) fn error_frame(id: u64, errno: i32) -> Vec<u8> {
    respond(id, errno, |_| {})
}

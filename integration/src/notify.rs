//! A fake systemd notify socket's side: datagrams with their fds.

use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

/// One notify datagram: its text and any file descriptors that came with it.
pub struct Datagram {
    pub text: String,
    pub fds: Vec<OwnedFd>,
}

pub fn recv(sock: &UnixDatagram, timeout: Duration) -> Option<Datagram> {
    use std::os::fd::AsRawFd;
    sock.set_read_timeout(Some(timeout)).unwrap();
    let mut buf = vec![0u8; 4096];
    let mut cmsg = vec![0u8; 256];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr points at live buffers for the duration of the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cmsg.as_mut_ptr().cast();
    msg.msg_controllen = cmsg.len();
    // SAFETY: as above.
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return None;
    }
    let mut fds = Vec::new();
    // SAFETY: walking the control buffer the kernel just filled.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c).cast::<i32>();
                let count = ((*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize) / 4;
                for i in 0..count {
                    fds.push(OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(i))));
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Some(Datagram {
        text: String::from_utf8_lossy(&buf[..n as usize]).into_owned(),
        fds,
    })
}

/// Collects datagrams until `done` says so or `timeout` passes.
pub fn collect(
    sock: &UnixDatagram,
    timeout: Duration,
    mut done: impl FnMut(&[Datagram]) -> bool,
) -> Vec<Datagram> {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    while Instant::now() < deadline && !done(&out) {
        if let Some(d) = recv(sock, Duration::from_millis(100)) {
            out.push(d);
        }
    }
    out
}

pub fn position(msgs: &[Datagram], needle: &str) -> Option<usize> {
    msgs.iter()
        .position(|m| m.text.lines().any(|l| l == needle))
}

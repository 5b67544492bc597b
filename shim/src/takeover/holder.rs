//! The shim's end of the fd holder protocol (`musicfs_schema::holder`):
//! what `musicfs mount` hands a new shim, the fds it keeps for the next
//! one, and the heartbeat it sends.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use musicfs_schema::holder::{self as proto, recv, send};
use tracing::{info, warn};

/// The holder socket, at the fd number `musicfs mount` gave.
pub struct Holder {
    sock: OwnedFd,
}

/// A live connection handed over: the /dev/fuse fd and its state.
pub struct Handed {
    pub fuse: OwnedFd,
    pub state: OwnedFd,
}

impl Holder {
    /// # Safety
    /// `fd` must be an open socket this process owns and nothing else uses.
    pub unsafe fn from_raw(fd: RawFd) -> Holder {
        Holder {
            // SAFETY: the caller's promise.
            sock: unsafe { OwnedFd::from_raw_fd(fd) },
        }
    }

    /// The holder's first word: a connection to take over, or none.
    pub fn first(&self) -> Result<Option<Handed>> {
        let Some((msg, fds)) = recv(self.sock.as_fd(), Some(Duration::from_secs(10)))
            .context("cannot read the holder socket")?
        else {
            bail!("the holder said nothing within 10 s");
        };
        match msg.as_slice() {
            m if m == proto::MOUNT => Ok(None),
            m if m == proto::ADOPT => {
                let mut fds = fds.into_iter();
                match (fds.next(), fds.next()) {
                    (Some(fuse), Some(state)) => Ok(Some(Handed { fuse, state })),
                    _ => bail!("ADOPT without its two fds"),
                }
            }
            m => bail!(
                "unexpected message from the holder: {:?}",
                String::from_utf8_lossy(m)
            ),
        }
    }

    /// Gives the holder copies of the connection and its state.
    pub fn hold(&self, fuse: BorrowedFd<'_>, state: BorrowedFd<'_>) -> std::io::Result<()> {
        send(
            self.sock.as_fd(),
            proto::HOLD,
            &[fuse.as_raw_fd(), state.as_raw_fd()],
        )
    }

    /// Tells the holder that this connection cannot outlive the shim.
    pub fn refuse(&self, why: &str) -> std::io::Result<()> {
        let mut m = proto::NOHOLD.to_vec();
        m.push(b' ');
        m.extend_from_slice(&why.as_bytes()[..why.len().min(proto::MAX_MESSAGE_BYTES - 8)]);
        send(self.sock.as_fd(), &m, &[])
    }

    /// Answers the holder's heartbeats on its own thread until the holder
    /// goes away.
    pub fn serve(self, healthy: impl Fn() -> bool + Send + 'static) -> std::io::Result<()> {
        std::thread::Builder::new()
            .name("musicfs-holder".into())
            .spawn(move || {
                loop {
                    let msg = match recv(self.sock.as_fd(), None) {
                        Ok(Some((m, _))) => m,
                        Ok(None) => return info!("the fd holder went away"),
                        Err(e) => return warn!("the holder socket failed: {e}"),
                    };
                    let answer = match msg.as_slice() {
                        m if m == proto::PING => healthy().then_some(proto::PONG),
                        m => {
                            warn!(
                                "unexpected message from the holder: {:?}",
                                String::from_utf8_lossy(m)
                            );
                            None
                        }
                    };
                    if let Some(a) = answer
                        && let Err(e) = send(self.sock.as_fd(), a, &[])
                    {
                        return warn!("the holder socket failed: {e}");
                    }
                }
            })?;
        Ok(())
    }
}

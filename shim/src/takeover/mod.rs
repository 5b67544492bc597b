//! The mount survives its shim. While another process (the holder: the
//! supervisor of `musicfs mount`, or systemd's fd store) keeps a copy of
//! the /dev/fuse fd, the death of a shim leaves the connection alive; a
//! successor adopts it without INIT (`handshake`: route (a), fuser's public
//! API over a socketpair, then `dup2`), rebuilds its handle tables from the
//! state kept with the fd (`state`), and writes FUSE_NOTIFY_RESEND: the
//! kernel requeues every request the dead shim had read, with bit 63 in the
//! id, and fuser answers each with that exact id. `holder` is the shim's
//! end of the supervisor's fd-holder protocol. `crate::session` builds a
//! session from these: a fresh mount, or a connection taken over.

mod handshake;
pub mod holder;
mod state;

use std::os::fd::AsFd;

use tracing::{info, warn};

pub use handshake::{KernelOffer, adopt, differences, notify_resend, replay};
pub use holder::Handed;
pub use state::{Kind, Negotiated, Slot, StateFile};

/// The line logged when the kernel cannot resend.
pub const NO_RESEND: &str = "this kernel has no FUSE_HAS_RESEND (Linux 6.9): requests a dead shim had read could never be answered, so the mount ends with this shim and requests in flight then fail";

/// Asks the kernel to resend what a predecessor had read, logging why not.
pub fn resend(fuse: impl AsFd) {
    match notify_resend(fuse) {
        Ok(()) => info!("asked the kernel to resend the requests in flight (FUSE_NOTIFY_RESEND)"),
        Err(e) => {
            warn!("FUSE_NOTIFY_RESEND failed ({e}): requests the previous shim had read may hang")
        }
    }
}

//! Starting the FUSE session: a fresh mount (and, when the kernel can
//! resend, the takeover state a successor needs), or a live connection
//! taken over from a predecessor (`crate::takeover`).

use std::os::fd::{AsFd, AsRawFd};
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use fuser::{Config, Session};
use tracing::{info, warn};

use crate::fs::{ShimFs, Tables};
use crate::takeover::{Handed, KernelOffer, NO_RESEND, Negotiated, StateFile, differences, replay};

/// A serving session, fresh or adopted.
pub struct Started {
    pub session: Session<ShimFs>,
    pub tables: Tables,
    /// The state a successor adopts; `None` when the kernel cannot resend
    /// (the connection then ends with this shim, as before).
    pub state: Option<Arc<StateFile>>,
    pub adopted: bool,
    /// The kernel's FUSE protocol minor (from its INIT, or handed over).
    pub kernel_minor: u32,
}

/// Mounts afresh, then (when the kernel can resend) replays the kernel's
/// offer to a probe to learn what fuser answered, for the state.
pub fn mount(
    make_fs: &dyn Fn(bool) -> ShimFs,
    passthrough: bool,
    mountpoint: &Path,
    config: &Config,
) -> Result<Started> {
    let fs = make_fs(passthrough);
    let tables = fs.tables();
    let offer = fs.kernel_offer();
    let session = Session::new(fs, mountpoint, config)
        .with_context(|| format!("cannot mount {}", mountpoint.display()))?;
    let Some(offer) = offer.get().copied() else {
        bail!("the FUSE handshake did not reach init");
    };
    tables.set_dev(session.as_fd().as_raw_fd());
    if !offer.resend() {
        warn!("{NO_RESEND}");
        return Ok(Started {
            session,
            tables,
            state: None,
            adopted: false,
            kernel_minor: offer.minor,
        });
    }
    let (probe, init_out) = replay(
        make_fs(passthrough),
        &offer,
        config.acl,
        probe_config(config),
    )
    .context("cannot replay the INIT to learn what fuser answered")?;
    drop(probe);
    let state = Arc::new(StateFile::create(&Negotiated {
        init_in: offer.init_in(),
        init_out,
        passthrough: tables.passthrough_enabled(),
    })?);
    tables.attach(&state);
    Ok(Started {
        session,
        tables,
        state: Some(state),
        adopted: false,
        kernel_minor: offer.minor,
    })
}

fn probe_config(config: &Config) -> Config {
    let mut c = Config::default();
    c.acl = config.acl;
    c.n_threads = config.n_threads;
    c.clone_fd = config.clone_fd;
    c
}

/// Takes over the live connection `handed`: refuses, with the reason, a
/// state of another format or a connection this shim's fuser would have
/// negotiated otherwise.
pub fn adopt(
    make_fs: &dyn Fn(bool) -> ShimFs,
    passthrough: bool,
    handed: Handed,
    config: &Config,
) -> Result<Started> {
    let (state, negotiated, slots) = StateFile::open(handed.state)?;
    let offer = KernelOffer::from_init_in(&negotiated.init_in);
    let fs = make_fs(negotiated.passthrough);
    let tables = fs.tables();
    let (session, ours) = replay(fs, &offer, config.acl, probe_config(config))?;
    let diff = differences(&negotiated.init_out, &ours);
    if !diff.is_empty() {
        bail!(
            "this shim's fuser would not speak the live connection's protocol ({}); refusing to take it over",
            diff.join("; ")
        );
    }
    crate::takeover::adopt(&session, handed.fuse)?;
    // The session's fd is the live connection now: backing ids close on it.
    tables.set_dev(session.as_fd().as_raw_fd());
    let state = Arc::new(state);
    tables.attach(&state);
    let (backing, inodes) = tables.adopt(&slots);
    if !passthrough {
        tables.disable_passthrough();
    }
    info!(
        backing_ids = backing,
        inodes,
        passthrough = tables.passthrough_enabled(),
        "took over the live FUSE connection (no INIT)"
    );
    Ok(Started {
        session,
        tables,
        state: Some(state),
        adopted: true,
        kernel_minor: offer.minor,
    })
}

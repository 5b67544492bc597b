//! `musicfs engine`: the one place that wires the rooms together. It opens
//! the catalog, serves at once (data plane and control plane), follows the
//! origins, reloads, and stops in order.
//!
//! Files: `start` (run: from the state directory to serving), `core` (the
//! running engine: watchers, the ordered stop), `reload`, `signals`
//! (SIGTERM/SIGINT/SIGHUP, systemd), `status` (the control plane's handle).
//! May use every room below it; nothing below uses it.

mod core;
mod reload;
mod signals;
mod start;
mod status;

pub use core::{Runtime, StopRequest};
pub use start::{lock_state_dir, run};

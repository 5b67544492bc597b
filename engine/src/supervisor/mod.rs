//! `musicfs mount`: runs the engine and the shim as a supervised pair in the
//! foreground, and takes the mount down cleanly on Ctrl-C or SIGTERM.
//!
//! Files: `pair` (start both, then supervise: restarts, heartbeats,
//! signals), `children` (commands, start and stop of each child),
//! `backoff` (restart policy), `requests` (the supervisor socket: swap,
//! reload, shutdown), `reload`, `client` (the CLI side of that socket),
//! `mountpoint` (checks, stale mounts, unmount).
//! May use: control (client), serve (the heartbeat ping), origins, config,
//! logging, sys. Never the runtime: the engine is a child process.

mod backoff;
mod children;
mod client;
mod mountpoint;
mod pair;
mod reload;
mod requests;

pub use children::shim_binary;
pub use client::{request_reload, request_shutdown, request_swap};
pub use mountpoint::{is_mountpoint, lazy_unmount, prepare_mountpoint, unmount};
pub use pair::run;

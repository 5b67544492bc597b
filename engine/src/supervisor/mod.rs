//! `musicfs mount`: runs the engine and the shim as a supervised pair in the
//! foreground, and takes the mount down cleanly on Ctrl-C or SIGTERM.
//!
//! Files: `pair` (start both, then supervise: restarts, heartbeats,
//! signals), `children` (commands, start and stop of each child), `holder`
//! (the fd holder: a copy of the shim's FUSE connection and its takeover
//! state), `shim` (shims that take that connection over: after a death, a
//! hang, for `shim swap`),
//! `backoff` (restart policy), `requests` (the supervisor socket: swap,
//! reload, shutdown), `reload`, `client` (the CLI side of that socket),
//! `mountpoint` (checks, stale mounts, unmount).
//! May use: control (client), serve (the heartbeat ping), origins, config,
//! logging, sys. Never the runtime: the engine is a child process.
//!
//! In detail: `musicfs mount`, the supervisor: checks origins (with a catalog
//! in the state dir, unreachable ones are only logged: the engine knows which
//! it can serve) and the mountpoint, on a thread with a 5 s deadline (cleans
//! a stale `ENOTCONN` mount, found by listing it: `stat` may answer from the
//! kernel's cache; a hung one is refused with the command that detaches it),
//! starts the engine, waits for its socket, starts the shim, waits for its
//! `READY` line. Then it supervises: an engine that exits is restarted
//! (`Backoff`: a crash loop waits 0, 250 ms, ... 10 s; an engine that served
//! restarts at once unless restarts pile up); a heartbeat (`serve::ping`)
//! with a deadline finds a hung engine (SIGSTOP, deadlock), which is killed
//! and replaced. `supervisor.sock` takes control requests: `swap [BINARY]`
//! checks the new binary (`--version`), stops the old engine, starts the new
//! one and waits for a heartbeat; if it never answers, the old binary is
//! started again and the request fails with the reason. `reload` (and SIGHUP)
//! re-reads the configuration from the layers it was started with, validates
//! it, hands the whole configuration to the engine (control `reload`),
//! applies the heartbeat fields itself, names the cold fields, and keeps the
//! new configuration for engines it starts later; on a validation error
//! nothing changes. If the engine fails after applying part of it (a catalog
//! write: injected in the suite with `MUSICFS_FAULT=reload-template-fail`),
//! the supervisor takes over the origins and template the engine reports in
//! force (`adopt_applied`), so the next engine starts with them. `shutdown
//! [DRAIN_MS]` and SIGINT/SIGTERM stop the shim first (it unmounts and
//! drains), then the engine through its control socket with the drain
//! deadline (SIGTERM if that does not answer, SIGKILL after the deadline plus
//! 10 s). Children run in their own process groups (Ctrl-C reaches only the
//! supervisor) with `PR_SET_PDEATHSIG`, so they stop cleanly if the
//! supervisor dies. Every wait has a deadline.

mod backoff;
mod children;
mod holder;
mod mountpoint;
mod pair;
mod progress;
mod reload;
mod requests;
mod rpc;
mod shim;

pub use children::shim_binary;
pub use mountpoint::{abort_connection, is_mountpoint, lazy_unmount, prepare_mountpoint, unmount};
pub use pair::run;
pub use rpc::{request_reload, request_shim_swap, request_shutdown, request_swap};

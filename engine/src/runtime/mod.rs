//! `musicfs engine`: the one place that wires the rooms together. It opens
//! the catalog, serves at once (data plane and control plane), follows the
//! origins, reloads, and stops in order.
//!
//! Files: `start` (run: from the state directory to serving), `core` (the
//! running engine: watchers, the ordered stop), `reload`, `signals`
//! (SIGTERM/SIGINT/SIGHUP, systemd), `status` (the control plane's handle).
//! May use every room below it; nothing below uses it.
//!
//! In detail: `musicfs engine`: lock the state directory (one engine per
//! state dir; the error names the holder's PID), open the catalog (an
//! unusable one is moved aside and rebuilt), check the origins (one the
//! catalog knows may be unreachable: it is served from the catalog; a new one
//! must be there), run the first scan only if no scan ever completed (a
//! SIGTERM stops it at the next checkpoint), serve, start the watchers,
//! reconcile in the background. `Runtime` is the running engine: `reload`
//! validates everything first, then applies the hot fields (log filter,
//! kernel TTL, probe threads, checkpoint size, cache limits (listing cache
//! entries, open origin files: shrunk at once), template → tree rebuilt in
//! one commit and the root invalidated, origins → new ids, their watchers and
//! a background scan; removed ones lose their watcher and their files) and
//! names the cold ones; `shutdown` is the ordered stop: socket files removed,
//! no new requests read (`Shared::stop_taking_requests`), background tasks
//! told to stop, in-flight requests answered until the drain deadline,
//! catalog closed with `Store::close` (it waits for any transaction in
//! flight, so a task that has not seen the stop yet cannot leave half a
//! commit; later writes fail with "closed" and are redone by the next start).
//! One signal thread: SIGTERM/SIGINT stop, SIGHUP queues a reload for the
//! reload thread (so a stop never waits behind a reload; SIGHUPs during a
//! reload fold into one more); an engine started by `musicfs mount`
//! (`MUSICFS_SUPERVISOR_PID`, still its parent) passes SIGHUP on to the
//! supervisor, which owns the configuration. Reload order: the steps that
//! write the catalog (origins, template) first, each recorded in the running
//! configuration once in force, then the ones that cannot fail.
//! `MUSICFS_START_REASON` (set by the supervisor: mount, swap, restart after
//! an exit or a missed heartbeat) goes into the `started` event.

mod cache;
mod core;
mod reload;
mod signals;
mod start;
mod status;

pub use core::{Runtime, StopRequest};
pub use start::{lock_state_dir, run};

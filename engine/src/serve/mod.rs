//! The data plane (serve): answers the shim's requests (Cap'n Proto frames on a unix
//! socket, see `schema/musicfs.capnp`) from the catalog's tree and the
//! origin files.
//!
//! One thread per connection reads requests. Metadata requests are answered
//! inline (they only read the in-memory snapshot, microseconds); `open` and
//! `read` touch origin files and go to a bounded pool of I/O threads, so a
//! slow disk never stalls metadata. Responses are written whole under the
//! connection's write lock, in whatever order they finish.
//!
//! Files: `shared` (state shared by every connection, the invalidation
//! port), `connection` (accept, hello, dispatch, the I/O pool), `metadata`
//! (lookup, getattr, readdir, statfs, xattrs), `files` (open and read),
//! `dir_handles`, `wire` (frames and sending them), `ping` (the heartbeat
//! client). May use: origins, catalog, model, config, metrics, sys.
//!
//! In detail: the data plane. An accept thread, one reader thread per
//! connection; metadata requests are answered inline from the catalog and its
//! listing cache (microseconds). `open` runs inline for origins on local
//! filesystems (statfs type) and on a bounded I/O pool otherwise; `read` is
//! answered inline when `preadv2(RWF_NOWAIT)` finds every byte in the page
//! cache, else on the pool, so a slow disk never stalls metadata. Each
//! request reads its node once (`origin_of`); open files come from
//! `origins::FdCache`. With passthrough the origin fd goes back to the shim
//! with `SCM_RIGHTS` and the kernel reads the origin directly. `Counters`
//! count requests, opens, reads and origin opens. A reader of a directory
//! reads the listing as it started (`DirHandles`, bounded, random per-
//! engine bases): under its opendir handle, or, as the shim opens
//! directories without asking (`no_opendir`), under a snapshot id that the
//! readdir offsets carry (`id << 32 | position`, for listings longer than
//! one answer), so a directory that changes while it is read neither skips
//! nor repeats an unchanged entry.
//! `Shared::invalidate` sends an `invalidate` notice (id 0) to every
//! connected shim after a commit; the shim forwards it to the kernel from its
//! own notice thread (a notice may wait on a directory lock that an in-flight
//! lookup holds, and that lookup's answer comes through the reader thread).
//! Every request read is counted in flight until its answer is written
//! (`InFlight`, also inside pool jobs), which is what the stop drains; the
//! same `InFlight` times the request into `metrics` (by kind) when it drops,
//! and origin pool jobs and chunk fetches are timed by origin.
//! Answers are written with a 10 s timeout: a client that stops reading is
//! dropped (the stream may hold half a frame), so it can never hold the I/O
//! pool; the shim reconnects and replays. An open that fails because the
//! whole origin is away (root missing or an empty mountpoint) is `EIO`, not
//! `ENOENT`. `engine.sock`, `control.sock` and `supervisor.sock` are mode
//! 0600 from birth (`sys::socket::bind_owner_only` binds under umask 0177).

mod cached;
mod connection;
mod copies;
mod dir_handles;
mod files;
mod metadata;
mod ping;
mod pools;
mod prefetch;
mod remote;
mod reply;
mod shared;
mod views;
mod wire;
mod xattrs;

pub use connection::serve;
pub use ping::{PingError, ping};
pub use shared::{Counters, MAX_READ_BYTES, MAX_READDIR_ENTRIES, Shared};

#[cfg(test)]
mod tests;

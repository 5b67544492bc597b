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
//! client). May use: origins, catalog, model, config, sys.

mod connection;
mod dir_handles;
mod files;
mod metadata;
mod ping;
mod shared;
mod wire;

pub use connection::serve;
pub use ping::{PingError, ping};
pub use shared::{Counters, MAX_READ_BYTES, MAX_READDIR_ENTRIES, Shared};

//! The origins: where the music lives. The table of configured origins by
//! persistent id, bounded probes of their directories, and local file
//! access for the data plane (an LRU of open files, reads that never wait
//! for the disk). Remote backends (S3, WebDAV, SFTP) will live here too.
//!
//! May use: config, sys. Never: catalog internals, sync, serve, control.

mod local;
mod probe;
mod table;

pub use local::{FdCache, is_local_fs, pread_nowait};
pub use probe::{
    PROBE_TIMEOUT, Probe, absolutize, check_origins, check_origins_except, load_config, probe_all,
    probe_dirs,
};
pub use table::{OriginTable, Origins};

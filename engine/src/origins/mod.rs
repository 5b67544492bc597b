//! The origins: where the music lives. The table of configured origins by
//! persistent id, bounded probes of their directories, and local file
//! access for the data plane (an LRU of open files, reads that never wait
//! for the disk), and the remote origins (`remote`: S3 and WebDAV through
//! opendal, with deadlines, pools and health).
//!
//! May use: config, sys. Never: catalog internals, sync, serve, control.
//!
//! In detail (the table and probes): the origin table (id → root, local or
//! not) behind an `Arc` swapped whole on reload (and refreshed when an origin
//! that was away comes back: only then can its filesystem type be seen); the
//! data plane and the syncer read snapshots. `probe_dirs` checks origin
//! directories in parallel under one deadline, never two probes of one path
//! at a time.
//!
//! In detail (local file access): origin file access for the data plane: the
//! LRU of open origin files (by inode and content version), `pread_nowait`
//! (`RWF_NOWAIT`), and `is_local_fs` (statfs type: NFS, SMB, FUSE, ... are
//! network filesystems).

mod local;
mod probe;
pub mod remote;
mod table;

pub use local::{FdCache, OpenFile, PINNED_MAX, is_local_fs, pread_nowait};
pub use probe::{
    PROBE_TIMEOUT, Probe, absolutize, check_origins, check_origins_except, load_config, probe_all,
    probe_dirs,
};
pub use table::{OriginTable, Origins, Settings};

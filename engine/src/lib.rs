//! The MusicFS engine: scans origins, keeps the catalog (redb), builds the
//! virtual tree and serves the data plane to the shim over Cap'n Proto.
//! Also the `musicfs` command line (mount, unmount, engine, scan).

pub mod cli;
pub mod client;
pub mod config;
pub mod control;
pub mod engine;
pub mod events;
pub mod logging;
pub mod model;
pub mod mount;
pub mod origin_io;
pub mod origins;
pub mod scan;
pub mod server;
pub mod store;
pub mod sync;
pub mod template;

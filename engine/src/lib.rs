//! The MusicFS engine: scans origins, keeps the catalog (redb), builds the
//! virtual tree and serves the data plane to the shim over Cap'n Proto.
//! Also the `musicfs` command line (mount, unmount, engine, scan, ...).
//!
//! Rooms, from the top down; a room may use only rooms below it (the
//! boundaries test in `integration/tests/boundaries.rs` enforces this):
//!
//! ```text
//! cli → supervisor | runtime → control | serve | sync → scan | content
//!     → origins → catalog → config → model, with tasks, events, logging,
//!     metrics, sys beside
//! ```
//!
//! See ARCHITECTURE.md for the map.

pub mod catalog;
pub mod cli;
pub mod config;
pub mod content;
pub mod control;
pub mod events;
pub mod logging;
pub mod metrics;
pub mod model;
pub mod notify;
pub mod origins;
pub mod runtime;
pub mod scan;
pub mod serve;
pub mod supervisor;
pub mod sync;
pub mod sys;
pub mod tasks;
pub mod views;

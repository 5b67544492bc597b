//! `musicfs engine`: scan, commit the catalog, serve the data plane.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use nix::sys::signal::{SigSet, Signal};
use tracing::info;

use crate::catalog::Catalog;
use crate::config::Config;
use crate::scan::scan_origins;
use crate::server::{Shared, serve};
use crate::template::Template;

/// Scan worker count: two per core (tag reads wait on I/O as often as on CPU).
pub fn scan_threads(config: &Config) -> usize {
    if config.scan_threads > 0 {
        return config.scan_threads;
    }
    std::thread::available_parallelism().map_or(2, |n| n.get() * 2)
}

/// The engine socket inside a state directory.
pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join("engine.sock")
}

/// Runs the engine until SIGTERM/SIGINT.
pub fn run(config: &Config, socket: Option<PathBuf>) -> Result<()> {
    // Block the stop signals before any thread starts; the main thread waits for them.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGINT);
    signals.thread_block().context("cannot block signals")?;
    config.check_origins()?;
    let template = Template::parse(&config.template)?;
    let state_dir = config.resolved_state_dir()?;
    std::fs::create_dir_all(&state_dir)
        .with_context(|| format!("cannot create state directory {}", state_dir.display()))?;
    let socket = socket.unwrap_or_else(|| socket_path(&state_dir));
    let catalog = Catalog::open(&state_dir.join("catalog.redb"))?;

    let outcome = scan_origins(&config.origins, scan_threads(config));
    let tree = catalog.rebuild(outcome.files, &template)?;
    info!(
        tracks = tree.file_count(),
        nodes = tree.node_count(),
        unreadable_files = outcome.unreadable_files,
        unreadable_dirs = outcome.unreadable_dirs,
        "tree ready"
    );
    let shared = Shared::new(tree, config.origins.clone(), config.entry_ttl_ms);
    let _socket_guard = serve(shared.clone(), &socket)?;
    let sig = signals.wait().context("sigwait")?;
    info!("engine stopping on {sig}");
    shared.log_counters();
    drop(catalog);
    info!("engine stopped");
    Ok(())
}

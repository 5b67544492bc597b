//! Logging to stderr (journald under systemd) with a filter that a reload can
//! change at run time (`log_level`).

use std::sync::OnceLock;

use anyhow::{Result, bail};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, reload};

static FILTER: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

/// Starts logging with `MUSICFS_LOG` if set, else `level`.
pub fn init(level: &str) {
    let filter = std::env::var("MUSICFS_LOG").unwrap_or_else(|_| level.to_string());
    let filter = EnvFilter::try_new(&filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let (layer, handle) = reload::Layer::new(filter);
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if tracing_subscriber::registry()
        .with(layer)
        .with(fmt)
        .try_init()
        .is_ok()
    {
        let _ = FILTER.set(handle);
    }
}

/// Checks that `level` is a valid filter (`info`, `debug`,
/// `musicfs_engine=debug,info`, ...).
pub fn validate(level: &str) -> Result<()> {
    if let Err(e) = EnvFilter::try_new(level) {
        bail!("log_level {level:?} is not a valid filter: {e}");
    }
    Ok(())
}

/// Replaces the filter (reload).
pub fn set_level(level: &str) -> Result<()> {
    validate(level)?;
    let Some(handle) = FILTER.get() else {
        bail!("logging was not started by musicfs");
    };
    handle.reload(EnvFilter::new(level))?;
    Ok(())
}

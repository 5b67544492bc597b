//! Reloading under `musicfs mount`: the supervisor validates, the engine
//! applies, the supervisor keeps the result for engines it starts later.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use tracing::{error, info, warn};

use crate::config::Config;
use crate::config::reload::ConfigSource;
use crate::origins::{check_origins_except, load_config};

/// Heartbeat settings that a reload changed: (interval, timeout).
pub(super) type Heartbeat = Option<(Duration, Duration)>;

/// Reloads the configuration from its sources: validated here, applied by
/// the engine (hot fields), then kept for engines started later. The
/// supervisor applies the heartbeat fields itself. On error nothing changes.
/// Returns the summary and the heartbeat change; logs either way.
pub(super) async fn reload(
    config: &mut Config,
    source: &ConfigSource,
    state_dir: &Path,
) -> Result<(String, Heartbeat)> {
    let outcome = reload_inner(config, source, state_dir).await;
    match &outcome {
        Ok((summary, _)) => info!("configuration reloaded: {summary}"),
        Err(e) => error!("reload refused, the running configuration stays: {e:#}"),
    }
    outcome
}

async fn reload_inner(
    config: &mut Config,
    source: &ConfigSource,
    state_dir: &Path,
) -> Result<(String, Heartbeat)> {
    let mut new = load_config(source)?;
    // Fields the supervisor resolved at start keep their resolved values.
    new.state_dir = config.state_dir.clone().or(new.state_dir);
    if new.mountpoint.is_none() {
        new.mountpoint = config.mountpoint.clone();
    }
    check_origins_except(&new, |p| config.origins.iter().any(|o| o == p))?;
    crate::logging::validate(&new.log_level)?;
    let dir = state_dir.to_path_buf();
    let sent = new.clone();
    let answer = tokio::time::timeout(
        Duration::from_secs(70),
        tokio::task::spawn_blocking(move || crate::control::request_reload(&dir, Some(&sent))),
    )
    .await
    .context("the engine did not answer the reload within 70 s")?
    .context("reload task")?;
    let mut report = match answer {
        Ok(report) => report,
        Err(e) => {
            // The engine validates everything first, but a catalog write can
            // still fail after an earlier step went through: keep what is in
            // force, so that the next engine is started with it.
            adopt_applied(config, &new, state_dir).await;
            return Err(e.context("the engine refused the reload"));
        }
    };
    report.restart_needed = crate::config::reload::cold_changes(config, &new);
    let mut hb = None;
    if (config.heartbeat_interval_ms, config.heartbeat_timeout_ms)
        != (new.heartbeat_interval_ms, new.heartbeat_timeout_ms)
    {
        hb = Some((
            Duration::from_millis(new.heartbeat_interval_ms),
            Duration::from_millis(new.heartbeat_timeout_ms),
        ));
        report.applied.push("heartbeat".into());
    }
    if config.log_level != new.log_level {
        let _ = crate::logging::set_level(&new.log_level);
    }
    *config = new;
    Ok((report.summary(), hb))
}

/// After a failed reload: takes over the origins and template of `new`
/// that the engine has in force anyway (from its status).
async fn adopt_applied(config: &mut Config, new: &Config, state_dir: &Path) {
    let dir = state_dir.to_path_buf();
    let Ok(Ok(status)) =
        tokio::task::spawn_blocking(move || crate::control::fetch_status(&dir)).await
    else {
        return;
    };
    let running: std::collections::BTreeSet<PathBuf> = status
        .origins
        .iter()
        .map(|o| PathBuf::from(&o.path))
        .collect();
    let wanted: std::collections::BTreeSet<PathBuf> = new.origins.iter().cloned().collect();
    if running == wanted && config.origins != new.origins {
        warn!("the engine applied the new origins before the reload failed; keeping them");
        config.origins = new.origins.clone();
    }
    if status.template == new.template && config.template != new.template {
        warn!("the engine applied the new template before the reload failed; keeping it");
        config.template = new.template.clone();
    }
}

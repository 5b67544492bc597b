//! What a reload compares: where the configuration comes from, which fields
//! apply at once and which only after a restart.

use std::path::PathBuf;

use anyhow::Result;

use crate::config::{Config, Overrides};

/// Where a reload reads the configuration from: the same layers as at start.
#[derive(Clone, Debug, Default)]
pub struct ConfigSource {
    pub file: Option<PathBuf>,
    pub overrides: Overrides,
}

impl ConfigSource {
    /// The layered configuration, origins as written (`origins::load_config`
    /// also makes them absolute, as every caller needs).
    pub fn load_layers(&self) -> Result<Config> {
        Config::load(self.file.as_deref(), &self.overrides)
    }
}

/// What a reload did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReloadReport {
    /// Fields that changed and now apply.
    pub applied: Vec<String>,
    /// Fields that changed but apply only after a restart.
    pub restart_needed: Vec<String>,
}

impl ReloadReport {
    /// One line for the log and the CLI.
    pub fn summary(&self) -> String {
        let mut s = if self.applied.is_empty() {
            "nothing to apply".to_string()
        } else {
            format!("applied: {}", self.applied.join(", "))
        };
        if !self.restart_needed.is_empty() {
            s.push_str(&format!(
                "; changed but applied only after a restart: {}",
                self.restart_needed.join(", ")
            ));
        }
        s
    }
}

/// Fields read once at start, by the shim or the supervisor: a reload names
/// them when they change, and `musicfs mount` (or systemd) must restart.
const COLD_FIELDS: &[&str] = &[
    "mountpoint",
    "state_dir",
    "allow_other",
    "passthrough",
    "engine_wait_timeout_ms",
    "drain_timeout_ms",
    "cache_dir",
    "cache_scrub_chunks_per_hour",
    "notify",
    "cover_art",
];

/// The cold fields that differ between two configurations.
pub fn cold_changes(old: &Config, new: &Config) -> Vec<String> {
    let as_json = |c: &Config| serde_json::to_value(c).unwrap_or_default();
    let (o, n) = (as_json(old), as_json(new));
    COLD_FIELDS
        .iter()
        .filter(|f| o.get(**f) != n.get(**f))
        .map(|f| (*f).to_string())
        .collect()
}

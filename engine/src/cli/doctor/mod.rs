//! `musicfs doctor`: what a mount needs from this machine, one line per
//! check: `ok`, `warn` or `FAIL` with what to do. Every look that touches a
//! filesystem runs in a thread under a deadline, so an origin on a hung
//! network share makes a check fail, never the doctor hang (a thread stuck
//! there ends with the process, which exits right after).

use std::time::Duration;

use anyhow::{Result, bail};
use serde::Serialize;

use crate::config::Config;

mod disk;
mod fuse;
#[cfg(test)]
mod tests;

/// How long counting the origins' directories may take in all.
const WALK_DEADLINE: Duration = Duration::from_secs(5);
/// At most this many entries are looked at when counting directories.
const WALK_MAX_ENTRIES: u64 = 5_000_000;
/// How long one look at a state, cache or mount directory may take.
const DIR_DEADLINE: Duration = Duration::from_secs(2);
/// Below this much free space (or 10 %) a directory's disk is a warning.
const MIN_FREE_BYTES: u64 = 1 << 30;
/// The first kernel with FUSE passthrough and FUSE_NOTIFY_RESEND.
const KERNEL_6_9: (u32, u32) = (6, 9);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

/// One check's answer.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    pub check: String,
    pub status: Status,
    pub detail: String,
}

fn check(name: &str, status: Status, detail: impl Into<String>) -> Check {
    Check {
        check: name.to_string(),
        status,
        detail: detail.into(),
    }
}

impl Check {
    /// `ok   fuse3: ...`, `warn ...`, `FAIL ...`.
    pub fn line(&self) -> String {
        let label = match self.status {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
        };
        format!("{label:<4} {}: {}", self.check, self.detail)
    }
}

/// Runs every check and prints them; fails if any check failed.
pub fn run(config: &Config, json: bool) -> Result<()> {
    let checks = checks(config);
    if json {
        println!("{}", serde_json::to_string_pretty(&checks)?);
    } else {
        for c in &checks {
            println!("{}", c.line());
        }
    }
    let failed = checks.iter().filter(|c| c.status == Status::Fail).count();
    if failed > 0 {
        bail!("doctor: {failed} of {} checks failed", checks.len());
    }
    Ok(())
}

/// Every check, in order.
pub fn checks(config: &Config) -> Vec<Check> {
    let root = nix::unistd::geteuid().is_root();
    let probes = crate::origins::probe_all(&config.origins);
    let kernel = fuse::kernel_release();
    let mut out = vec![
        fuse::fusermount(root),
        fuse::dev_fuse(),
        fuse::allow_other(config, root),
    ];
    if let Some(m) = &config.mountpoint {
        out.push(fuse::mountpoint(m, root));
    }
    out.push(disk::origins(config, &probes));
    out.push(disk::inotify(config, &probes));
    out.push(fuse::passthrough(config, kernel.as_deref()));
    out.push(fuse::notify_resend(kernel.as_deref()));
    out.push(fuse::fusectl());
    out.push(disk::dir_check(
        "state_dir",
        config.resolved_state_dir(),
        true,
    ));
    // A cache directory matters only when some origin is cached.
    let settings = config.origin_cache_settings();
    let cached = config.origins.iter().zip(&probes).any(|(o, p)| {
        settings
            .get(o)
            .copied()
            .unwrap_or_else(|| p.as_ref().is_some_and(|p| p.dir.is_ok() && !p.local))
    });
    out.push(disk::dir_check(
        "cache_dir",
        config.resolved_cache_dir(),
        cached,
    ));
    out
}

/// `f` on its own thread, or `None` past `timeout`.
fn bounded<T: Send + 'static>(
    timeout: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("musicfs-doctor".into())
        .spawn(move || {
            let _ = tx.send(f());
        })
        .ok()?;
    rx.recv_timeout(timeout).ok()
}

fn uid() -> u32 {
    nix::unistd::getuid().as_raw()
}

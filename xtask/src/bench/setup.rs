//! The release build, and dropping the page cache.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, ensure};

use super::consts::BUILD_TIMEOUT;
use crate::harness::{run_captured, run_inherited, workspace_root};

/// The cargo target directory (`$CARGO_TARGET_DIR` or `<workspace>/target`), absolute.
pub(super) fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                std::env::current_dir()
                    .map(|cwd| cwd.join(&dir))
                    .unwrap_or(dir)
            }
        }
        _ => workspace_root().join("target"),
    }
}

/// Builds the release binaries and copies them to `<work>/bin/`; returns the `musicfs` copy.
pub(super) fn build(target: &Path, work: &Path) -> Result<PathBuf> {
    eprintln!("bench: cargo build --release -p musicfs-engine -p musicfs-shim");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args([
        "build",
        "--release",
        "-p",
        "musicfs-engine",
        "-p",
        "musicfs-shim",
    ])
    .current_dir(workspace_root());
    if std::env::var_os("CARGO_TARGET_DIR").is_some_and(|d| !d.is_empty()) {
        cmd.env("CARGO_TARGET_DIR", target);
    }
    run_inherited(&mut cmd, "cargo build --release", BUILD_TIMEOUT)?;
    let bin_dir = work.join("bin");
    fs::create_dir_all(&bin_dir)?;
    for name in ["musicfs", "musicfs-shim"] {
        let from = target.join("release").join(name);
        let to = bin_dir.join(name);
        ensure!(from.is_file(), "{} was not built", from.display());
        let _ = fs::remove_file(&to);
        fs::copy(&from, &to)
            .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    }
    Ok(bin_dir.join("musicfs"))
}

/// `sync; echo 3 > /proc/sys/vm/drop_caches` (needs root).
pub(super) fn drop_caches() -> Result<()> {
    let mut cmd = Command::new("sync");
    let out = run_captured(&mut cmd, "sync", Duration::from_secs(300))?;
    ensure!(out.status.success(), "sync failed ({})", out.status);
    fs::write("/proc/sys/vm/drop_caches", b"3\n")
        .context("writing /proc/sys/vm/drop_caches (needs root)")
}

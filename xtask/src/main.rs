//! `cargo xtask <task>`: the project's developer commands (codegen, gen-library, bench, ci, demo).
#![allow(clippy::unwrap_used)]

mod bench;
mod ci;
mod codegen;
mod demo;
mod genlib;
mod stall;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "MusicFS developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Generate a synthetic music library with realistic and tricky tags.
    GenLibrary(genlib::Args),
    /// Regenerate the checked-in Cap'n Proto code (needs the `capnp` tool).
    Codegen,
    /// The whole test suite: fmt, clippy, build, unit and integration tests.
    Ci,
    /// Mount a library (a generated demo library unless --origin is given) and show it.
    Demo(demo::Args),
    /// Read stalls while the engine is killed or swapped under load.
    Stall(stall::Args),
    /// Measure musicfs beside bindfs and the native origin; record in BENCHMARKS.md.
    Bench(bench::Args),
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.task {
        Task::GenLibrary(args) => genlib::run(&args),
        Task::Codegen => codegen::run(),
        Task::Ci => ci::run(),
        Task::Demo(args) => demo::run(&args),
        Task::Stall(args) => stall::run(&args),
        Task::Bench(args) => bench::run(&args),
    }
}

/// The workspace root (the parent of xtask/).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// Cargo's target directory (CARGO_TARGET_DIR or <workspace>/target).
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) if !d.is_empty() => {
            let d = PathBuf::from(d);
            if d.is_absolute() {
                d
            } else {
                workspace_root().join(d)
            }
        }
        _ => workspace_root().join("target"),
    }
}

/// Runs a command, failing with its command line when it fails.
pub fn run_cmd(cmd: &mut std::process::Command) -> Result<()> {
    let status = cmd
        .status()
        .map_err(|e| anyhow::anyhow!("cannot run {cmd:?}: {e}"))?;
    if !status.success() {
        anyhow::bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

/// `cargo build --release` of the two binaries.
pub fn build_release() -> Result<()> {
    run_cmd(
        std::process::Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
            .current_dir(workspace_root())
            .args([
                "build",
                "--release",
                "-p",
                "musicfs-engine",
                "-p",
                "musicfs-shim",
            ]),
    )
}

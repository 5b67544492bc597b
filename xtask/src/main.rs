//! `cargo xtask <task>`: the project's developer commands (codegen, gen-library, bench, ci, demo).
#![allow(clippy::unwrap_used)]

mod codegen;
mod genlib;

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
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.task {
        Task::GenLibrary(args) => genlib::run(&args),
        Task::Codegen => codegen::run(),
    }
}

/// The workspace root (the parent of xtask/).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

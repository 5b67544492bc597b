//! `cargo xtask <task>`: the project's developer commands (codegen, gen-library, bench, ci, demo, deb).
#![allow(clippy::unwrap_used)]

mod bench;
mod ci;
mod codegen;
mod deb;
mod demo;
mod genlib;
mod harness;
mod runner;
mod stall;

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
    /// Read stalls while the engine or the shim is killed or swapped under load.
    Stall(stall::Args),
    /// Measure musicfs beside bindfs and the native origin; record in BENCHMARKS.md.
    Bench(bench::Args),
    /// Build the Debian package (both binaries, units, mount helper, man pages,
    /// completions) with cargo-deb; prints the path of the .deb.
    Deb(deb::Args),
    /// Run one test binary with a deadline (the runner `ci` gives cargo);
    /// on the deadline, print what its processes wait on and kill them.
    #[command(hide = true)]
    TestRunner {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        argv: Vec<String>,
    },
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
        Task::Deb(args) => deb::run(&args),
        Task::TestRunner { argv } => runner::run(&argv),
    }
}

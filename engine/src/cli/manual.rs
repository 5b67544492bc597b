//! Shell completions and man pages, generated from the command line's own
//! description (clap_complete, clap_mangen), for the packaging to install.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use clap::CommandFactory;

use crate::cli::Cli;

/// Prints the completion script for `shell`.
pub fn completions(shell: clap_complete::Shell) -> Result<()> {
    let mut cmd = Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, "musicfs", &mut out);
    std::io::stdout().write_all(&out)?;
    Ok(())
}

/// The command as the man pages show it (no `help` subcommand: every
/// command has `--help`).
fn command() -> clap::Command {
    Cli::command().disable_help_subcommand(true)
}

/// Prints the main man page, or with `out` writes `musicfs.1` and one page
/// per (visible) subcommand, `musicfs-mount.1`, `musicfs-cache-status.1`,
/// ..., into that directory, and prints their paths.
pub fn manpage(out: Option<&Path>) -> Result<()> {
    let Some(dir) = out else {
        let mut page = Vec::new();
        clap_mangen::Man::new(command()).render(&mut page)?;
        std::io::stdout().write_all(&page)?;
        return Ok(());
    };
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    clap_mangen::generate_to(command(), dir)
        .with_context(|| format!("cannot write the man pages into {}", dir.display()))?;
    let mut pages: Vec<_> = std::fs::read_dir(dir)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("musicfs") && n.ends_with(".1"))
        })
        .collect();
    pages.sort();
    for p in pages {
        println!("{}", p.display());
    }
    Ok(())
}

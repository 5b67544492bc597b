//! The `musicfs` command line: arguments (`Cli`), the commands (`run`),
//! and how answers are printed (`render`, `events`). The top room: it may
//! use every other; nothing uses it but `main.rs`.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};

use crate::config::reload::ConfigSource;
use crate::config::{Config, Overrides};

pub mod cache;
pub mod doctor;
pub mod events;
mod manual;
pub mod render;
mod run;

pub use run::run;

#[derive(Parser, Debug)]
#[command(
    name = "musicfs",
    version,
    about = "A read-only filesystem that shows a music library as a tree made from its tags"
)]
pub struct Cli {
    /// Extra configuration file (merged over /etc/musicfs and ~/.config/musicfs).
    #[arg(long, global = true, env = "MUSICFS_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug, Default, Clone)]
pub struct LibraryArgs {
    /// An origin directory holding music (repeat for several, in priority order).
    #[arg(long = "origin", value_name = "DIR")]
    pub origins: Vec<PathBuf>,
    /// Path template, e.g. '{artist}/{album}/{track:02 - }{title}.{ext}'.
    #[arg(long)]
    pub template: Option<String>,
    /// Directory for the catalog and the engine socket.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
}

impl LibraryArgs {
    fn overrides(&self) -> Overrides {
        Overrides {
            origins: (!self.origins.is_empty()).then(|| self.origins.clone()),
            template: self.template.clone(),
            state_dir: self.state_dir.clone(),
            ..Overrides::default()
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Mount a library and serve it in the foreground until Ctrl-C or SIGTERM.
    Mount {
        #[command(flatten)]
        library: LibraryArgs,
        /// Let other users read the mount (needs user_allow_other in /etc/fuse.conf when not root).
        #[arg(long)]
        allow_other: bool,
        /// Where to mount (default: `mountpoint` from the configuration).
        mountpoint: Option<PathBuf>,
    },
    /// Unmount a mounted library.
    Unmount {
        /// Detach now even if files are open (they keep working until closed).
        #[arg(long)]
        lazy: bool,
        /// First abort the mount's FUSE connection (through fusectl), failing every
        /// request waiting on it, then detach it: for a mount whose server hangs or died
        /// stuck in the kernel. Open files get errors.
        #[arg(long)]
        abort: bool,
        mountpoint: PathBuf,
    },
    /// Run the engine alone (normally started by `musicfs mount` or systemd).
    Engine {
        #[command(subcommand)]
        action: Option<EngineAction>,
        #[command(flatten)]
        library: LibraryArgs,
        /// Unix socket for the data plane (default: STATE_DIR/engine.sock).
        #[arg(long)]
        socket: Option<PathBuf>,
    },
    /// The shim (the FUSE half) of a running mount.
    Shim {
        #[command(subcommand)]
        action: ShimAction,
    },
    /// Show the engine's state: catalog, origins, background tasks, counters.
    Status {
        /// Machine-readable JSON (stable keys).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Print metrics in the Prometheus text format.
    Metrics {
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Stop a running mount in order (shim, then engine).
    Shutdown {
        /// Drain deadline in seconds.
        #[arg(long, default_value_t = 10)]
        timeout: u64,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Reload the configuration of a running mount (as SIGHUP does): validated
    /// first; hot fields apply at once, the others are named.
    Reload {
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Print the engine's recent events (starts, syncs, changes, reloads,
    /// task failures); with --follow, keep printing new ones.
    Events {
        /// Keep the connection and print events as they happen (Ctrl-C stops).
        #[arg(long, short)]
        follow: bool,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// The chunk cache of network origins: status, verify, clear, pin.
    Cache {
        #[command(subcommand)]
        action: CacheAction,
    },
    /// Search a running mount's live index: the tree paths of the matching
    /// tracks (relative to the mount), one per line; `search rebuild`
    /// rebuilds the index from the catalog with a progress bar.
    #[command(args_conflicts_with_subcommands = true)]
    Search {
        #[command(subcommand)]
        action: Option<SearchAction>,
        /// The query, in tantivy's syntax: `artist:björk`,
        /// `genre:jazz AND year:[1990 TO 1999]`, `"love song"`.
        query: Option<String>,
        /// A JSON array of the paths.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Scan the origins once and print what was found (JSON), without mounting.
    Scan {
        #[command(flatten)]
        library: LibraryArgs,
    },
    /// Check what a mount needs from this machine, one line per check.
    ///
    /// FUSE (fusermount3, /dev/fuse), user_allow_other in /etc/fuse.conf,
    /// the origins, inotify limits against their directories, passthrough,
    /// FUSE_NOTIFY_RESEND, fusectl, the state and cache directories. Each
    /// line is ok, warn or FAIL with what to do; the exit status is 1 if a
    /// check fails.
    Doctor {
        /// A JSON array of {check, status, detail}.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        library: LibraryArgs,
        /// Check as for a mount with allow_other.
        #[arg(long)]
        allow_other: bool,
        /// The mountpoint to check (default: `mountpoint` from the configuration).
        mountpoint: Option<PathBuf>,
    },
    /// Print the shell completion script (for the packaging).
    #[command(hide = true)]
    Completions { shell: clap_complete::Shell },
    /// Print the man page; with --out DIR, write musicfs.1 and one page per
    /// command there (for the packaging).
    #[command(hide = true)]
    Manpage {
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
}

/// Which mount a command talks to.
#[derive(Args, Debug, Default, Clone)]
pub struct TargetArgs {
    /// The state directory of the mount (default: derived from MOUNTPOINT).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// The mountpoint.
    pub mountpoint: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum CacheAction {
    /// Size, health (normal, unstable, down; bypassed and why), hits,
    /// misses, corrupt chunks found.
    Status {
        /// Machine-readable JSON (stable keys).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Check every cached chunk against its blake3 hash; bad ones are
    /// removed (and with --repair fetched again from their origin).
    Verify {
        #[arg(long)]
        repair: bool,
        /// The result as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Remove every cached chunk.
    Clear {
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Keep the files at or under PATH (a file or directory in the mount)
    /// off the eviction list.
    Pin {
        path: PathBuf,
        /// The state directory of the mount (default: derived from the
        /// mountpoint that holds PATH).
        #[arg(long, value_name = "DIR")]
        state_dir: Option<PathBuf>,
    },
    /// Let the files at or under PATH be evicted again.
    Unpin {
        path: PathBuf,
        #[arg(long, value_name = "DIR")]
        state_dir: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
pub enum SearchAction {
    /// Rebuild the search index from the catalog (searches read the old
    /// one until the new one is in place).
    Rebuild {
        #[command(flatten)]
        target: TargetArgs,
    },
}

#[derive(Subcommand, Debug)]
pub enum EngineAction {
    /// Replace the running engine (e.g. with an upgraded binary) without
    /// unmounting; succeeds only once the new engine serves.
    Swap {
        /// The new engine binary (default: the one running now).
        #[arg(long)]
        binary: Option<PathBuf>,
        /// The state directory of the mount (default: derived from MOUNTPOINT).
        #[arg(long, value_name = "DIR")]
        state_dir: Option<PathBuf>,
        /// The mountpoint whose engine to swap.
        mountpoint: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
pub enum ShimAction {
    /// Replace the running shim (e.g. with an upgraded binary) without
    /// unmounting: the new shim takes the live FUSE connection over, then
    /// the old one leaves; if the new one fails, the old one keeps serving.
    Swap {
        /// The new shim binary (default: the one running now).
        #[arg(long)]
        binary: Option<PathBuf>,
        #[command(flatten)]
        target: TargetArgs,
    },
}

/// Where this command's configuration comes from.
pub fn config_source(cli: &Cli) -> ConfigSource {
    ConfigSource {
        file: cli.config.clone(),
        overrides: overrides(cli),
    }
}

/// The configuration, with absolute origin paths.
pub fn load_config(cli: &Cli) -> Result<Config> {
    crate::origins::load_config(&config_source(cli))
}

/// The configuration values given on the command line.
pub fn overrides(cli: &Cli) -> Overrides {
    match &cli.command {
        Command::Mount {
            library,
            allow_other,
            mountpoint,
        }
        | Command::Doctor {
            library,
            allow_other,
            mountpoint,
            ..
        } => Overrides {
            mountpoint: mountpoint.clone(),
            allow_other: allow_other.then_some(true),
            ..library.overrides()
        },
        Command::Engine {
            library,
            action:
                Some(EngineAction::Swap {
                    mountpoint,
                    state_dir,
                    ..
                }),
            ..
        } => Overrides {
            mountpoint: mountpoint.clone(),
            state_dir: state_dir.clone().or_else(|| library.state_dir.clone()),
            ..library.overrides()
        },
        Command::Engine { library, .. } | Command::Scan { library } => library.overrides(),
        Command::Status { target, .. }
        | Command::Shim {
            action: ShimAction::Swap { target, .. },
        }
        | Command::Metrics { target }
        | Command::Search {
            action: None,
            target,
            ..
        }
        | Command::Search {
            action: Some(SearchAction::Rebuild { target }),
            ..
        }
        | Command::Reload { target }
        | Command::Events { target, .. }
        | Command::Shutdown { target, .. } => Overrides {
            mountpoint: target.mountpoint.clone(),
            state_dir: target.state_dir.clone(),
            ..Overrides::default()
        },
        Command::Cache {
            action:
                CacheAction::Status { target, .. }
                | CacheAction::Verify { target, .. }
                | CacheAction::Clear { target },
        } => Overrides {
            mountpoint: target.mountpoint.clone(),
            state_dir: target.state_dir.clone(),
            ..Overrides::default()
        },
        Command::Cache {
            action: CacheAction::Pin { path, state_dir } | CacheAction::Unpin { path, state_dir },
        } => Overrides {
            mountpoint: cache::mount_of(path).map(|(m, _)| m),
            state_dir: state_dir.clone(),
            ..Overrides::default()
        },
        Command::Unmount { .. } | Command::Completions { .. } | Command::Manpage { .. } => {
            Overrides::default()
        }
    }
}

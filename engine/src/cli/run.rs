//! The commands: each one a few lines over the rooms that do the work.

use crate::cli::{
    Cli, Command, EngineAction, ShimAction, config_source, events, load_config, render,
};
use crate::config::state::supervisor_socket;
use crate::{control, logging, runtime, scan, supervisor};

pub fn run(cli: Cli) -> anyhow::Result<()> {
    // First, before any thread starts.
    crate::sys::memory::limit_malloc_arenas();
    if let Command::Unmount {
        lazy,
        abort,
        mountpoint,
    } = &cli.command
    {
        logging::init("info");
        if *abort {
            supervisor::abort_connection(mountpoint)?;
        }
        supervisor::unmount(mountpoint, *lazy || *abort)?;
        return Ok(());
    }
    // Needs no configuration (the packaging runs these at build time).
    match &cli.command {
        Command::Completions { shell } => return crate::cli::manual::completions(*shell),
        Command::Manpage { out } => return crate::cli::manual::manpage(out.as_deref()),
        _ => {}
    }
    let config = load_config(&cli)?;
    logging::init(&config.log_level);
    let source = config_source(&cli);
    match &cli.command {
        Command::Mount { .. } => supervisor::run(&config, source),
        Command::Engine {
            action: Some(EngineAction::Swap { binary, .. }),
            ..
        } => {
            let state_dir = config.resolved_state_dir()?;
            let tty = std::io::IsTerminal::is_terminal(&std::io::stdout());
            let msg = supervisor::request_swap(&state_dir, binary.as_deref(), |step, of| {
                if tty {
                    crate::cli::cache::progress_bar(step, of, "steps");
                }
            })?;
            if tty {
                println!();
            }
            println!("{msg}");
            Ok(())
        }
        Command::Engine { socket, .. } => runtime::run(&config, socket.clone(), source),
        Command::Shim {
            action: ShimAction::Swap { binary, .. },
        } => {
            let state_dir = config.resolved_state_dir()?;
            println!(
                "{}",
                supervisor::request_shim_swap(&state_dir, binary.as_deref())?
            );
            Ok(())
        }
        Command::Status { json, .. } => {
            let status = match find_mount(&config)? {
                Found::One(_, Some(status)) => *status,
                Found::One(dir, None) => control::fetch_status(&dir)?,
                Found::Several(all) => {
                    // Every mount, one line each.
                    if *json {
                        let list: Vec<_> = all.iter().map(|(_, s)| s).collect();
                        println!("{}", serde_json::to_string_pretty(&list)?);
                    } else {
                        for (dir, s) in &all {
                            println!("{}", render::render_line(dir, s));
                        }
                    }
                    return Ok(());
                }
            };
            if *json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", render::render_table(&status));
            }
            Ok(())
        }
        Command::Metrics { .. } => {
            // Rendered by the engine: its histograms live there.
            print!("{}", control::fetch_metrics(&one_mount(&config)?)?);
            Ok(())
        }
        Command::Reload { .. } => {
            let state_dir = config.resolved_state_dir()?;
            // Under `musicfs mount` the supervisor reloads (it starts
            // engines with its configuration); an engine alone reloads itself.
            let summary = if supervisor_socket(&state_dir).exists() {
                supervisor::request_reload(&state_dir)?
            } else {
                control::request_reload(&state_dir, None)?.summary()
            };
            println!("reloaded: {summary}");
            Ok(())
        }
        Command::Events { follow, json, .. } => {
            events::print_events(&one_mount(&config)?, *follow, *json)
        }
        Command::Shutdown { timeout, .. } => {
            let state_dir = config.resolved_state_dir()?;
            let timeout = std::time::Duration::from_secs(*timeout);
            // Under `musicfs mount` the supervisor stops everything in order;
            // an engine alone (systemd) stops itself.
            if supervisor_socket(&state_dir).exists() {
                supervisor::request_shutdown(&state_dir, timeout)?;
            } else {
                control::request_shutdown(&state_dir, timeout)?;
            }
            println!("stopped");
            Ok(())
        }
        Command::Search {
            action,
            query,
            json,
            ..
        } => crate::cli::cache::search(
            action.is_some(),
            query.as_deref(),
            *json,
            &one_mount(&config)?,
        ),
        Command::Cache { action } => {
            let dir = match action {
                crate::cli::CacheAction::Pin { .. } | crate::cli::CacheAction::Unpin { .. } => {
                    config.resolved_state_dir()?
                }
                _ => one_mount(&config)?,
            };
            crate::cli::cache::run(action, &dir)
        }
        Command::Scan { .. } => {
            crate::origins::check_origins(&config)?;
            let exts = scan::AudioExtensions::new(&config.audio_extensions);
            let out = scan::scan_origins(&config.origins, &exts, config.scan_worker_threads());
            let secs = out.elapsed.as_secs_f64().max(1e-9);
            let report = serde_json::json!({
                "tracks": out.files.len(),
                "unreadable_files": out.unreadable_files,
                "unreadable_dirs": out.unreadable_dirs,
                "elapsed_ms": out.elapsed.as_millis() as u64,
                "tracks_per_s": (out.files.len() as f64 / secs).round(),
            });
            println!("{report}");
            Ok(())
        }
        Command::Doctor { json, .. } => crate::cli::doctor::run(&config, *json),
        Command::Unmount { .. } | Command::Completions { .. } | Command::Manpage { .. } => Ok(()),
    }
}

/// The mounts a command without a mountpoint may mean.
enum Found {
    /// One mount; with its status when finding it fetched one already.
    One(std::path::PathBuf, Option<Box<control::Status>>),
    /// Several run: each state directory with its status.
    Several(Vec<(std::path::PathBuf, control::Status)>),
}

/// The mount a status-like command talks to: the one named, else the one
/// running mount of this user (root: the system's), else all of them.
fn find_mount(config: &crate::config::Config) -> anyhow::Result<Found> {
    if config.names_a_mount() {
        return Ok(Found::One(config.resolved_state_dir()?, None));
    }
    let base = crate::config::Config::state_base_dir()?;
    let mut running = Vec::new();
    if let Ok(entries) = std::fs::read_dir(&base) {
        for e in entries.flatten() {
            let dir = e.path();
            if !crate::config::state::control_socket(&dir).exists() {
                continue;
            }
            if let Ok(s) = control::fetch_status(&dir) {
                running.push((dir, s));
            }
        }
    }
    running.sort_by(|a, b| a.0.cmp(&b.0));
    match running.len() {
        0 => anyhow::bail!(
            "no musicfs mount is running for this user (none answers in {}); name one: musicfs status MOUNTPOINT",
            base.display()
        ),
        1 => {
            let (dir, status) = running.remove(0);
            Ok(Found::One(dir, Some(Box::new(status))))
        }
        _ => Ok(Found::Several(running)),
    }
}

/// Like `find_mount`, for commands that need exactly one.
fn one_mount(config: &crate::config::Config) -> anyhow::Result<std::path::PathBuf> {
    match find_mount(config)? {
        Found::One(dir, _) => Ok(dir),
        Found::Several(all) => {
            let dirs: Vec<String> = all.iter().map(|(d, _)| d.display().to_string()).collect();
            anyhow::bail!(
                "{} mounts are running; name one (MOUNTPOINT or --state-dir): {}",
                dirs.len(),
                dirs.join(", ")
            )
        }
    }
}

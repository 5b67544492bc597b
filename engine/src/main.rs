use std::process::ExitCode;

use clap::Parser;
use musicfs_engine::cli::{Cli, Command, EngineAction, load_config, overrides};
use musicfs_engine::{control, engine, logging, mount, scan};

fn run(cli: Cli) -> anyhow::Result<()> {
    if let Command::Unmount { lazy, mountpoint } = &cli.command {
        logging::init("info");
        mount::unmount(mountpoint, *lazy)?;
        return Ok(());
    }
    let config = load_config(&cli)?;
    logging::init(&config.log_level);
    let source = engine::ConfigSource {
        file: cli.config.clone(),
        overrides: overrides(&cli),
    };
    match &cli.command {
        Command::Mount { .. } => mount::run(&config, source),
        Command::Engine {
            action: Some(EngineAction::Swap { binary, .. }),
            ..
        } => {
            let state_dir = config.resolved_state_dir()?;
            let msg = mount::request_swap(&state_dir, binary.as_deref())?;
            println!("{msg}");
            Ok(())
        }
        Command::Engine { socket, .. } => engine::run(&config, socket.clone(), source),
        Command::Status { json, .. } => {
            let status = control::fetch_status(&config.resolved_state_dir()?)?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", control::render_table(&status));
            }
            Ok(())
        }
        Command::Metrics { .. } => {
            let status = control::fetch_status(&config.resolved_state_dir()?)?;
            print!("{}", control::render_metrics(&status));
            Ok(())
        }
        Command::Reload { .. } => {
            let state_dir = config.resolved_state_dir()?;
            // Under `musicfs mount` the supervisor reloads (it starts
            // engines with its configuration); an engine alone reloads itself.
            let summary = if mount::supervisor_socket(&state_dir).exists() {
                mount::request_reload(&state_dir)?
            } else {
                control::request_reload(&state_dir, None)?.summary()
            };
            println!("reloaded: {summary}");
            Ok(())
        }
        Command::Events { follow, json, .. } => {
            control::print_events(&config.resolved_state_dir()?, *follow, *json)
        }
        Command::Shutdown { timeout, .. } => {
            let state_dir = config.resolved_state_dir()?;
            let timeout = std::time::Duration::from_secs(*timeout);
            // Under `musicfs mount` the supervisor stops everything in order;
            // an engine alone (systemd) stops itself.
            if mount::supervisor_socket(&state_dir).exists() {
                mount::request_shutdown(&state_dir, timeout)?;
            } else {
                control::request_shutdown(&state_dir, timeout)?;
            }
            println!("stopped");
            Ok(())
        }
        Command::Scan { .. } => {
            config.check_origins()?;
            let out = scan::scan_origins(&config.origins, engine::scan_threads(&config));
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
        Command::Unmount { .. } => Ok(()),
    }
}

/// Logs every panic (thread, payload, backtrace) as one error line, then
/// runs the default handling, so that a panic in any thread is never silent.
fn install_panic_hook() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let thread = std::thread::current();
        let name = thread.name().unwrap_or("unnamed");
        let payload = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(non-string payload)".into());
        let location = info.location().map(|l| l.to_string()).unwrap_or_default();
        let backtrace = std::backtrace::Backtrace::force_capture();
        tracing::error!(thread = name, %location, "panic: {payload}\n{backtrace}");
        default(info);
    }));
}

fn main() -> ExitCode {
    install_panic_hook();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("musicfs: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

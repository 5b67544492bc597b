use std::process::ExitCode;

use clap::Parser;
use musicfs_engine::cli::{Cli, Command, EngineAction, load_config};
use musicfs_engine::{control, engine, mount, scan};

fn init_logging(level: &str) {
    let filter = std::env::var("MUSICFS_LOG").unwrap_or_else(|_| level.to_string());
    let filter = tracing_subscriber::EnvFilter::try_new(&filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

fn run(cli: Cli) -> anyhow::Result<()> {
    if let Command::Unmount { lazy, mountpoint } = &cli.command {
        init_logging("info");
        mount::unmount(mountpoint, *lazy)?;
        return Ok(());
    }
    let mut config = load_config(&cli)?;
    // Absolute origin paths: they name origins in the catalog and the status.
    for o in &mut config.origins {
        if let Ok(abs) = o.canonicalize() {
            *o = abs;
        }
    }
    init_logging(&config.log_level);
    match &cli.command {
        Command::Mount { .. } => mount::run(&config),
        Command::Engine {
            action: Some(EngineAction::Swap { binary, .. }),
            ..
        } => {
            let state_dir = config.resolved_state_dir()?;
            let msg = mount::request_swap(&state_dir, binary.as_deref())?;
            println!("{msg}");
            Ok(())
        }
        Command::Engine { socket, .. } => engine::run(&config, socket.clone()),
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

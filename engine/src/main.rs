use std::process::ExitCode;

use clap::Parser;
use musicfs_engine::cli::{Cli, Command, EngineAction, load_config};
use musicfs_engine::{engine, mount, scan};

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
    let config = load_config(&cli)?;
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("musicfs: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

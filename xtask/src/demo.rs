//! `cargo xtask demo`: build, mount a library and show it, until Ctrl-C.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::harness::target_dir;

#[derive(clap::Args)]
pub struct Args {
    /// Your own music directory (repeatable). Without it, a generated demo library is used.
    #[arg(long = "origin", value_name = "DIR")]
    origins: Vec<PathBuf>,
    /// Tracks in the generated demo library.
    #[arg(long, default_value_t = 2000)]
    tracks: usize,
    /// Where to mount (default: target/demo/mnt).
    #[arg(long)]
    mountpoint: Option<PathBuf>,
}

pub fn run(args: &Args) -> Result<()> {
    let demo = target_dir().join("demo");
    crate::harness::build_release()?;
    let origins = if args.origins.is_empty() {
        std::fs::create_dir_all(&demo)?;
        vec![crate::harness::ensure_library(&demo, args.tracks)?]
    } else {
        args.origins.clone()
    };
    let mnt = args.mountpoint.clone().unwrap_or_else(|| demo.join("mnt"));
    std::fs::create_dir_all(&mnt).with_context(|| format!("cannot create {}", mnt.display()))?;
    let musicfs = target_dir().join("release/musicfs");
    let mut cmd = Command::new(&musicfs);
    cmd.arg("mount").arg("--state-dir").arg(demo.join("state"));
    for o in &origins {
        cmd.arg("--origin").arg(o);
    }
    cmd.arg(&mnt);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start {}", musicfs.display()))?;
    // Ctrl-C reaches musicfs too (same process group); it unmounts and exits.
    // This process only waits for it.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
    }
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        if let Some(status) = child.try_wait()? {
            bail!("musicfs exited before the mount was ready ({status})");
        }
        if std::fs::read_dir(&mnt)
            .map(|mut d| d.next().is_some())
            .unwrap_or(false)
        {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("the mount was not ready after 10 minutes");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    println!("\nMusicFS is mounted at {}\n", mnt.display());
    let mut shown = 0;
    for entry in walkdir::WalkDir::new(&mnt).min_depth(1).sort_by_file_name() {
        let Ok(entry) = entry else { continue };
        if entry.depth() == 3 || shown < 12 {
            println!(
                "  {}",
                entry
                    .path()
                    .strip_prefix(&mnt)
                    .unwrap_or(entry.path())
                    .display()
            );
            shown += 1;
        }
        if shown >= 12 {
            break;
        }
    }
    println!(
        "\nTry: ls '{}'   |   ffprobe a file   |   Ctrl-C here to unmount.",
        mnt.display()
    );
    let status = child.wait()?;
    if !status.success() {
        bail!("musicfs exited with {status}");
    }
    Ok(())
}

//! `cargo xtask deb`: the Debian package an admin installs (`dpkg -i`).
//!
//! Builds both release binaries, has `musicfs` generate its man pages and
//! shell completions into `<workspace>/target/deb-assets/`, then runs
//! `cargo deb --no-build` on the `[package.metadata.deb]` of engine/Cargo.toml
//! (both binaries, the systemd units, the mount helper, tmpfiles, the config
//! example, the man pages and the completions). The binaries are stripped;
//! their debug info goes into a `musicfs-dbgsym` .ddeb beside the .deb. The
//! last line on stdout is the path of the .deb.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::harness::{build_release, run_captured, target_dir, workspace_root};

fn cargo() -> Command {
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.current_dir(workspace_root());
    c
}

/// Where the generated assets go; engine/Cargo.toml names them relative to
/// engine/ (`../target/deb-assets/...`), so this is the workspace's target/
/// whatever CARGO_TARGET_DIR says.
fn assets_dir() -> PathBuf {
    workspace_root().join("target/deb-assets")
}

/// The shells, with the file each completion is written to (the names the
/// package installs them under, see engine/Cargo.toml).
const COMPLETIONS: [(&str, &str); 3] = [
    ("bash", "musicfs.bash"),
    ("zsh", "_musicfs"),
    ("fish", "musicfs.fish"),
];

const GENERATE_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(clap::Args)]
pub struct Args {
    /// Package the dev-profile binaries (what `cargo build` and the test
    /// suite build) instead of release ones: the package test checks the
    /// packaging, and needs no second, optimised build of the whole tree.
    #[arg(long)]
    dev: bool,
}

pub fn run(args: &Args) -> Result<()> {
    check_cargo_deb()?;
    let profile_dir = if args.dev {
        eprintln!("xtask deb: cargo build -p musicfs-engine -p musicfs-shim (dev profile)");
        build_dev()?;
        "debug"
    } else {
        eprintln!("xtask deb: cargo build --release -p musicfs-engine -p musicfs-shim");
        build_release()?;
        "release"
    };
    let musicfs = target_dir().join(profile_dir).join("musicfs");
    let assets = assets_dir();
    generate_assets(&musicfs, &assets)?;
    let deb = cargo_deb(args.dev)?;
    eprintln!("xtask deb: built {}", deb.display());
    eprintln!(
        "xtask deb: install it with `sudo dpkg -i {}`",
        deb.display()
    );
    println!("{}", deb.display());
    Ok(())
}

fn check_cargo_deb() -> Result<()> {
    let ok = cargo()
        .args(["deb", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        bail!(
            "cargo-deb is not installed: run packaging/install-deps.sh \
             (or `cargo install cargo-deb --locked`)"
        );
    }
    Ok(())
}

/// Runs `musicfs completions SHELL` and `musicfs manpage --out DIR` into
/// `assets` (emptied first: nothing stale gets packaged).
fn generate_assets(musicfs: &Path, assets: &Path) -> Result<()> {
    if assets.exists() {
        std::fs::remove_dir_all(assets)
            .with_context(|| format!("cannot empty {}", assets.display()))?;
    }
    let completions = assets.join("completions");
    let man = assets.join("man");
    std::fs::create_dir_all(&completions)?;
    std::fs::create_dir_all(&man)?;

    for (shell, file) in COMPLETIONS {
        let out = run_captured(
            Command::new(musicfs).args(["completions", shell]),
            &format!("musicfs completions {shell}"),
            GENERATE_TIMEOUT,
        )?;
        if !out.status.success() || out.stdout.is_empty() {
            bail!(
                "`{} completions {shell}` failed ({}): the binary needs the hidden \
                 `completions <bash|zsh|fish>` subcommand, which prints the script\n{}",
                musicfs.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim_end()
            );
        }
        std::fs::write(completions.join(file), &out.stdout)?;
    }

    // Written to a scratch directory, then every *.1 found in it (at any
    // depth: DIR or DIR/man1) flat into man/.
    let scratch = assets.join("manpage-out");
    std::fs::create_dir_all(&scratch)?;
    let out = run_captured(
        Command::new(musicfs)
            .args(["manpage", "--out"])
            .arg(&scratch),
        "musicfs manpage",
        GENERATE_TIMEOUT,
    )?;
    if !out.status.success() {
        bail!(
            "`{} manpage --out DIR` failed ({}): the binary needs the hidden \
             `manpage --out DIR` subcommand, which writes the man pages\n{}",
            musicfs.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim_end()
        );
    }
    let mut pages = Vec::new();
    for entry in walkdir::WalkDir::new(&scratch) {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.file_type().is_file() && name.ends_with(".1") {
            std::fs::copy(entry.path(), man.join(&name))?;
            pages.push(name);
        }
    }
    std::fs::remove_dir_all(&scratch)?;
    if !pages.iter().any(|p| p == "musicfs.1") {
        bail!("`musicfs manpage --out DIR` wrote no musicfs.1 (found: {pages:?})");
    }
    pages.sort();
    eprintln!(
        "xtask deb: generated {} completions and man pages {}",
        COMPLETIONS.len(),
        pages.join(" ")
    );
    Ok(())
}

fn build_dev() -> Result<()> {
    crate::harness::run_cmd(cargo().args(["build", "-p", "musicfs-engine", "-p", "musicfs-shim"]))
}

/// `cargo deb -p musicfs-engine --no-build --dbgsym` (with `--profile dev`
/// for `dev`: cargo-deb then takes the `target/release/` assets from
/// `target/debug/`); returns the path of the .deb it printed.
fn cargo_deb(dev: bool) -> Result<PathBuf> {
    let mut cmd = cargo();
    cmd.args(["deb", "-p", "musicfs-engine", "--no-build", "--dbgsym"]);
    if dev {
        cmd.args(["--profile", "dev"]);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().context("cannot run cargo deb")?;
    let mut stdout = child.stdout.take().context("cargo deb stdout")?;
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    // cargo-deb warns about every source path that mentions a target/ and
    // is not `target/release/`: ours (../target/deb-assets) are generated on
    // purpose, not by cargo. Everything else it says is passed on.
    let stderr = child.stderr.take().context("cargo deb stderr")?;
    for line in BufReader::new(stderr).split(b'\n') {
        let line = String::from_utf8_lossy(&line?).into_owned();
        let ours = line.contains("Only source paths starting with exactly")
            && line.contains("../target/deb-assets/");
        if !ours {
            eprintln!("{line}");
        }
    }
    let status = child.wait()?;
    let stdout = out.join().unwrap_or_default();
    if !status.success() {
        bail!("cargo deb failed ({status})\n{stdout}");
    }
    if let Some(ddeb) = stdout.lines().map(str::trim).find(|l| l.ends_with(".ddeb")) {
        eprintln!("xtask deb: debug symbols in {ddeb}");
    }
    let deb = stdout
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.ends_with(".deb"))
        .map(PathBuf::from)
        .with_context(|| format!("cargo deb printed no .deb path:\n{stdout}"))?;
    let deb = if deb.is_absolute() {
        deb
    } else {
        workspace_root().join(deb)
    };
    if !deb.is_file() {
        bail!(
            "cargo deb said it wrote {}, which is not there",
            deb.display()
        );
    }
    Ok(deb)
}

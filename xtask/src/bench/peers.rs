//! The peers of the walk and read rows: musefs 1.3.0 (from crates.io, `--mode structure-only`),
//! `rclone mount --read-only --vfs-cache-mode off` of the origin, and a native copy of the tree
//! the musicfs mount shows. A peer that cannot be had is reported as missing, never faked.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use super::consts::{BUILD_TIMEOUT, POLL, STOP_TIMEOUT};
use super::logs::log_tail;
use super::mounts::{clear_stale_mount, is_mounted, lazy_unmount};
use crate::harness::{kill_tree, on_path, run_captured, utc_now, wait_deadline};

/// The musefs release the bench compares with.
pub(super) const MUSEFS_VERSION: &str = "1.3.0";
/// musefs's path template closest to musicfs's default
/// `{albumartist|artist|"Unknown Artist"}/{album|"Unknown Album"}{ (year)}/{disc-}{track:02 - }
/// {title|filename}.{ext}`: musefs cannot zero-pad a number nor fall back to the file name.
pub(super) const MUSEFS_TEMPLATE: &str =
    "${albumartist|artist}/$album[ ($date)]/[$discnumber-][$tracknumber - ]$title";
/// How long `musefs scan` of the library may take.
const MUSEFS_SCAN_TIMEOUT: Duration = Duration::from_secs(1800);
/// How long a peer mount may take to show its first entry.
const PEER_MOUNT_TIMEOUT: Duration = Duration::from_secs(120);

/// `cargo install musefs --version 1.3.0 --locked --root <target>/bench/peers`, unless that
/// root already has it; returns the binary or why it cannot be had.
pub(super) fn install_musefs(target: &Path) -> std::result::Result<PathBuf, String> {
    let root = target.join("bench").join("peers");
    let bin = root.join("bin").join("musefs");
    if bin.is_file() && musefs_version(&bin).is_some_and(|v| v.contains(MUSEFS_VERSION)) {
        return Ok(bin);
    }
    eprintln!(
        "bench: cargo install musefs --version {MUSEFS_VERSION} --locked --root {}",
        root.display()
    );
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["install", "musefs", "--version", MUSEFS_VERSION, "--locked"])
        .arg("--root")
        .arg(&root);
    let log = target.join("bench").join("musefs-install.log");
    let out = run_captured(&mut cmd, "cargo install musefs", BUILD_TIMEOUT)
        .map_err(|e| format!("cargo install musefs failed: {e:#}"))?;
    let _ = fs::write(&log, &out.stderr);
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let why: Vec<&str> = err
            .lines()
            .filter(|l| l.starts_with("error"))
            .take(3)
            .collect();
        return Err(format!(
            "cargo install musefs --version {MUSEFS_VERSION} failed ({}): {} (log: {})",
            out.status,
            why.join("; "),
            log.display()
        ));
    }
    if bin.is_file() {
        Ok(bin)
    } else {
        Err(format!("cargo install musefs left no {}", bin.display()))
    }
}

fn musefs_version(bin: &Path) -> Option<String> {
    let mut cmd = Command::new(bin);
    cmd.arg("--version");
    let out = run_captured(&mut cmd, "musefs --version", STOP_TIMEOUT).ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// `musefs scan LIB --db DB` into a fresh database (untimed). Exit 2 means some files were not
/// ingested (musefs skips formats it does not support); returns its summary line then.
pub(super) fn musefs_scan(bin: &Path, lib: &Path, db: &Path, log: &Path) -> Result<Option<String>> {
    if db.exists() {
        fs::remove_file(db).with_context(|| format!("removing {}", db.display()))?;
    }
    for ext in ["-wal", "-shm"] {
        let mut side = db.as_os_str().to_owned();
        side.push(ext);
        let _ = fs::remove_file(PathBuf::from(side));
    }
    let mut cmd = Command::new(bin);
    cmd.arg("scan").arg(lib).arg("--db").arg(db).arg("--quiet");
    let out = run_captured(&mut cmd, "musefs scan", MUSEFS_SCAN_TIMEOUT)?;
    let _ = fs::write(log, [out.stdout.as_slice(), out.stderr.as_slice()].concat());
    let err = String::from_utf8_lossy(&out.stderr);
    match out.status.code() {
        Some(0) => Ok(None),
        Some(2) if db.is_file() => {
            let skipped = err.lines().filter(|l| l.contains("skipping")).count();
            let summary = err
                .lines()
                .rev()
                .find_map(|l| l.split_once("] skipped ").map(|(_, s)| s.to_string()));
            Ok(Some(format!(
                "`musefs scan` did not ingest every file ({skipped} skipped{})",
                summary.map_or(String::new(), |s| format!("; its summary: skipped {s}"))
            )))
        }
        _ => bail!(
            "musefs scan {} failed ({}): {}",
            lib.display(),
            out.status,
            err.trim()
        ),
    }
}

/// The native copy of the musicfs tree: `cp -R` of the mount into `dest` (untimed; made anew
/// each run so it follows the template of the musicfs under test).
pub(super) fn copy_tree(from: &Path, dest: &Path, timeout: Duration) -> Result<()> {
    if dest.exists() {
        fs::remove_dir_all(dest).with_context(|| format!("removing {}", dest.display()))?;
    }
    fs::create_dir_all(dest).with_context(|| format!("creating {}", dest.display()))?;
    let mut src = from.as_os_str().to_owned();
    src.push("/.");
    let mut cmd = Command::new("cp");
    cmd.arg("-R").arg(src).arg(dest);
    let out = run_captured(&mut cmd, "cp -R", timeout)?;
    ensure!(
        out.status.success(),
        "cp -R {} {} failed ({}): {}",
        from.display(),
        dest.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// A FUSE peer running in the foreground as our child (musefs, rclone); unmounted and reaped
/// on drop.
pub(super) struct PeerMount {
    name: &'static str,
    mnt: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl PeerMount {
    /// Starts `cmd` (which mounts `mnt` and stays in the foreground) and waits, bounded, until
    /// `mnt` is mounted and lists an entry.
    pub(super) fn start(
        name: &'static str,
        mut cmd: Command,
        mnt: &Path,
        log: &Path,
    ) -> Result<PeerMount> {
        clear_stale_mount(mnt)?;
        fs::create_dir_all(mnt).with_context(|| format!("creating {}", mnt.display()))?;
        let mut logf = fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        writeln!(logf, "=== bench: {name} mount at {} ===", utc_now())?;
        cmd.stdin(Stdio::null())
            .stdout(logf.try_clone()?)
            .stderr(logf);
        let child = cmd.spawn().with_context(|| format!("starting {name}"))?;
        let mut m = PeerMount {
            name,
            mnt: mnt.to_path_buf(),
            log: log.to_path_buf(),
            child: Some(child),
        };
        let deadline = Instant::now() + PEER_MOUNT_TIMEOUT;
        loop {
            if is_mounted(mnt)
                && fs::read_dir(mnt).is_ok_and(|mut d| d.next().is_some_and(|e| e.is_ok()))
            {
                return Ok(m);
            }
            if let Some(child) = m.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!(
                    "{name} exited ({status}) before {} was mounted; log tail:\n{}",
                    mnt.display(),
                    log_tail(log, 20)
                );
            }
            ensure!(
                Instant::now() < deadline,
                "{name} did not mount {} (with an entry) within {} s; log tail:\n{}",
                mnt.display(),
                PEER_MOUNT_TIMEOUT.as_secs(),
                log_tail(log, 20)
            );
            std::thread::sleep(POLL);
        }
    }

    pub(super) fn check_alive(&mut self) -> Result<()> {
        let name = self.name;
        let child = self
            .child
            .as_mut()
            .context("the mount was already stopped")?;
        if let Some(status) = child.try_wait()? {
            bail!(
                "{name} exited ({status}) in the middle of the bench; log tail:\n{}",
                log_tail(&self.log, 20)
            );
        }
        ensure!(
            is_mounted(&self.mnt),
            "the {name} mount {} disappeared in the middle of the bench",
            self.mnt.display()
        );
        Ok(())
    }

    /// `fusermount3 -u`, then waits (bounded) for the process; kills it if it stays.
    pub(super) fn stop(mut self) -> Result<Vec<String>> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<Vec<String>> {
        let mut problems = Vec::new();
        let Some(mut child) = self.child.take() else {
            return Ok(problems);
        };
        let deadline = Instant::now() + STOP_TIMEOUT;
        if is_mounted(&self.mnt) {
            let mut cmd = Command::new("fusermount3");
            cmd.arg("-u").arg(&self.mnt);
            match run_captured(&mut cmd, "fusermount3 -u", STOP_TIMEOUT) {
                Ok(o) if o.status.success() => {}
                Ok(o) => problems.push(format!(
                    "fusermount3 -u {} failed: {}",
                    self.mnt.display(),
                    String::from_utf8_lossy(&o.stderr).trim()
                )),
                Err(e) => problems.push(format!("fusermount3 -u: {e:#}")),
            }
        }
        if wait_deadline(&mut child, deadline)?.is_none() {
            problems.push(format!(
                "{} did not exit within {} s of the unmount; killed it",
                self.name,
                STOP_TIMEOUT.as_secs()
            ));
            kill_tree(&mut child);
        }
        if is_mounted(&self.mnt) {
            problems.push(format!(
                "{} was still mounted after {} exited; lazily unmounted it",
                self.mnt.display(),
                self.name
            ));
            lazy_unmount(&self.mnt);
        }
        Ok(problems)
    }
}

impl Drop for PeerMount {
    fn drop(&mut self) {
        if self.child.is_some() {
            match self.shutdown() {
                Ok(problems) => {
                    for p in problems {
                        eprintln!("bench: cleanup: {p}");
                    }
                }
                Err(e) => eprintln!("bench: cleanup of {} failed: {e:#}", self.mnt.display()),
            }
        }
        if is_mounted(&self.mnt) {
            lazy_unmount(&self.mnt);
        }
    }
}

/// `musefs mount MNT --db DB --mode structure-only --template ...` in the foreground.
pub(super) fn musefs_command(bin: &Path, db: &Path, mnt: &Path) -> Command {
    let mut cmd = Command::new(bin);
    cmd.arg("mount").arg(mnt).arg("--db").arg(db).args([
        "--mode",
        "structure-only",
        "--template",
        MUSEFS_TEMPLATE,
    ]);
    cmd
}

/// `rclone mount --read-only --vfs-cache-mode off LIB MNT` in the foreground.
pub(super) fn rclone_command(lib: &Path, mnt: &Path) -> Command {
    let mut cmd = Command::new("rclone");
    cmd.arg("mount")
        .args(["--read-only", "--vfs-cache-mode", "off"])
        .arg(lib)
        .arg(mnt);
    cmd
}

/// Whether rclone is there, or why not.
pub(super) fn rclone_available() -> std::result::Result<(), String> {
    if on_path("rclone") {
        Ok(())
    } else {
        Err("`rclone` is not installed (Debian package rclone)".to_string())
    }
}

/// Which peers this run can have (`None` in [`super::runner::Bench::peers`] with `--no-peers`).
pub(super) struct PeerPlan {
    /// The installed musefs binary, or why there is none.
    pub(super) musefs: std::result::Result<PathBuf, String>,
    /// Whether rclone is there, or why not.
    pub(super) rclone: std::result::Result<(), String>,
}

impl PeerPlan {
    pub(super) fn new(target: &Path) -> PeerPlan {
        PeerPlan {
            musefs: install_musefs(target),
            rclone: rclone_available(),
        }
    }
}

/// Where the peers live.
#[derive(Clone, Debug)]
pub(super) struct PeerPaths {
    pub(super) native_tree: PathBuf,
    pub(super) musefs_mnt: PathBuf,
    pub(super) rclone_mnt: PathBuf,
    pub(super) musefs_db: PathBuf,
    /// Output of `musefs scan`, the musefs mount and the rclone mount.
    pub(super) log: PathBuf,
}

impl PeerPaths {
    pub(super) fn new(work: &Path, mnt_dir: &Path, tracks: usize) -> PeerPaths {
        PeerPaths {
            native_tree: work.join(format!("native-tree-{tracks}")),
            musefs_mnt: mnt_dir.join("musefs"),
            rclone_mnt: mnt_dir.join("rclone"),
            musefs_db: work.join(format!("musefs-{tracks}.db")),
            log: work.join("peers.log"),
        }
    }
}

/// The note under a table with peers.
pub(super) const PEERS_NOTE: &str = "peers: `native tree` is a plain-directory copy (cp -R, \
     untimed) of the tree the musicfs mount shows, on the same disk as the origin; `musefs` is \
     musefs 1.3.0 from crates.io, `musefs mount --mode structure-only` (the original bytes, no \
     synthesized tags) over a database filled by an untimed `musefs scan`, with the template \
     `${albumartist|artist}/$album[ ($date)]/[$discnumber-][$tracknumber - ]$title`, the closest \
     to musicfs's `Artist/Album (year)/NN - Title.ext`: musefs cannot zero-pad the track number \
     nor fall back to the file name, and it puts the disc number before every track that has one \
     (musicfs only on multi-disc sets; an m4a `1/1` shows as `1_1-`); it skips the formats it does \
     not read (wv, aiff) and cannot open files with non-UTF-8 names, so it shows fewer files; \
     `rclone` is `rclone mount --read-only --vfs-cache-mode off` of the origin (the origin's \
     own layout, like bindfs). musefs and rclone keep their default attribute and directory cache \
     times. A peer that could not be installed or mounted shows \
     `missing` (the note above says why)";

//! Helpers every task shares: workspace paths, the release build, processes with deadlines and
//! the generated library of the bench, stall and demo tasks.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};

/// The workspace root (the parent of xtask/).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// Cargo's target directory (CARGO_TARGET_DIR or <workspace>/target).
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) if !d.is_empty() => {
            let d = PathBuf::from(d);
            if d.is_absolute() {
                d
            } else {
                workspace_root().join(d)
            }
        }
        _ => workspace_root().join("target"),
    }
}

/// Runs a command, failing with its command line when it fails.
pub fn run_cmd(cmd: &mut std::process::Command) -> Result<()> {
    let status = cmd
        .status()
        .map_err(|e| anyhow::anyhow!("cannot run {cmd:?}: {e}"))?;
    if !status.success() {
        anyhow::bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

/// `cargo build --release` of the two binaries.
pub fn build_release() -> Result<()> {
    run_cmd(
        std::process::Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
            .current_dir(workspace_root())
            .args([
                "build",
                "--release",
                "-p",
                "musicfs-engine",
                "-p",
                "musicfs-shim",
            ]),
    )
}

pub(crate) struct Captured {
    pub(crate) status: ExitStatus,
    pub(crate) stdout: Vec<u8>,
    pub(crate) stderr: Vec<u8>,
    pub(crate) elapsed: Duration,
}

fn drain(pipe: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut buf);
        }
        buf
    })
}

/// Runs a command with captured output; kills it (and fails) after `timeout`.
pub(crate) fn run_captured(cmd: &mut Command, what: &str, timeout: Duration) -> Result<Captured> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd.spawn().with_context(|| format!("cannot run {what}"))?;
    let out = drain(child.stdout.take());
    let err = drain(child.stderr.take());
    let status = wait_deadline(&mut child, start + timeout)?;
    let elapsed = start.elapsed();
    let Some(status) = status else {
        kill_tree(&mut child);
        bail!(
            "{what} did not finish within {} s; killed it",
            timeout.as_secs()
        );
    };
    Ok(Captured {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
        elapsed,
    })
}

/// Runs a command with inherited stdout/stderr; kills it (and fails) after `timeout`.
pub(crate) fn run_inherited(cmd: &mut Command, what: &str, timeout: Duration) -> Result<()> {
    cmd.stdin(Stdio::null());
    let mut child = cmd.spawn().with_context(|| format!("cannot run {what}"))?;
    match wait_deadline(&mut child, Instant::now() + timeout)? {
        Some(status) if status.success() => Ok(()),
        Some(status) => bail!("{what} failed ({status})"),
        None => {
            kill_tree(&mut child);
            bail!(
                "{what} did not finish within {} s; killed it",
                timeout.as_secs()
            )
        }
    }
}

/// Waits for `child` until `deadline`; `None` if it is still running then.
pub(crate) fn wait_deadline(child: &mut Child, deadline: Instant) -> Result<Option<ExitStatus>> {
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Runs `f` on a thread and waits at most `timeout` for it.
pub(crate) fn with_deadline<T: Send + 'static>(
    what: &str,
    timeout: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(timeout) {
        Ok(v) => Ok(v),
        Err(mpsc::RecvTimeoutError::Timeout) => {
            bail!("{what} did not finish within {} s", timeout.as_secs())
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => bail!("{what} panicked"),
    }
}

pub(crate) fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// The pids of every descendant of `pid`, from /proc/PID/task/*/children.
fn descendants(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        let Ok(tasks) = fs::read_dir(format!("/proc/{p}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            if let Ok(text) = fs::read_to_string(task.path().join("children")) {
                for c in text.split_whitespace().filter_map(|s| s.parse().ok()) {
                    out.push(c);
                    todo.push(c);
                }
            }
        }
    }
    out
}

/// SIGKILLs a child we started and every process it started, then reaps the child.
pub(crate) fn kill_tree(child: &mut Child) {
    let kids = descendants(child.id());
    let _ = child.kill();
    for k in kids {
        signal(k, "KILL");
    }
    let _ = child.wait();
}

pub(crate) fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(tool).is_file()))
}

/// Whether `dir` holds a finished generation (its `marker` is there): then it is reused;
/// else whatever an interrupted generation left is removed, for a new one.
pub(crate) fn reuse_generated(dir: &Path, marker: &Path, what: &str) -> Result<bool> {
    if marker.is_file() && dir.is_dir() {
        eprintln!("bench: reusing the {what} {}", dir.display());
        return Ok(true);
    }
    let _ = fs::remove_file(marker);
    if dir.exists() {
        eprintln!(
            "bench: {} is an unfinished generation; removing it",
            dir.display()
        );
        fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    Ok(false)
}

/// The library `<work>/lib-<N>`, generated unless a completed generation is there.
/// The generated library of `tracks` tracks in `work` (made once, marked complete).
pub(crate) fn ensure_library(work: &Path, tracks: usize) -> Result<PathBuf> {
    ensure_library_with(work, "lib", tracks, &[])
}

/// `ensure_library` as `<work>/<name>-<N>`, with more `gen-library` arguments.
pub(crate) fn ensure_library_with(
    work: &Path,
    name: &str,
    tracks: usize,
    args: &[&str],
) -> Result<PathBuf> {
    let lib = work.join(format!("{name}-{tracks}"));
    let marker = work.join(format!("{name}-{tracks}.complete"));
    if reuse_generated(&lib, &marker, "library")? {
        return Ok(lib);
    }
    eprintln!("bench: generating {tracks} tracks into {}", lib.display());
    let exe = std::env::current_exe().context("cannot find the xtask binary")?;
    let mut cmd = Command::new(exe);
    cmd.arg("gen-library")
        .arg("--tracks")
        .arg(tracks.to_string())
        .args(args)
        .arg("--out")
        .arg(&lib);
    let timeout = Duration::from_secs(1800 + tracks as u64 / 10);
    run_inherited(&mut cmd, "xtask gen-library", timeout)?;
    fs::write(
        &marker,
        format!("{tracks} tracks generated {}\n", utc_now()),
    )
    .with_context(|| format!("writing {}", marker.display()))?;
    Ok(lib)
}

/// The current time in UTC, `YYYY-MM-DD HH:MM:SS UTC`.
pub(crate) fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day) (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Undoes the `\ooo` octal escapes of /proc/self/mountinfo.
pub fn unescape_mountinfo(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') as u32 * 64
                + (b[i + 2] - b'0') as u32 * 8
                + (b[i + 3] - b'0') as u32;
            out.push(v as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(20_000), (2024, 10, 4));
    }
}

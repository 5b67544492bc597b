//! `xtask test-runner BINARY ARGS...`: the runner `cargo xtask ci` gives
//! cargo for every test binary. It runs the binary in a process group of
//! its own with a deadline, so that one hung test (a cleanup step waiting on
//! a FUSE mount whose server is stopped, say) fails its binary with a
//! diagnosis instead of holding the whole suite until CI's own limit: on
//! the deadline it prints every process the binary started, with its state,
//! its kernel wait channel and its kernel stack, then kills them all.

use std::collections::HashSet;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::harness::unescape_mountinfo;

/// How long one test binary may run, unless MUSICFS_TEST_BINARY_TIMEOUT
/// (seconds) says otherwise. The slowest binary takes a few minutes.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(900);

pub fn run(argv: &[String]) -> Result<()> {
    let Some((bin, args)) = argv.split_first() else {
        bail!("usage: xtask test-runner BINARY [ARGS...]");
    };
    let timeout = std::env::var("MUSICFS_TEST_BINARY_TIMEOUT")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(DEFAULT_TIMEOUT, Duration::from_secs);
    let mounts_before = fuse_mounts();
    let mut child = Command::new(bin)
        .args(args)
        .process_group(0)
        .spawn()
        .with_context(|| format!("cannot run {bin}"))?;
    let pid = child.id() as i32;
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            std::process::exit(status.code().unwrap_or(101));
        }
        if Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let doomed = descendants(pid);
    eprintln!(
        "\nxtask test-runner: {bin} still runs after {} s; its processes:",
        timeout.as_secs()
    );
    for &p in &doomed {
        eprintln!("{}", describe(p));
    }
    // SAFETY: kill(2) on the process group this runner made, and on the
    // processes found under it (some make groups or sessions of their own).
    unsafe {
        libc::kill(-pid, libc::SIGKILL);
        for &p in &doomed {
            libc::kill(p, libc::SIGCONT);
            libc::kill(p, libc::SIGKILL);
        }
    }
    let _ = child.wait();
    // What the binary mounted and left: its servers are gone, so detach it
    // before the next binary runs.
    for (minor, mountpoint) in fuse_mounts() {
        if mounts_before.iter().any(|(m, _)| *m == minor) {
            continue;
        }
        let _ = std::fs::write(format!("/sys/fs/fuse/connections/{minor}/abort"), b"1");
        if let Ok(path) = std::ffi::CString::new(unescape_mountinfo(&mountpoint)) {
            // SAFETY: a NUL-terminated path; MNT_DETACH never waits on the mount.
            unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
        }
        eprintln!("xtask test-runner: detached {mountpoint}");
    }
    eprintln!("xtask test-runner: killed; the binary fails");
    std::process::exit(101)
}

/// The FUSE mounts of this machine: (device minor, mountpoint), from
/// mountinfo (the minor names the connection in fusectl).
fn fuse_mounts() -> Vec<(String, String)> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let sep = f.iter().position(|x| *x == "-")?;
            if !f.get(sep + 1)?.starts_with("fuse") {
                return None;
            }
            let minor = f.get(2)?.split(':').nth(1)?.to_owned();
            Some((minor, f.get(4)?.to_string()))
        })
        .collect()
}

/// `root` and every process under it, parents first.
fn descendants(root: i32) -> Vec<i32> {
    let mut parent_of = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            if let Some(ppid) = stat_field(pid, 1).and_then(|s| s.parse::<i32>().ok()) {
                parent_of.push((pid, ppid));
            }
        }
    }
    let mut out = vec![root];
    let mut seen: HashSet<i32> = out.iter().copied().collect();
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        for &(child, ppid) in &parent_of {
            if ppid == p && seen.insert(child) {
                out.push(child);
            }
        }
        i += 1;
    }
    out
}

/// The field `n` (0: state, 1: ppid) after the command name of /proc/PID/stat.
fn stat_field(pid: i32, n: usize) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(n).map(str::to_owned)
}

/// One process: pid, state, wait channel, command line and kernel stack.
fn describe(pid: i32) -> String {
    let read = |f: &str| std::fs::read_to_string(format!("/proc/{pid}/{f}")).unwrap_or_default();
    let cmdline = read("cmdline").replace('\0', " ");
    let stack: String = read("stack")
        .lines()
        .map(|l| format!("\n      {l}"))
        .collect();
    format!(
        "  {pid} state={} wchan={} {}{stack}",
        stat_field(pid, 0).unwrap_or_default(),
        read("wchan"),
        cmdline.trim()
    )
}

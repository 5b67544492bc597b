//! What /proc (and the xattrs of the mount) tell about the processes under test.

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use anyhow::{Result, bail};

/// The argument lists (`/proc/PID/cmdline`) of the running processes that `pred` accepts.
fn processes(pred: impl Fn(&[&[u8]]) -> bool) -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in dir.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let Ok(raw) = fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let raw = raw.strip_suffix(&[0]).unwrap_or(&raw);
        let args: Vec<&[u8]> = raw.split(|&b| b == 0).collect();
        if pred(&args) {
            out.push(pid);
        }
    }
    out
}

fn one_process(what: &str, pids: Vec<u32>) -> Result<u32> {
    match pids.as_slice() {
        [pid] => Ok(*pid),
        [] => bail!("no {what} process found in /proc"),
        many => bail!("{} {what} processes found: {many:?}", many.len()),
    }
}

/// `musicfs engine --state-dir STATE ...`.
pub(super) fn engine_pid(state: &Path) -> Result<u32> {
    let state = state.as_os_str().as_bytes();
    one_process(
        &format!("engine for {}", String::from_utf8_lossy(state)),
        processes(|args| {
            args.get(1) == Some(&&b"engine"[..])
                && args
                    .windows(2)
                    .any(|w| w[0] == b"--state-dir" && w[1] == state)
        }),
    )
}

/// `musicfs-shim ... --mountpoint MNT ...`.
pub(super) fn shim_pid(mnt: &Path) -> Result<u32> {
    let mnt = mnt.as_os_str().as_bytes();
    one_process(
        &format!("shim for {}", String::from_utf8_lossy(mnt)),
        processes(|args| {
            args.first().is_some_and(|a| a.ends_with(b"musicfs-shim"))
                && args
                    .windows(2)
                    .any(|w| w[0] == b"--mountpoint" && w[1] == mnt)
        }),
    )
}

/// A `kB` value of /proc/PID/status (`VmRSS`, `VmHWM`).
pub(super) fn proc_status_kb(pid: u32, key: &str) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(key)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// A variable of /proc/PID/environ.
pub(super) fn proc_env(pid: u32, key: &str) -> Option<String> {
    let raw = fs::read(format!("/proc/{pid}/environ")).ok()?;
    raw.split(|&b| b == 0).find_map(|kv| {
        let v = kv.strip_prefix(key.as_bytes())?.strip_prefix(b"=")?;
        Some(String::from_utf8_lossy(v).into_owned())
    })
}

/// An extended attribute of `path` (not following a symlink).
pub(super) fn get_xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let p = CString::new(path.as_os_str().as_bytes()).ok()?;
    let n = CString::new(name).ok()?;
    let mut buf = vec![0u8; 4096];
    // SAFETY: both strings are NUL-terminated and `buf` has `buf.len()` writable bytes.
    let len =
        unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    let len = usize::try_from(len).ok()?;
    buf.truncate(len);
    Some(buf)
}

pub(super) fn meminfo_kb(key: &str) -> Option<u64> {
    let text = fs::read_to_string("/proc/meminfo").ok()?;
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(key)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

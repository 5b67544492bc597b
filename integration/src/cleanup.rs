//! Cleanups that never hang a test: commands with a deadline, and the
//! end of a FUSE mount whose server may be stopped (aborted through
//! fusectl before it is detached, as nothing that stats it would return).

use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::eventually;

/// How long a cleanup command (an unmount, a kill's reaping) may take.
pub const CLEANUP_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs `cmd` quietly, SIGKILLing it if it has not exited within `timeout`:
/// a command that touches a mount whose server hangs (umount canonicalizes
/// its path with a stat) would otherwise hang the test for ever. `None`
/// when it did not finish in time.
pub fn run_bounded(cmd: &mut Command, timeout: Duration) -> Option<ExitStatus> {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    wait_bounded(child, timeout)
}

/// Reaps `child`, SIGKILLing it if it has not exited within `timeout`;
/// gives up (leaving a zombie) if even that does not end it (a process in
/// an uninterruptible wait).
pub fn wait_bounded(mut child: Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(s)) => return Some(s),
            Err(_) => return None,
            Ok(None) if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = eventually(timeout, || !matches!(child.try_wait(), Ok(None)));
                return None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// Detaches whatever is mounted at `mnt` (`umount -l`), bounded.
pub fn detach(mnt: &Path) {
    let _ = run_bounded(Command::new("umount").arg("-l").arg(mnt), CLEANUP_TIMEOUT);
}

/// Ends a FUSE mount whose server may hang: its connection is aborted
/// through fusectl first (which never touches the mountpoint), so that
/// nothing waits on it, then it is detached.
pub fn abort_and_detach(mnt: &Path) {
    abort_fuse_connections(mnt);
    detach(mnt);
}

/// Aborts the FUSE connection of every mount on `mnt` through fusectl, as an
/// operator would; fusectl is mounted first if this machine has not (a fresh
/// CI machine often has not, and then the write would silently do nothing).
pub fn abort_fuse_connections(mnt: &Path) {
    const FUSECTL: &str = "/sys/fs/fuse/connections";
    let target = mnt.to_string_lossy().into_owned();
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let minors: Vec<String> = info
        .lines()
        .filter(|l| l.split(' ').nth(4) == Some(target.as_str()))
        .filter_map(|l| Some(l.split(' ').nth(2)?.split(':').nth(1)?.to_owned()))
        .collect();
    if minors.is_empty() {
        return;
    }
    if !Path::new(FUSECTL).join(&minors[0]).exists() {
        let _ = Command::new("mount")
            .args(["-t", "fusectl", "fusectl", FUSECTL])
            .stderr(Stdio::null())
            .status();
    }
    for minor in minors {
        let _ = std::fs::write(format!("{FUSECTL}/{minor}/abort"), b"1");
    }
}

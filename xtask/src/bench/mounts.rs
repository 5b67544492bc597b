//! The musicfs and bindfs mounts, taken down on drop, and mountpoint checks.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use super::consts::{POLL, READY_POLL, STOP_TIMEOUT};
use super::logs::{log_since, log_tail};
use crate::harness::{kill_tree, run_captured, signal, utc_now, wait_deadline};

/// A running `musicfs mount`; taken down on drop.
pub(super) struct MusicfsMount {
    bin: PathBuf,
    mnt: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    spawned: Instant,
    /// Gets a message when `musicfs mount` prints "mounted at".
    announced: mpsc::Receiver<()>,
}

impl MusicfsMount {
    /// Starts `musicfs mount` with one `--origin` per entry of `origins` (a directory or a URL).
    pub(super) fn start(
        bin: &Path,
        origins: &[&Path],
        state: &Path,
        mnt: &Path,
        log: &Path,
        label: &str,
        env: &[(&str, &str)],
    ) -> Result<MusicfsMount> {
        let mut logf = fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        writeln!(
            logf,
            "=== bench: {label}: musicfs mount at {} ===",
            utc_now()
        )?;
        let mut cmd = Command::new(bin);
        cmd.arg("mount");
        for origin in origins {
            cmd.arg("--origin").arg(origin);
        }
        cmd.arg("--state-dir")
            .arg(state)
            .arg(mnt)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let spawned = Instant::now();
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        // Both streams are copied to the log; the line "musicfs: mounted at ..." tells that the
        // supervisor itself considers the mount up.
        let (tx, announced) = mpsc::channel();
        let stdout = child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>);
        let stderr = child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>);
        for pipe in [stdout, stderr].into_iter().flatten() {
            let mut logf = logf.try_clone()?;
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut reader = std::io::BufReader::new(pipe);
                let mut line = Vec::new();
                loop {
                    line.clear();
                    match std::io::BufRead::read_until(&mut reader, b'\n', &mut line) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                    let _ = logf.write_all(&line);
                    if line.windows(10).any(|w| w == b"mounted at") {
                        let _ = tx.send(());
                    }
                }
            });
        }
        Ok(MusicfsMount {
            bin: bin.to_path_buf(),
            mnt: mnt.to_path_buf(),
            log: log.to_path_buf(),
            child: Some(child),
            spawned,
            announced,
        })
    }

    /// Waits (at most `timeout`) until `musicfs mount` prints that it is mounted. Unmounting
    /// before that makes it exit with an error ("the shim exited before it was ready").
    /// Returns false on timeout or if the streams closed first.
    pub(super) fn wait_announced(&self, timeout: Duration) -> bool {
        self.announced.recv_timeout(timeout).is_ok()
    }

    /// Waits until a readdir of the mountpoint yields an entry; returns the time since spawn.
    pub(super) fn wait_ready(&mut self, timeout: Duration) -> Result<Duration> {
        let (tx, rx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let poller = {
            let mnt = self.mnt.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(mut entries) = fs::read_dir(&mnt)
                        && let Some(Ok(_)) = entries.next()
                    {
                        let _ = tx.send(Instant::now());
                        return;
                    }
                    std::thread::sleep(READY_POLL);
                }
            })
        };
        let deadline = self.spawned + timeout;
        let result = loop {
            match rx.recv_timeout(Duration::from_millis(20)) {
                Ok(at) => break Ok(at - self.spawned),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    break Err(anyhow::anyhow!("the readiness poller stopped"));
                }
            }
            let child = self.child.as_mut().context("mount already stopped")?;
            if let Some(status) = child.try_wait()? {
                break Err(anyhow::anyhow!(
                    "musicfs mount exited ({status}) before {} answered a readdir; log tail:\n{}",
                    self.mnt.display(),
                    log_tail(&self.log, 30)
                ));
            }
            if Instant::now() >= deadline {
                break Err(anyhow::anyhow!(
                    "{} did not list any entry within {} s of starting musicfs mount; log tail:\n{}",
                    self.mnt.display(),
                    timeout.as_secs(),
                    log_tail(&self.log, 30)
                ));
            }
        };
        stop.store(true, Ordering::Relaxed);
        if result.is_ok() {
            let _ = poller.join();
        }
        result
    }

    /// Fails if `musicfs mount` has exited or the mount is gone (a measurement on it would be
    /// meaningless).
    pub(super) fn check_alive(&mut self) -> Result<()> {
        let child = self
            .child
            .as_mut()
            .context("the mount was already stopped")?;
        if let Some(status) = child.try_wait()? {
            bail!(
                "musicfs mount exited ({status}) in the middle of the bench; log tail:\n{}",
                log_tail(&self.log, 30)
            );
        }
        ensure!(
            is_mounted(&self.mnt),
            "{} is no longer mounted although musicfs mount is running; log tail:\n{}",
            self.mnt.display(),
            log_tail(&self.log, 30)
        );
        Ok(())
    }

    /// Waits (at most `timeout`) until the log after `offset` (a length of the log file taken
    /// before this mount started) has a line containing `needle`; returns the first such line.
    /// Fails early if the mount goes away.
    pub(super) fn wait_log(
        &mut self,
        offset: u64,
        needle: &str,
        timeout: Duration,
    ) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = log_since(&self.log, offset)
                .lines()
                .find(|l| l.contains(needle))
            {
                return Ok(line.to_string());
            }
            self.check_alive()?;
            ensure!(
                Instant::now() < deadline,
                "no log line with {needle:?} within {} s; log tail:\n{}",
                timeout.as_secs(),
                log_tail(&self.log, 30)
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Unmounts and waits for the process; returns what went wrong on the way (if anything).
    pub(super) fn stop(mut self) -> Result<Vec<String>> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<Vec<String>> {
        let mut problems = Vec::new();
        let Some(mut child) = self.child.take() else {
            return Ok(problems);
        };
        if let Ok(Some(status)) = child.try_wait() {
            problems.push(format!(
                "musicfs mount had already exited ({status}) before the bench unmounted it \
                 (stopped from outside?); log: {}",
                self.log.display()
            ));
            if is_mounted(&self.mnt) {
                lazy_unmount(&self.mnt);
            }
            return Ok(problems);
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        let mut cmd = Command::new(&self.bin);
        cmd.arg("unmount").arg(&self.mnt);
        let unmounted = match run_captured(&mut cmd, "musicfs unmount", STOP_TIMEOUT) {
            Ok(out) if out.status.success() => true,
            Ok(out) => {
                problems.push(format!(
                    "`musicfs unmount` failed ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
                false
            }
            Err(e) => {
                problems.push(format!("`musicfs unmount` failed: {e:#}"));
                false
            }
        };
        if !unmounted {
            signal(child.id(), "TERM");
        }
        match wait_deadline(&mut child, deadline)? {
            Some(status) if status.success() => {}
            Some(status) => problems.push(format!(
                "musicfs mount exited with {status} after the unmount; log: {}",
                self.log.display()
            )),
            None => {
                problems.push(format!(
                    "musicfs mount did not exit within {} s of the unmount; killed it",
                    STOP_TIMEOUT.as_secs()
                ));
                kill_tree(&mut child);
            }
        }
        if is_mounted(&self.mnt) {
            problems.push(format!(
                "{} was still mounted after musicfs exited; lazily unmounted it",
                self.mnt.display()
            ));
            lazy_unmount(&self.mnt);
        }
        Ok(problems)
    }
}

impl Drop for MusicfsMount {
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

/// A `bindfs -r` mount of the origin; unmounted on drop.
pub(super) struct BindfsMount {
    mnt: PathBuf,
    mounted: bool,
}

impl BindfsMount {
    pub(super) fn start(lib: &Path, mnt: &Path) -> Result<BindfsMount> {
        let mut cmd = Command::new("bindfs");
        cmd.arg("-r").arg(lib).arg(mnt);
        let out = run_captured(&mut cmd, "bindfs", STOP_TIMEOUT)?;
        let guard = BindfsMount {
            mnt: mnt.to_path_buf(),
            mounted: true,
        };
        ensure!(
            out.status.success(),
            "bindfs -r {} {} failed ({}): {}",
            lib.display(),
            mnt.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        let deadline = Instant::now() + STOP_TIMEOUT;
        while !is_mounted(mnt) {
            ensure!(
                Instant::now() < deadline,
                "bindfs did not mount {} within {} s",
                mnt.display(),
                STOP_TIMEOUT.as_secs()
            );
            std::thread::sleep(POLL);
        }
        Ok(guard)
    }

    pub(super) fn check_alive(&self) -> Result<()> {
        ensure!(
            is_mounted(&self.mnt),
            "the bindfs mount {} disappeared in the middle of the bench",
            self.mnt.display()
        );
        Ok(())
    }

    pub(super) fn stop(mut self) -> Result<()> {
        self.mounted = false;
        let mut cmd = Command::new("fusermount3");
        cmd.arg("-u").arg(&self.mnt);
        let out = run_captured(&mut cmd, "fusermount3 -u", STOP_TIMEOUT);
        match out {
            Ok(o) if o.status.success() => Ok(()),
            other => {
                lazy_unmount(&self.mnt);
                let why = match other {
                    Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_string(),
                    Err(e) => format!("{e:#}"),
                };
                bail!("fusermount3 -u {} failed: {why}", self.mnt.display())
            }
        }
    }
}

impl Drop for BindfsMount {
    fn drop(&mut self) {
        if self.mounted && is_mounted(&self.mnt) {
            lazy_unmount(&self.mnt);
        }
    }
}

/// `fusermount3 -u -z`, best effort.
pub(super) fn lazy_unmount(mnt: &Path) {
    let mut cmd = Command::new("fusermount3");
    cmd.arg("-u").arg("-z").arg(mnt);
    match run_captured(&mut cmd, "fusermount3 -u -z", STOP_TIMEOUT) {
        Ok(o) if o.status.success() => {}
        Ok(o) => eprintln!(
            "bench: fusermount3 -u -z {} failed: {}",
            mnt.display(),
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => eprintln!("bench: fusermount3 -u -z {}: {e:#}", mnt.display()),
    }
}

/// Unmounts whatever a crashed earlier run left on `mnt`.
pub(super) fn clear_stale_mount(mnt: &Path) -> Result<()> {
    if is_mounted(mnt) {
        eprintln!(
            "bench: {} is still mounted (earlier run?); unmounting it",
            mnt.display()
        );
        lazy_unmount(mnt);
        ensure!(
            !is_mounted(mnt),
            "{} is mounted and could not be unmounted",
            mnt.display()
        );
    }
    Ok(())
}

/// Whether `path` (absolute, canonical) is a mountpoint, from /proc/self/mountinfo.
pub(super) fn is_mounted(path: &Path) -> bool {
    let Ok(text) = fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = path.as_os_str().as_bytes();
    text.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|m| crate::harness::unescape_mountinfo(m) == want)
}

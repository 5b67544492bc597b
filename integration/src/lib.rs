//! Test harness for black-box tests on a real kernel mount: finds the built
//! binaries, generates (and caches) libraries with `xtask gen-library`, and
//! runs `musicfs mount` as a child process that is always cleaned up.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::ffi::CString;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub mod cleanup;
pub mod library;
pub mod load;
pub mod notify;
pub mod servers;
pub mod share;
pub use cleanup::*;
pub use library::*;
pub use load::{Load, start_load};
pub use share::{Hung, ShareOptions, SshShare};

/// The workspace root.
/// A config line for tests whose cache sits on the host's disk: the cache
/// then writes however full that disk is (its default stops at 10 % free,
/// and a CI machine's disk may be fuller than that). Tests of the
/// watermark put their cache on a small tmpfs and set their own.
pub const CACHE_ON_ANY_DISK: &str = "cache_min_free_percent = 0\n";

pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

pub(crate) fn target_dir() -> PathBuf {
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

/// Directory holding `musicfs` and `musicfs-shim` (`MUSICFS_BIN_DIR`, or target/debug).
pub fn bin_dir() -> PathBuf {
    std::env::var_os("MUSICFS_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("debug"))
}

pub fn musicfs_bin() -> PathBuf {
    let p = bin_dir().join("musicfs");
    assert!(
        p.is_file(),
        "{} is missing: run `cargo build --workspace --bins` first (cargo xtask ci does)",
        p.display()
    );
    p
}

pub(crate) fn xtask_bin() -> PathBuf {
    let p = std::env::var_os("MUSICFS_XTASK_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("debug/xtask"));
    assert!(
        p.is_file(),
        "{} is missing: build it with `cargo build -p xtask`",
        p.display()
    );
    p
}

/// blake3 of a whole file.
pub fn hash_file(path: &Path) -> std::io::Result<blake3::Hash> {
    let mut f = std::fs::File::open(path)?;
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 128 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize())
}

/// An extended attribute of `path`, if it has it.
pub fn getxattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let p = CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = CString::new(name).unwrap();
    let mut buf = vec![0u8; 4096];
    // SAFETY: both strings are NUL-terminated and buf is valid for buf.len() bytes.
    let len = unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if len < 0 {
        return None;
    }
    buf.truncate(len as usize);
    Some(buf)
}

/// Whether `path` is the root of a mount.
pub fn is_mountpoint(path: &Path) -> bool {
    let (Ok(m), Ok(p)) = (std::fs::metadata(path), std::fs::metadata(path.join(".."))) else {
        return false;
    };
    m.dev() != p.dev()
}

/// A running `musicfs mount`, unmounted and reaped on drop.
pub struct Mount {
    pub root: tempfile::TempDir,
    pub mnt: PathBuf,
    pub state: PathBuf,
    child: Option<Child>,
    log: PathBuf,
}

impl Mount {
    /// Mounts `origins` with a fresh state directory.
    pub fn start(origins: &[&Path]) -> Mount {
        Self::start_with(origins, None, &[])
    }

    /// Mounts with an optional existing state directory and extra environment.
    pub fn start_with(origins: &[&Path], state: Option<&Path>, env: &[(&str, &str)]) -> Mount {
        Self::start_at(origins, state, None, env)
    }

    /// As `start_with`, on a given (existing) mountpoint.
    pub fn start_at(
        origins: &[&Path],
        state: Option<&Path>,
        mnt: Option<&Path>,
        env: &[(&str, &str)],
    ) -> Mount {
        Self::start_full(origins, None, state, mnt, env)
    }

    /// Mounts with the origins (and everything else) from a config file:
    /// `musicfs --config FILE mount --state-dir STATE MNT`, so that a reload
    /// can change them.
    pub fn start_with_config(config: &Path, env: &[(&str, &str)]) -> Mount {
        Self::start_full(&[], Some(config), None, None, env)
    }

    /// As `start_with_config`, with a given state directory (kept between
    /// mounts).
    pub fn start_with_config_state(config: &Path, state: &Path, env: &[(&str, &str)]) -> Mount {
        Self::start_full(&[], Some(config), Some(state), None, env)
    }

    fn start_full(
        origins: &[&Path],
        config: Option<&Path>,
        state: Option<&Path>,
        mnt: Option<&Path>,
        env: &[(&str, &str)],
    ) -> Mount {
        let root = tempfile::Builder::new()
            .prefix("mfs")
            .tempdir_in("/tmp")
            .unwrap();
        let mnt = match mnt {
            Some(m) => m.to_path_buf(),
            None => {
                let m = root.path().join("mnt");
                std::fs::create_dir(&m).unwrap();
                m
            }
        };
        let state = state.map_or_else(|| root.path().join("state"), Path::to_path_buf);
        let log = root.path().join("musicfs.log");
        let mut cmd = Command::new(musicfs_bin());
        if let Some(c) = config {
            cmd.arg("--config").arg(c);
        }
        cmd.arg("mount").arg("--state-dir").arg(&state);
        for o in origins {
            cmd.arg("--origin").arg(o);
        }
        cmd.arg(&mnt)
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env("MUSICFS_LOG", "info")
            .env("HOME", root.path())
            // The chunk cache of network origins stays in the test's dir.
            .env("XDG_CACHE_HOME", root.path().join("cache"))
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::options().append(true).open(&log).unwrap());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap();
        let mut m = Mount {
            root,
            mnt,
            state,
            child: Some(child),
            log,
        };
        m.wait_mounted(Duration::from_secs(300));
        m
    }

    /// Waits for the supervisor's "mounted at" line (printed once the shim
    /// reports the mount live; a stale old mount would fool a stat check).
    fn wait_mounted(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !(self.log_text().contains("musicfs: mounted at") && is_mountpoint(&self.mnt)) {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "musicfs exited before mounting ({status}):\n{}",
                    self.log_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "not mounted after {timeout:?}:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// PID of the `musicfs mount` supervisor.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Forgets the supervisor without stopping it (the test killed it).
    pub fn abandon(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends `signal` to `musicfs mount` and waits (bounded) for it to exit.
    pub fn stop_with_signal(&mut self, signal: i32) -> ExitStatus {
        let mut child = self.child.take().unwrap();
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(child.id() as i32, signal) };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                abort_and_detach(&self.mnt);
                panic!(
                    "musicfs mount did not exit within 20 s of signal {signal}:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Unmounts with `musicfs unmount` and waits for `musicfs mount` to exit.
    pub fn stop(mut self) -> ExitStatus {
        self.stop_inner().expect("musicfs mount did not exit")
    }

    fn stop_inner(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let _ = run_bounded(
            Command::new(musicfs_bin()).arg("unmount").arg(&self.mnt),
            CLEANUP_TIMEOUT,
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                abort_and_detach(&self.mnt);
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = self.stop_inner();
        }
    }
}

/// Every regular file below `root` (paths relative to it), sorted.
pub fn list_files(root: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = walkdir::WalkDir::new(root)
        .into_iter()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().is_file())
        .map(|e| e.path().strip_prefix(root).unwrap().to_path_buf())
        .collect();
    out.sort();
    out
}

/// A `musicfs engine` run on its own (no mount), for tests of the engine's
/// start-up, scan and locking. Killed on drop.
pub struct EngineProc {
    pub child: Child,
    pub log: PathBuf,
}

impl EngineProc {
    pub fn start(origin: &Path, state: &Path, log: &Path, env: &[(&str, &str)]) -> EngineProc {
        let args = [
            "engine".as_ref(),
            "--origin".as_ref(),
            origin.as_os_str(),
            "--state-dir".as_ref(),
            state.as_os_str(),
        ];
        Self::start_args(&args, state, log, env)
    }

    /// `musicfs ARGS...` (the arguments include `engine`), logging to `log`.
    pub fn start_args(
        args: &[&std::ffi::OsStr],
        state: &Path,
        log: &Path,
        env: &[(&str, &str)],
    ) -> EngineProc {
        Self::start_program(musicfs_bin().as_os_str(), args, state, log, env)
    }

    /// `program args`, which runs an engine (a wrapper may set up its
    /// environment first).
    pub fn start_program(
        program: &std::ffi::OsStr,
        args: &[&std::ffi::OsStr],
        state: &Path,
        log: &Path,
        env: &[(&str, &str)],
    ) -> EngineProc {
        let mut cmd = Command::new(program);
        cmd.args(args)
            // Not "under systemd" unless a test says so (CI may run in a unit).
            .env_remove("INVOCATION_ID")
            .env_remove("SYSTEMD_EXEC_PID")
            .env_remove("NOTIFY_SOCKET")
            .env("HOME", state.parent().unwrap_or(state))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap());
        for (k, v) in env {
            cmd.env(k, v);
        }
        EngineProc {
            child: cmd.spawn().unwrap(),
            log: log.to_path_buf(),
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (bounded) until the log contains `needle` at least `count` times.
    pub fn wait_log(&mut self, needle: &str, count: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if self.log_text().matches(needle).count() >= count {
                return;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "engine exited ({status}) before logging {needle:?}:\n{}",
                    self.log_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in the engine log after {timeout:?}:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait (bounded) for the exit.
    pub fn stop(&mut self) -> ExitStatus {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            if Instant::now() > deadline {
                self.kill9();
                panic!("engine did not stop within 20 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for EngineProc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.kill9();
        }
    }
}

/// The value of `key=NUMBER` in the last log line that contains `marker`.
pub fn log_number(log: &str, marker: &str, key: &str) -> Option<u64> {
    let line = log.lines().rev().find(|l| l.contains(marker))?;
    let start = line.find(&format!("{key}="))? + key.len() + 1;
    line[start..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// Polls `f` until it returns true or `timeout` passes.
pub fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends SIGSTOP to `pid` and waits (bounded) until every thread of it is
/// stopped: kill(2) returns before the threads stop, and a request that
/// arrives in between may still be answered.
pub fn stop_process(pid: i32) {
    // SAFETY: kill(2) on a process the calling test started.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let stopped = eventually(Duration::from_secs(10), || all_threads_stopped(pid));
    assert!(stopped, "process {pid} did not stop within 10 s of SIGSTOP");
}

/// Whether every thread of `pid` is stopped (state `T`, or `t` when traced).
pub fn all_threads_stopped(pid: i32) -> bool {
    std::fs::read_dir(format!("/proc/{pid}/task")).is_ok_and(|tasks| {
        tasks.flatten().all(|t| {
            std::fs::read_to_string(t.path().join("stat")).is_ok_and(|s| {
                s.rsplit_once(") ")
                    .is_some_and(|(_, r)| r.starts_with('T') || r.starts_with('t'))
            })
        })
    })
}

/// PIDs of processes whose command line contains `needle`.
pub fn pids_with_cmdline(needle: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains(needle) && pid != std::process::id() as i32 {
            out.push(pid);
        }
    }
    out
}

/// Counts opens of regular files below a directory tree, with inotify.
pub struct OpenCounter {
    fd: i32,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    count: std::sync::Arc<std::sync::atomic::AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl OpenCounter {
    pub fn start(root: &Path) -> OpenCounter {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        // SAFETY: plain syscalls; paths are NUL-terminated CStrings.
        let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) };
        assert!(fd >= 0, "inotify_init1 failed");
        for e in walkdir::WalkDir::new(root) {
            let e = e.unwrap();
            if e.file_type().is_dir() {
                let c = CString::new(e.path().as_os_str().as_bytes()).unwrap();
                let wd = unsafe { libc::inotify_add_watch(fd, c.as_ptr(), libc::IN_OPEN) };
                assert!(wd >= 0, "inotify_add_watch failed");
            }
        }
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let count = std::sync::Arc::new(AtomicU64::new(0));
        let (s, c) = (stop.clone(), count.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            while !s.load(Ordering::Relaxed) {
                // SAFETY: buf is valid for buf.len() bytes.
                let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
                if n <= 0 {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                }
                let mut off = 0usize;
                while off + std::mem::size_of::<libc::inotify_event>() <= n as usize {
                    // SAFETY: the kernel wrote a whole inotify_event at `off`.
                    let ev: libc::inotify_event =
                        unsafe { std::ptr::read_unaligned(buf.as_ptr().add(off).cast()) };
                    if ev.mask & libc::IN_OPEN != 0 && ev.mask & libc::IN_ISDIR == 0 {
                        c.fetch_add(1, Ordering::Relaxed);
                    }
                    off += std::mem::size_of::<libc::inotify_event>() + ev.len as usize;
                }
            }
        });
        OpenCounter {
            fd,
            stop,
            count,
            thread: Some(thread),
        }
    }

    /// File opens seen so far (after a short pause to drain the queue).
    pub fn count(&self) -> u64 {
        std::thread::sleep(Duration::from_millis(100));
        self.count.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for OpenCounter {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // SAFETY: fd is ours.
        unsafe { libc::close(self.fd) };
    }
}

/// Copies a directory tree (cp -a).
pub fn copy_tree(from: &Path, to: &Path) {
    let status = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(status.success(), "cp -a failed");
}

/// Like `list_files`, for a tree that may be changing under the walk: entries
/// that vanish mid-walk are skipped instead of failing.
pub fn list_files_lenient(root: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = walkdir::WalkDir::new(root)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .filter_map(|e| e.path().strip_prefix(root).ok().map(Path::to_path_buf))
        .collect();
    out.sort();
    out
}

/// Copies the library's normal tracks `skip..skip + n` (in manifest order)
/// to the same relative paths under `to`: a small origin of real files.
pub fn copy_tracks(lib: &Path, manifest: &[ManifestEntry], skip: usize, n: usize, to: &Path) {
    use std::os::unix::ffi::OsStrExt;
    for e in manifest
        .iter()
        .filter(|e| e.kind == "normal")
        .skip(skip)
        .take(n)
    {
        let rel = PathBuf::from(std::ffi::OsStr::from_bytes(&e.raw_path()));
        let dst = to.join(&rel);
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        std::fs::copy(lib.join(&rel), &dst).unwrap();
    }
}

/// `musicfs status --json` of the engine of `state`.
pub fn status_json(state: &Path) -> serde_json::Value {
    let out = Command::new(musicfs_bin())
        .args(["status", "--json", "--state-dir"])
        .arg(state)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Every mounted file's bytes equal its origin file's, and the origin is
/// one of `origins`.
pub fn assert_files_match(mnt: &Path, origins: &[&Path]) -> usize {
    let files = list_files(mnt);
    for rel in &files {
        let p = mnt.join(rel);
        let origin = PathBuf::from(
            <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(
                &getxattr(&p, "user.musicfs.origin").unwrap(),
            ),
        );
        assert!(
            origins.iter().any(|o| origin.starts_with(o)),
            "{} comes from {}",
            rel.display(),
            origin.display()
        );
        assert_eq!(
            hash_file(&p).unwrap(),
            hash_file(&origin).unwrap(),
            "{} has wrong bytes",
            rel.display()
        );
    }
    files.len()
}

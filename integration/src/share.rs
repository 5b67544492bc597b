//! A real network share for tests: an OpenSSH `sshd` on 127.0.0.1 with
//! generated keys, and `sshfs` mounting a directory through it. sshfs is a
//! FUSE filesystem, so the engine treats the mountpoint as a network origin.
//!
//! [`SshShare::hang`] SIGSTOPs the sshd processes serving the session:
//! every access to the mount then blocks, like a NAS that stops answering,
//! until the returned [`Hung`] guard is resumed or dropped.
//!
//! Everything here is bounded: start-up panics (with the sshd and sshfs log
//! tails) if the share is not up within its time limits, and dropping an
//! [`SshShare`] never waits on the mount (the unmount is lazy, the processes
//! are SIGKILLed).

use std::collections::{HashMap, HashSet};
use std::ffi::CStr;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::time::{Duration, Instant};

use crate::eventually;

pub(crate) const SSHD: &str = "/usr/sbin/sshd";
/// How long sshd may take to listen, and sshfs to mount.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a killed process (or fusermount3) may take to go away.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// Attempts at a free port (another process may take the one we picked
/// between our probe and sshd's bind).
const PORT_ATTEMPTS: usize = 5;

/// How the share is mounted.
#[derive(Clone, Debug, Default)]
pub struct ShareOptions {
    /// `sshfs -o allow_other`, so that other users (an engine run as a
    /// non-root user through setpriv) can read the mount.
    pub allow_other: bool,
    /// `ServerAliveInterval` of the ssh client, in seconds. None (the
    /// default) means no keepalive: a hung share stays hung rather than
    /// being unmounted by sshfs.
    pub server_alive: Option<u32>,
}

/// An sshd on 127.0.0.1 and an sshfs mount of a directory through it;
/// unmounted and killed on drop.
pub struct SshShare {
    /// Holds `ssh/` (keys, config, logs; mode 0700) and `mnt/`. The root is
    /// 0711 so that other users can reach `mnt/` with `allow_other`.
    root: Option<tempfile::TempDir>,
    mnt: PathBuf,
    sshd_log: PathBuf,
    sshfs_log: PathBuf,
    sshd: Option<Child>,
    sshfs: Option<Child>,
    port: u16,
    /// The pids SIGSTOPped by [`SshShare::hang`] and not resumed yet.
    stopped: Arc<Mutex<Vec<i32>>>,
    /// What [`SshShare::reconnect`] mounts again.
    export: PathBuf,
    client_key: PathBuf,
    opts: ShareOptions,
}

impl SshShare {
    /// Shares `export` (an existing directory) with the default options.
    pub fn start(export: &Path) -> SshShare {
        Self::start_with(export, ShareOptions::default())
    }

    /// Shares `export` (an existing directory) and waits (bounded) until the
    /// mountpoint lists its entries.
    pub fn start_with(export: &Path, opts: ShareOptions) -> SshShare {
        let export = export
            .canonicalize()
            .unwrap_or_else(|e| panic!("share export {}: {e}", export.display()));
        assert!(
            export.is_dir(),
            "share export {} is not a directory",
            export.display()
        );
        assert!(
            Path::new(SSHD).is_file(),
            "{SSHD} is missing: run packaging/install-deps.sh (openssh-server)"
        );
        let root = tempfile::Builder::new()
            .prefix("mfs-share")
            .tempdir_in("/tmp")
            .expect("creating the share's temp dir");
        std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o711))
            .expect("chmod of the share's temp dir");
        let ssh = root.path().join("ssh");
        let mnt = root.path().join("mnt");
        std::fs::create_dir(&ssh).expect("creating the share's ssh dir");
        std::fs::set_permissions(&ssh, std::fs::Permissions::from_mode(0o700))
            .expect("chmod of the share's ssh dir");
        std::fs::create_dir(&mnt).expect("creating the share's mountpoint");
        // As /proc/self/mountinfo will show it (were /tmp a symlink).
        let mnt = mnt
            .canonicalize()
            .expect("resolving the share's mountpoint");

        let host_key = ssh.join("host_ed25519");
        let client_key = ssh.join("client_ed25519");
        keygen(&host_key);
        keygen(&client_key);
        let authorized = ssh.join("authorized_keys");
        std::fs::copy(client_key.with_extension("pub"), &authorized)
            .expect("writing authorized_keys");
        privsep_dir();

        let mut share = SshShare {
            root: Some(root),
            mnt,
            sshd_log: ssh.join("sshd.log"),
            sshfs_log: ssh.join("sshfs.log"),
            sshd: None,
            sshfs: None,
            port: 0,
            stopped: Arc::new(Mutex::new(Vec::new())),
            export: export.clone(),
            client_key: client_key.clone(),
            opts: opts.clone(),
        };
        // From here on, a panic drops `share`, which cleans up.
        share.start_sshd(&ssh, &host_key, &authorized);
        share.mount(&export, &client_key, &opts);
        share
    }

    /// A network share that drops its connection and is mounted again, as
    /// an automounter or a NAS reboot does: sshfs is killed (files opened
    /// before answer `ENOTCONN` from then on), its dead mount detached, and
    /// a new sshfs mounted at the same path. Returns once the new mount
    /// lists the export.
    pub fn reconnect(&mut self) {
        if let Some(child) = self.sshfs.take() {
            let pid = child.id() as i32;
            // SAFETY: plain kill(2) on the process group of our child.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
            let _ = crate::wait_bounded(child, STOP_TIMEOUT);
        }
        let _ = crate::run_bounded(
            Command::new("umount").arg("-l").arg(&self.mnt),
            STOP_TIMEOUT,
        );
        assert!(
            !is_mounted(&self.mnt),
            "the dead sshfs mount at {} could not be detached",
            self.mnt.display()
        );
        let (export, key, opts) = (
            self.export.clone(),
            self.client_key.clone(),
            self.opts.clone(),
        );
        self.mount(&export, &key, &opts);
    }

    /// Where the export is mounted.
    pub fn mountpoint(&self) -> &Path {
        &self.mnt
    }

    /// The port sshd listens on (on 127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The sshd processes serving the sshfs session: every descendant of
    /// the sshd listener (found through the ppid chains in /proc/*/stat).
    pub fn session_pids(&self) -> Vec<i32> {
        self.sshd
            .as_ref()
            .map_or_else(Vec::new, |c| descendants(c.id() as i32))
    }

    /// SIGSTOPs the session's sshd processes, so that every access to the
    /// mount blocks, and waits (bounded) until they are stopped. The guard
    /// SIGCONTs them on [`Hung::resume`] or drop (as does dropping the share).
    #[must_use = "dropping the guard resumes the share at once"]
    pub fn hang(&self) -> Hung {
        let pids = self.session_pids();
        assert!(
            !pids.is_empty(),
            "no sshd session processes to stop:\n{}",
            self.logs()
        );
        {
            let mut stopped = self.stopped.lock().unwrap_or_else(PoisonError::into_inner);
            for &pid in &pids {
                // SAFETY: plain kill(2) on an sshd process we started.
                unsafe { libc::kill(pid, libc::SIGSTOP) };
                if !stopped.contains(&pid) {
                    stopped.push(pid);
                }
            }
        }
        let all_stopped = eventually(START_TIMEOUT, || {
            pids.iter()
                .all(|&p| matches!(proc_state(p), Some('T') | None))
        });
        assert!(
            all_stopped,
            "sshd session {pids:?} not stopped after SIGSTOP"
        );
        Hung {
            pids,
            stopped: Arc::clone(&self.stopped),
        }
    }

    /// The tails of the sshd and sshfs logs, for failure messages.
    pub fn logs(&self) -> String {
        format!(
            "--- sshd log ({}):\n{}\n--- sshfs log ({}):\n{}",
            self.sshd_log.display(),
            tail(&self.sshd_log),
            self.sshfs_log.display(),
            tail(&self.sshfs_log)
        )
    }

    fn start_sshd(&mut self, ssh: &Path, host_key: &Path, authorized: &Path) {
        let config = ssh.join("sshd_config");
        for attempt in 1..=PORT_ATTEMPTS {
            let port = free_port();
            std::fs::write(
                &config,
                format!(
                    "ListenAddress 127.0.0.1\n\
                     Port {port}\n\
                     HostKey {host}\n\
                     AuthorizedKeysFile {auth}\n\
                     PidFile {pid}\n\
                     PermitRootLogin prohibit-password\n\
                     PubkeyAuthentication yes\n\
                     PasswordAuthentication no\n\
                     KbdInteractiveAuthentication no\n\
                     UsePAM no\n\
                     StrictModes no\n\
                     X11Forwarding no\n\
                     PrintMotd no\n\
                     Subsystem sftp internal-sftp\n\
                     LogLevel ERROR\n",
                    host = host_key.display(),
                    auth = authorized.display(),
                    pid = ssh.join("sshd.pid").display(),
                ),
            )
            .expect("writing sshd_config");
            let log = std::fs::File::create(&self.sshd_log).expect("creating the sshd log");
            let child = Command::new(SSHD)
                .arg("-D")
                .arg("-e")
                .arg("-f")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .process_group(0)
                .spawn()
                .unwrap_or_else(|e| panic!("spawning {SSHD}: {e}"));
            let pid = child.id() as i32;
            self.sshd = Some(child);
            self.port = port;
            let mut exited = None;
            let up = eventually(START_TIMEOUT, || {
                if let Some(status) = self.sshd.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                    exited = Some(status);
                    return true;
                }
                listens(pid, port)
            });
            match exited {
                None if up => return,
                None => panic!(
                    "sshd not listening on 127.0.0.1:{port} after {START_TIMEOUT:?}:\n{}",
                    self.logs()
                ),
                Some(status) => {
                    self.sshd = None;
                    let log = tail(&self.sshd_log);
                    if attempt < PORT_ATTEMPTS && log.contains("Address already in use") {
                        continue;
                    }
                    panic!("sshd exited before listening ({status}):\n{}", self.logs());
                }
            }
        }
        unreachable!("every sshd attempt returns or panics");
    }

    fn mount(&mut self, export: &Path, client_key: &Path, opts: &ShareOptions) {
        let mut ssh_opts = format!(
            "IdentityFile={},IdentitiesOnly=yes,StrictHostKeyChecking=no,\
             UserKnownHostsFile=/dev/null,BatchMode=yes,LogLevel=ERROR,port={}",
            client_key.display(),
            self.port
        );
        if let Some(secs) = opts.server_alive {
            ssh_opts.push_str(&format!(",ServerAliveInterval={secs}"));
        }
        if opts.allow_other {
            ssh_opts.push_str(",allow_other");
        }
        let log = std::fs::File::create(&self.sshfs_log).expect("creating the sshfs log");
        // In the foreground (-f) as our child, in its own process group, so
        // that it and its ssh client are killed reliably on drop.
        let child = Command::new("sshfs")
            .arg("-f")
            .arg("-F")
            .arg("/dev/null")
            .arg("-o")
            .arg(&ssh_opts)
            .arg(format!("{}@127.0.0.1:{}", user_name(), export.display()))
            .arg(&self.mnt)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("spawning sshfs (is it installed?): {e}"));
        self.sshfs = Some(child);

        let mut exited = None;
        let mounted = eventually(START_TIMEOUT, || {
            if let Some(status) = self
                .sshfs
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                exited = Some(status);
                return true;
            }
            is_mounted(&self.mnt)
        });
        if let Some(status) = exited {
            panic!("sshfs exited before mounting ({status}):\n{}", self.logs());
        }
        assert!(
            mounted,
            "sshfs did not mount {} within {START_TIMEOUT:?}:\n{}",
            self.mnt.display(),
            self.logs()
        );

        // The mount lists the export's entries (each listing bounded, since
        // a broken mount may block).
        let want = dir_names(export).expect("listing the export");
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let mnt = self.mnt.clone();
            let got = within(left, move || dir_names(&mnt));
            match got {
                Some(Ok(names)) if names == want => return,
                None => panic!(
                    "listing {} did not answer within {START_TIMEOUT:?}:\n{}",
                    self.mnt.display(),
                    self.logs()
                ),
                other => assert!(
                    Instant::now() < deadline,
                    "{} does not list the export's entries after {START_TIMEOUT:?} \
                     (got {other:?}, want {want:?}):\n{}",
                    self.mnt.display(),
                    self.logs()
                ),
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn resume_all(&self) {
        let mut stopped = self.stopped.lock().unwrap_or_else(PoisonError::into_inner);
        for pid in stopped.drain(..) {
            // SAFETY: plain kill(2) on an sshd process we stopped.
            unsafe { libc::kill(pid, libc::SIGCONT) };
        }
    }
}

impl Drop for SshShare {
    fn drop(&mut self) {
        self.resume_all();
        // Lazy: a hung share cannot block the unmount.
        if is_mounted(&self.mnt) {
            let _ = crate::run_bounded(
                Command::new("fusermount3").arg("-uz").arg(&self.mnt),
                STOP_TIMEOUT,
            );
        }
        // Collected before the kills: once their parents are gone, the
        // session processes are reparented and no longer found by ppid.
        let mut doomed = Vec::new();
        for child in [&self.sshfs, &self.sshd].into_iter().flatten() {
            let pid = child.id() as i32;
            doomed.extend(descendants(pid));
            doomed.push(pid);
        }
        for child in [&mut self.sshfs, &mut self.sshd].into_iter().flatten() {
            let pid = child.id() as i32;
            // SAFETY: plain kill(2) on the process group of our child.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
        }
        for &pid in &doomed {
            // SAFETY: plain kill(2) on processes we started (or their ssh
            // children); they are still ours, as they are not reaped yet
            // (children) or were found just above.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        for child in [self.sshfs.take(), self.sshd.take()].into_iter().flatten() {
            let _ = crate::wait_bounded(child, STOP_TIMEOUT);
        }
        if is_mounted(&self.mnt) {
            let _ = crate::run_bounded(
                Command::new("umount").arg("-l").arg(&self.mnt),
                STOP_TIMEOUT,
            );
        }
        if is_mounted(&self.mnt) {
            // Never remove_dir_all through a live mount (it would delete the
            // export): leave the temp dir behind.
            if let Some(root) = self.root.take() {
                let kept = root.keep();
                eprintln!(
                    "SshShare: {} is still mounted; leaving {}",
                    self.mnt.display(),
                    kept.display()
                );
            }
        }
    }
}

/// The session of an [`SshShare`], SIGSTOPped; SIGCONTed on [`Hung::resume`]
/// or drop.
#[must_use = "dropping the guard resumes the share at once"]
pub struct Hung {
    pids: Vec<i32>,
    stopped: Arc<Mutex<Vec<i32>>>,
}

impl Hung {
    /// The stopped sshd processes.
    pub fn pids(&self) -> &[i32] {
        &self.pids
    }

    /// SIGCONTs the stopped processes (same as dropping the guard).
    pub fn resume(self) {}
}

impl Drop for Hung {
    fn drop(&mut self) {
        let mut stopped = self.stopped.lock().unwrap_or_else(PoisonError::into_inner);
        // Only the pids still stopped: the share's drop may have resumed and
        // killed them already (and a pid may have been reused since).
        stopped.retain(|pid| {
            if self.pids.contains(pid) {
                // SAFETY: plain kill(2) on an sshd process we stopped.
                unsafe { libc::kill(*pid, libc::SIGCONT) };
                false
            } else {
                true
            }
        });
    }
}

/// Whether `path` is a mountpoint in /proc/self/mountinfo (read without
/// touching the filesystem, so it never blocks on a hung mount).
pub fn is_mounted(path: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = path.to_string_lossy();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|m| musicfs_engine::sys::mountinfo::unescape(m) == want)
}

/// Runs `f` in a thread and waits at most `timeout` for its result. A call
/// that does not finish in time is left running (its thread is detached).
pub fn within<T: Send + 'static>(
    timeout: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(timeout).ok()
}

pub(crate) fn keygen(path: &Path) {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "musicfs-test", "-f"])
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running ssh-keygen (is openssh-client installed?): {e}"));
    assert!(
        out.status.success(),
        "ssh-keygen -f {} failed ({}): {}",
        path.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// sshd refuses to start without its privilege separation directory.
pub(crate) fn privsep_dir() {
    let dir = Path::new("/run/sshd");
    if dir.is_dir() {
        return;
    }
    match std::fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => panic!("creating /run/sshd (sshd's privilege separation dir): {e}"),
    }
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755));
}

/// A port that was free on 127.0.0.1 a moment ago.
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("binding 127.0.0.1:0 for a free port")
        .port()
}

/// Whether `pid` holds a socket listening on 127.0.0.1:`port` (from
/// /proc/net/tcp and /proc/PID/fd, without connecting: a probe connection
/// would leave a short-lived sshd child that looks like a session).
fn listens(pid: i32, port: u16) -> bool {
    let Ok(tcp) = std::fs::read_to_string("/proc/net/tcp") else {
        return false;
    };
    let local = format!("0100007F:{port:04X}");
    let inodes: HashSet<String> = tcp
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 9 && f[1] == local && f[3] == "0A").then(|| f[9].to_string())
        })
        .collect();
    if inodes.is_empty() {
        return false;
    }
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path()).is_ok_and(|t| {
            let t = t.to_string_lossy();
            t.strip_prefix("socket:[")
                .and_then(|s| s.strip_suffix(']'))
                .is_some_and(|ino| inodes.contains(ino))
        })
    })
}

/// The name of the current user (sshfs logs in as it).
pub(crate) fn user_name() -> String {
    // SAFETY: passwd is plain data (integers and pointers); all-zero is valid.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0u8; 16 * 1024];
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: pw, buf and result are valid for the call; buf outlives the
    // use of the strings it holds.
    let rc = unsafe {
        libc::getpwuid_r(
            libc::getuid(),
            &mut pw,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut result,
        )
    };
    assert!(
        rc == 0 && !result.is_null(),
        "no passwd entry for uid {}",
        // SAFETY: getuid(2) cannot fail.
        unsafe { libc::getuid() }
    );
    // SAFETY: getpwuid_r succeeded, so pw_name is a NUL-terminated string in buf.
    unsafe { CStr::from_ptr(pw.pw_name) }
        .to_string_lossy()
        .into_owned()
}

/// pid → ppid of every process, from /proc/*/stat.
fn parents() -> HashMap<i32, i32> {
    let mut out = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // "PID (COMM) STATE PPID ...": COMM may hold spaces and parentheses.
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        if let Some(ppid) = rest.split_whitespace().nth(1).and_then(|p| p.parse().ok()) {
            out.insert(pid, ppid);
        }
    }
    out
}

/// Every descendant of `pid` (not `pid` itself), sorted.
pub(crate) fn descendants(pid: i32) -> Vec<i32> {
    let parents = parents();
    let mut out = Vec::new();
    let mut frontier = vec![pid];
    while let Some(p) = frontier.pop() {
        for (&child, &parent) in &parents {
            if parent == p && !out.contains(&child) {
                out.push(child);
                frontier.push(child);
            }
        }
    }
    out.sort_unstable();
    out
}

/// The state letter of `pid` in /proc/PID/stat (None once it is gone).
fn proc_state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().next()?.chars().next()
}

/// Names in `dir`, sorted.
fn dir_names(dir: &Path) -> std::io::Result<Vec<std::ffi::OsString>> {
    let mut names = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<std::io::Result<Vec<_>>>()?;
    names.sort();
    Ok(names)
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

//! The network share of the cache rows: an OpenSSH `sshd` on 127.0.0.1 with generated keys and
//! `sshfs` mounting the cache library through it. sshfs is a FUSE filesystem, so the engine reads
//! an origin on it through its chunk cache.
//!
//! A small equivalent of the integration crate's `SshShare` (which xtask cannot depend on):
//! loopback only, every wait bounded, and on drop the mount is taken down lazily (a hung share
//! cannot block it) and sshfs, sshd and everything they started are SIGKILLed.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use super::consts::{SHARE_START_TIMEOUT, STOP_TIMEOUT};
use super::logs::log_tail;
use super::mounts::{is_mounted, lazy_unmount};
use crate::harness::{run_captured, signal, wait_deadline, with_deadline};

pub(super) const SSHD: &str = "/usr/sbin/sshd";
/// Attempts at a free port (another process may take the one we picked before sshd binds it).
const PORT_ATTEMPTS: usize = 5;

/// An sshd on 127.0.0.1 and an sshfs mount of a directory through it; taken down on drop.
pub(super) struct SshShare {
    mnt: PathBuf,
    sshd_log: PathBuf,
    sshfs_log: PathBuf,
    sshd: Option<Child>,
    sshfs: Option<Child>,
}

impl SshShare {
    /// Shares `export` (a directory) through sshd on 127.0.0.1 and mounts it with sshfs at `mnt`
    /// (an existing, unmounted directory); `dir` is made anew for the keys, the sshd config and
    /// the logs. Returns once the mount lists the export's entries.
    pub(super) fn start(export: &Path, dir: &Path, mnt: &Path) -> Result<SshShare> {
        ensure!(
            Path::new(SSHD).is_file(),
            "{SSHD} is missing (install openssh-server, or pass --cache-tracks 0)"
        );
        if dir.exists() {
            fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
        }
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
        let host_key = dir.join("host_ed25519");
        let client_key = dir.join("client_ed25519");
        keygen(&host_key)?;
        keygen(&client_key)?;
        let authorized = dir.join("authorized_keys");
        fs::copy(client_key.with_extension("pub"), &authorized)
            .context("writing authorized_keys")?;
        privsep_dir()?;

        let mut share = SshShare {
            mnt: mnt.to_path_buf(),
            sshd_log: dir.join("sshd.log"),
            sshfs_log: dir.join("sshfs.log"),
            sshd: None,
            sshfs: None,
        };
        // From here on, an error drops `share`, which cleans up.
        let port = share.start_sshd(dir, &host_key, &authorized)?;
        share.mount(export, &client_key, port)?;
        Ok(share)
    }

    /// Where the export is mounted.
    pub(super) fn mountpoint(&self) -> &Path {
        &self.mnt
    }

    /// Fails if sshfs or sshd exited or the mount is gone.
    pub(super) fn check_alive(&mut self) -> Result<()> {
        let mut exited = None;
        for (name, child) in [("sshd", &mut self.sshd), ("sshfs", &mut self.sshfs)] {
            let child = child
                .as_mut()
                .with_context(|| format!("{name} is not running"))?;
            if let Some(status) = child.try_wait()? {
                exited = Some((name, status));
            }
        }
        if let Some((name, status)) = exited {
            bail!(
                "{name} exited ({status}) in the middle of the bench:\n{}",
                self.logs()
            );
        }
        ensure!(
            is_mounted(&self.mnt),
            "the sshfs mount {} disappeared:\n{}",
            self.mnt.display(),
            self.logs()
        );
        Ok(())
    }

    /// The tails of the sshd and sshfs logs, for error messages.
    pub(super) fn logs(&self) -> String {
        format!(
            "--- sshd log ({}):\n{}\n--- sshfs log ({}):\n{}",
            self.sshd_log.display(),
            log_tail(&self.sshd_log, 20),
            self.sshfs_log.display(),
            log_tail(&self.sshfs_log, 20)
        )
    }

    fn start_sshd(&mut self, dir: &Path, host_key: &Path, authorized: &Path) -> Result<u16> {
        let config = dir.join("sshd_config");
        for attempt in 1..=PORT_ATTEMPTS {
            let port = free_port()?;
            fs::write(
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
                    pid = dir.join("sshd.pid").display(),
                ),
            )
            .context("writing sshd_config")?;
            let log = fs::File::create(&self.sshd_log).context("creating the sshd log")?;
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
                .with_context(|| format!("starting {SSHD}"))?;
            let sshd = self.sshd.insert(child);
            let deadline = Instant::now() + SHARE_START_TIMEOUT;
            loop {
                if let Some(status) = sshd.try_wait()? {
                    self.sshd = None;
                    let log = log_tail(&self.sshd_log, 20);
                    if attempt < PORT_ATTEMPTS && log.contains("Address already in use") {
                        break;
                    }
                    bail!("sshd exited before listening ({status}):\n{}", self.logs());
                }
                if listening(port) {
                    return Ok(port);
                }
                ensure!(
                    Instant::now() < deadline,
                    "sshd is not listening on 127.0.0.1:{port} after {} s:\n{}",
                    SHARE_START_TIMEOUT.as_secs(),
                    self.logs()
                );
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        bail!("sshd found no free port in {PORT_ATTEMPTS} attempts")
    }

    fn mount(&mut self, export: &Path, client_key: &Path, port: u16) -> Result<()> {
        let ssh_opts = format!(
            "IdentityFile={},IdentitiesOnly=yes,StrictHostKeyChecking=no,\
             UserKnownHostsFile=/dev/null,BatchMode=yes,LogLevel=ERROR,port={port}",
            client_key.display()
        );
        let log = fs::File::create(&self.sshfs_log).context("creating the sshfs log")?;
        // In the foreground (-f) as our child, in its own process group, so that it and its ssh
        // client are killed reliably on drop. `-F /dev/null`: no user's ssh config applies.
        let child = Command::new("sshfs")
            .arg("-f")
            .arg("-F")
            .arg("/dev/null")
            .arg("-o")
            .arg(&ssh_opts)
            .arg(format!("{}@127.0.0.1:{}", user_name()?, export.display()))
            .arg(&self.mnt)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .process_group(0)
            .spawn()
            .context("starting sshfs (is it installed?)")?;
        let sshfs = self.sshfs.insert(child);
        let deadline = Instant::now() + SHARE_START_TIMEOUT;
        while !is_mounted(&self.mnt) {
            if let Some(status) = sshfs.try_wait()? {
                self.sshfs = None;
                bail!("sshfs exited before mounting ({status}):\n{}", self.logs());
            }
            ensure!(
                Instant::now() < deadline,
                "sshfs did not mount {} within {} s:\n{}",
                self.mnt.display(),
                SHARE_START_TIMEOUT.as_secs(),
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        // The mount lists the export's entries (each listing bounded: a broken mount may block).
        let want = dir_names(export).context("listing the export")?;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let mnt = self.mnt.clone();
            let got = with_deadline("listing the sshfs mount", left, move || dir_names(&mnt));
            match got {
                Ok(Ok(names)) if names == want => return Ok(()),
                Err(e) => bail!("{e:#}:\n{}", self.logs()),
                other => ensure!(
                    Instant::now() < deadline,
                    "{} does not list the export's entries after {} s (got {other:?}):\n{}",
                    self.mnt.display(),
                    SHARE_START_TIMEOUT.as_secs(),
                    self.logs()
                ),
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for SshShare {
    fn drop(&mut self) {
        // Lazy: a hung share cannot block the unmount.
        if is_mounted(&self.mnt) {
            lazy_unmount(&self.mnt);
        }
        // Every descendant is found (by parent) before any kill: sshd's session processes leave
        // its process group, and once their parents are gone they are found no more.
        let mut doomed = Vec::new();
        for child in [&self.sshfs, &self.sshd].into_iter().flatten() {
            doomed.extend(descendants(child.id()));
        }
        for child in [&self.sshfs, &self.sshd].into_iter().flatten() {
            // SAFETY: plain kill(2) on the process group of a child we started in its own group
            // (not reaped yet, so the group id is still ours).
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
        }
        for pid in doomed {
            signal(pid, "KILL");
        }
        for mut child in [self.sshfs.take(), self.sshd.take()].into_iter().flatten() {
            let _ = child.kill();
            match wait_deadline(&mut child, Instant::now() + STOP_TIMEOUT) {
                Ok(Some(_)) => {}
                _ => eprintln!(
                    "bench: process {} of the sshfs share did not exit after SIGKILL",
                    child.id()
                ),
            }
        }
        if is_mounted(&self.mnt) {
            let mut cmd = Command::new("umount");
            cmd.arg("-l").arg(&self.mnt);
            if let Err(e) = run_captured(&mut cmd, "umount -l", STOP_TIMEOUT) {
                eprintln!("bench: umount -l {}: {e:#}", self.mnt.display());
            }
        }
    }
}

fn keygen(path: &Path) -> Result<()> {
    let mut cmd = Command::new("ssh-keygen");
    cmd.args(["-q", "-t", "ed25519", "-N", "", "-C", "musicfs-bench", "-f"])
        .arg(path);
    let out = run_captured(&mut cmd, "ssh-keygen (openssh-client)", STOP_TIMEOUT)?;
    ensure!(
        out.status.success(),
        "ssh-keygen -f {} failed ({}): {}",
        path.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// sshd refuses to start without its privilege separation directory.
fn privsep_dir() -> Result<()> {
    let dir = Path::new("/run/sshd");
    if dir.is_dir() {
        return Ok(());
    }
    match fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => {
            return Err(e).context("creating /run/sshd (sshd's privilege separation dir)");
        }
    }
    let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o755));
    Ok(())
}

/// A port that was free on 127.0.0.1 a moment ago.
fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .context("binding 127.0.0.1:0 for a free port")?
        .port())
}

/// Whether a socket listens on 127.0.0.1:`port` (from /proc/net/tcp, without connecting).
fn listening(port: u16) -> bool {
    let Ok(tcp) = fs::read_to_string("/proc/net/tcp") else {
        return false;
    };
    let local = format!("0100007F:{port:04X}");
    tcp.lines().skip(1).any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() > 3 && f[1] == local && f[3] == "0A"
    })
}

/// The name of the current user (sshfs logs in as it).
fn user_name() -> Result<String> {
    let mut cmd = Command::new("id");
    cmd.arg("-un");
    let out = run_captured(&mut cmd, "id -un", STOP_TIMEOUT)?;
    let name = String::from_utf8_lossy(&out.stdout).trim().to_string();
    ensure!(
        out.status.success() && !name.is_empty(),
        "`id -un` failed ({})",
        out.status
    );
    Ok(name)
}

/// Every descendant of `pid` (not `pid` itself), from /proc/PID/task/*/children.
fn descendants(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        let Ok(tasks) = fs::read_dir(format!("/proc/{p}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let Ok(text) = fs::read_to_string(task.path().join("children")) else {
                continue;
            };
            for c in text.split_whitespace().filter_map(|s| s.parse().ok()) {
                if !out.contains(&c) {
                    out.push(c);
                    todo.push(c);
                }
            }
        }
    }
    out
}

/// Names in `dir`, sorted.
fn dir_names(dir: &Path) -> std::io::Result<Vec<std::ffi::OsString>> {
    let mut names = fs::read_dir(dir)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<std::io::Result<Vec<_>>>()?;
    names.sort();
    Ok(names)
}

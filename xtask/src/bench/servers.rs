//! The servers of the remote-origin rows, on 127.0.0.1: `moto_server` (S3, PyPI `moto[server]`)
//! and `rclone serve webdav` (Debian), each our child in its own process group and SIGKILLed
//! (after a SIGCONT, so a stopped one dies too) on drop; the uploads to S3 with `rclone copy` and
//! rclone's on-the-fly remotes (no config file is read or written).
//!
//! A small equivalent of the integration crate's `servers` (which xtask cannot depend on).

use std::fs;
use std::net::TcpStream;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use super::consts::STOP_TIMEOUT;
use super::logs::log_tail;
use crate::harness::{on_path, run_captured, wait_deadline};

/// The access key and secret given to moto (it takes any) and to the engine.
pub(super) const S3_KEY: &str = "musicfs-bench";
pub(super) const S3_SECRET: &str = "musicfs-bench-secret";
/// How long a server may take to listen.
const SERVER_START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long one `rclone mkdir` or `rclone copy` of a library may take.
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(1200);

/// Whether the tools of the remote rows are there, or which is missing.
pub(super) fn remote_tools() -> std::result::Result<(), String> {
    let mut missing = Vec::new();
    if !on_path("moto_server") {
        missing.push("`moto_server` (PyPI moto[server])");
    }
    if !on_path("rclone") {
        missing.push("`rclone` (Debian package rclone)");
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!("{} not installed", missing.join(" and ")))
    }
}

/// A server process on 127.0.0.1:`port`; killed on drop.
pub(super) struct Server {
    name: &'static str,
    child: Option<Child>,
    port: u16,
    log: PathBuf,
}

impl Server {
    /// Starts `cmd` (which must listen on `port`) in its own process group and waits, bounded,
    /// until the port takes connections.
    fn start(name: &'static str, mut cmd: Command, port: u16, log: PathBuf) -> Result<Server> {
        let out = fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .env_remove("AWS_CA_BUNDLE")
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        let mut server = Server {
            name,
            child: Some(child),
            port,
            log,
        };
        let deadline = Instant::now() + SERVER_START_TIMEOUT;
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            server.check_alive()?;
            ensure!(
                Instant::now() < deadline,
                "{name} is not listening on 127.0.0.1:{port} after {} s; log tail:\n{}",
                SERVER_START_TIMEOUT.as_secs(),
                log_tail(&server.log, 20)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(server)
    }

    pub(super) fn port(&self) -> u16 {
        self.port
    }

    /// Fails if the server exited.
    pub(super) fn check_alive(&mut self) -> Result<()> {
        let child = self.child.as_mut().context("the server was stopped")?;
        if let Some(status) = child.try_wait()? {
            bail!(
                "{} exited ({status}); log tail:\n{}",
                self.name,
                log_tail(&self.log, 20)
            );
        }
        Ok(())
    }

    /// SIGSTOP (`true`) or SIGCONT (`false`) to the server's process group.
    pub(super) fn pause(&self, stop: bool) {
        if let Some(c) = &self.child {
            let sig = if stop { libc::SIGSTOP } else { libc::SIGCONT };
            // SAFETY: kill(2) on the process group of a child we started in its own group and
            // have not reaped.
            unsafe { libc::kill(-(c.id() as i32), sig) };
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: as in `pause`; SIGCONT after SIGKILL so that a stopped group dies.
            unsafe {
                libc::kill(-(c.id() as i32), libc::SIGKILL);
                libc::kill(-(c.id() as i32), libc::SIGCONT);
            }
            let _ = c.kill();
            if !matches!(
                wait_deadline(&mut c, Instant::now() + STOP_TIMEOUT),
                Ok(Some(_))
            ) {
                eprintln!("bench: {} did not exit after SIGKILL", self.name);
            }
        }
    }
}

/// A port that was free on 127.0.0.1 a moment ago.
fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .context("binding 127.0.0.1:0 for a free port")?
        .port())
}

/// `moto_server` on 127.0.0.1 (its log in `dir`).
pub(super) fn start_moto(dir: &Path) -> Result<Server> {
    let port = free_port()?;
    let mut cmd = Command::new("moto_server");
    cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
    Server::start("moto_server", cmd, port, dir.join("moto.log"))
}

/// `rclone serve webdav EXPORT` on 127.0.0.1, listings straight from the disk.
pub(super) fn start_dav(export: &Path, dir: &Path) -> Result<Server> {
    let port = free_port()?;
    let mut cmd = Command::new("rclone");
    cmd.args(["serve", "webdav"])
        .arg(export)
        .args(["--addr", &format!("127.0.0.1:{port}")])
        .args(["--dir-cache-time", "0s", "--poll-interval", "0"])
        .env("RCLONE_CONFIG", dir.join("rclone-none.conf"));
    Server::start(
        "rclone serve webdav",
        cmd,
        port,
        dir.join("rclone-webdav.log"),
    )
}

/// The musicfs origin URL of `bucket` on moto at `port`.
pub(super) fn s3_url(port: u16, bucket: &str) -> String {
    format!("s3://{bucket}?endpoint=http://127.0.0.1:{port}&region=us-east-1")
}

/// The musicfs origin URL of a WebDAV server at `port`.
pub(super) fn dav_url(port: u16) -> String {
    format!("webdav://127.0.0.1:{port}/")
}

/// rclone's on-the-fly remote of `bucket` on moto at `port`.
fn rclone_s3(port: u16, bucket: &str) -> String {
    format!(
        ":s3,provider=Other,endpoint='http://127.0.0.1:{port}',access_key_id={S3_KEY},\
         secret_access_key={S3_SECRET},region=us-east-1:{bucket}"
    )
}

/// rclone's on-the-fly remote of a WebDAV server at `port`.
pub(super) fn rclone_dav(port: u16) -> String {
    format!(":webdav,url='http://127.0.0.1:{port}':")
}

/// A `rclone` command that reads no user configuration (its config file is `dir/none.conf`,
/// never written) and no CA bundle (loopback http).
pub(super) fn rclone(dir: &Path) -> Command {
    let mut cmd = Command::new("rclone");
    cmd.env("RCLONE_CONFIG", dir.join("rclone-none.conf"))
        .env_remove("AWS_CA_BUNDLE");
    cmd
}

/// Makes `bucket` on moto and copies `export` into it with `rclone copy`; returns the time the
/// copy took.
pub(super) fn upload(dir: &Path, port: u16, bucket: &str, export: &Path) -> Result<Duration> {
    let remote = rclone_s3(port, bucket);
    let mut mkdir = rclone(dir);
    mkdir.arg("mkdir").arg(&remote);
    check(
        run_captured(&mut mkdir, "rclone mkdir", UPLOAD_TIMEOUT)?,
        "mkdir",
    )?;
    let t = Instant::now();
    let mut copy = rclone(dir);
    copy.arg("copy")
        .arg(export)
        .arg(&remote)
        .args(["--transfers", "8", "--checkers", "8"]);
    check(
        run_captured(&mut copy, "rclone copy", UPLOAD_TIMEOUT)?,
        "copy",
    )?;
    Ok(t.elapsed())
}

fn check(out: crate::harness::Captured, what: &str) -> Result<()> {
    ensure!(
        out.status.success(),
        "rclone {what} to moto failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// Hard-links (or copies) every file of `lib` whose path is UTF-8 (S3 keys are) into `export`,
/// made anew; returns the number of audio files and of files skipped for their name.
pub(super) fn utf8_export(lib: &Path, export: &Path) -> Result<(usize, usize)> {
    if export.exists() {
        fs::remove_dir_all(export).with_context(|| format!("removing {}", export.display()))?;
    }
    let (mut audio, mut skipped) = (0, 0);
    for entry in walkdir::WalkDir::new(lib).sort_by_file_name() {
        let entry = entry.with_context(|| format!("walking {}", lib.display()))?;
        if !entry.file_type().is_file() {
            continue;
        }
        let rel = entry.path().strip_prefix(lib)?;
        if std::str::from_utf8(rel.as_os_str().as_bytes()).is_err() {
            skipped += 1;
            continue;
        }
        if rel.extension().is_some_and(|e| e == "jsonl") {
            continue;
        }
        let to = export.join(rel);
        if let Some(parent) = to.parent() {
            fs::create_dir_all(parent)?;
        }
        if fs::hard_link(entry.path(), &to).is_err() {
            fs::copy(entry.path(), &to)
                .with_context(|| format!("copying {}", entry.path().display()))?;
        }
        audio += 1;
    }
    Ok((audio, skipped))
}

//! Real remote servers on 127.0.0.1 for the remote-origin tests, started by
//! the test and killed when dropped: `moto_server` (S3, PyPI `moto[server]`)
//! `rclone serve webdav` (Debian) and OpenSSH's sshd for SFTP. Faults on
//! demand: SIGSTOP / SIGCONT, SIGKILL.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use std::os::unix::process::CommandExt;

use crate::share::{SSHD, descendants, free_port, keygen, privsep_dir, user_name};

/// A server process in its own process group.
struct Proc {
    child: Option<Child>,
    port: u16,
    log: PathBuf,
}

impl Proc {
    /// Starts `cmd` (which must listen on `port`) and waits (bounded) until
    /// the port accepts connections.
    fn start(mut cmd: Command, port: u16, log: PathBuf, what: &str) -> Proc {
        let out = std::fs::File::create(&log).expect("creating a server log");
        let err = out.try_clone().expect("cloning a server log");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("starting {what}: {e} (packaging/install-deps.sh installs it)")
            });
        let mut p = Proc {
            child: Some(child),
            port,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect_timeout(
            &format!("127.0.0.1:{port}").parse().expect("an address"),
            Duration::from_millis(200),
        )
        .is_err()
        {
            if let Some(status) = p.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("{what} exited ({status}):\n{}", p.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "{what} not listening after 60 s:\n{}",
                p.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        p
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn signal(&self, sig: i32) {
        if let Some(c) = &self.child {
            // SAFETY: kill(2) on our own child's process group.
            unsafe { libc::kill(-(c.id() as i32), sig) };
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: as above; SIGCONT first so a stopped server dies.
            unsafe {
                libc::kill(-(c.id() as i32), libc::SIGKILL);
                libc::kill(-(c.id() as i32), libc::SIGCONT);
            }
            let _ = c.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An S3 server (moto) on 127.0.0.1.
pub struct S3Server {
    proc: Proc,
    rt: tokio::runtime::Runtime,
}

/// The access key moto accepts (any works; the tests use these).
pub const S3_KEY: &str = "musicfs-test";
pub const S3_SECRET: &str = "musicfs-test-secret";

impl S3Server {
    pub fn start(dir: &Path) -> S3Server {
        let port = free_port();
        let mut cmd = Command::new("moto_server");
        cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
        let proc = Proc::start(cmd, port, dir.join("moto.log"), "moto_server");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        S3Server { proc, rt }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.proc.port)
    }

    pub fn port(&self) -> u16 {
        self.proc.port
    }

    /// The origin URL of `bucket`.
    pub fn url(&self, bucket: &str) -> String {
        format!(
            "s3://{bucket}?endpoint={}&region=us-east-1",
            self.endpoint()
        )
    }

    fn op(&self, bucket: &str) -> opendal::Operator {
        opendal::install_default();
        let b = opendal::services::S3::default()
            .bucket(bucket)
            .endpoint(&self.endpoint())
            .region("us-east-1")
            .access_key_id(S3_KEY)
            .secret_access_key(S3_SECRET)
            .disable_config_load()
            .disable_ec2_metadata();
        opendal::Operator::new(b).expect("an S3 operator")
    }

    /// Creates `bucket` (moto takes an unsigned PUT). A moto that has just
    /// started may take a connection and close it without an answer:
    /// asked again, bounded.
    pub fn create_bucket(&self, bucket: &str) {
        use std::io::{Read, Write};
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let mut s =
                TcpStream::connect(("127.0.0.1", self.proc.port)).expect("connecting to moto");
            write!(
                s,
                "PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                self.proc.port
            )
            .expect("asking moto for a bucket");
            let mut answer = String::new();
            let _ = s.read_to_string(&mut answer);
            if answer.is_empty() && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(200));
                continue;
            }
            assert!(
                answer.starts_with("HTTP/1.1 200"),
                "create bucket: {answer}"
            );
            return;
        }
    }

    pub fn put(&self, bucket: &str, key: &str, bytes: Vec<u8>) {
        let op = self.op(bucket);
        self.rt
            .block_on(op.write(key, bytes))
            .unwrap_or_else(|e| panic!("put {key}: {e}"));
    }

    pub fn delete(&self, bucket: &str, key: &str) {
        let op = self.op(bucket);
        self.rt
            .block_on(op.delete(key))
            .unwrap_or_else(|e| panic!("delete {key}: {e}"));
    }

    /// Uploads every file under `dir` whose path is UTF-8 (S3 keys are);
    /// returns the keys.
    pub fn upload_tree(&self, bucket: &str, dir: &Path) -> Vec<String> {
        let mut keys = Vec::new();
        for e in walkdir::WalkDir::new(dir).sort_by_file_name() {
            let e = e.expect("walking a library");
            if !e.file_type().is_file() {
                continue;
            }
            let rel = e.path().strip_prefix(dir).expect("under the library");
            let Some(key) = rel.to_str() else { continue };
            self.put(
                bucket,
                key,
                std::fs::read(e.path()).expect("reading a library file"),
            );
            keys.push(key.to_string());
        }
        keys
    }

    pub fn stop(&self) {
        self.proc.signal(libc::SIGSTOP);
    }

    pub fn resume(&self) {
        self.proc.signal(libc::SIGCONT);
    }

    pub fn kill(&mut self) {
        self.proc.kill();
    }
}

/// A WebDAV server (`rclone serve webdav`) exporting a directory.
pub struct DavServer {
    proc: Proc,
}

impl DavServer {
    pub fn start(export: &Path, dir: &Path) -> DavServer {
        Self::start_full(export, dir, None)
    }

    /// A server that wants basic authentication as `user` with `pass`.
    pub fn start_with_auth(export: &Path, dir: &Path, user: &str, pass: &str) -> DavServer {
        Self::start_full(export, dir, Some((user, pass)))
    }

    fn start_full(export: &Path, dir: &Path, auth: Option<(&str, &str)>) -> DavServer {
        let port = free_port();
        let mut cmd = Command::new("rclone");
        cmd.args(["serve", "webdav"])
            .arg(export)
            .args(["--addr", &format!("127.0.0.1:{port}")])
            // Listings straight from the disk: a test's change is seen at once.
            .args(["--dir-cache-time", "0s", "--poll-interval", "0"])
            .env("RCLONE_CONFIG", dir.join("rclone.conf"));
        if let Some((user, pass)) = auth {
            cmd.args(["--user", user, "--pass", pass]);
        }
        DavServer {
            proc: Proc::start(
                cmd,
                port,
                dir.join("rclone-webdav.log"),
                "rclone serve webdav",
            ),
        }
    }

    pub fn url(&self) -> String {
        format!("webdav://127.0.0.1:{}/", self.proc.port)
    }

    pub fn port(&self) -> u16 {
        self.proc.port
    }

    pub fn stop(&self) {
        self.proc.signal(libc::SIGSTOP);
    }

    pub fn resume(&self) {
        self.proc.signal(libc::SIGCONT);
    }

    pub fn kill(&mut self) {
        self.proc.kill();
    }
}

/// OpenSSH's sshd on 127.0.0.1 with keys made for the test, its SFTP
/// subsystem serving the machine's files (the tests' URLs name an export
/// directory). The client key and a known_hosts line for the host key are
/// in `dir`.
pub struct SftpServer {
    proc: Proc,
    dir: PathBuf,
    export: PathBuf,
}

impl SftpServer {
    pub fn start(export: &Path, dir: &Path) -> SftpServer {
        let export = export.canonicalize().expect("the sftp export");
        let dir = dir.join("sftp");
        std::fs::create_dir_all(&dir).expect("the sftp server's dir");
        let host = dir.join("host_ed25519");
        let client = dir.join("client_ed25519");
        for k in [&host, &client] {
            if !k.exists() {
                keygen(k);
            }
        }
        let authorized = dir.join("authorized_keys");
        std::fs::copy(client.with_extension("pub"), &authorized).expect("authorized_keys");
        privsep_dir();
        let port = free_port();
        let config = dir.join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "ListenAddress 127.0.0.1\nPort {port}\nHostKey {}\nAuthorizedKeysFile {}\n\
                 PidFile {}\nPermitRootLogin prohibit-password\nPubkeyAuthentication yes\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n\
                 StrictModes no\nX11Forwarding no\nPrintMotd no\n\
                 Subsystem sftp internal-sftp\nLogLevel ERROR\n",
                host.display(),
                authorized.display(),
                dir.join("sshd.pid").display()
            ),
        )
        .expect("sshd_config");
        let pubkey = std::fs::read_to_string(host.with_extension("pub")).expect("the host key");
        let mut fields = pubkey.split_whitespace();
        let (kind, key) = (fields.next().unwrap_or(""), fields.next().unwrap_or(""));
        std::fs::write(
            dir.join("known_hosts"),
            format!("[127.0.0.1]:{port} {kind} {key}\n"),
        )
        .expect("known_hosts");
        let mut cmd = Command::new(SSHD);
        cmd.args(["-D", "-e", "-f"]).arg(&config);
        SftpServer {
            proc: Proc::start(cmd, port, dir.join("sshd.log"), "sshd (sftp)"),
            dir,
            export,
        }
    }

    pub fn client_key(&self) -> PathBuf {
        self.dir.join("client_ed25519")
    }

    pub fn known_hosts(&self) -> PathBuf {
        self.dir.join("known_hosts")
    }

    /// The URL of the export, logging in with `key` and checking the
    /// host against `known_hosts`.
    pub fn url_with(&self, key: &Path, known_hosts: &Path) -> String {
        format!(
            "sftp://{}@127.0.0.1:{}{}?key={}&known_hosts={}",
            user_name(),
            self.proc.port,
            self.export.display(),
            key.display(),
            known_hosts.display()
        )
    }

    pub fn url(&self) -> String {
        self.url_with(&self.client_key(), &self.known_hosts())
    }

    pub fn port(&self) -> u16 {
        self.proc.port
    }

    pub fn log_text(&self) -> String {
        self.proc.log_text()
    }

    /// SIGSTOPs sshd and its sessions (a server that hangs).
    pub fn stop(&self) {
        self.signal_all(libc::SIGSTOP);
    }

    pub fn resume(&self) {
        self.signal_all(libc::SIGCONT);
    }

    fn signal_all(&self, sig: i32) {
        if let Some(c) = &self.proc.child {
            let pid = c.id() as i32;
            for p in std::iter::once(pid).chain(descendants(pid)) {
                // SAFETY: kill(2) on sshd and the sessions it started.
                unsafe { libc::kill(p, sig) };
            }
        }
    }

    /// Kills sshd and its sessions (each in a session of its own, so not
    /// in sshd's process group).
    pub fn kill(&mut self) {
        let sessions = self
            .proc
            .child
            .as_ref()
            .map(|c| descendants(c.id() as i32))
            .unwrap_or_default();
        self.proc.kill();
        for pid in sessions {
            // SAFETY: kill(2) on sshd sessions this server started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

impl Drop for SftpServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An nftables rule that drops every packet to 127.0.0.1:`port` (a server
/// that is up but unreachable: connections hang), removed when dropped.
/// In a table of its own, so nothing else on the machine is touched.
pub struct Blackhole {
    table: String,
}

impl Blackhole {
    pub fn new(port: u16) -> Blackhole {
        let table = format!("musicfs_test_{port}_{}", std::process::id());
        let script = format!(
            "add table inet {table}\n\
             add chain inet {table} out {{ type filter hook output priority 0 ; }}\n\
             add rule inet {table} out ip daddr 127.0.0.1 tcp dport {port} drop\n"
        );
        nft(&script);
        Blackhole { table }
    }
}

impl Drop for Blackhole {
    fn drop(&mut self) {
        nft(&format!("delete table inet {}\n", self.table));
    }
}

fn nft(script: &str) {
    use std::io::Write;
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("running nft (packaging/install-deps.sh installs nftables)");
    child
        .stdin
        .take()
        .expect("nft's stdin")
        .write_all(script.as_bytes())
        .expect("writing to nft");
    let status = child.wait().expect("waiting for nft");
    assert!(status.success(), "nft -f - failed on:\n{script}");
}

/// A TCP proxy on 127.0.0.1 in front of a server that delays every answer
/// by its delay (a slow origin: connections work, answers come late; 0
/// until `set_delay`). Stops
/// accepting when dropped; its connection threads end with their sockets
/// (read timeouts bound them).
pub struct SlowProxy {
    port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    delay_ms: std::sync::Arc<std::sync::atomic::AtomicU64>,
    accept: Option<std::thread::JoinHandle<()>>,
}

impl SlowProxy {
    pub fn start(upstream: u16) -> SlowProxy {
        use std::sync::atomic::{AtomicBool, Ordering};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding the proxy");
        let port = listener.local_addr().expect("the proxy's address").port();
        listener
            .set_nonblocking(true)
            .expect("a non-blocking listener");
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let delay_ms = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let delay = delay_ms.clone();
        let accept = std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                            continue;
                        };
                        let _ = client.set_nonblocking(false);
                        let none = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
                        pipe(client.try_clone(), server.try_clone(), none, st.clone());
                        pipe(
                            server.try_clone(),
                            client.try_clone(),
                            delay.clone(),
                            st.clone(),
                        );
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        SlowProxy {
            port,
            stop,
            delay_ms,
            accept: Some(accept),
        }
    }

    /// Every answer from now on comes `delay` late.
    pub fn set_delay(&self, delay: Duration) {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.delay_ms
            .store(ms, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

/// Copies `from` to `to`, waiting the delay before passing on each read.
fn pipe(
    from: std::io::Result<TcpStream>,
    to: std::io::Result<TcpStream>,
    delay_ms: std::sync::Arc<std::sync::atomic::AtomicU64>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    use std::io::{Read, Write};
    let (Ok(mut from), Ok(mut to)) = (from, to) else {
        return;
    };
    let _ = from.set_read_timeout(Some(Duration::from_secs(1)));
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        let mut idle = 0;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) && idle < 60 {
            match from.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    idle = 0;
                    let ms = delay_ms.load(std::sync::atomic::Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(ms));
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    idle += 1;
                }
                Err(_) => break,
            }
        }
        let _ = to.shutdown(std::net::Shutdown::Both);
    });
}

impl Drop for SlowProxy {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

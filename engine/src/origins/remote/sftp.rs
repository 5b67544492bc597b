//! SFTP origins over russh + russh-sftp (pure Rust, on the remote I/O
//! runtime; no `ssh` child process, no fixed waits: see ARCHITECTURE).
//!
//! A small pool of SSH connections, each with one SFTP channel, made on
//! first use and made again after a transport error. Requests are spread
//! over the pool and bounded in flight by a semaphore; every wait is
//! bounded by the caller's deadline (`Remote::run`). The server's host key
//! must be in a known_hosts file (`known_hosts=`, default
//! `~/.ssh/known_hosts`): an unknown or changed key is refused with a line
//! that says how to add it. Authentication is by key (`key=`, its
//! passphrase in `password_file`) or by password (`password_file`).

use std::io::SeekFrom;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use russh::client;
use russh::keys::{PrivateKey, PrivateKeyWithHashAlg};
use russh_sftp::client::SftpSession;
use russh_sftp::protocol::StatusCode;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::{RemoteEntry, RemoteError, RemoteSpec};
use crate::config::OriginSettings;

/// SSH connections per origin at most (each serves many requests at once;
/// OpenSSH's sftp-server answers one channel's requests in order).
const MAX_SESSIONS: usize = 4;
/// Keepalive of an idle connection, and how many unanswered make it dead.
const KEEPALIVE: Duration = Duration::from_secs(15);
const KEEPALIVE_MAX: usize = 3;
/// A connection (TCP, SSH handshake, login, SFTP init) must be made within
/// this many first-byte deadlines.
const CONNECT_STEPS: u32 = 4;
/// Directories deeper than this are not walked (a linked one may loop).
const MAX_DEPTH: usize = 64;

enum Auth {
    Key(Arc<PrivateKey>),
    Password(String),
}

/// One SSH connection with its SFTP channel.
struct Conn {
    ssh: client::Handle<HostCheck>,
    sftp: SftpSession,
}

/// The client of one `sftp://` origin.
pub struct Sftp {
    host: String,
    port: u16,
    user: String,
    /// Absolute, or relative to the login directory (`~/`); "" for it.
    root: String,
    auth: Auth,
    known_hosts: PathBuf,
    request_secs: u64,
    /// Each step of a read (the open, every answer to a read) must come
    /// within this, as opendal's io timeout does for S3 and WebDAV: a
    /// stalled server is passed over after one of these, not after the
    /// whole request deadline.
    first_byte: Duration,
    slots: Vec<tokio::sync::Mutex<Option<Arc<Conn>>>>,
    next: AtomicUsize,
    in_flight: tokio::sync::Semaphore,
}

/// Checks the server's key against the known_hosts file; keeps why not.
struct HostCheck {
    host: String,
    port: u16,
    known_hosts: PathBuf,
    refused: Arc<parking_lot::Mutex<Option<String>>>,
}

impl client::Handler for HostCheck {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let russh::keys::PublicKeyOrCertificate::PublicKey { key, .. } = key else {
            *self.refused.lock() =
                Some("the server offers a host certificate: not supported".into());
            return Ok(false);
        };
        let shown = if self.port == 22 {
            self.host.clone()
        } else {
            format!("[{}]:{}", self.host, self.port)
        };
        let why = match russh::keys::check_known_hosts_path(
            &self.host,
            self.port,
            key,
            &self.known_hosts,
        ) {
            Ok(true) => return Ok(true),
            Ok(false) => format!(
                "the host key of {shown} is not in {} (add it: ssh-keyscan -p {} {} >> {})",
                self.known_hosts.display(),
                self.port,
                self.host,
                self.known_hosts.display()
            ),
            Err(russh::keys::Error::KeyChanged { line }) => format!(
                "the host key of {shown} is not the one in {} line {line}: refused (it changed, or another host answers)",
                self.known_hosts.display()
            ),
            Err(e) => format!(
                "cannot check the host key in {}: {e}",
                self.known_hosts.display()
            ),
        };
        *self.refused.lock() = Some(why);
        Ok(false)
    }
}

fn read_secret(path: &std::path::Path, what: &str) -> Result<String> {
    let s = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the {what} file {}", path.display()))?;
    Ok(s.trim_end_matches(['\n', '\r']).to_string())
}

impl Sftp {
    /// The client for `spec` (keys and passwords are read now; no
    /// connection is made until the first request).
    pub fn new(
        spec: &RemoteSpec,
        settings: &OriginSettings,
        first_byte: Duration,
        request: Duration,
    ) -> Result<Sftp> {
        let Some(user) = spec.user.clone() else {
            bail!("{}: no user", spec.url);
        };
        let secret = match &settings.password_file {
            Some(f) => Some(read_secret(f, "password")?),
            None => None,
        };
        let auth = match (&spec.key, secret) {
            (Some(key), passphrase) => {
                let k = russh::keys::load_secret_key(key, passphrase.as_deref())
                    .with_context(|| format!("cannot load the key {}", key.display()))?;
                Auth::Key(Arc::new(k))
            }
            (None, Some(password)) => Auth::Password(password),
            (None, None) => bail!(
                "{}: no way to log in: give key=FILE in the URL or a password_file in [origin.\"URL\"]",
                spec.url
            ),
        };
        let known_hosts = match &spec.known_hosts {
            Some(k) => k.clone(),
            None => std::env::home_dir()
                .map(|h| h.join(".ssh/known_hosts"))
                .context("no home directory for ~/.ssh/known_hosts: give known_hosts=FILE")?,
        };
        let sessions = settings
            .connections
            .unwrap_or(super::CONNECTIONS)
            .clamp(1, MAX_SESSIONS);
        Ok(Sftp {
            host: spec.authority.clone(),
            port: spec.port.unwrap_or(22),
            user,
            root: match spec.root.strip_prefix('~') {
                Some(home) => home.trim_start_matches('/').to_string(),
                None => format!("/{}", spec.root),
            },
            auth,
            known_hosts,
            request_secs: request.as_secs().max(1),
            first_byte,
            slots: (0..sessions)
                .map(|_| tokio::sync::Mutex::new(None))
                .collect(),
            next: AtomicUsize::new(0),
            in_flight: tokio::sync::Semaphore::new(
                settings.connections.unwrap_or(super::CONNECTIONS).max(1),
            ),
        })
    }

    fn path(&self, rel: &str) -> String {
        match (self.root.as_str(), rel) {
            ("", "") => ".".to_string(),
            ("", r) => r.to_string(),
            (root, "") => root.to_string(),
            (root, r) => format!("{}/{r}", root.trim_end_matches('/')),
        }
    }

    async fn connect(&self) -> Result<Conn, RemoteError> {
        let config = Arc::new(client::Config {
            keepalive_interval: Some(KEEPALIVE),
            keepalive_max: KEEPALIVE_MAX,
            nodelay: true,
            ..Default::default()
        });
        let refused = Arc::new(parking_lot::Mutex::new(None));
        let check = HostCheck {
            host: self.host.clone(),
            port: self.port,
            known_hosts: self.known_hosts.clone(),
            refused: refused.clone(),
        };
        let mut ssh = match client::connect(config, (self.host.as_str(), self.port), check).await {
            Ok(s) => s,
            Err(e) => {
                if let Some(why) = refused.lock().take() {
                    return Err(RemoteError::Denied(why));
                }
                return Err(transport(&e.to_string()));
            }
        };
        let ok = match &self.auth {
            Auth::Key(key) => {
                let hash = ssh
                    .best_supported_rsa_hash()
                    .await
                    .map_err(|e| transport(&e.to_string()))?
                    .flatten();
                ssh.authenticate_publickey(
                    &self.user,
                    PrivateKeyWithHashAlg::new(key.clone(), hash),
                )
                .await
            }
            Auth::Password(p) => ssh.authenticate_password(&self.user, p).await,
        }
        .map_err(|e| transport(&e.to_string()))?;
        if !ok.success() {
            return Err(RemoteError::Denied(format!(
                "the server refused the login of {} ({})",
                self.user,
                match self.auth {
                    Auth::Key(_) => "key",
                    Auth::Password(_) => "password",
                }
            )));
        }
        let channel = ssh
            .channel_open_session()
            .await
            .map_err(|e| transport(&e.to_string()))?;
        channel
            .request_subsystem(true, "sftp")
            .await
            .map_err(|e| transport(&e.to_string()))?;
        let sftp = SftpSession::new(channel.into_stream())
            .await
            .map_err(|e| transport(&e.to_string()))?;
        sftp.set_timeout(self.request_secs);
        Ok(Conn { ssh, sftp })
    }

    /// A live connection of the next slot (made now if it has none).
    async fn conn(&self) -> Result<(usize, Arc<Conn>), RemoteError> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        let mut slot = self.slots[i].lock().await;
        if let Some(c) = slot.as_ref().filter(|c| !c.ssh.is_closed()) {
            return Ok((i, c.clone()));
        }
        *slot = None;
        // A handshake is a few round trips: a server that cannot finish
        // one in a few first-byte deadlines is passed over.
        let deadline = self.first_byte * CONNECT_STEPS;
        let c = tokio::time::timeout(deadline, self.connect())
            .await
            .map_err(|_| RemoteError::Timeout(deadline))??;
        let c = Arc::new(c);
        *slot = Some(c.clone());
        Ok((i, c))
    }

    /// Forgets slot `i`'s connection if it is still `c` (after a transport
    /// error: the next request connects again).
    async fn drop_conn(&self, i: usize, c: &Arc<Conn>) {
        let mut slot = self.slots[i].lock().await;
        if slot.as_ref().is_some_and(|s| Arc::ptr_eq(s, c)) {
            *slot = None;
        }
    }

    /// `f` on a live connection; a transport error drops it.
    async fn with<T, F>(&self, f: impl FnOnce(Arc<Conn>) -> F) -> Result<T, RemoteError>
    where
        F: Future<Output = Result<T, russh_sftp::client::error::Error>>,
    {
        let _permit = self
            .in_flight
            .acquire()
            .await
            .map_err(|_| RemoteError::Failed("closing".into()))?;
        let (i, c) = self.conn().await?;
        match f(c.clone()).await {
            Ok(v) => Ok(v),
            Err(e) => {
                let e = of_sftp(e);
                if e.is_origin_fault() {
                    self.drop_conn(i, &c).await;
                }
                Err(e)
            }
        }
    }

    /// Every file under the root, walked a directory at a time.
    pub async fn list(
        &self,
        stop: &std::sync::atomic::AtomicBool,
        max: usize,
    ) -> Result<Vec<RemoteEntry>, RemoteError> {
        let mut out = Vec::new();
        let mut dirs = vec![String::new()];
        let mut skipped = (0usize, None::<String>);
        while let Some(dir) = dirs.pop() {
            if stop.load(Ordering::Relaxed) {
                return Err(RemoteError::Failed("stopping".into()));
            }
            let path = self.path(&dir);
            let entries = self
                .with(|c| async move { c.sftp.read_dir(path).await })
                .await?;
            for e in entries {
                let name = e.file_name();
                if name == "." || name == ".." {
                    continue;
                }
                // russh-sftp decodes names lossily: one that is not UTF-8
                // cannot be asked for again by name, so it is not listed.
                if name.contains('\u{FFFD}') {
                    skipped.0 += 1;
                    skipped.1.get_or_insert_with(|| format!("{dir}/{name}"));
                    continue;
                }
                let rel = if dir.is_empty() {
                    name
                } else {
                    format!("{dir}/{name}")
                };
                let mut m = e.metadata();
                if m.is_symlink() {
                    // What a link points at (a dangling one is left out).
                    let path = self.path(&rel);
                    match self
                        .with(|c| async move { c.sftp.metadata(path).await })
                        .await
                    {
                        Ok(target) => m = target,
                        Err(RemoteError::NotFound) => continue,
                        Err(e) => return Err(e),
                    }
                }
                if m.is_dir() {
                    // Bounded depth: a linked directory may loop.
                    if rel.matches('/').count() < MAX_DEPTH {
                        dirs.push(rel);
                    }
                } else if m.is_regular() {
                    out.push(RemoteEntry {
                        rel: rel.into_bytes(),
                        size: m.size.unwrap_or(0),
                        mtime_ns: i64::from(m.mtime.unwrap_or(0)) * 1_000_000_000,
                        etag: None,
                    });
                    if out.len() > max {
                        return Err(RemoteError::Failed(format!("more than {max} files")));
                    }
                }
            }
        }
        if let (n @ 1.., Some(example)) = skipped {
            tracing::warn!(
                host = self.host,
                skipped = n,
                example,
                "files whose names are not UTF-8 cannot be read through this protocol; they are not listed (rename them on the server)"
            );
        }
        Ok(out)
    }

    pub async fn stat(&self, rel: &str) -> Result<RemoteEntry, RemoteError> {
        let path = self.path(rel);
        let m = self
            .with(|c| async move { c.sftp.metadata(path).await })
            .await?;
        if m.is_dir() {
            return Err(RemoteError::NotFound);
        }
        Ok(RemoteEntry {
            rel: rel.as_bytes().to_vec(),
            size: m.size.unwrap_or(0),
            mtime_ns: i64::from(m.mtime.unwrap_or(0)) * 1_000_000_000,
            etag: None,
        })
    }

    /// `len` bytes at `offset`; short only at the end of the file.
    pub async fn read(&self, rel: &str, offset: u64, len: u64) -> Result<Vec<u8>, RemoteError> {
        let path = self.path(rel);
        let len = usize::try_from(len).map_err(|_| RemoteError::Failed("too long".into()))?;
        let step = self.first_byte;
        self.with(|c| async move {
            use russh_sftp::client::error::Error as E;
            let mut f = tokio::time::timeout(step, c.sftp.open(path))
                .await
                .map_err(|_| E::Timeout)??;
            f.seek(SeekFrom::Start(offset)).await?;
            let mut buf = vec![0u8; len];
            let mut got = 0;
            while got < len {
                let n = tokio::time::timeout(step, f.read(&mut buf[got..]))
                    .await
                    .map_err(|_| E::Timeout)??;
                if n == 0 {
                    break;
                }
                got += n;
            }
            buf.truncate(got);
            // The handle is closed without waiting for the answer.
            drop(f);
            Ok(buf)
        })
        .await
    }

    /// A health check: the root can be listed (its attributes are read).
    pub async fn check(&self) -> Result<(), RemoteError> {
        let path = self.path("");
        self.with(|c| async move { c.sftp.metadata(path).await.map(drop) })
            .await
    }
}

/// A connection-level error: DNS apart (Degraded, not Offline).
fn transport(text: &str) -> RemoteError {
    let short: String = text
        .lines()
        .next()
        .unwrap_or_default()
        .chars()
        .take(200)
        .collect();
    if text.contains("failed to lookup address") || text.contains("Name or service not known") {
        RemoteError::Dns(short)
    } else {
        RemoteError::Failed(short)
    }
}

fn of_sftp(e: russh_sftp::client::error::Error) -> RemoteError {
    use russh_sftp::client::error::Error as E;
    match e {
        E::Status(s) => match s.status_code {
            StatusCode::NoSuchFile => RemoteError::NotFound,
            StatusCode::PermissionDenied => RemoteError::Denied(s.error_message),
            _ => RemoteError::Failed(format!("{}: {}", s.status_code, s.error_message)),
        },
        E::Timeout => RemoteError::Failed("the server did not answer in time".into()),
        other => transport(&other.to_string()),
    }
}

//! Remote origins: S3 and WebDAV through opendal, SFTP through russh
//! (`sftp`), on one small tokio runtime
//! owned by the origin table. Every call blocks its caller (a data-plane
//! pool thread or a sync thread) for at most its deadline: a first-byte
//! deadline per read (opendal's io timeout), a total deadline per request
//! (a tokio timeout around it, which drops the request and frees its
//! connection), a bounded pool of connections per origin. One origin's
//! stalled requests never hold another's: each has its own operator, pool
//! and data-plane pool.
//!
//! Files: `spec` (the URLs), `health` (Ready → Degraded → Offline),
//! `sftp` (the SFTP client and its connection pool).

mod health;
mod sftp;
mod spec;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures::TryStreamExt;
use opendal::layers::{ConcurrentLimitLayer, TimeoutLayer};
use opendal::{ErrorKind, Operator, services};

use crate::config::OriginSettings;

pub use health::{Health, State};
pub use spec::{RemoteSpec, Scheme, is_remote};

/// Defaults of the per-origin deadlines and pool.
pub const FIRST_BYTE_TIMEOUT: Duration = Duration::from_millis(1000);
pub const REQUEST_TIMEOUT: Duration = Duration::from_millis(10_000);
pub const CONNECTIONS: usize = 8;
/// A listing may take this long in all (big buckets list in pages).
const LISTING_TIMEOUT: Duration = Duration::from_secs(600);
/// Objects listed at most per origin (a bound on memory).
const LISTING_MAX: usize = 10_000_000;

/// One object (file) of a remote origin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteEntry {
    /// Its path under the origin's root.
    pub rel: Vec<u8>,
    pub size: u64,
    pub mtime_ns: i64,
    pub etag: Option<String>,
}

impl RemoteEntry {
    /// What the catalog keeps in place of an inode number: a hash of the
    /// ETag (0 without one), so that a replaced object is a new version
    /// even when its size and mtime are the same.
    pub fn ino(&self) -> u64 {
        etag_ino(self.etag.as_deref())
    }
}

/// The inode stand-in for an ETag (see `RemoteEntry::ino`).
pub fn etag_ino(etag: Option<&str>) -> u64 {
    match etag {
        Some(e) if !e.is_empty() => {
            let h = blake3::hash(e.as_bytes());
            u64::from_le_bytes(h.as_bytes()[..8].try_into().unwrap_or([0; 8])) | 1
        }
        _ => 0,
    }
}

/// Why a remote request failed.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("not found")]
    NotFound,
    /// The object is not the version asked for (If-Match failed).
    #[error("the object changed on the server")]
    Changed,
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("access denied: {0}")]
    Denied(String),
    /// The name could not be resolved (Degraded, not Offline).
    #[error("name resolution failed: {0}")]
    Dns(String),
    #[error("{0}")]
    Failed(String),
}

impl RemoteError {
    /// The errno a reader sees.
    pub fn errno(&self) -> i32 {
        match self {
            RemoteError::NotFound | RemoteError::Changed => libc::ESTALE,
            RemoteError::Denied(_) => libc::EACCES,
            _ => libc::EIO,
        }
    }

    /// Whether the origin itself is in trouble (not just this object).
    pub fn is_origin_fault(&self) -> bool {
        !matches!(self, RemoteError::NotFound | RemoteError::Changed)
    }

    fn of(e: opendal::Error) -> RemoteError {
        // The chain, not the kind alone: most transport errors come back as
        // `Unexpected` (DESIGN 4), and the resolver's words tell DNS apart.
        let text = format!("{e:#}");
        let short = short_error(&text);
        match e.kind() {
            ErrorKind::NotFound => RemoteError::NotFound,
            ErrorKind::ConditionNotMatch => RemoteError::Changed,
            ErrorKind::PermissionDenied => RemoteError::Denied(short),
            _ if text.contains("dns error") || text.contains("failed to lookup address") => {
                RemoteError::Dns(short)
            }
            _ => RemoteError::Failed(short),
        }
    }
}

/// The first line of an opendal error, bounded (they carry whole requests).
fn short_error(text: &str) -> String {
    let line = text.lines().next().unwrap_or_default();
    let mut s: String = line.chars().take(200).collect();
    if line.len() > s.len() {
        s.push('…');
    }
    s
}

/// The tokio runtime remote I/O runs on (two workers), shut down without
/// waiting for hung requests when the origin table goes.
pub struct RemoteRuntime(Option<tokio::runtime::Runtime>);

impl RemoteRuntime {
    pub fn new() -> Result<RemoteRuntime> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("remote-io")
            .enable_all()
            .build()
            .context("cannot start the remote I/O runtime")?;
        Ok(RemoteRuntime(Some(rt)))
    }

    /// No runtime (it could not start): remote origins are unusable.
    pub fn none() -> RemoteRuntime {
        RemoteRuntime(None)
    }

    fn handle(&self) -> Option<tokio::runtime::Handle> {
        self.0.as_ref().map(|r| r.handle().clone())
    }
}

impl Drop for RemoteRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// How a remote origin is reached.
enum Backend {
    Dal(Operator),
    Sftp(sftp::Sftp),
}

/// One remote origin.
pub struct Remote {
    pub spec: RemoteSpec,
    backend: Backend,
    rt: tokio::runtime::Handle,
    first_byte: Duration,
    request: Duration,
    pub health: Health,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote")
            .field("url", &self.spec.url)
            .finish()
    }
}

fn read_secret(path: &std::path::Path, what: &str) -> Result<String> {
    let s = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the {what} file {}", path.display()))?;
    Ok(s.trim().to_string())
}

impl Remote {
    /// The client for `spec` with its settings (credentials are read now).
    pub fn new(spec: RemoteSpec, settings: &OriginSettings, rt: &RemoteRuntime) -> Result<Remote> {
        opendal::install_default();
        let rt = rt.handle().context("the remote I/O runtime is gone")?;
        let root = format!("/{}/", spec.root).replace("//", "/");
        let first_byte = settings
            .first_byte_timeout_ms
            .map_or(FIRST_BYTE_TIMEOUT, Duration::from_millis);
        let request = settings
            .request_timeout_ms
            .map_or(REQUEST_TIMEOUT, Duration::from_millis)
            .max(first_byte);
        let op = match spec.scheme {
            Scheme::S3 => {
                let mut b = services::S3::default()
                    .bucket(&spec.authority)
                    .root(&root)
                    .region(spec.region.as_deref().unwrap_or("us-east-1"))
                    .disable_config_load()
                    .disable_ec2_metadata();
                if let Some(e) = &spec.endpoint {
                    b = b.endpoint(e);
                }
                let key = match &settings.access_key_id_file {
                    Some(f) => Some(read_secret(f, "access key id")?),
                    None => std::env::var("AWS_ACCESS_KEY_ID").ok(),
                };
                let secret = match &settings.secret_access_key_file {
                    Some(f) => Some(read_secret(f, "secret access key")?),
                    None => std::env::var("AWS_SECRET_ACCESS_KEY").ok(),
                };
                match (key, secret) {
                    (Some(k), Some(s)) => b = b.access_key_id(&k).secret_access_key(&s),
                    _ => b = b.skip_signature(),
                }
                Operator::new(b)?
            }
            Scheme::Webdav | Scheme::Webdavs => {
                let mut b = services::Webdav::default()
                    .endpoint(&spec.authority)
                    .root(&root);
                if let Some(u) = &settings.username {
                    b = b.username(u);
                }
                if let Some(f) = &settings.password_file {
                    b = b.password(&read_secret(f, "password")?);
                }
                Operator::new(b)?
            }
            Scheme::Sftp => {
                let client = sftp::Sftp::new(&spec, settings, first_byte, request)?;
                return Ok(Remote {
                    spec,
                    backend: Backend::Sftp(client),
                    rt,
                    first_byte,
                    request,
                    health: Health::default(),
                });
            }
        };
        let connections = settings.connections.unwrap_or(CONNECTIONS).max(1);
        // No retry layer: a read that misses its deadline fails over to
        // the next copy at once, and the data plane tries each remote copy
        // a second time only when every copy failed (`serve::copies`).
        let op = op
            .layer(
                TimeoutLayer::new()
                    .with_timeout(request)
                    .with_io_timeout(first_byte),
            )
            .layer(ConcurrentLimitLayer::new(connections));
        Ok(Remote {
            spec,
            backend: Backend::Dal(op),
            rt,
            first_byte,
            request,
            health: Health::default(),
        })
    }

    /// Runs `fut` on the remote runtime, for at most `deadline`.
    fn run<T>(
        &self,
        deadline: Duration,
        fut: impl Future<Output = Result<T, RemoteError>>,
    ) -> Result<T, RemoteError> {
        self.rt
            .block_on(async { tokio::time::timeout(deadline, fut).await })
            .map_err(|_| RemoteError::Timeout(deadline))?
    }

    /// Notes a request's outcome in the origin's health; logs a change.
    fn note<T>(&self, r: Result<T, RemoteError>) -> Result<T, RemoteError> {
        let t = match &r {
            Ok(_) => self.health.request_ok(),
            Err(e) if e.is_origin_fault() => self.health.request_failed(&e.to_string()),
            Err(_) => None,
        };
        if let Some((from, to)) = t {
            log_transition(&self.spec.url, from, to, self.health.last_error());
        }
        r
    }

    /// Every object under the root (S3 lists recursively; WebDAV is
    /// walked a directory at a time), sorted by path.
    pub fn list(
        &self,
        stop: &std::sync::atomic::AtomicBool,
    ) -> Result<Vec<RemoteEntry>, RemoteError> {
        let op = match &self.backend {
            Backend::Dal(op) => op,
            Backend::Sftp(c) => {
                let mut out = self.note(self.run(LISTING_TIMEOUT, c.list(stop, LISTING_MAX)))?;
                out.sort_by(|a, b| a.rel.cmp(&b.rel));
                out.dedup_by(|a, b| a.rel == b.rel);
                return Ok(out);
            }
        };
        let started = Instant::now();
        let recursive = self.spec.scheme == Scheme::S3;
        let mut out = Vec::new();
        let mut dirs = vec![String::new()];
        while let Some(dir) = dirs.pop() {
            if stop.load(std::sync::atomic::Ordering::Relaxed) {
                return Err(RemoteError::Failed("stopping".into()));
            }
            let left = LISTING_TIMEOUT.saturating_sub(started.elapsed());
            let entries = self.note(self.run(left, async {
                let fut = async {
                    let mut lister = op.lister_with(&dir).recursive(recursive).await?;
                    let mut got = Vec::new();
                    while let Some(e) = lister.try_next().await? {
                        got.push(e);
                        if got.len() > LISTING_MAX {
                            break;
                        }
                    }
                    Ok(got)
                };
                fut.await.map_err(RemoteError::of)
            }))?;
            for e in entries {
                let path = e.path();
                let m = e.metadata();
                if m.is_dir() {
                    if !recursive && path != dir && !path.is_empty() && path != "/" {
                        dirs.push(path.to_string());
                    }
                    continue;
                }
                out.push(RemoteEntry {
                    rel: path.trim_start_matches('/').as_bytes().to_vec(),
                    size: m.content_length(),
                    mtime_ns: m.last_modified().map_or(0, |t| {
                        i64::try_from(t.into_inner().as_nanosecond()).unwrap_or(0)
                    }),
                    etag: m.etag().map(str::to_string),
                });
                if out.len() > LISTING_MAX {
                    return Err(RemoteError::Failed(format!(
                        "more than {LISTING_MAX} objects"
                    )));
                }
            }
        }
        // A name that is not UTF-8 comes back still percent-encoded (the
        // client could not decode it), and cannot be asked for by name:
        // listed, it would fail every read. Left out, with one line.
        let before = out.len();
        let mut example = None;
        out.retain(|e| {
            let undecodable = e.rel.contains(&b'%') && !spec::decodes_to_utf8(&e.rel);
            if undecodable && example.is_none() {
                example = Some(String::from_utf8_lossy(&e.rel).into_owned());
            }
            !undecodable
        });
        if let Some(example) = example {
            tracing::warn!(
                origin = self.spec.url,
                skipped = before - out.len(),
                example,
                "objects whose names are not UTF-8 cannot be read through this protocol; they are not listed (rename them on the server)"
            );
        }
        out.sort_by(|a, b| a.rel.cmp(&b.rel));
        out.dedup_by(|a, b| a.rel == b.rel);
        Ok(out)
    }

    fn path_of(rel: &[u8]) -> Result<&str, RemoteError> {
        std::str::from_utf8(rel).map_err(|_| RemoteError::NotFound)
    }

    /// One object's metadata; its answer is its first byte, so it gets
    /// the first-byte deadline (a slow origin is passed over at once).
    pub fn stat(&self, rel: &[u8]) -> Result<RemoteEntry, RemoteError> {
        let path = Self::path_of(rel)?;
        let op = match &self.backend {
            Backend::Dal(op) => op,
            Backend::Sftp(c) => return self.note(self.run(self.first_byte, c.stat(path))),
        };
        let m = self.note(self.run(self.first_byte, async {
            op.stat(path).await.map_err(RemoteError::of)
        }))?;
        Ok(RemoteEntry {
            rel: rel.to_vec(),
            size: m.content_length(),
            mtime_ns: m.last_modified().map_or(0, |t| {
                i64::try_from(t.into_inner().as_nanosecond()).unwrap_or(0)
            }),
            etag: m.etag().map(str::to_string),
        })
    }

    /// `len` bytes at `offset` of an object, only if it still has `etag`
    /// (when one is given). Short only at the end of the object.
    pub fn read(
        &self,
        rel: &[u8],
        offset: u64,
        len: u64,
        etag: Option<&str>,
    ) -> Result<Vec<u8>, RemoteError> {
        let path = Self::path_of(rel)?;
        let op = match &self.backend {
            Backend::Dal(op) => op,
            // No ETags over SFTP: a replaced file is known by its size
            // and mtime (the listing), as on a local disk.
            Backend::Sftp(c) => {
                return self.note(self.run(self.request, c.read(path, offset, len)));
            }
        };
        let fut = async {
            let mut r = op.read_with(path).range(offset..offset + len);
            if let Some(e) = etag {
                r = r.if_match(e);
            }
            r.await.map_err(RemoteError::of)
        };
        let buf = self.note(self.run(self.request, fut))?;
        Ok(buf.to_vec())
    }

    /// A health check: the root can be listed (one page), within the
    /// first-byte deadline times two.
    pub async fn check(&self) -> Result<(), (String, bool)> {
        let deadline = self.first_byte * 2;
        let fut = async {
            match &self.backend {
                Backend::Dal(op) => {
                    let mut lister = op.lister_with("").await.map_err(RemoteError::of)?;
                    lister.try_next().await.map(drop).map_err(RemoteError::of)
                }
                Backend::Sftp(c) => c.check().await,
            }
        };
        match tokio::time::timeout(deadline, fut).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                let dns = matches!(e, RemoteError::Dns(_));
                Err((e.to_string(), dns))
            }
            Err(_) => Err((RemoteError::Timeout(deadline).to_string(), false)),
        }
    }

    /// The deadlines (first byte, whole request).
    pub fn deadlines(&self) -> (Duration, Duration) {
        (self.first_byte, self.request)
    }
}

/// One look at a remote origin, as `musicfs doctor` takes it: the URL
/// parses, its credentials load, and the server answers the health check
/// within its deadline. `Ok` says what was found.
pub fn check_once(origin: &std::path::Path, settings: &OriginSettings) -> Result<String, String> {
    let spec = RemoteSpec::parse(origin).map_err(|e| format!("{e:#}"))?;
    let scheme = spec.scheme.name();
    let rt = RemoteRuntime::new().map_err(|e| format!("{e:#}"))?;
    let remote = Remote::new(spec, settings, &rt).map_err(|e| format!("{e:#}"))?;
    let handle = rt.handle().ok_or("the remote I/O runtime is gone")?;
    handle
        .block_on(remote.check())
        .map(|()| format!("{scheme} server answers"))
        .map_err(|(e, _)| e)
}

/// Logs (and announces) a change of an origin's health.
pub fn log_transition(url: &str, from: State, to: State, why: Option<String>) {
    let why = why.unwrap_or_default();
    match to {
        State::Ready => tracing::info!(origin = url, "origin is ready again (was {})", from.name()),
        _ => tracing::warn!(
            origin = url,
            "origin is {} (was {}): {why}",
            to.name(),
            from.name()
        ),
    }
    crate::events::emit(
        "origin",
        format!(
            "origin {url} is {} (was {}){}",
            to.name(),
            from.name(),
            if why.is_empty() {
                String::new()
            } else {
                format!(": {why}")
            }
        ),
    );
}

/// Health-checks every remote origin that is due, in parallel, under one
/// deadline; returns how many were checked.
pub fn check_all(remotes: &[Arc<Remote>], rt: &RemoteRuntime) -> usize {
    let now = Instant::now();
    let due: Vec<&Arc<Remote>> = remotes.iter().filter(|r| r.health.check_due(now)).collect();
    let Some(handle) = rt.handle() else { return 0 };
    if due.is_empty() {
        return 0;
    }
    let outcomes = handle.block_on(futures::future::join_all(due.iter().map(|r| r.check())));
    for (r, outcome) in due.iter().zip(outcomes) {
        if let Some((from, to)) = r.health.checked(outcome, Instant::now()) {
            log_transition(&r.spec.url, from, to, r.health.last_error());
        }
    }
    due.len()
}

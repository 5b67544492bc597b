//! The data plane: answers the shim's requests (Cap'n Proto frames on a unix
//! socket, see `schema/musicfs.capnp`) from the catalog's tree and the
//! origin files.
//!
//! One thread per connection reads requests. Metadata requests are answered
//! inline (they only read the in-memory snapshot, microseconds); `open` and
//! `read` touch origin files and go to a bounded pool of I/O threads, so a
//! slow disk never stalls metadata. Responses are written whole under the
//! connection's write lock, in whatever order they finish.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::time::Instant;

use std::io::{BufReader, Write};
use std::os::unix::net::UnixStream;
use std::sync::mpsc;

use anyhow::{Context, Result};
use musicfs_schema::{request, response};
use parking_lot::Mutex;
use tracing::{debug, info, warn};

pub use crate::origin_io::is_local_fs;
use crate::origin_io::{FdCache, pread_nowait};
use crate::origins::Origins;
use crate::store::{NodeRec, Store, split_file_key};

/// Largest read the engine serves in one request.
pub const MAX_READ_BYTES: u32 = 4 * 1024 * 1024;
/// Largest number of directory entries in one readdir answer.
pub const MAX_READDIR_ENTRIES: u32 = 1024;
/// Threads that open and read origin files.
const IO_THREADS: usize = 8;
/// Origin I/O jobs queued before a connection's reader waits (back-pressure).
const IO_QUEUE_CAPACITY: usize = 1024;

/// State shared by every connection.
pub struct Shared {
    pub store: Arc<Store>,
    /// Origin directories by origin id, and whether each is on a local
    /// filesystem (then opens and cached reads may run inline on the
    /// connection thread without risking a long stall). Swapped on reload.
    pub origins: Arc<Origins>,
    /// Directory listings snapshotted at opendir, by handle.
    dir_handles: DirHandles,
    /// The connected shims: write halves for invalidation notices, and a
    /// handle to stop reading from them at shutdown.
    connections: Mutex<Vec<ConnRef>>,
    started: Instant,
    /// Kernel cache lifetime for entries and attributes (hot: reload).
    pub entry_ttl_ms: AtomicU32,
    /// Set at shutdown: new connections are refused.
    stopping: AtomicBool,
    /// Requests read and not yet answered.
    in_flight: AtomicUsize,
    fds: FdCache,
    pub counters: Counters,
}

/// Request counters, for the log, the status and counter-based tests.
#[derive(Default, Debug)]
pub struct Counters {
    pub requests: std::sync::atomic::AtomicU64,
    pub opens: std::sync::atomic::AtomicU64,
    pub reads: std::sync::atomic::AtomicU64,
    pub read_bytes: std::sync::atomic::AtomicU64,
    /// Origin files actually opened (fd cache misses).
    pub origin_opens: std::sync::atomic::AtomicU64,
}

fn bump(c: &std::sync::atomic::AtomicU64, n: u64) {
    c.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
}

impl Shared {
    /// One log line with the counters.
    pub fn log_counters(&self) {
        let c = &self.counters;
        let get = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        info!(
            requests = get(&c.requests),
            opens = get(&c.opens),
            reads = get(&c.reads),
            read_bytes = get(&c.read_bytes),
            origin_opens = get(&self.fds.origin_opens),
            "request counters"
        );
    }

    pub fn new(store: Arc<Store>, origins: Arc<Origins>, entry_ttl_ms: u32) -> Arc<Shared> {
        Arc::new(Shared {
            store,
            connections: Mutex::new(Vec::new()),
            dir_handles: DirHandles::default(),
            origins,
            started: Instant::now(),
            entry_ttl_ms: AtomicU32::new(entry_ttl_ms),
            stopping: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            fds: FdCache::default(),
            counters: Counters::default(),
        })
    }

    /// Number of connected shims (greeted as such; the supervisor's
    /// heartbeat connections are not counted).
    pub fn shim_count(&self) -> usize {
        let mut conns = self.connections.lock();
        conns.retain(|c| c.writer.strong_count() > 0);
        conns
            .iter()
            .filter(|c| c.shim.load(Ordering::Acquire))
            .count()
    }

    /// Origin files held open for reads (the fd cache).
    pub fn open_origin_files(&self) -> usize {
        self.fds.open_files()
    }

    /// The most origin files held open (hot: `open_files_max`).
    pub fn open_files_max(&self) -> usize {
        self.fds.capacity()
    }

    pub fn set_open_files_max(&self, files: usize) {
        self.fds.set_capacity(files);
    }

    /// Requests read and not answered yet.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Shutdown, first step: refuse new connections and stop reading new
    /// requests (what is already in a socket buffer is still read and
    /// answered; the shim replays anything else to the next engine).
    pub fn stop_taking_requests(&self) {
        self.stopping.store(true, Ordering::Release);
        let conns = self.connections.lock();
        for c in conns.iter() {
            let _ = c.ctl.shutdown(std::net::Shutdown::Read);
        }
    }

    /// Shutdown, second step: waits until every request read has been
    /// answered, or `deadline`. Returns how many were still in flight.
    pub fn drain(&self, deadline: Instant) -> usize {
        loop {
            let n = self.in_flight();
            if n == 0 || Instant::now() >= deadline {
                return n;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    fn begin_request(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }

    /// Tells every connected shim to drop what its kernel cached for these.
    pub fn invalidate(&self, inval: &crate::store::Invalidations) {
        if inval.is_empty() {
            return;
        }
        let mut msg = capnp::message::Builder::new_default();
        {
            let mut r = msg.init_root::<response::Builder<'_>>();
            r.set_id(0);
            let mut i = r.init_invalidate();
            let mut entries = i
                .reborrow()
                .init_entries(u32::try_from(inval.entries.len()).unwrap_or(0));
            for (n, (parent, name)) in inval.entries.iter().enumerate() {
                let mut e = entries.reborrow().get(u32::try_from(n).unwrap_or(0));
                e.set_parent(*parent);
                e.set_name(name.as_bytes());
            }
            let mut inodes = i.init_inodes(u32::try_from(inval.inodes.len()).unwrap_or(0));
            for (n, ino) in inval.inodes.iter().enumerate() {
                inodes.set(u32::try_from(n).unwrap_or(0), *ino);
            }
        }
        let frame = musicfs_schema::to_frame(&msg);
        let writers: Vec<Writer> = {
            let mut conns = self.connections.lock();
            conns.retain(|c| c.writer.strong_count() > 0);
            conns.iter().filter_map(|c| c.writer.upgrade()).collect()
        };
        for w in writers {
            send(&w, &frame);
        }
    }

    pub fn origin_path(&self, origin: u32, rel: &[u8]) -> Option<PathBuf> {
        let root = self.origins.root(origin)?;
        Some(root.join(OsStr::from_bytes(rel)))
    }
}

/// A connected client, as the shared state knows it.
struct ConnRef {
    writer: std::sync::Weak<Mutex<UnixStream>>,
    /// Another handle on the socket, to shut its read side down at stop.
    ctl: UnixStream,
    /// Said hello as a shim.
    shim: Arc<AtomicBool>,
}

/// One request being served; dropped once its answer is written.
struct InFlight(Arc<Shared>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A listing snapshot: the directory inode and its children then.
type Snapshot = (u64, Arc<Vec<crate::store::Child>>);

/// Open directory handles and their listing snapshots (bounded: the oldest
/// go first; a handle without a snapshot reads the current listing).
struct DirHandles {
    /// Handles start at a per-engine random base, so a handle that a previous
    /// engine gave out does not name one of ours. (next handle, open handles)
    inner: Mutex<(u64, std::collections::BTreeMap<u64, Snapshot>)>,
}

impl Default for DirHandles {
    fn default() -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            ^ (u64::from(std::process::id()) << 32);
        // 32 random-ish high bits, a counter below.
        DirHandles {
            inner: Mutex::new((
                (seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32) << 32,
                Default::default(),
            )),
        }
    }
}

/// Open directory handles kept at most.
const DIR_HANDLES_MAX: usize = 4096;

impl DirHandles {
    fn open(&self, ino: u64, listing: Arc<Vec<crate::store::Child>>) -> u64 {
        let mut inner = self.inner.lock();
        inner.0 = inner.0.wrapping_add(1);
        let fh = inner.0;
        inner.1.insert(fh, (ino, listing));
        while inner.1.len() > DIR_HANDLES_MAX {
            inner.1.pop_first();
        }
        fh
    }

    /// The snapshot of `fh`, if it is ours and lists `ino`.
    fn get(&self, fh: u64, ino: u64) -> Option<Arc<Vec<crate::store::Child>>> {
        match self.inner.lock().1.get(&fh) {
            Some((i, l)) if *i == ino => Some(l.clone()),
            _ => None,
        }
    }

    fn release(&self, fh: u64) {
        self.inner.lock().1.remove(&fh);
    }
}

fn errno_of(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

fn fill_attr(mut a: musicfs_schema::attr::Builder<'_>, ino: u64, node: &NodeRec) {
    a.set_ino(ino);
    a.set_mtime_ns(node.mtime_ns);
    if node.is_dir {
        a.set_kind(musicfs_schema::NodeKind::Directory);
        a.set_perm(0o555);
        a.set_nlink(2);
        a.set_size_bytes(4096);
        a.set_blocks(8);
    } else {
        a.set_kind(musicfs_schema::NodeKind::File);
        a.set_perm(0o444);
        a.set_nlink(1);
        a.set_size_bytes(node.size_bytes);
        a.set_blocks(node.size_bytes.div_ceil(512));
    }
}

fn fill_entry(mut e: musicfs_schema::entry::Builder<'_>, ino: u64, node: &NodeRec, ttl_ms: u32) {
    e.set_generation(1);
    e.set_entry_ttl_ms(ttl_ms);
    e.set_attr_ttl_ms(ttl_ms);
    fill_attr(e.init_attr(), ino, node);
}

/// A connection's write half; responses are written whole under its lock.
type Writer = Arc<Mutex<UnixStream>>;

/// Sends a frame with `fd` attached (SCM_RIGHTS on its first byte).
fn send_with_fd(writer: &Writer, frame: &[u8], fd: &File) {
    use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
    use std::os::fd::AsRawFd;
    let mut w = writer.lock();
    let fds = [fd.as_raw_fd()];
    let sent = sendmsg::<()>(
        w.as_raw_fd(),
        &[io::IoSlice::new(frame)],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::MSG_NOSIGNAL,
        None,
    );
    let outcome = match sent {
        Ok(n) => w.write_all(&frame[n..]),
        Err(e) => Err(io::Error::from(e)),
    };
    if let Err(e) = outcome {
        undelivered(&w, &e);
    }
}

fn send(writer: &Writer, frame: &[u8]) {
    let mut w = writer.lock();
    if let Err(e) = w.write_all(frame) {
        undelivered(&w, &e);
    }
}

/// A response that could not be written whole (the client is gone, or has
/// not read for `WRITE_TIMEOUT`: a stalled shim must not hold the I/O pool):
/// the stream may end in half a frame, so the connection ends. The shim
/// reconnects and replays what it still waits for.
fn undelivered(w: &UnixStream, e: &io::Error) {
    if matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    ) {
        warn!(
            "a client has not read its answers for {} s; dropping the connection",
            WRITE_TIMEOUT.as_secs()
        );
    } else {
        debug!("response not delivered: {e}");
    }
    let _ = w.shutdown(std::net::Shutdown::Both);
}

/// How long a response write may wait for the client to read.
const WRITE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Builds one response frame.
fn respond(id: u64, errno: i32, fill: impl FnOnce(response::Builder<'_>)) -> Vec<u8> {
    let mut msg = capnp::message::Builder::new_default();
    let mut r = msg.init_root::<response::Builder<'_>>();
    r.set_id(id);
    r.set_errno(errno);
    if errno == 0 {
        fill(r);
    } else {
        r.set_none(());
    }
    musicfs_schema::to_frame(&msg)
}

fn error_frame(id: u64, errno: i32) -> Vec<u8> {
    respond(id, errno, |_| {})
}

type IoJob = Box<dyn FnOnce() + Send>;

/// The bounded pool that runs origin I/O.
struct IoPool {
    tx: mpsc::SyncSender<IoJob>,
}

impl IoPool {
    fn start(threads: usize) -> Result<IoPool> {
        let (tx, rx) = mpsc::sync_channel::<IoJob>(IO_QUEUE_CAPACITY);
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("musicfs-io-{i}"))
                .spawn(move || {
                    loop {
                        let job = rx.lock().recv();
                        match job {
                            Ok(job) => {
                                // A panicking job must not take the pool down.
                                if std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)).is_err() {
                                    warn!("an origin I/O job panicked; its request gets no answer from this engine");
                                }
                            }
                            Err(_) => return,
                        }
                    }
                })
                .context("cannot start an I/O thread")?;
        }
        Ok(IoPool { tx })
    }

    fn submit(&self, job: IoJob) {
        if self.tx.send(job).is_err() {
            warn!("the I/O pool is gone");
        }
    }
}

/// Serves the data plane on `socket` from a background thread. The returned
/// guard removes the socket file when dropped.
pub fn serve(shared: Arc<Shared>, socket: &Path) -> Result<SocketGuard> {
    if socket.exists() {
        std::fs::remove_file(socket)
            .with_context(|| format!("cannot remove old socket {}", socket.display()))?;
    }
    // Owner only: the shim runs as the same user.
    let listener = crate::control::bind_owner_only(socket)
        .with_context(|| format!("cannot listen on {}", socket.display()))?;
    let pool = Arc::new(IoPool::start(IO_THREADS)?);
    info!(socket = %socket.display(), "engine serving");
    std::thread::Builder::new()
        .name("musicfs-accept".into())
        .spawn(move || {
            for stream in listener.incoming() {
                match stream {
                    // Stopping: no new connections (the socket file is gone
                    // too; this only catches a connect that raced it).
                    Ok(_) if shared.stopping.load(Ordering::Acquire) => {}
                    Ok(stream) => {
                        let shared = shared.clone();
                        let pool = pool.clone();
                        let spawned = std::thread::Builder::new()
                            .name("musicfs-conn".into())
                            .spawn(move || {
                                if let Err(e) = connection(&shared, &pool, stream) {
                                    warn!("connection ended: {e:#}");
                                }
                            });
                        if let Err(e) = spawned {
                            warn!("cannot start a connection thread: {e}");
                        }
                    }
                    Err(e) => {
                        warn!("accept failed: {e}");
                        std::thread::sleep(std::time::Duration::from_millis(50));
                    }
                }
            }
        })
        .context("cannot start the accept thread")?;
    Ok(SocketGuard(socket.to_path_buf()))
}

/// Removes the socket file on drop, so no client connects to a dead engine.
pub struct SocketGuard(PathBuf);

impl SocketGuard {
    pub fn new(path: PathBuf) -> SocketGuard {
        SocketGuard(path)
    }
}

impl Drop for SocketGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn connection(shared: &Arc<Shared>, pool: &Arc<IoPool>, stream: UnixStream) -> Result<()> {
    stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let writer: Writer = Arc::new(Mutex::new(stream.try_clone()?));
    let is_shim = Arc::new(AtomicBool::new(false));
    {
        // Heartbeats connect every second: drop the dead ones as we go.
        let mut conns = shared.connections.lock();
        conns.retain(|c| c.writer.strong_count() > 0);
        conns.push(ConnRef {
            writer: Arc::downgrade(&writer),
            ctl: stream.try_clone()?,
            shim: is_shim.clone(),
        });
    }
    if shared.stopping.load(Ordering::Acquire) {
        return Ok(());
    }
    let mut reader = BufReader::with_capacity(64 * 1024, stream);
    let mut greeted = false;
    loop {
        let Some(msg) = musicfs_schema::read_frame(&mut reader)? else {
            debug!("client closed the connection");
            return Ok(());
        };
        let req = msg.get_root::<request::Reader<'_>>()?;
        let id = req.get_id();
        bump(&shared.counters.requests, 1);
        let which = req.which()?;
        // Counted until its answer is written (moved into pool jobs).
        let op = shared.begin_request();
        if !greeted {
            let request::Hello(hello) = which else {
                send(&writer, &error_frame(id, libc::EPROTO));
                anyhow::bail!("the first request was not hello");
            };
            let (frame, ok, shim) = hello_response(id, hello?);
            send(&writer, &frame);
            if !ok {
                anyhow::bail!("incompatible client");
            }
            is_shim.store(shim, Ordering::Release);
            greeted = true;
            continue;
        }
        match which {
            // One-way: the kernel ignores their answers and inodes are stable
            // for ever, so there is nothing to do and nothing to answer.
            request::Releasedir(r) => shared.dir_handles.release(r.get_fh()),
            request::Forget(_) | request::Release(_) => {}
            request::Open(o) => {
                let (ino, flags, pt) = (o.get_ino(), o.get_flags(), o.get_passthrough());
                match origin_of(shared, ino) {
                    Err(errno) => send(&writer, &error_frame(id, errno)),
                    Ok(origin) if origin.local => {
                        send_open(&writer, open(shared, id, ino, flags, pt, origin));
                    }
                    Ok(origin) => {
                        let (shared, writer) = (shared.clone(), writer.clone());
                        pool.submit(Box::new(move || {
                            send_open(&writer, open(&shared, id, ino, flags, pt, origin));
                            drop(op);
                        }));
                    }
                }
            }
            request::Read(r) => {
                let (ino, offset, size) = (r.get_ino(), r.get_offset(), r.get_size());
                // Page-cache hits on local origins are answered here; the rest waits
                // for the disk on the pool.
                if let Some(frame) = read_cached(shared, id, ino, offset, size) {
                    send(&writer, &frame);
                } else {
                    let (shared, writer) = (shared.clone(), writer.clone());
                    pool.submit(Box::new(move || {
                        send(&writer, &read(&shared, id, ino, offset, size));
                        drop(op);
                    }));
                }
            }
            other => send(&writer, &metadata(shared, id, other)),
        }
    }
}

/// This engine's protocol range. Fault injection: `MUSICFS_FAKE_PROTOCOL=N`
/// makes it claim version N only (to test how peers refuse each other).
fn protocol_range() -> (u32, u32) {
    match std::env::var("MUSICFS_FAKE_PROTOCOL")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        Some(v) => (v, v),
        None => (
            musicfs_schema::MIN_PROTOCOL_VERSION,
            musicfs_schema::PROTOCOL_VERSION,
        ),
    }
}

/// The answer to a hello, whether it is compatible, and whether the
/// client is a shim.
fn hello_response(id: u64, hello: musicfs_schema::hello::Reader<'_>) -> (Vec<u8>, bool, bool) {
    let theirs = (hello.get_min_protocol(), hello.get_max_protocol());
    let ours = protocol_range();
    let name = hello
        .get_peer_name()
        .ok()
        .and_then(|n| n.to_str().ok())
        .unwrap_or("?")
        .to_string();
    let ok = musicfs_schema::compatible(ours, theirs);
    let mut msg = capnp::message::Builder::new_default();
    let mut r = msg.init_root::<response::Builder<'_>>();
    r.set_id(id);
    let mut h = r.reborrow().init_hello();
    {
        let mut mine = h.reborrow().init_hello();
        mine.set_min_protocol(ours.0);
        mine.set_max_protocol(ours.1);
        mine.set_peer_name(concat!("musicfs engine ", env!("CARGO_PKG_VERSION")));
    }
    if ok && name.starts_with("musicfs supervisor") {
        debug!(client = %name, "heartbeat");
    } else if ok {
        info!(client = %name, "client connected");
    } else {
        let why = format!(
            "{name} speaks protocol {}..={}, this engine {}..={}: no common version",
            theirs.0, theirs.1, ours.0, ours.1
        );
        warn!("{why}");
        h.set_message(&why);
        r.set_errno(libc::EPROTO);
    }
    let shim = ok && name.starts_with("musicfs-shim");
    (musicfs_schema::to_frame(&msg), ok, shim)
}

fn metadata(shared: &Shared, id: u64, which: request::WhichReader<'_>) -> Vec<u8> {
    let result = (|| -> Result<Vec<u8>> {
        let store = &shared.store;
        let ttl = shared.entry_ttl_ms.load(Ordering::Relaxed);
        Ok(match which {
            request::Lookup(l) => {
                let (parent, name) = (l.get_parent(), l.get_name()?);
                let found = match std::str::from_utf8(name) {
                    Ok(n) => store.lookup(parent, n)?,
                    Err(_) => None,
                };
                match found {
                    Some((ino, node)) => {
                        respond(id, 0, |r| fill_entry(r.init_entry(), ino, &node, ttl))
                    }
                    None if store.node(parent)?.is_some() => error_frame(id, libc::ENOENT),
                    None => error_frame(id, libc::ESTALE),
                }
            }
            request::Forget(_) | request::Releasedir(_) | request::Release(_) => {
                respond(id, 0, |mut r| r.set_none(()))
            }
            request::Getattr(ino) => match store.node(ino)? {
                Some(node) => respond(id, 0, |r| {
                    let mut a = r.init_attr();
                    a.set_ttl_ms(ttl);
                    fill_attr(a.init_attr(), ino, &node);
                }),
                None => error_frame(id, libc::ESTALE),
            },
            request::Opendir(o) => match store.node(o.get_ino())? {
                Some(n) if n.is_dir => {
                    // The listing as of opendir: readdir offsets index it, so
                    // a change while the directory is being read can neither
                    // skip nor repeat an entry that did not change.
                    let fh = shared
                        .dir_handles
                        .open(o.get_ino(), store.children(o.get_ino())?);
                    respond(id, 0, |r| {
                        let mut o = r.init_opened();
                        o.set_fh(fh);
                        o.set_keep_cache(true);
                    })
                }
                Some(_) => error_frame(id, libc::ENOTDIR),
                None => error_frame(id, libc::ESTALE),
            },
            request::Readdir(rd) => {
                let snapshot = shared.dir_handles.get(rd.get_fh(), rd.get_ino());
                readdir(store, id, rd, ttl, snapshot)?
            }
            request::Statfs(_) => {
                let (files, nodes, bytes) = store.totals()?;
                respond(id, 0, |r| {
                    let mut s = r.init_statfs();
                    s.set_bsize(4096);
                    s.set_frsize(4096);
                    s.set_blocks(bytes.div_ceil(4096));
                    s.set_files(nodes.max(files));
                    s.set_namelen(crate::template::NAME_MAX_BYTES as u32);
                })
            }
            request::Readlink(_) => error_frame(id, libc::EINVAL),
            request::Getxattr(g) => {
                let name = g.get_name()?;
                match xattrs(shared, g.get_ino())
                    .into_iter()
                    .find(|(n, _)| n.as_bytes() == name)
                {
                    Some((_, v)) => respond(id, 0, |mut r| r.set_data(&v)),
                    None => error_frame(id, libc::ENODATA),
                }
            }
            request::Listxattr(ino) => {
                let attrs = xattrs(shared, ino);
                respond(id, 0, |r| {
                    let mut list = r.init_names(u32::try_from(attrs.len()).unwrap_or(0));
                    for (i, (n, _)) in attrs.iter().enumerate() {
                        list.set(u32::try_from(i).unwrap_or(0), n.as_bytes());
                    }
                })
            }
            request::Ping(()) => respond(id, 0, |r| {
                let mut p = r.init_pong();
                p.set_uptime_ms(
                    u64::try_from(shared.started.elapsed().as_millis()).unwrap_or(u64::MAX),
                );
                p.set_engine_version(env!("CARGO_PKG_VERSION"));
            }),
            request::Hello(_) => error_frame(id, libc::EPROTO),
            request::Open(_) | request::Read(_) => error_frame(id, libc::EIO),
        })
    })();
    result.unwrap_or_else(|e| {
        warn!("request {id} failed: {e:#}");
        error_frame(id, libc::EIO)
    })
}

fn readdir(
    store: &Store,
    id: u64,
    rd: request::readdir::Reader<'_>,
    ttl: u32,
    snapshot: Option<Arc<Vec<crate::store::Child>>>,
) -> Result<Vec<u8>> {
    let (ino, offset, plus) = (rd.get_ino(), rd.get_offset(), rd.get_plus());
    let max = rd.get_max_entries().clamp(1, MAX_READDIR_ENTRIES) as usize;
    let Some(node) = store.node(ino)? else {
        return Ok(error_frame(id, libc::ESTALE));
    };
    if !node.is_dir {
        return Ok(error_frame(id, libc::ENOTDIR));
    }
    // A handle from another engine (before a restart) has no snapshot here:
    // the current listing serves it.
    let children = match snapshot {
        Some(s) => s,
        None => store.children(ino)?,
    };
    // Positions: 0 = ".", 1 = "..", 2.. = children. An entry's offset cookie
    // is its position + 1, i.e. where the next call starts.
    let total = children.len() + 2;
    let start = usize::try_from(offset).unwrap_or(usize::MAX).min(total);
    let end = (start + max).min(total);
    let batch: Vec<(&str, u64, bool)> = (start..end)
        .map(|pos| match pos {
            0 => (".", ino, true),
            1 => ("..", node.parent, true),
            _ => {
                let c = &children[pos - 2];
                (c.name.as_ref(), c.ino, c.is_dir)
            }
        })
        .collect();
    let recs = if plus {
        store.nodes(&batch.iter().map(|b| b.1).collect::<Vec<_>>())?
    } else {
        Vec::new()
    };
    Ok(respond(id, 0, |r| {
        let mut list = r.init_entries(u32::try_from(batch.len()).unwrap_or(0));
        for (i, (name, child, is_dir)) in batch.iter().enumerate() {
            let mut e = list.reborrow().get(u32::try_from(i).unwrap_or(0));
            e.set_name(name.as_bytes());
            e.set_offset((start + i) as u64 + 1);
            if plus {
                if let Some(Some(rec)) = recs.get(i) {
                    fill_entry(e.init_entry(), *child, rec, ttl);
                }
            } else {
                let mut a = e.init_entry().init_attr();
                a.set_ino(*child);
                a.set_kind(if *is_dir {
                    musicfs_schema::NodeKind::Directory
                } else {
                    musicfs_schema::NodeKind::File
                });
            }
        }
    }))
}

/// The origin file behind a file inode.
fn origin_of(shared: &Shared, ino: u64) -> Result<Origin, i32> {
    let node = match shared.store.node(ino) {
        Ok(Some(n)) => n,
        Ok(None) => return Err(libc::ESTALE),
        Err(e) => {
            warn!(ino, "catalog read failed: {e:#}");
            return Err(libc::EIO);
        }
    };
    if node.is_dir {
        return Err(libc::EISDIR);
    }
    let (origin, rel) = split_file_key(&node.file_key).ok_or(libc::EIO)?;
    let table = shared.origins.snapshot();
    // An origin removed by a reload: its files are on their way out.
    let root = table.root(origin).ok_or(libc::ESTALE)?;
    Ok(Origin {
        root: root.to_path_buf(),
        path: root.join(OsStr::from_bytes(rel)),
        version: node.version,
        size_bytes: node.size_bytes,
        local: table.is_local(origin),
    })
}

/// The origin file behind a file node, read once per request.
struct Origin {
    /// The origin's root directory.
    root: PathBuf,
    path: PathBuf,
    version: u64,
    size_bytes: u64,
    /// On a local filesystem: may be opened and read inline.
    local: bool,
}

/// Opens a file. With `passthrough` (and a local origin) the origin file goes
/// back with the answer, for the kernel to read directly.
fn open(
    shared: &Shared,
    id: u64,
    ino: u64,
    flags: u32,
    passthrough: bool,
    origin: Origin,
) -> (Vec<u8>, Option<Arc<File>>) {
    bump(&shared.counters.opens, 1);
    if flags & (libc::O_WRONLY | libc::O_RDWR | libc::O_TRUNC | libc::O_APPEND) as u32 != 0 {
        return (error_frame(id, libc::EROFS), None);
    }
    let Origin {
        root,
        path,
        version,
        local,
        ..
    } = origin;
    // Open now, so that a vanished origin file fails the open(2), not a later read.
    match shared.fds.get(ino, version, &path) {
        Ok(file) => {
            let attach = passthrough && local;
            let frame = respond(id, 0, |r| {
                let mut o = r.init_opened();
                o.set_fh(version);
                o.set_keep_cache(true);
                o.set_fd_attached(attach);
            });
            (frame, attach.then_some(file))
        }
        Err(e) => {
            // A listed file whose whole origin is away (a NAS that is down):
            // an I/O error, not "no such file".
            let errno = match e.raw_os_error() {
                Some(libc::ENOENT | libc::ENOTDIR) if origin_away(&root) => {
                    warn!(path = %path.display(), origin = %root.display(), "cannot open: the origin is not reachable (EIO)");
                    libc::EIO
                }
                _ => errno_of(&e),
            };
            debug!(ino, path = %path.display(), "open failed: {e}");
            (error_frame(id, errno), None)
        }
    }
}

/// Whether an origin's root is missing, or an empty directory (a share that
/// is not mounted). Asked only after an open failed.
fn origin_away(root: &Path) -> bool {
    std::fs::read_dir(root).map_or(true, |mut d| d.next().is_none())
}

fn send_open(writer: &Writer, (frame, file): (Vec<u8>, Option<Arc<File>>)) {
    match file {
        Some(f) => send_with_fd(writer, &frame, &f),
        None => send(writer, &frame),
    }
}

/// Answers a read from the page cache without waiting, if the origin is local
/// and every requested byte is cached; `None` means "send it to the pool".
fn read_cached(shared: &Shared, id: u64, ino: u64, offset: u64, size: u32) -> Option<Vec<u8>> {
    let Origin {
        path,
        version,
        size_bytes: file_size,
        local,
        ..
    } = origin_of(shared, ino).ok()?;
    if !local {
        return None;
    }
    let want = (size.min(MAX_READ_BYTES) as u64).min(file_size.saturating_sub(offset)) as usize;
    let file = shared.fds.get(ino, version, &path).ok()?;
    let mut buf = vec![0u8; want];
    let n = if want == 0 {
        0
    } else {
        pread_nowait(&file, &mut buf, offset).ok()?
    };
    if n != want {
        return None;
    }
    bump(&shared.counters.reads, 1);
    bump(&shared.counters.read_bytes, n as u64);
    Some(respond(id, 0, |mut r| r.set_data(&buf)))
}

fn read(shared: &Shared, id: u64, ino: u64, offset: u64, size: u32) -> Vec<u8> {
    bump(&shared.counters.reads, 1);
    let size = size.min(MAX_READ_BYTES) as usize;
    let Origin { path, version, .. } = match origin_of(shared, ino) {
        Ok(v) => v,
        Err(errno) => return error_frame(id, errno),
    };
    let result = (|| -> io::Result<Vec<u8>> {
        let file = shared.fds.get(ino, version, &path)?;
        let mut buf = vec![0u8; size];
        let mut filled = 0;
        while filled < size {
            match file.read_at(&mut buf[filled..], offset + filled as u64) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        buf.truncate(filled);
        Ok(buf)
    })();
    match result {
        Ok(buf) => {
            bump(&shared.counters.read_bytes, buf.len() as u64);
            respond(id, 0, |mut r| r.set_data(&buf))
        }
        Err(e) => {
            warn!(ino, path = %path.display(), "origin read failed: {e}");
            error_frame(id, errno_of(&e))
        }
    }
}

/// The `user.musicfs.*` extended attributes of a node.
fn xattrs(shared: &Shared, ino: u64) -> Vec<(&'static str, Vec<u8>)> {
    let Ok(Some(node)) = shared.store.node(ino) else {
        return Vec::new();
    };
    let Ok(Some(entry)) = shared.store.file(&node.file_key) else {
        return Vec::new();
    };
    let rec = entry.rec;
    let mut out = Vec::new();
    if let Some(path) = shared.origin_path(rec.origin, &rec.rel_path) {
        out.push(("user.musicfs.origin", path.as_os_str().as_bytes().to_vec()));
    }
    if let Some(f) = &rec.format {
        out.push(("user.musicfs.format", f.as_bytes().to_vec()));
    }
    if let Some(e) = &rec.probe_error {
        out.push(("user.musicfs.error", e.as_bytes().to_vec()));
    }
    out
}

//! The shim's side of the engine connection: Cap'n Proto frames on a unix
//! socket (see `schema/musicfs.capnp`), multiplexed by request id.
//!
//! - A FUSE thread builds its request, files it in the pending table (with the
//!   reply inside a completion closure) and writes it to the socket; it never
//!   waits for the answer.
//! - One reader thread per connection reads responses and runs the matching
//!   completion, which sends the FUSE reply.
//! - The connector thread (re)connects, checks the protocol version with
//!   `hello`, and then sends every pending request again: a request whose
//!   engine died is replayed to the next one (all requests are idempotent).
//!   Requests made while no engine is there wait in the table (parked).
//! - The deadline thread fails every request older than its deadline with
//!   ETIMEDOUT and one log line. Nothing waits forever.

use std::collections::{HashMap, VecDeque};
use std::io::{BufReader, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use musicfs_schema::{request, response};
use parking_lot::{Condvar, Mutex};
use tracing::{debug, error, info, warn};

use crate::kcache::KernelCache;
use notices::{Notice, forget_everything, notice};

mod notices;

/// Requests in flight (sent or parked) before new ones are refused with EAGAIN.
pub const MAX_PENDING: usize = 64 * 1024;
/// Pause between connection attempts while no engine answers.
const RECONNECT_PAUSE: Duration = Duration::from_millis(20);
/// How often deadlines are checked.
const DEADLINE_TICK: Duration = Duration::from_millis(50);
/// How far past its deadline a request may be before the shim calls itself
/// unhealthy (its deadline thread fails requests every `DEADLINE_TICK`).
const OVERDUE_GRACE: Duration = Duration::from_secs(2);
/// Longest a request write may block before the link is declared down.
const WRITE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long the engine may take to answer hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a request failed, as the FUSE caller will see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallError {
    /// No engine answered before the deadline.
    Timeout,
    /// The engine refused this shim's protocol version.
    Incompatible,
    /// Too many requests in flight.
    Overloaded,
    /// The request was in flight when two engines in a row died: it is
    /// the likely cause, and is not sent to a third.
    Poison,
}

impl CallError {
    pub fn errno(self) -> fuser::Errno {
        match self {
            CallError::Timeout => fuser::Errno::ETIMEDOUT,
            CallError::Incompatible => fuser::Errno::from_i32(libc::EPROTO),
            CallError::Overloaded => fuser::Errno::from_i32(libc::EAGAIN),
            CallError::Poison => fuser::Errno::EIO,
        }
    }
}

/// An engine response, with the file descriptor that came with it, if any.
pub struct Resp<'a> {
    pub msg: response::Reader<'a>,
    pub fd: Option<OwnedFd>,
}

/// Runs once with the engine's response (or the reason there is none).
pub type Completion = Box<dyn for<'a> FnOnce(Result<Resp<'a>, CallError>) + Send>;

/// Reads the socket with recvmsg, keeping file descriptors that arrive with
/// the bytes (SCM_RIGHTS) in order, for the frames that announce them.
struct FdReader {
    stream: UnixStream,
    fds: VecDeque<OwnedFd>,
}

impl Read for FdReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
        let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 16]);
        let mut iov = [std::io::IoSliceMut::new(buf)];
        loop {
            match recvmsg::<()>(
                self.stream.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::MSG_CMSG_CLOEXEC,
            ) {
                Ok(msg) => {
                    let n = msg.bytes;
                    if let Ok(cmsgs) = msg.cmsgs() {
                        for c in cmsgs {
                            if let ControlMessageOwned::ScmRights(fds) = c {
                                for fd in fds {
                                    // SAFETY: the kernel just installed this fd for us.
                                    self.fds.push_back(unsafe { OwnedFd::from_raw_fd(fd) });
                                }
                            }
                        }
                    }
                    return Ok(n);
                }
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
}

struct Pending {
    what: &'static str,
    frame: Arc<Vec<u8>>,
    deadline: Instant,
    done: Completion,
    /// The engine connection (generation) it was last written to.
    sent_to: Option<u64>,
    /// Engines that ended while it was in flight to them, in a row.
    engines_ended: u8,
}

/// A request in flight at this many engine deaths in a row is answered EIO.
const ENGINES_ENDED_MAX: u8 = 2;

enum Link {
    /// No engine yet (or it went away); requests park.
    Down,
    Up {
        stream: UnixStream,
        generation: u64,
    },
    /// The engine refused our protocol version.
    Refused(String),
}

struct State {
    link: Mutex<Link>,
    changed: Condvar,
    pending: Mutex<HashMap<u64, Pending>>,
    next_id: AtomicU64,
    request_timeout: Duration,
    socket: PathBuf,
    /// Invalidation notices for the kernel, sent from their own thread: a
    /// notice can wait on a directory lock that an in-flight lookup holds,
    /// and that lookup's answer comes through the reader thread.
    notices: Mutex<Option<std::sync::mpsc::SyncSender<Notice>>>,
    /// What the kernel caches, dropped whole for each new engine.
    kcache: std::sync::OnceLock<Arc<KernelCache>>,
    /// The highest request id the current connection answered: a request
    /// in flight when an engine ended is not blamed for it if the engine
    /// answered one sent after it.
    answered_max: AtomicU64,
}

/// The shim's handle on the engine; cheap to clone.
#[derive(Clone)]
pub struct Transport {
    state: Arc<State>,
}

impl Transport {
    /// Starts the connector and deadline threads.
    pub fn start(socket: PathBuf, request_timeout: Duration) -> std::io::Result<Transport> {
        let state = Arc::new(State {
            link: Mutex::new(Link::Down),
            changed: Condvar::new(),
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            request_timeout,
            socket,
            notices: Mutex::new(None),
            kcache: std::sync::OnceLock::new(),
            answered_max: AtomicU64::new(0),
        });
        let s = state.clone();
        std::thread::Builder::new()
            .name("musicfs-connect".into())
            .spawn(move || connector(&s))?;
        let s = state.clone();
        std::thread::Builder::new()
            .name("musicfs-deadline".into())
            .spawn(move || deadlines(&s))?;
        Ok(Transport { state })
    }

    /// Whether the shim does its job: every request is answered by the
    /// engine or failed at its deadline, so none is overdue by more than
    /// `OVERDUE_GRACE`. Requests parked while no engine runs are healthy
    /// (the engine is restarted by its own supervisor; killing the shim
    /// for that would lose the mount).
    pub fn healthy(&self) -> bool {
        let Some(limit) = Instant::now().checked_sub(OVERDUE_GRACE) else {
            return true;
        };
        !self
            .state
            .pending
            .lock()
            .values()
            .any(|p| p.deadline < limit)
    }

    /// Requests sent (or waiting for an engine) and not answered yet.
    pub fn pending(&self) -> usize {
        self.state.pending.lock().len()
    }

    /// Starts passing the engine's invalidation notices to the kernel;
    /// `kcache` is dropped whole when a new engine connects.
    pub fn set_notifier(
        &self,
        notifier: fuser::Notifier,
        kcache: Arc<KernelCache>,
    ) -> std::io::Result<()> {
        let _ = self.state.kcache.set(kcache.clone());
        let tx = notices::start(notifier, kcache)?;
        *self.state.notices.lock() = Some(tx);
        Ok(())
    }

    /// Makes the kernel drop everything it cached (after `set_notifier`).
    pub fn forget_everything(&self, why: &str) {
        if let Some(k) = self.state.kcache.get() {
            forget_everything(&self.state, k, why);
        }
    }

    /// Waits at most `timeout` for an engine: Ok(true) once one serves,
    /// Ok(false) when none answered in time, Err with its reason when the
    /// engine refuses us.
    pub fn wait_first_engine(&self, timeout: Duration) -> Result<bool, String> {
        let deadline = Instant::now() + timeout;
        let mut link = self.state.link.lock();
        loop {
            match &*link {
                Link::Up { .. } => return Ok(true),
                Link::Refused(why) => return Err(why.clone()),
                Link::Down => {}
            }
            if self
                .state
                .changed
                .wait_until(&mut link, deadline)
                .timed_out()
            {
                return Ok(false);
            }
        }
    }

    /// The engine socket this transport connects to.
    pub fn socket(&self) -> &Path {
        &self.state.socket
    }

    /// Sends a one-way request (forget, release): no answer, no replay. Lost
    /// when no engine is connected, which is harmless for these.
    pub fn send_oneway(&self, build: impl FnOnce(request::Builder<'_>)) {
        let mut msg = capnp::message::Builder::new_default();
        let mut root = msg.init_root::<request::Builder<'_>>();
        root.set_id(0);
        build(root);
        write_frame(&self.state, &musicfs_schema::to_frame(&msg));
    }

    /// Sends a request; `done` runs exactly once, on another thread, with the
    /// response or the reason there is none.
    pub fn call(
        &self,
        what: &'static str,
        build: impl FnOnce(request::Builder<'_>),
        done: impl for<'a> FnOnce(Result<Resp<'a>, CallError>) + Send + 'static,
    ) {
        let id = self.state.next_id.fetch_add(1, Ordering::Relaxed);
        let mut msg = capnp::message::Builder::new_default();
        let mut root = msg.init_root::<request::Builder<'_>>();
        root.set_id(id);
        build(root);
        let frame = Arc::new(musicfs_schema::to_frame(&msg));
        {
            let mut pending = self.state.pending.lock();
            if pending.len() >= MAX_PENDING {
                drop(pending);
                warn!(
                    op = what,
                    "{MAX_PENDING} requests in flight; refusing with EAGAIN"
                );
                done(Err(CallError::Overloaded));
                return;
            }
            if let Link::Refused(_) = &*self.state.link.lock() {
                drop(pending);
                done(Err(CallError::Incompatible));
                return;
            }
            pending.insert(
                id,
                Pending {
                    what,
                    frame: frame.clone(),
                    deadline: Instant::now() + self.state.request_timeout,
                    done: Box::new(done),
                    sent_to: None,
                    engines_ended: 0,
                },
            );
        }
        // Filed first, written second: the answer can only come after this.
        if let Some(g) = write_frame(&self.state, &frame) {
            sent(&self.state, id, g);
        }
    }
}

/// Writes a frame to the current engine, if there is one; returns the
/// connection's generation when written. A failed write takes the link
/// down; the request stays pending and is replayed.
fn write_frame(state: &State, frame: &[u8]) -> Option<u64> {
    let mut link = state.link.lock();
    let generation = match &mut *link {
        Link::Up { stream, generation } => match stream.write_all(frame) {
            Ok(()) => return Some(*generation),
            Err(e) => {
                debug!("write to the engine failed: {e}");
                *generation
            }
        },
        _ => return None,
    };
    link_down(state, &mut link, generation);
    None
}

/// Request `id` went to connection `generation`.
fn sent(state: &State, id: u64, generation: u64) {
    if let Some(p) = state.pending.lock().get_mut(&id) {
        p.sent_to = Some(generation);
    }
}

/// Connection `generation` ended: each request in flight on it counts one
/// more engine ended, unless the engine answered a request sent after it
/// (then it did not stop there: the count starts again); one that has
/// ended `ENGINES_ENDED_MAX` in a row (a request that kills every engine
/// it reaches) is answered EIO instead of being replayed to the next, with
/// one log line.
fn engine_ended(state: &State, generation: u64) {
    let answered_max = state.answered_max.swap(0, Ordering::AcqRel);
    let poisoned: Vec<(u64, Pending)> = {
        let mut pending = state.pending.lock();
        let mut out = Vec::new();
        let ids: Vec<u64> = pending
            .iter_mut()
            .filter(|(_, p)| p.sent_to == Some(generation))
            .map(|(id, p)| {
                p.sent_to = None;
                if answered_max > *id {
                    p.engines_ended = 0;
                } else {
                    p.engines_ended += 1;
                }
                (*id, p.engines_ended)
            })
            .filter(|(_, n)| *n >= ENGINES_ENDED_MAX)
            .map(|(id, _)| id)
            .collect();
        for id in ids {
            if let Some(p) = pending.remove(&id) {
                out.push((id, p));
            }
        }
        out
    };
    for (id, p) in poisoned {
        warn!(
            op = p.what,
            id,
            "this request was in flight when {ENGINES_ENDED_MAX} engines in a row ended; answered EIO instead of sending it to the next one"
        );
        (p.done)(Err(CallError::Poison));
    }
}

fn link_down(state: &State, link: &mut Link, generation: u64) {
    if let Link::Up {
        stream,
        generation: g,
    } = link
        && *g == generation
    {
        let _ = stream.shutdown(std::net::Shutdown::Both);
        *link = Link::Down;
        if let Some(k) = state.kcache.get() {
            k.forget_opens();
        }
        warn!(
            generation,
            "engine connection lost; requests park until an engine is back"
        );
        state.changed.notify_all();
    }
}

fn complete(state: &State, id: u64, result: Result<Resp<'_>, CallError>) {
    let entry = state.pending.lock().remove(&id);
    match entry {
        Some(p) => (p.done)(result),
        // Answered twice (replayed around a reconnect) or already timed out.
        None => debug!(id, "response for a request no longer pending"),
    }
}

fn reader(state: Arc<State>, stream: UnixStream, generation: u64) {
    let mut r = BufReader::with_capacity(
        256 * 1024,
        FdReader {
            stream,
            fds: VecDeque::new(),
        },
    );
    loop {
        let msg = match musicfs_schema::read_frame(&mut r) {
            Ok(Some(m)) => m,
            Ok(None) => break,
            Err(e) => {
                warn!("bad frame from the engine: {e}");
                break;
            }
        };
        match msg.get_root::<response::Reader<'_>>() {
            Ok(resp) if resp.get_id() == 0 => notice(&state, resp),
            Ok(resp) => {
                let fd = match resp.which() {
                    Ok(response::Opened(o)) if o.get_fd_attached() => {
                        let fd = r.get_mut().fds.pop_front();
                        if fd.is_none() {
                            warn!("an open answer announced a file descriptor that did not arrive");
                        }
                        fd
                    }
                    _ => None,
                };
                state
                    .answered_max
                    .fetch_max(resp.get_id(), Ordering::AcqRel);
                complete(&state, resp.get_id(), Ok(Resp { msg: resp, fd }));
            }
            Err(e) => {
                warn!("bad response from the engine: {e}");
                break;
            }
        }
    }
    let mut link = state.link.lock();
    link_down(&state, &mut link, generation);
}

/// Connects and says hello. Err(Some(reason)) when the engine refuses us.
fn handshake(socket: &PathBuf) -> Result<UnixStream, Option<String>> {
    let mut stream = UnixStream::connect(socket).map_err(|_| None)?;
    let mut msg = capnp::message::Builder::new_default();
    {
        let mut root = msg.init_root::<request::Builder<'_>>();
        root.set_id(0);
        let mut h = root.init_hello();
        h.set_min_protocol(musicfs_schema::MIN_PROTOCOL_VERSION);
        h.set_max_protocol(musicfs_schema::PROTOCOL_VERSION);
        h.set_peer_name(concat!("musicfs-shim ", env!("CARGO_PKG_VERSION")));
    }
    stream
        .write_all(&musicfs_schema::to_frame(&msg))
        .map_err(|_| None)?;
    stream
        .set_read_timeout(Some(HELLO_TIMEOUT))
        .map_err(|_| None)?;
    let mut r = BufReader::new(stream.try_clone().map_err(|_| None)?);
    let answer = musicfs_schema::read_frame(&mut r).map_err(|e| {
        debug!("no hello from the engine: {e}");
        None
    })?;
    let answer = answer.ok_or(None)?;
    let resp = answer
        .get_root::<response::Reader<'_>>()
        .map_err(|_| None)?;
    let response::Hello(h) = resp.which().map_err(|_| None)? else {
        return Err(Some("the engine did not answer hello".into()));
    };
    let theirs = h.get_hello().map_err(|_| None)?;
    let theirs = (theirs.get_min_protocol(), theirs.get_max_protocol());
    let ours = (
        musicfs_schema::MIN_PROTOCOL_VERSION,
        musicfs_schema::PROTOCOL_VERSION,
    );
    if resp.get_errno() != 0 || !musicfs_schema::compatible(ours, theirs) {
        let why = h
            .get_message()
            .ok()
            .and_then(|m| m.to_str().ok())
            .filter(|m| !m.is_empty())
            .map(str::to_string)
            .unwrap_or_else(|| {
                format!(
                    "the engine speaks protocol {}..={}, this shim {}..={}",
                    theirs.0, theirs.1, ours.0, ours.1
                )
            });
        return Err(Some(why));
    }
    stream.set_read_timeout(None).map_err(|_| None)?;
    // A write that cannot finish (a hung engine with a full socket buffer)
    // must not hold FUSE threads: it fails, the link goes down, and the
    // request waits in the pending table for the next engine.
    stream
        .set_write_timeout(Some(WRITE_TIMEOUT))
        .map_err(|_| None)?;
    // Anything buffered past hello would be lost with `r`; the engine sends
    // nothing before our next request, so the buffer is empty.
    debug_assert!(r.buffer().is_empty());
    Ok(stream)
}

fn connector(state: &Arc<State>) {
    let mut generation = 0u64;
    let mut logged_waiting = false;
    // Whether the end of connection `generation` has been accounted.
    let mut accounted = false;
    loop {
        // Wait while connected.
        {
            let mut link = state.link.lock();
            while let Link::Up { .. } = &*link {
                state.changed.wait(&mut link);
            }
        }
        // The engine of the last connection ended (or is being replaced).
        if generation > 0 && !accounted {
            engine_ended(state, generation);
            accounted = true;
        }
        match handshake(&state.socket) {
            Ok(stream) => {
                generation += 1;
                let Ok(read_half) = stream.try_clone() else {
                    std::thread::sleep(RECONNECT_PAUSE);
                    continue;
                };
                // What the kernel cached came from the engine before this
                // one, which may have left changes untold (or a rebuilt
                // catalog): it is dropped before this engine answers.
                if generation > 1
                    && let Some(k) = state.kcache.get()
                {
                    forget_everything(state, k, "a new engine");
                }
                {
                    let mut link = state.link.lock();
                    *link = Link::Up { stream, generation };
                    state.changed.notify_all();
                }
                accounted = false;
                info!(generation, "connected to the engine");
                logged_waiting = false;
                let s = state.clone();
                if let Err(e) = std::thread::Builder::new()
                    .name("musicfs-reader".into())
                    .spawn(move || reader(s, read_half, generation))
                {
                    error!("cannot start the reader thread: {e}");
                    let mut link = state.link.lock();
                    link_down(state, &mut link, generation);
                    continue;
                }
                replay(state);
            }
            Err(Some(why)) => {
                error!("the engine refused this shim: {why}");
                let failed: Vec<Pending> = {
                    *state.link.lock() = Link::Refused(why);
                    state.changed.notify_all();
                    state.pending.lock().drain().map(|(_, p)| p).collect()
                };
                for p in failed {
                    (p.done)(Err(CallError::Incompatible));
                }
                std::thread::sleep(Duration::from_secs(1));
                // Try again: a compatible engine may replace this one.
                *state.link.lock() = Link::Down;
            }
            Err(None) => {
                if !logged_waiting {
                    info!("waiting for an engine at {}", state.socket.display());
                    logged_waiting = true;
                }
                std::thread::sleep(RECONNECT_PAUSE);
            }
        }
    }
}

/// Sends every pending request to the new engine, oldest first.
fn replay(state: &State) {
    let mut frames: Vec<(u64, Arc<Vec<u8>>)> = state
        .pending
        .lock()
        .iter()
        .map(|(id, p)| (*id, p.frame.clone()))
        .collect();
    if frames.is_empty() {
        return;
    }
    frames.sort_by_key(|(id, _)| *id);
    info!(
        requests = frames.len(),
        "replaying pending requests to the new engine"
    );
    for (id, frame) in frames {
        if let Some(g) = write_frame(state, &frame) {
            sent(state, id, g);
        }
    }
}

fn deadlines(state: &Arc<State>) {
    loop {
        std::thread::sleep(DEADLINE_TICK);
        let now = Instant::now();
        let expired: Vec<(u64, Pending)> = {
            let mut pending = state.pending.lock();
            let ids: Vec<u64> = pending
                .iter()
                .filter(|(_, p)| p.deadline <= now)
                .map(|(id, _)| *id)
                .collect();
            ids.into_iter()
                .filter_map(|id| pending.remove(&id).map(|p| (id, p)))
                .collect()
        };
        for (id, p) in expired {
            warn!(
                id,
                op = p.what,
                "no engine answered within {} ms; failing the request with ETIMEDOUT",
                state.request_timeout.as_millis()
            );
            (p.done)(Err(CallError::Timeout));
        }
    }
}

#[cfg(test)]
mod tests;

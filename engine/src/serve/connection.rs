//! Accepting shims, the hello, and dispatching requests: metadata inline,
//! origin I/O on its origin's pool (`pools`).

use std::io::BufReader;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{Context, Result};
use musicfs_schema::{request, response};
use parking_lot::Mutex;
use tracing::{debug, info, warn};

use crate::metrics::{self, Op};
use crate::serve::cached::{self, cache_for, dispatch_open, dispatch_read};
use crate::serve::files::{open, origin_of, read, read_cached, send_open};
use crate::serve::metadata::metadata;
use crate::serve::pools::Turn;
use crate::serve::reply::Reply;
use crate::serve::shared::{ConnRef, Reader, Shared, bump};
use crate::serve::wire::{WRITE_TIMEOUT, Writer, error_frame, send};
use crate::sys::socket::{SocketGuard, bind_owner_only};

/// Serves the data plane on `socket` from a background thread. The returned
/// guard removes the socket file when dropped.
pub fn serve(shared: Arc<Shared>, socket: &Path) -> Result<SocketGuard> {
    if socket.exists() {
        std::fs::remove_file(socket)
            .with_context(|| format!("cannot remove old socket {}", socket.display()))?;
    }
    // Owner only: the shim runs as the same user.
    let listener = bind_owner_only(socket)
        .with_context(|| format!("cannot listen on {}", socket.display()))?;
    info!(socket = %socket.display(), "engine serving");
    {
        // Answers EIO to origin fetches past their deadline.
        let shared = shared.clone();
        std::thread::Builder::new()
            .name("musicfs-deadlines".into())
            .spawn(move || shared.deadlines.run(&shared.stopping))
            .context("cannot start the deadline thread")?;
    }
    std::thread::Builder::new()
        .name("musicfs-accept".into())
        .spawn(move || {
            for stream in listener.incoming() {
                match stream {
                    // Stopping: no new connections (the socket file is gone
                    // too; this only catches a connect that raced it).
                    Ok(_) if shared.stopping.load(Ordering::Acquire) => {}
                    Ok(stream) => {
                        // Counted before its thread runs, so a stop in
                        // between still waits for it (dropped with the
                        // closure if the thread cannot start).
                        let reader = Reader::new(&shared);
                        let shared = shared.clone();
                        let spawned = std::thread::Builder::new()
                            .name("musicfs-conn".into())
                            .spawn(move || {
                                if let Err(e) = connection(&shared, stream) {
                                    warn!("connection ended: {e:#}");
                                }
                                drop(reader);
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
    Ok(SocketGuard::new(socket.to_path_buf()))
}

fn connection(shared: &Arc<Shared>, stream: UnixStream) -> Result<()> {
    let pools = &shared.pools;
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
        metrics::record_request();
        let which = req.which()?;
        // Counted and timed until its answer is written (moved into pool
        // jobs).
        let op = shared.begin_request(kind_of(&which));
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
            // The handle's file may close now (if no other handle has it).
            request::Release(r) => {
                shared.fds.unpin(r.get_ino(), r.get_fh());
                shared.cached_handles.release(r.get_ino(), r.get_fh());
            }
            request::Forget(_) => {}
            request::Open(o) => {
                let (ino, flags, pt) = (o.get_ino(), o.get_flags(), o.get_passthrough());
                if crate::views::is_virtual(ino) {
                    send(&writer, &crate::serve::views::open(shared, id, ino, flags));
                    continue;
                }
                match origin_of(shared, ino) {
                    Err(errno) => send(&writer, &error_frame(id, errno)),
                    Ok(origin) if cache_for(shared, &origin).is_some() => {
                        dispatch_open(
                            shared,
                            Reply::new(id, writer.clone(), op),
                            ino,
                            flags,
                            origin,
                        );
                        crate::serve::prefetch::after_open(shared, ino);
                    }
                    Ok(origin) if origin.local => {
                        let opened = guarded(
                            id,
                            || open(shared, id, ino, flags, pt, origin),
                            || (error_frame(id, libc::EIO), None),
                        );
                        send_open(&writer, opened);
                    }
                    Ok(origin) => {
                        let (shared, writer) = (shared.clone(), writer.clone());
                        let oid = origin.id;
                        pools.submit(
                            oid,
                            Box::new(move |turn| {
                                let opened = match turn {
                                    Turn::Run => {
                                        let started = Instant::now();
                                        let opened = guarded(
                                            id,
                                            || open(&shared, id, ino, flags, pt, origin),
                                            || (error_frame(id, libc::EIO), None),
                                        );
                                        metrics::observe_origin_fetch(
                                            oid,
                                            || shared.origins.root(oid),
                                            started.elapsed(),
                                        );
                                        opened
                                    }
                                    Turn::Refused => (error_frame(id, libc::EIO), None),
                                };
                                send_open(&writer, opened);
                                drop(op);
                            }),
                        );
                    }
                }
            }
            request::Read(r) => {
                let (ino, fh) = (r.get_ino(), r.get_fh());
                let (offset, size) = (r.get_offset(), r.get_size());
                if crate::views::is_virtual(ino) {
                    let frame = crate::serve::views::read(shared, id, ino, offset, size);
                    send(&writer, &frame);
                    continue;
                }
                match cached::handle(shared, ino, fh) {
                    Some(Ok(f)) => {
                        dispatch_read(shared, Reply::new(id, writer.clone(), op), f, offset, size);
                        continue;
                    }
                    Some(Err(errno)) => {
                        send(&writer, &error_frame(id, errno));
                        continue;
                    }
                    None => {}
                }
                // Page-cache hits on local origins are answered here; the rest waits
                // for the disk on the pool.
                // One lookup of the handle's file serves both paths.
                let held = shared.fds.get(ino, fh);
                let cached = held.as_ref().and_then(|f| {
                    guarded(
                        id,
                        || read_cached(shared, id, (ino, f), offset, size),
                        || None,
                    )
                });
                if let Some(frame) = cached {
                    send(&writer, &frame);
                } else {
                    // The origin of the handle's file: its pool does the read.
                    let origin = match &held {
                        Some(f) => Ok(f.origin),
                        None => origin_of(shared, ino).map(|o| o.id),
                    };
                    match origin {
                        Err(errno) => send(&writer, &error_frame(id, errno)),
                        Ok(origin) => {
                            let (shared, writer) = (shared.clone(), writer.clone());
                            pools.submit(
                                origin,
                                Box::new(move |turn| {
                                    let frame = match turn {
                                        Turn::Run => {
                                            let started = Instant::now();
                                            let frame = guarded(
                                                id,
                                                || read(&shared, id, (ino, fh, held), offset, size),
                                                || error_frame(id, libc::EIO),
                                            );
                                            metrics::observe_origin_fetch(
                                                origin,
                                                || shared.origins.root(origin),
                                                started.elapsed(),
                                            );
                                            frame
                                        }
                                        Turn::Refused => error_frame(id, libc::EIO),
                                    };
                                    send(&writer, &frame);
                                    drop(op);
                                }),
                            );
                        }
                    }
                }
            }
            other => {
                let frame = guarded(
                    id,
                    || metadata(shared, id, other),
                    || error_frame(id, libc::EIO),
                );
                send(&writer, &frame);
            }
        }
    }
}

/// The kind of a request, for its latency histogram.
fn kind_of(which: &request::WhichReader<'_>) -> Op {
    match which {
        request::Hello(_) => Op::Hello,
        request::Lookup(_) => Op::Lookup,
        request::Forget(_) => Op::Forget,
        request::Getattr(_) => Op::Getattr,
        request::Opendir(_) => Op::Opendir,
        request::Readdir(r) if r.get_plus() => Op::Readdirplus,
        request::Readdir(_) => Op::Readdir,
        request::Releasedir(_) => Op::Releasedir,
        request::Open(_) => Op::Open,
        request::Read(_) => Op::Read,
        request::Release(_) => Op::Release,
        request::Statfs(_) => Op::Statfs,
        request::Readlink(_) => Op::Readlink,
        request::Getxattr(_) => Op::Getxattr,
        request::Listxattr(_) => Op::Listxattr,
        request::Ping(()) => Op::Ping,
    }
}

/// Builds the answer to request `id`; a panic while doing so is logged and
/// answered with `failed()` (EIO), so that one bad request never ends the
/// connection (the shim would replay it to the next connection for ever).
pub(super) fn guarded<T>(id: u64, answer: impl FnOnce() -> T, failed: impl FnOnce() -> T) -> T {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(answer)) {
        Ok(t) => t,
        Err(_) => {
            warn!(id, "a request panicked the engine; answered EIO");
            failed()
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

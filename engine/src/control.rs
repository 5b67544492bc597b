//! The engine's control plane: `STATE/control.sock` (owner-only), Cap'n Proto
//! frames (`ControlRequest` / `ControlResponse` in `schema/musicfs.capnp`).
//! - `status`: the catalog, origins (with a bounded reachability check),
//!   supervised tasks, counters;
//! - `shutdown`: the ordered stop, with a drain deadline;
//! - `reload`: a new configuration (validated; hot fields applied);
//! - `events`: the event log, optionally followed.
//!
//! One thread per connection (at most `MAX_CONNECTIONS`), so a follower
//! never holds up a status. `musicfs status|metrics|shutdown|reload|events`
//! are its clients.

use std::io::{BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use musicfs_schema::{control_request, control_response};
use serde::Serialize;
use tracing::{info, warn};

use crate::config::Config;
use crate::engine::{ReloadReport, Runtime};
use crate::events::Event;
use crate::sync::task_states;

pub fn control_socket(state_dir: &Path) -> PathBuf {
    state_dir.join("control.sock")
}

/// The engine's status, as `musicfs status --json` prints it (stable keys).
#[derive(Debug, Serialize)]
pub struct Status {
    pub engine_version: String,
    pub pid: u32,
    pub uptime_ms: u64,
    pub state_dir: String,
    pub files: u64,
    pub nodes: u64,
    pub bytes: u64,
    pub scan_complete: bool,
    pub connected_shims: u32,
    /// "new", "clean" or "unclean": how the previous engine left the catalog.
    pub catalog_previous_close: String,
    pub in_flight: u32,
    pub template: String,
    /// Cache figures (gauges), by name.
    pub cache: Vec<(String, u64)>,
    pub origins: Vec<OriginState>,
    pub tasks: Vec<TaskInfo>,
    pub counters: Vec<(String, u64)>,
}

#[derive(Debug, Serialize)]
pub struct OriginState {
    pub id: u32,
    pub path: String,
    pub reachable: bool,
    pub local: bool,
}

#[derive(Debug, Serialize)]
pub struct TaskInfo {
    pub name: String,
    pub running: bool,
    pub restarts: u32,
    pub last_error: String,
}

/// Control connections served at once (followers included).
const MAX_CONNECTIONS: usize = 32;

fn collect(rt: &Runtime) -> Result<Status> {
    let shared = &rt.shared;
    let syncer = &rt.syncer;
    let (files, nodes, bytes) = shared.store.totals()?;
    let table = syncer.origins.snapshot();
    let paths: Vec<PathBuf> = table.iter().map(|(_, p)| p.to_path_buf()).collect();
    let reachable: Vec<bool> = crate::origins::probe_dirs(&paths)
        .into_iter()
        .map(|r| r.is_ok())
        .collect();
    let origins = table
        .iter()
        .zip(reachable)
        .map(|((id, p), answers)| OriginState {
            id,
            path: p.display().to_string(),
            // An empty mountpoint answers stat: the syncer knows it is away.
            reachable: answers && !syncer.is_offline(id),
            local: table.is_local(id),
        })
        .collect();
    let tasks = task_states()
        .into_iter()
        .map(|(name, t)| TaskInfo {
            name,
            running: t.running,
            restarts: t.restarts,
            last_error: t.last_error,
        })
        .collect();
    let c = &shared.counters;
    let s = &syncer.counters;
    let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let counters = vec![
        ("requests".into(), get(&c.requests)),
        ("opens".into(), get(&c.opens)),
        ("reads".into(), get(&c.reads)),
        ("read_bytes".into(), get(&c.read_bytes)),
        ("probed".into(), get(&s.probed)),
        ("unchanged".into(), get(&s.unchanged)),
        ("removed".into(), get(&s.removed)),
        ("commits".into(), get(&s.commits)),
        ("full_scans".into(), get(&s.full_scans)),
        ("reloads".into(), get(&rt.reloads)),
    ];
    Ok(Status {
        engine_version: env!("CARGO_PKG_VERSION").into(),
        pid: std::process::id(),
        uptime_ms: u64::try_from(rt.started.elapsed().as_millis()).unwrap_or(u64::MAX),
        state_dir: rt.state_dir.display().to_string(),
        files,
        nodes,
        bytes,
        scan_complete: shared.store.scan_complete()?,
        connected_shims: u32::try_from(shared.shim_count()).unwrap_or(u32::MAX),
        catalog_previous_close: rt.store.previous_close().as_str().to_string(),
        in_flight: u32::try_from(shared.in_flight()).unwrap_or(u32::MAX),
        template: rt.store.template().source().to_string(),
        cache: {
            let (dirs, entries, db) = rt.store.cache_figures();
            vec![
                ("listing_cache_dirs".into(), dirs),
                ("listing_cache_entries".into(), entries),
                (
                    "listing_cache_limit".into(),
                    rt.store.listing_cache_limit() as u64,
                ),
                (
                    "open_origin_files".into(),
                    shared.open_origin_files() as u64,
                ),
                ("open_files_max".into(), shared.open_files_max() as u64),
                ("catalog_cache_bytes".into(), db),
            ]
        },
        origins,
        tasks,
        counters,
    })
}

fn len32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn status_frame(id: u64, st: &Status) -> Vec<u8> {
    let mut msg = capnp::message::Builder::new_default();
    let mut r = msg.init_root::<control_response::Builder<'_>>();
    r.set_id(id);
    let mut s = r.init_status();
    s.set_engine_version(&st.engine_version);
    s.set_pid(st.pid);
    s.set_uptime_ms(st.uptime_ms);
    s.set_state_dir(&st.state_dir);
    s.set_files(st.files);
    s.set_nodes(st.nodes);
    s.set_bytes(st.bytes);
    s.set_scan_complete(st.scan_complete);
    s.set_connected_shims(st.connected_shims);
    s.set_catalog_previous_close(&st.catalog_previous_close);
    s.set_in_flight(st.in_flight);
    s.set_template(&st.template);
    let mut list = s.reborrow().init_origins(len32(st.origins.len()));
    for (i, o) in st.origins.iter().enumerate() {
        let mut e = list.reborrow().get(len32(i));
        e.set_id(o.id);
        e.set_path(&o.path);
        e.set_reachable(o.reachable);
        e.set_local(o.local);
    }
    let mut list = s.reborrow().init_tasks(len32(st.tasks.len()));
    for (i, t) in st.tasks.iter().enumerate() {
        let mut e = list.reborrow().get(len32(i));
        e.set_name(&t.name);
        e.set_running(t.running);
        e.set_restarts(t.restarts);
        e.set_last_error(&t.last_error);
    }
    let mut list = s.reborrow().init_counters(len32(st.counters.len()));
    for (i, (n, v)) in st.counters.iter().enumerate() {
        let mut e = list.reborrow().get(len32(i));
        e.set_name(n);
        e.set_value(*v);
    }
    let mut list = s.init_cache(len32(st.cache.len()));
    for (i, (n, v)) in st.cache.iter().enumerate() {
        let mut e = list.reborrow().get(len32(i));
        e.set_name(n);
        e.set_value(*v);
    }
    musicfs_schema::to_frame(&msg)
}

fn simple_frame(id: u64, errno: i32, message: &str) -> Vec<u8> {
    let mut msg = capnp::message::Builder::new_default();
    let mut r = msg.init_root::<control_response::Builder<'_>>();
    r.set_id(id);
    r.set_errno(errno);
    r.set_message(message);
    r.set_none(());
    musicfs_schema::to_frame(&msg)
}

fn reloaded_frame(id: u64, report: &ReloadReport) -> Vec<u8> {
    let mut msg = capnp::message::Builder::new_default();
    let mut r = msg.init_root::<control_response::Builder<'_>>();
    r.set_id(id);
    let mut g = r.init_reloaded();
    let mut list = g.reborrow().init_applied(len32(report.applied.len()));
    for (i, f) in report.applied.iter().enumerate() {
        list.set(len32(i), f);
    }
    let mut list = g.init_restart_needed(len32(report.restart_needed.len()));
    for (i, f) in report.restart_needed.iter().enumerate() {
        list.set(len32(i), f);
    }
    musicfs_schema::to_frame(&msg)
}

fn event_frame(id: u64, e: &Event) -> Vec<u8> {
    let mut msg = capnp::message::Builder::new_default();
    let mut r = msg.init_root::<control_response::Builder<'_>>();
    r.set_id(id);
    let mut ev = r.init_event();
    ev.set_seq(e.seq);
    ev.set_time_ms(e.time_ms);
    ev.set_kind(&e.kind);
    ev.set_message(&e.message);
    musicfs_schema::to_frame(&msg)
}

/// Binds a unix socket that only its owner can connect to: created under
/// umask 0177, so there is no moment with looser permissions (a chmod after
/// bind leaves one). The umask is process-wide; files created meanwhile by
/// other threads only come out stricter.
pub fn bind_owner_only(path: &Path) -> std::io::Result<UnixListener> {
    use nix::sys::stat::{Mode, umask};
    let old = umask(Mode::from_bits_truncate(0o177));
    let bound = UnixListener::bind(path);
    umask(old);
    let listener = bound?;
    // Belt and braces (and documents the intent).
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Serves the control socket: an accept thread, one thread per connection.
pub fn serve(rt: Arc<Runtime>) -> Result<crate::server::SocketGuard> {
    let path = control_socket(&rt.state_dir);
    let _ = std::fs::remove_file(&path);
    let listener =
        bind_owner_only(&path).with_context(|| format!("cannot listen on {}", path.display()))?;
    let active = Arc::new(AtomicUsize::new(0));
    std::thread::Builder::new()
        .name("musicfs-control".into())
        .spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                if active.load(Ordering::Acquire) >= MAX_CONNECTIONS {
                    let mut s = stream;
                    let _ = s.write_all(&simple_frame(
                        0,
                        libc::EBUSY,
                        "too many control connections",
                    ));
                    continue;
                }
                active.fetch_add(1, Ordering::AcqRel);
                let (rt, active2) = (rt.clone(), active.clone());
                let spawned = std::thread::Builder::new()
                    .name("musicfs-control-conn".into())
                    .spawn(move || {
                        if let Err(e) = handle(stream, &rt) {
                            warn!("control request failed: {e:#}");
                        }
                        active2.fetch_sub(1, Ordering::AcqRel);
                    });
                if let Err(e) = spawned {
                    active.fetch_sub(1, Ordering::AcqRel);
                    warn!("cannot start a control thread: {e}");
                }
            }
        })?;
    Ok(crate::server::SocketGuard::new(path))
}

fn handle(stream: UnixStream, rt: &Runtime) -> Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    // A client that stops reading must not hold this thread for ever.
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let Some(msg) = musicfs_schema::read_frame(&mut reader)? else {
        return Ok(());
    };
    let req = msg.get_root::<control_request::Reader<'_>>()?;
    let id = req.get_id();
    let frame = match req.which()? {
        control_request::Status(()) => match collect(rt) {
            Ok(st) => status_frame(id, &st),
            Err(e) => simple_frame(id, libc::EIO, &format!("{e:#}")),
        },
        control_request::Shutdown(timeout_ms) => {
            // Under systemd (no `musicfs mount`), the unit would restart
            // an engine that stopped itself and leave the shim mounted:
            // stopping is systemctl's job.
            if let Some(unit) = crate::engine::systemd_unit() {
                let why = match unit {
                    Some(unit) => format!(
                        "this engine runs under systemd ({unit}); stop the mount with `systemctl stop {}`",
                        unit.replacen("musicfs-engine@", "musicfs-shim@", 1)
                    ),
                    None => "this engine runs under systemd; stop the mount with `systemctl stop musicfs-shim@INSTANCE`".into(),
                };
                warn!("shutdown refused: {why}");
                let _ = writer.write_all(&simple_frame(id, libc::EPERM, &why));
                return Ok(());
            }
            info!(timeout_ms, "shutdown requested over the control socket");
            rt.request_stop(
                "shutdown requested",
                Duration::from_millis(u64::from(timeout_ms)),
            );
            // The client may not wait for the answer.
            let _ = writer.write_all(&simple_frame(id, 0, "engine stopping"));
            return Ok(());
        }
        control_request::Reload(r) => {
            let text = r.get_config()?.to_str()?;
            let new = if text.is_empty() {
                None
            } else {
                match serde_json::from_str::<Config>(text) {
                    Ok(c) => Some(c),
                    Err(e) => {
                        let frame =
                            simple_frame(id, libc::EINVAL, &format!("bad configuration: {e}"));
                        writer.write_all(&frame)?;
                        return Ok(());
                    }
                }
            };
            match rt.reload(new) {
                Ok(report) => reloaded_frame(id, &report),
                Err(e) => simple_frame(
                    id,
                    libc::EINVAL,
                    &format!("{e:#}; the running configuration stays"),
                ),
            }
        }
        control_request::Events(e) => {
            let (mut after, follow) = (e.get_after(), e.get_follow());
            if follow && rt.stopping() {
                // Followers wait for the next engine instead.
                let frame = simple_frame(id, libc::ESHUTDOWN, "engine stopping");
                writer.write_all(&frame)?;
                return Ok(());
            }
            loop {
                let batch = if follow {
                    crate::events::wait_since(after, Duration::from_secs(1))
                } else {
                    crate::events::since(after)
                };
                for ev in &batch {
                    writer.write_all(&event_frame(id, ev))?;
                    after = ev.seq;
                }
                if !follow {
                    break;
                }
                if client_gone(reader.get_ref()) {
                    return Ok(());
                }
                if rt.stopping() {
                    writer.write_all(&simple_frame(id, 0, "engine stopping"))?;
                    return Ok(());
                }
            }
            simple_frame(id, 0, "end")
        }
    };
    writer.write_all(&frame)?;
    Ok(())
}

/// Whether the client closed its end (it sends nothing after its request,
/// so readable means end of file). Checked without blocking, so an idle
/// follower that went away frees its thread within a second.
fn client_gone(stream: &UnixStream) -> bool {
    use nix::sys::socket::{MsgFlags, recv};
    use std::os::fd::AsRawFd;
    let mut byte = [0u8; 1];
    match recv(
        stream.as_raw_fd(),
        &mut byte,
        MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_PEEK,
    ) {
        Ok(0) => true,
        Ok(_) => false,
        Err(nix::errno::Errno::EAGAIN) => false,
        Err(_) => true,
    }
}

/// Nothing answers on the control socket.
#[derive(Debug)]
struct NotRunning(String);

impl std::fmt::Display for NotRunning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn connect(state_dir: &Path) -> Result<UnixStream> {
    let path = control_socket(state_dir);
    UnixStream::connect(&path).map_err(|e| {
        anyhow::Error::new(e).context(NotRunning(format!(
            "no engine is running for {} ({} does not answer)",
            state_dir.display(),
            path.display()
        )))
    })
}

/// Sends one request; returns the connection for the answers.
fn send_request(
    state_dir: &Path,
    timeout: Option<Duration>,
    fill: impl FnOnce(control_request::Builder<'_>),
) -> Result<BufReader<UnixStream>> {
    let mut stream = connect(state_dir)?;
    stream.set_read_timeout(timeout)?;
    let mut msg = capnp::message::Builder::new_default();
    {
        let mut r = msg.init_root::<control_request::Builder<'_>>();
        r.set_id(1);
        fill(r);
    }
    stream.write_all(&musicfs_schema::to_frame(&msg))?;
    Ok(BufReader::new(stream))
}

fn text(t: capnp::Result<capnp::text::Reader<'_>>) -> String {
    t.ok()
        .and_then(|t| t.to_str().ok())
        .unwrap_or("")
        .to_string()
}

/// Client: the status of the engine of `state_dir`.
pub fn fetch_status(state_dir: &Path) -> Result<Status> {
    let mut reader = send_request(state_dir, Some(Duration::from_secs(10)), |mut r| {
        r.set_status(())
    })?;
    let answer = musicfs_schema::read_frame(&mut reader)?
        .context("the engine closed the control connection")?;
    let r = answer.get_root::<control_response::Reader<'_>>()?;
    if r.get_errno() != 0 {
        bail!("engine: {}", text(r.get_message()));
    }
    let control_response::Status(s) = r.which()? else {
        bail!("the engine answered something else than a status");
    };
    let s = s?;
    Ok(Status {
        engine_version: text(s.get_engine_version()),
        pid: s.get_pid(),
        uptime_ms: s.get_uptime_ms(),
        state_dir: text(s.get_state_dir()),
        files: s.get_files(),
        nodes: s.get_nodes(),
        bytes: s.get_bytes(),
        scan_complete: s.get_scan_complete(),
        connected_shims: s.get_connected_shims(),
        catalog_previous_close: text(s.get_catalog_previous_close()),
        in_flight: s.get_in_flight(),
        template: text(s.get_template()),
        cache: s
            .get_cache()?
            .iter()
            .map(|c| (text(c.get_name()), c.get_value()))
            .collect(),
        origins: s
            .get_origins()?
            .iter()
            .map(|o| OriginState {
                id: o.get_id(),
                path: text(o.get_path()),
                reachable: o.get_reachable(),
                local: o.get_local(),
            })
            .collect(),
        tasks: s
            .get_tasks()?
            .iter()
            .map(|t| TaskInfo {
                name: text(t.get_name()),
                running: t.get_running(),
                restarts: t.get_restarts(),
                last_error: text(t.get_last_error()),
            })
            .collect(),
        counters: s
            .get_counters()?
            .iter()
            .map(|c| (text(c.get_name()), c.get_value()))
            .collect(),
    })
}

/// Sends the `shutdown` request only (the caller decides how to wait);
/// returns the connection for the answer.
pub fn send_shutdown(state_dir: &Path, drain: Duration) -> Result<BufReader<UnixStream>> {
    send_request(state_dir, Some(Duration::from_secs(10)), |mut r| {
        r.set_shutdown(u32::try_from(drain.as_millis()).unwrap_or(u32::MAX))
    })
}

/// Client: asks the engine of `state_dir` to stop, draining for `timeout`,
/// and waits (bounded) until it is gone.
pub fn request_shutdown(state_dir: &Path, timeout: Duration) -> Result<()> {
    let mut reader = send_shutdown(state_dir, timeout)?;
    let answer = musicfs_schema::read_frame(&mut reader)?.context("no answer")?;
    let r = answer.get_root::<control_response::Reader<'_>>()?;
    if r.get_errno() != 0 {
        bail!("engine: {}", text(r.get_message()));
    }
    // The engine removes its control socket last.
    let path = control_socket(state_dir);
    let limit = timeout + Duration::from_secs(15);
    let deadline = Instant::now() + limit;
    while path.exists() {
        if Instant::now() > deadline {
            bail!("the engine did not stop within {} s", limit.as_secs());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Client: asks the engine to reload (`config`: the whole configuration, or
/// `None` for the engine's own files).
pub fn request_reload(state_dir: &Path, config: Option<&Config>) -> Result<ReloadReport> {
    let json = match config {
        Some(c) => serde_json::to_string(c)?,
        None => String::new(),
    };
    let mut reader = send_request(state_dir, Some(Duration::from_secs(60)), |r| {
        r.init_reload().set_config(json.as_str())
    })?;
    let answer = musicfs_schema::read_frame(&mut reader)?.context("no answer")?;
    let r = answer.get_root::<control_response::Reader<'_>>()?;
    if r.get_errno() != 0 {
        bail!("{}", text(r.get_message()));
    }
    let control_response::Reloaded(g) = r.which()? else {
        bail!("the engine answered something else than a reload report");
    };
    let list = |l: capnp::Result<capnp::text_list::Reader<'_>>| -> Result<Vec<String>> {
        Ok(l?.iter().map(text).collect())
    };
    Ok(ReloadReport {
        applied: list(g.get_applied())?,
        restart_needed: list(g.get_restart_needed())?,
    })
}

/// Client: the events after `after`; with `follow`, calls `each` for every
/// event until the engine stops or the connection breaks.
pub fn stream_events(
    state_dir: &Path,
    after: u64,
    follow: bool,
    mut each: impl FnMut(Event) -> Result<()>,
) -> Result<()> {
    let mut reader = send_request(
        state_dir,
        (!follow).then_some(Duration::from_secs(10)),
        |r| {
            let mut e = r.init_events();
            e.set_after(after);
            e.set_follow(follow);
        },
    )?;
    loop {
        let Some(answer) = musicfs_schema::read_frame(&mut reader)? else {
            bail!("the engine closed the connection");
        };
        let r = answer.get_root::<control_response::Reader<'_>>()?;
        if r.get_errno() != 0 {
            return Err(EngineRefused(r.get_errno(), text(r.get_message())).into());
        }
        match r.which()? {
            control_response::Event(e) => {
                let e = e?;
                each(Event {
                    seq: e.get_seq(),
                    time_ms: e.get_time_ms(),
                    kind: text(e.get_kind()),
                    message: text(e.get_message()),
                })?;
            }
            _ => return Ok(()),
        }
    }
}

/// An error the engine answered (as opposed to a lost connection).
#[derive(Debug)]
struct EngineRefused(i32, String);

impl std::fmt::Display for EngineRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "engine: {}", self.1)
    }
}

impl std::error::Error for EngineRefused {}

/// `musicfs events [--follow] [--json]`. Following survives an engine
/// restart (sequence numbers start again with the new engine).
pub fn print_events(state_dir: &Path, follow: bool, json: bool) -> Result<()> {
    use std::io::Write as _;
    let print = |e: Event| -> Result<()> {
        let mut out = std::io::stdout().lock();
        if json {
            writeln!(out, "{}", serde_json::to_string(&e)?)?;
        } else {
            let secs = i64::try_from(e.time_ms / 1000).unwrap_or(0);
            let when = chrono_like(secs, e.time_ms % 1000);
            writeln!(out, "{when}  {:<8} {}", e.kind, e.message)?;
        }
        out.flush()?;
        Ok(())
    };
    if !follow {
        return stream_events(state_dir, 0, false, print);
    }
    let mut after = 0;
    let mut first = true;
    // Since when no engine has been followed (None: following one).
    let mut lost: Option<Instant> = None;
    loop {
        let mut streaming = false;
        let outcome = stream_events(state_dir, after, true, |e| {
            if !streaming && lost.is_some() {
                eprintln!("musicfs: the engine restarted; following the new one");
            }
            streaming = true;
            after = e.seq;
            print(e)
        });
        if streaming {
            lost = None;
        }
        if let Err(e) = &outcome {
            // Nothing runs: say so at once (later losses are restarts). No
            // separate probe connection: it would hold a control slot.
            if first && e.downcast_ref::<NotRunning>().is_some() {
                return outcome;
            }
            // Our stdout closed (`| head`): done.
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            {
                return Ok(());
            }
            // Refused (too many followers...): say so, do not retry. A
            // stopping engine is waited out.
            if let Some(r) = e.downcast_ref::<EngineRefused>()
                && r.0 != libc::ESHUTDOWN
            {
                return outcome;
            }
        }
        // The engine went away or is stopping (restart, swap): wait for the
        // next one, bounded, and follow it from its first event.
        let since = *lost.get_or_insert_with(Instant::now);
        if since.elapsed() > Duration::from_secs(60) {
            bail!("the engine stopped and no engine came back within 60 s");
        }
        first = false;
        after = 0;
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `YYYY-MM-DD HH:MM:SS.mmm` (UTC) without a date crate.
fn chrono_like(secs: i64, ms: u64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{ms:03}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// The human status view.
pub fn render_table(s: &Status) -> String {
    let mut out = String::new();
    let up = s.uptime_ms / 1000;
    out.push_str(&format!(
        "engine      {} (pid {}), up {}h{:02}m{:02}s\n",
        s.engine_version,
        s.pid,
        up / 3600,
        up / 60 % 60,
        up % 60
    ));
    out.push_str(&format!("state dir   {}\n", s.state_dir));
    out.push_str(&format!(
        "catalog     {} files, {} nodes, {:.1} GB{}\n",
        s.files,
        s.nodes,
        s.bytes as f64 / 1e9,
        if s.scan_complete {
            ""
        } else {
            " (first scan not complete)"
        }
    ));
    out.push_str(&format!(
        "last close  {}\n",
        match s.catalog_previous_close.as_str() {
            "clean" => "clean (nothing to recover)",
            "unclean" => "unclean (crash or kill; last commit recovered)",
            "new" => "new catalog",
            other => other,
        }
    ));
    out.push_str(&format!("template    {}\n", s.template));
    out.push_str(&format!(
        "shims       {} connected, {} requests in flight\n",
        s.connected_shims, s.in_flight
    ));
    out.push_str("origins\n");
    for o in &s.origins {
        out.push_str(&format!(
            "  {:<3} {:<12} {:<8} {}\n",
            o.id,
            if o.reachable {
                "reachable"
            } else {
                "UNREACHABLE"
            },
            if o.local { "inotify" } else { "polling" },
            o.path
        ));
    }
    out.push_str("tasks\n");
    for t in &s.tasks {
        out.push_str(&format!(
            "  {:<14} {:<8} restarts {}{}\n",
            t.name,
            if t.running { "running" } else { "stopped" },
            t.restarts,
            if t.last_error.is_empty() {
                String::new()
            } else {
                format!("  last error: {}", t.last_error)
            }
        ));
    }
    out.push_str("cache\n");
    for (n, v) in &s.cache {
        out.push_str(&format!("  {n:<22} {v}\n"));
    }
    out.push_str("counters\n");
    for (n, v) in &s.counters {
        out.push_str(&format!("  {n:<12} {v}\n"));
    }
    out
}

/// Prometheus text exposition.
pub fn render_metrics(s: &Status) -> String {
    let esc = |v: &str| {
        v.replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n")
    };
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, lines: Vec<(String, u64)>| {
        out.push_str(&format!(
            "# HELP musicfs_{name} {help}\n# TYPE musicfs_{name} gauge\n"
        ));
        for (labels, v) in lines {
            out.push_str(&format!("musicfs_{name}{labels} {v}\n"));
        }
    };
    gauge(
        "up",
        "1 while the engine answers.",
        vec![(String::new(), 1)],
    );
    gauge(
        "uptime_seconds",
        "Seconds since the engine started.",
        vec![(String::new(), s.uptime_ms / 1000)],
    );
    gauge(
        "files",
        "Audio files in the catalog.",
        vec![(String::new(), s.files)],
    );
    gauge(
        "nodes",
        "Nodes of the virtual tree.",
        vec![(String::new(), s.nodes)],
    );
    gauge(
        "bytes",
        "Bytes of all audio files.",
        vec![(String::new(), s.bytes)],
    );
    gauge(
        "connected_shims",
        "Shims connected to the engine.",
        vec![(String::new(), u64::from(s.connected_shims))],
    );
    gauge(
        "origin_reachable",
        "1 if the origin directory answers.",
        s.origins
            .iter()
            .map(|o| {
                (
                    format!("{{origin=\"{}\"}}", esc(&o.path)),
                    u64::from(o.reachable),
                )
            })
            .collect(),
    );
    gauge(
        "task_restarts",
        "Restarts of a supervised background task.",
        s.tasks
            .iter()
            .map(|t| {
                (
                    format!("{{task=\"{}\"}}", esc(&t.name)),
                    u64::from(t.restarts),
                )
            })
            .collect(),
    );
    for (n, v) in &s.cache {
        gauge(
            n,
            "Cache figure (see musicfs status).",
            vec![(String::new(), *v)],
        );
    }
    gauge(
        "in_flight_requests",
        "Data-plane requests being served.",
        vec![(String::new(), u64::from(s.in_flight))],
    );
    for (n, v) in &s.counters {
        out.push_str(&format!(
            "# TYPE musicfs_{n}_total counter\nmusicfs_{n}_total {v}\n"
        ));
    }
    out
}

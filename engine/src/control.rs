//! The engine's control plane: `STATE/control.sock` (owner-only), Cap'n Proto
//! frames (`ControlRequest` / `ControlResponse` in `schema/musicfs.capnp`).
//! `status` reports the catalog, origins (with a bounded reachability check),
//! supervised tasks and counters; `shutdown` stops the engine as SIGTERM does.
//! `musicfs status`, `musicfs metrics` and `musicfs shutdown` are its clients.

use std::io::{BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use musicfs_schema::{control_request, control_response};
use serde::Serialize;
use tracing::{info, warn};

use crate::server::{Shared, is_local_fs};
use crate::sync::{Syncer, task_states};

/// How long an origin may take to answer `stat` before it counts as unreachable.
const REACHABLE_TIMEOUT: Duration = Duration::from_secs(1);

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

/// Whether `path` answers a stat within the deadline (a dead NFS server
/// must not hang the status).
fn reachable(path: &Path) -> bool {
    let (tx, rx) = std::sync::mpsc::channel();
    let p = path.to_path_buf();
    let spawned = std::thread::Builder::new()
        .name("musicfs-stat".into())
        .spawn(move || {
            let _ = tx.send(std::fs::metadata(&p).is_ok_and(|m| m.is_dir()));
        });
    spawned.is_ok() && rx.recv_timeout(REACHABLE_TIMEOUT).unwrap_or(false)
}

fn collect(shared: &Shared, syncer: &Syncer, state_dir: &Path, started: Instant) -> Result<Status> {
    let (files, nodes, bytes) = shared.store.totals()?;
    let origins = syncer
        .origins
        .iter()
        .enumerate()
        .filter_map(|(id, o)| o.as_ref().map(|p| (id, p)))
        .map(|(id, p)| OriginState {
            id: u32::try_from(id).unwrap_or(u32::MAX),
            path: p.display().to_string(),
            reachable: reachable(p),
            local: is_local_fs(p),
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
    ];
    Ok(Status {
        engine_version: env!("CARGO_PKG_VERSION").into(),
        pid: std::process::id(),
        uptime_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        state_dir: state_dir.display().to_string(),
        files,
        nodes,
        bytes,
        scan_complete: shared.store.scan_complete()?,
        connected_shims: u32::try_from(shared.connection_count()).unwrap_or(u32::MAX),
        origins,
        tasks,
        counters,
    })
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
    let mut list = s
        .reborrow()
        .init_origins(u32::try_from(st.origins.len()).unwrap_or(0));
    for (i, o) in st.origins.iter().enumerate() {
        let mut e = list.reborrow().get(u32::try_from(i).unwrap_or(0));
        e.set_id(o.id);
        e.set_path(&o.path);
        e.set_reachable(o.reachable);
        e.set_local(o.local);
    }
    let mut list = s
        .reborrow()
        .init_tasks(u32::try_from(st.tasks.len()).unwrap_or(0));
    for (i, t) in st.tasks.iter().enumerate() {
        let mut e = list.reborrow().get(u32::try_from(i).unwrap_or(0));
        e.set_name(&t.name);
        e.set_running(t.running);
        e.set_restarts(t.restarts);
        e.set_last_error(&t.last_error);
    }
    let mut list = s.init_counters(u32::try_from(st.counters.len()).unwrap_or(0));
    for (i, (n, v)) in st.counters.iter().enumerate() {
        let mut e = list.reborrow().get(u32::try_from(i).unwrap_or(0));
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

/// Serves the control socket from a background thread.
pub fn serve(
    shared: Arc<Shared>,
    syncer: Arc<Syncer>,
    state_dir: &Path,
) -> Result<crate::server::SocketGuard> {
    let path = control_socket(state_dir);
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)
        .with_context(|| format!("cannot listen on {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    let state_dir = state_dir.to_path_buf();
    let started = Instant::now();
    std::thread::Builder::new()
        .name("musicfs-control".into())
        .spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                if let Err(e) = handle(stream, &shared, &syncer, &state_dir, started) {
                    warn!("control request failed: {e:#}");
                }
            }
        })?;
    Ok(crate::server::SocketGuard::new(path))
}

fn handle(
    stream: UnixStream,
    shared: &Shared,
    syncer: &Syncer,
    state_dir: &Path,
    started: Instant,
) -> Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let Some(msg) = musicfs_schema::read_frame(&mut reader)? else {
        return Ok(());
    };
    let req = msg.get_root::<control_request::Reader<'_>>()?;
    let id = req.get_id();
    let frame = match req.which()? {
        control_request::Status(()) => match collect(shared, syncer, state_dir, started) {
            Ok(st) => status_frame(id, &st),
            Err(e) => simple_frame(id, libc::EIO, &format!("{e:#}")),
        },
        control_request::Shutdown(timeout_ms) => {
            info!(timeout_ms, "shutdown requested over the control socket");
            writer.write_all(&simple_frame(id, 0, "engine stopping"))?;
            // The main thread stops in order on SIGTERM.
            nix::sys::signal::kill(nix::unistd::getpid(), nix::sys::signal::Signal::SIGTERM)?;
            return Ok(());
        }
    };
    writer.write_all(&frame)?;
    Ok(())
}

/// Client: the status of the engine of `state_dir`.
pub fn fetch_status(state_dir: &Path) -> Result<Status> {
    let path = control_socket(state_dir);
    let mut stream = UnixStream::connect(&path).with_context(|| {
        format!(
            "no engine is running for {} ({} does not answer)",
            state_dir.display(),
            path.display()
        )
    })?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut msg = capnp::message::Builder::new_default();
    {
        let mut r = msg.init_root::<control_request::Builder<'_>>();
        r.set_id(1);
        r.set_status(());
    }
    stream.write_all(&musicfs_schema::to_frame(&msg))?;
    let mut reader = BufReader::new(stream);
    let answer = musicfs_schema::read_frame(&mut reader)?
        .context("the engine closed the control connection")?;
    let r = answer.get_root::<control_response::Reader<'_>>()?;
    if r.get_errno() != 0 {
        bail!("engine: {}", r.get_message()?.to_str().unwrap_or("?"));
    }
    let control_response::Status(s) = r.which()? else {
        bail!("the engine answered something else than a status");
    };
    let s = s?;
    let text = |t: capnp::Result<capnp::text::Reader<'_>>| -> String {
        t.ok()
            .and_then(|t| t.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
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

/// Client: asks the engine of `state_dir` to stop.
pub fn request_shutdown(state_dir: &Path, timeout: Duration) -> Result<()> {
    let path = control_socket(state_dir);
    let mut stream = UnixStream::connect(&path)
        .with_context(|| format!("no engine is running for {}", state_dir.display()))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut msg = capnp::message::Builder::new_default();
    {
        let mut r = msg.init_root::<control_request::Builder<'_>>();
        r.set_id(1);
        r.set_shutdown(u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX));
    }
    stream.write_all(&musicfs_schema::to_frame(&msg))?;
    let mut reader = BufReader::new(stream);
    let answer = musicfs_schema::read_frame(&mut reader)?.context("no answer")?;
    let r = answer.get_root::<control_response::Reader<'_>>()?;
    if r.get_errno() != 0 {
        bail!("engine: {}", r.get_message()?.to_str().unwrap_or("?"));
    }
    Ok(())
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
    out.push_str(&format!("shims       {} connected\n", s.connected_shims));
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
    for (n, v) in &s.counters {
        out.push_str(&format!(
            "# TYPE musicfs_{n}_total counter\nmusicfs_{n}_total {v}\n"
        ));
    }
    out
}

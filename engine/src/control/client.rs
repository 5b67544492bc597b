//! Clients of the control socket: status, shutdown, reload, events.

use std::io::{BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use musicfs_schema::{control_request, control_response};

use crate::config::Config;
use crate::config::reload::ReloadReport;
use crate::config::state::control_socket;
use crate::control::{OriginState, Status, TaskInfo};
use crate::events::Event;

/// Nothing answers on the control socket.
#[derive(Debug)]
pub struct NotRunning(String);

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
pub(super) fn send_request(
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
        catalog_write_error: text(s.get_catalog_write_error()),
        catalog_write_since_ms: s.get_catalog_write_since_ms(),
        state_dir_error: text(s.get_state_dir_error()),
        chunk_cache: crate::control::cache::read_view(s.get_chunk_cache()?)?,
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
pub struct EngineRefused(pub i32, pub String);

impl std::fmt::Display for EngineRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "engine: {}", self.1)
    }
}

impl std::error::Error for EngineRefused {}

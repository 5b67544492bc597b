//! The control socket's server: one thread per connection (bounded), each
//! request answered from the `Handle`.

use std::io::{BufReader, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use musicfs_schema::{control_request, control_response};
use tracing::warn;

use crate::config::Config;
use crate::config::reload::ReloadReport;
use crate::config::state::control_socket;
use crate::control::{Handle, Status};
use crate::events::Event;
use crate::sys::socket::{SocketGuard, bind_owner_only};

/// Control connections served at once (followers included).
const MAX_CONNECTIONS: usize = 32;

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
    s.set_catalog_write_error(&st.catalog_write_error);
    s.set_catalog_write_since_ms(st.catalog_write_since_ms);
    s.set_state_dir_error(&st.state_dir_error);
    if let Some(v) = &st.chunk_cache {
        crate::control::cache::write_view(s.reborrow().init_chunk_cache(), v);
    }
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

/// Serves the control socket: an accept thread, one thread per connection.
pub fn serve(rt: Arc<dyn Handle>) -> Result<SocketGuard> {
    let path = control_socket(rt.state_dir());
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
                        if let Err(e) = handle(stream, rt.as_ref()) {
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
    Ok(SocketGuard::new(path))
}

fn handle(stream: UnixStream, rt: &dyn Handle) -> Result<()> {
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
        control_request::Status(()) => match rt.status() {
            Ok(st) => status_frame(id, &st),
            Err(e) => simple_frame(id, libc::EIO, &format!("{e:#}")),
        },
        control_request::Shutdown(timeout_ms) => {
            if let Err(why) = rt.shutdown(Duration::from_millis(u64::from(timeout_ms))) {
                warn!("shutdown refused: {why}");
                let _ = writer.write_all(&simple_frame(id, libc::EPERM, &why));
                return Ok(());
            }
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
        control_request::Cache(c) => {
            let action = c.get_action()?.to_str()?.to_string();
            let path = c.get_path()?.to_vec();
            let gone = || client_gone(reader.get_ref());
            crate::control::cache::serve_cache(
                id,
                (&action, &path, c.get_repair()),
                rt,
                &mut writer,
                &gone,
            )?
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

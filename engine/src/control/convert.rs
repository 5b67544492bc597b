//! The engine's status and events in and out of their Cap'n Proto structs.

use anyhow::Result;
use musicfs_schema::{engine_status, event};

use crate::control::{OriginState, Status, TaskInfo};
use crate::events::Event;

pub(super) fn len32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

pub(super) fn text(t: capnp::Result<capnp::text::Reader<'_>>) -> String {
    t.ok()
        .and_then(|t| t.to_str().ok())
        .unwrap_or("")
        .to_string()
}

pub(super) fn write_status(mut s: engine_status::Builder<'_>, st: &Status) {
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
        e.set_kind(&o.kind);
        e.set_health(&o.health);
        e.set_error(&o.error);
    }
    let mut list = s.reborrow().init_tasks(len32(st.tasks.len()));
    for (i, t) in st.tasks.iter().enumerate() {
        let mut e = list.reborrow().get(len32(i));
        e.set_name(&t.name);
        e.set_running(t.running);
        e.set_restarts(t.restarts);
        e.set_last_error(&t.last_error);
    }
    let mut list = s.reborrow().init_notify(len32(st.notify.len()));
    for (i, t) in st.notify.iter().enumerate() {
        let mut e = list.reborrow().get(len32(i));
        e.set_name(&t.name);
        e.set_state(&t.state);
        e.set_delivered(t.delivered);
        e.set_failed_attempts(t.failed_attempts);
        e.set_dropped(t.dropped);
        e.set_queued(t.queued);
        e.set_last_error(&t.last_error);
        e.set_last_ok_ms(t.last_ok_ms);
    }
    let mut list = s.reborrow().init_counters(len32(st.counters.len()));
    for (i, (n, v)) in st.counters.iter().enumerate() {
        let mut e = list.reborrow().get(len32(i));
        e.set_name(n);
        e.set_value(*v);
    }
    let mut list = s.reborrow().init_cache(len32(st.cache.len()));
    for (i, (n, v)) in st.cache.iter().enumerate() {
        let mut e = list.reborrow().get(len32(i));
        e.set_name(n);
        e.set_value(*v);
    }
}

pub(super) fn read_status(s: engine_status::Reader<'_>) -> Result<Status> {
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
                kind: text(o.get_kind()),
                health: text(o.get_health()),
                error: text(o.get_error()),
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
        notify: s
            .get_notify()?
            .iter()
            .map(|t| crate::notify::TargetStatus {
                name: text(t.get_name()),
                state: text(t.get_state()),
                delivered: t.get_delivered(),
                failed_attempts: t.get_failed_attempts(),
                dropped: t.get_dropped(),
                queued: t.get_queued(),
                last_error: text(t.get_last_error()),
                last_ok_ms: t.get_last_ok_ms(),
            })
            .collect(),
    })
}

pub(super) fn write_event(mut ev: event::Builder<'_>, e: &Event) {
    ev.set_seq(e.seq);
    ev.set_time_ms(e.time_ms);
    ev.set_kind(&e.kind);
    ev.set_message(&e.message);
}

pub(super) fn read_event(e: event::Reader<'_>) -> Event {
    Event {
        seq: e.get_seq(),
        time_ms: e.get_time_ms(),
        kind: text(e.get_kind()),
        message: text(e.get_message()),
    }
}

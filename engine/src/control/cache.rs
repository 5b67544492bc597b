//! The chunk cache on the control socket: `musicfs cache status | verify
//! [--repair] | clear | pin PATH | unpin PATH`. A verify streams progress
//! frames and stops when its client goes away.

use std::collections::BTreeMap;
use std::io::{BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use musicfs_schema::{chunk_cache_status, control_response};
use serde::Serialize;

use crate::content::CacheStatus;
use crate::control::Handle;

/// The chunk cache as the status shows it (stable keys).
#[derive(Clone, Debug, Default, Serialize)]
pub struct ChunkCacheView {
    pub dir: String,
    /// "normal", "unstable" or "down".
    pub state: String,
    pub bypassed: bool,
    pub reason: String,
    pub since_ms: u64,
    pub writes_stopped: String,
    /// used_bytes, max_bytes, chunks, hits, misses, corrupt, ...
    #[serde(flatten)]
    pub figures: BTreeMap<String, u64>,
}

impl ChunkCacheView {
    pub fn figure(&self, name: &str) -> u64 {
        self.figures.get(name).copied().unwrap_or(0)
    }
}

impl From<&CacheStatus> for ChunkCacheView {
    fn from(s: &CacheStatus) -> Self {
        let figures = [
            ("used_bytes", s.used_bytes),
            ("max_bytes", s.max_bytes),
            ("chunks", s.chunks),
            ("pinned_files", s.pinned_files),
            ("free_percent", u64::from(s.free_percent)),
            ("min_free_percent", u64::from(s.min_free_percent)),
            ("hits", s.hits),
            ("misses", s.misses),
            ("corrupt", s.corrupt),
            ("missing", s.missing),
            ("written", s.written),
            ("skipped", s.skipped),
            ("evicted", s.evicted),
            ("disk_errors", s.disk_errors),
            ("bypassed_reads", s.bypassed_reads),
            ("read_ahead", s.read_ahead),
        ];
        ChunkCacheView {
            dir: s.dir.clone(),
            state: s.state.clone(),
            bypassed: s.bypassed,
            reason: s.reason.clone(),
            since_ms: s.since_ms,
            writes_stopped: s.writes_stopped.clone(),
            figures: figures
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
        }
    }
}

fn len32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

pub(super) fn write_view(mut b: chunk_cache_status::Builder<'_>, v: &ChunkCacheView) {
    b.set_dir(&v.dir);
    b.set_state(&v.state);
    b.set_bypassed(v.bypassed);
    b.set_reason(&v.reason);
    b.set_since_ms(v.since_ms);
    b.set_writes_stopped(&v.writes_stopped);
    let mut list = b.init_figures(len32(v.figures.len()));
    for (i, (n, value)) in v.figures.iter().enumerate() {
        let mut e = list.reborrow().get(len32(i));
        e.set_name(n);
        e.set_value(*value);
    }
}

fn text(t: capnp::Result<capnp::text::Reader<'_>>) -> String {
    t.ok()
        .and_then(|t| t.to_str().ok())
        .unwrap_or("")
        .to_string()
}

pub(super) fn read_view(r: chunk_cache_status::Reader<'_>) -> Result<Option<ChunkCacheView>> {
    let state = text(r.get_state());
    if state.is_empty() {
        return Ok(None);
    }
    Ok(Some(ChunkCacheView {
        dir: text(r.get_dir()),
        state,
        bypassed: r.get_bypassed(),
        reason: text(r.get_reason()),
        since_ms: r.get_since_ms(),
        writes_stopped: text(r.get_writes_stopped()),
        figures: r
            .get_figures()?
            .iter()
            .map(|c| (text(c.get_name()), c.get_value()))
            .collect(),
    }))
}

fn frame(id: u64, fill: impl FnOnce(control_response::Builder<'_>)) -> Vec<u8> {
    let mut msg = capnp::message::Builder::new_default();
    let mut r = msg.init_root::<control_response::Builder<'_>>();
    r.set_id(id);
    fill(r);
    musicfs_schema::to_frame(&msg)
}

fn report_frame(id: u64, figures: &[(&str, u64)]) -> Vec<u8> {
    frame(id, |r| {
        let mut list = r.init_cache_report(len32(figures.len()));
        for (i, (n, v)) in figures.iter().enumerate() {
            let mut e = list.reborrow().get(len32(i));
            e.set_name(n);
            e.set_value(*v);
        }
    })
}

fn error_frame(id: u64, errno: i32, message: &str) -> Vec<u8> {
    frame(id, |mut r| {
        r.set_errno(errno);
        r.set_message(message);
        r.set_none(());
    })
}

/// Serves one cache request; `gone` tells whether the client left.
pub(super) fn serve_cache(
    id: u64,
    (action, path, repair): (&str, &[u8], bool),
    rt: &dyn Handle,
    writer: &mut UnixStream,
    gone: &dyn Fn() -> bool,
) -> Result<Vec<u8>> {
    Ok(match action {
        "status" => match rt.cache_status() {
            Some(s) => frame(id, |r| {
                write_view(r.init_cache_status(), &ChunkCacheView::from(&s))
            }),
            None => error_frame(
                id,
                libc::ENOENT,
                "no chunk cache: every origin is a local disk (set `cache = true` on an origin to cache it)",
            ),
        },
        "verify" => {
            let cancel = AtomicBool::new(false);
            let mut last = Instant::now() - Duration::from_secs(1);
            let mut failed = None;
            let mut progress = |done: u64, total: u64| {
                if cancel.load(Ordering::Relaxed) {
                    return;
                }
                if done == total || last.elapsed() >= Duration::from_millis(100) {
                    last = Instant::now();
                    let f = frame(id, |r| {
                        let mut p = r.init_progress();
                        p.set_done(done);
                        p.set_total(total);
                    });
                    if let Err(e) = writer.write_all(&f) {
                        failed = Some(e);
                        cancel.store(true, Ordering::Relaxed);
                    }
                }
                if gone() {
                    cancel.store(true, Ordering::Relaxed);
                }
            };
            match rt.cache_verify(repair, &mut progress, &cancel) {
                Ok(rep) => report_frame(
                    id,
                    &[
                        ("checked", rep.checked),
                        ("bad", rep.bad),
                        ("missing", rep.missing),
                        ("repaired", rep.repaired),
                        ("unrepaired", rep.unrepaired),
                        ("cancelled", u64::from(rep.cancelled)),
                    ],
                ),
                Err(e) => error_frame(id, libc::EIO, &format!("{e:#}")),
            }
        }
        "clear" => match rt.cache_clear() {
            Ok(freed) => report_frame(id, &[("freed_bytes", freed)]),
            Err(e) => error_frame(id, libc::EIO, &format!("{e:#}")),
        },
        "pin" | "unpin" => match rt.cache_pin(path, action == "pin") {
            Ok(files) => report_frame(id, &[("files", files)]),
            Err(e) => error_frame(id, libc::ENOENT, &format!("{e:#}")),
        },
        other => error_frame(id, libc::EINVAL, &format!("unknown cache action {other:?}")),
    })
}

/// What the engine answered to a cache request.
#[derive(Debug)]
pub enum CacheAnswer {
    Status(ChunkCacheView),
    Report(Vec<(String, u64)>),
}

/// Client: one cache request; `progress(done, total)` for a verify's
/// progress frames.
pub fn cache_request(
    state_dir: &Path,
    (action, path, repair): (&str, &[u8], bool),
    mut progress: impl FnMut(u64, u64),
) -> Result<CacheAnswer> {
    let long = action == "verify";
    let mut reader: BufReader<UnixStream> = crate::control::client::send_request(
        state_dir,
        Some(Duration::from_secs(if long { 600 } else { 30 })),
        |r| {
            let mut c = r.init_cache();
            c.set_action(action);
            c.set_path(path);
            c.set_repair(repair);
        },
    )?;
    loop {
        let Some(answer) = musicfs_schema::read_frame(&mut reader)? else {
            bail!("the engine closed the connection");
        };
        let r = answer.get_root::<control_response::Reader<'_>>()?;
        if r.get_errno() != 0 {
            bail!("{}", text(r.get_message()));
        }
        match r.which()? {
            control_response::Progress(p) => progress(p.get_done(), p.get_total()),
            control_response::CacheStatus(s) => {
                return read_view(s?)?
                    .map(CacheAnswer::Status)
                    .ok_or_else(|| anyhow::anyhow!("no chunk cache"));
            }
            control_response::CacheReport(list) => {
                return Ok(CacheAnswer::Report(
                    list?
                        .iter()
                        .map(|c| (text(c.get_name()), c.get_value()))
                        .collect(),
                ));
            }
            _ => bail!("the engine answered something else than a cache answer"),
        }
    }
}

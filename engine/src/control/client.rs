//! Clients of the control socket (capnp-rpc): each call connects, checks
//! the protocol at the gate, calls, and disconnects; on its own
//! current-thread runtime, so the command line stays synchronous.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use capnp_rpc::{RpcSystem, rpc_twoparty_capnp, twoparty};
use futures::AsyncReadExt;
use musicfs_schema::{engine, engine_gate, event_listener};
use tokio_util::compat::TokioAsyncReadCompatExt;

use crate::config::Config;
use crate::config::reload::ReloadReport;
use crate::config::state::control_socket;
use crate::control::Status;
use crate::control::cache::{ChunkCacheView, read_view};
use crate::control::convert::{read_event, read_status, text};
use crate::control::rpc::ProgressForwarder;
use crate::events::Event;

/// Nothing answers on the control socket.
#[derive(Debug)]
pub struct NotRunning(String);

impl std::fmt::Display for NotRunning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
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

/// This client's control protocol range (`MUSICFS_FAKE_CONTROL_PROTOCOL`
/// claims one version, for tests).
fn our_range() -> (u32, u32) {
    crate::control::server::control_protocol_range()
}

/// A capnp error as the engine meant it: its own message, or a lost link.
pub fn remote(e: capnp::Error) -> anyhow::Error {
    match e.kind {
        capnp::ErrorKind::Disconnected => anyhow!("the engine closed the control connection"),
        _ => {
            let msg = e.extra.trim_start_matches("remote exception: ").to_string();
            let errno = if msg.contains("engine stopping") {
                libc::ESHUTDOWN
            } else {
                libc::EIO
            };
            EngineRefused(errno, msg).into()
        }
    }
}

/// Fills in this client's side of a `hello`.
pub fn our_peer(mut c: musicfs_schema::peer::Builder<'_>) {
    let (min, max) = our_range();
    c.set_min_protocol(min);
    c.set_max_protocol(max);
    c.set_name(concat!("musicfs ", env!("CARGO_PKG_VERSION")));
}

/// Connects to the capnp-rpc socket `path` (`whose`: what serves there, for
/// the error) and runs `f` on its bootstrap capability, within `timeout`
/// (None: no limit, for followers), on a runtime of its own.
pub fn with_gate<G, T, Fut>(
    path: &Path,
    whose: &str,
    timeout: Option<Duration>,
    f: impl FnOnce(G) -> Fut,
) -> Result<T>
where
    G: capnp::capability::FromClientHook,
    Fut: std::future::Future<Output = Result<T>>,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        let connect = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::net::UnixStream::connect(&path),
        );
        let stream = match connect.await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                return Err(anyhow::Error::new(e).context(NotRunning(format!(
                    "no {whose} is running ({} does not answer)",
                    path.display()
                ))));
            }
            Err(_) => bail!("the {whose} did not accept the control connection within 5 s"),
        };
        let (reader, writer) = stream.compat().split();
        let network = twoparty::VatNetwork::new(
            futures::io::BufReader::new(reader),
            futures::io::BufWriter::new(writer),
            rpc_twoparty_capnp::Side::Client,
            Default::default(),
        );
        let mut system = RpcSystem::new(Box::new(network), None);
        let gate: G = system.bootstrap(rpc_twoparty_capnp::Side::Server);
        let disconnector = system.get_disconnector();
        tokio::task::spawn_local(system);
        let out = match timeout {
            Some(t) => tokio::time::timeout(t, f(gate))
                .await
                .map_err(|_| anyhow!("the {whose} did not answer within {} s", t.as_secs()))?,
            None => f(gate).await,
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), disconnector).await;
        out
    })
}

/// Connects to the engine of `state_dir` and runs `f` on its `Engine`
/// capability (after the protocol check at the gate).
fn with_engine<T, Fut>(
    state_dir: &Path,
    timeout: Option<Duration>,
    f: impl FnOnce(engine::Client) -> Fut,
) -> Result<T>
where
    Fut: std::future::Future<Output = Result<T>>,
{
    let path = control_socket(state_dir);
    with_gate(
        &path,
        "engine",
        timeout,
        |gate: engine_gate::Client| async move {
            let mut hello = gate.hello_request();
            our_peer(hello.get().init_client());
            let answer = hello.send().promise.await.map_err(|e| match e.kind {
                // A peer that hangs up on the gate speaks no capnp-rpc: a
                // musicfs from before the RPC control plane.
                capnp::ErrorKind::Disconnected => anyhow!(
                    "the engine hung up on the protocol check: it is probably an older musicfs (before control protocol {}); use the musicfs binary of the running release",
                    musicfs_schema::MIN_CONTROL_PROTOCOL_VERSION
                ),
                _ => remote(e),
            })?;
            let engine = answer.get()?.get_engine()?;
            f(engine).await
        },
    )
    .map_err(|e| match e.downcast_ref::<NotRunning>() {
        Some(_) => e.context(NotRunning(format!(
            "no engine is running for {} ({} does not answer)",
            state_dir.display(),
            path.display()
        ))),
        None => e,
    })
}

/// Client: the status of the engine of `state_dir`.
pub fn fetch_status(state_dir: &Path) -> Result<Status> {
    with_engine(
        state_dir,
        Some(Duration::from_secs(10)),
        |engine| async move {
            let answer = engine
                .status_request()
                .send()
                .promise
                .await
                .map_err(remote)?;
            read_status(answer.get()?.get_status()?)
        },
    )
}

/// Client: the engine's metrics in the Prometheus text format.
pub fn fetch_metrics(state_dir: &Path) -> Result<String> {
    with_engine(
        state_dir,
        Some(Duration::from_secs(10)),
        |engine| async move {
            let answer = engine
                .metrics_request()
                .send()
                .promise
                .await
                .map_err(remote)?;
            Ok(text(answer.get()?.get_text()))
        },
    )
}

/// Sends `shutdown` (the caller decides how to wait for the stop).
pub fn send_shutdown(state_dir: &Path, drain: Duration) -> Result<()> {
    with_engine(
        state_dir,
        Some(Duration::from_secs(10)),
        |engine| async move {
            let mut req = engine.shutdown_request();
            req.get()
                .set_drain_ms(u32::try_from(drain.as_millis()).unwrap_or(u32::MAX));
            req.send().promise.await.map_err(remote)?;
            Ok(())
        },
    )
}

/// Client: asks the engine of `state_dir` to stop, draining for `timeout`,
/// and waits (bounded) until it is gone.
pub fn request_shutdown(state_dir: &Path, timeout: Duration) -> Result<()> {
    send_shutdown(state_dir, timeout)?;
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
    with_engine(
        state_dir,
        Some(Duration::from_secs(60)),
        |engine| async move {
            let mut req = engine.reload_request();
            req.get().set_config(json.as_str());
            let answer = req.send().promise.await.map_err(|e| {
                // The engine's own words (it says what stays in force).
                anyhow!("{}", e.extra.trim_start_matches("remote exception: "))
            })?;
            let r = answer.get()?;
            Ok(ReloadReport {
                applied: r.get_applied()?.iter().map(text).collect(),
                restart_needed: r.get_restart_needed()?.iter().map(text).collect(),
            })
        },
    )
}

/// Forwards events from the engine to the follower's loop.
struct Listener(tokio::sync::mpsc::UnboundedSender<Event>);

impl event_listener::Server for Listener {
    async fn event(
        self: capnp::capability::Rc<Self>,
        params: event_listener::EventParams,
        _: event_listener::EventResults,
    ) -> Result<(), capnp::Error> {
        let e = read_event(params.get()?.get_event()?);
        self.0
            .send(e)
            .map_err(|_| capnp::Error::failed("the follower stopped".into()))
    }
}

/// Client: the events after `after`; with `follow`, calls `each` for every
/// event until the engine stops or the connection breaks.
pub fn stream_events(
    state_dir: &Path,
    after: u64,
    follow: bool,
    mut each: impl FnMut(Event) -> Result<()>,
) -> Result<()> {
    if !follow {
        let events = with_engine(
            state_dir,
            Some(Duration::from_secs(10)),
            |engine| async move {
                let mut req = engine.events_request();
                req.get().set_after(after);
                let answer = req.send().promise.await.map_err(remote)?;
                Ok(answer
                    .get()?
                    .get_events()?
                    .iter()
                    .map(read_event)
                    .collect::<Vec<_>>())
            },
        )?;
        return events.into_iter().try_for_each(each);
    }
    with_engine(state_dir, None, |engine| async move {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut req = engine.subscribe_request();
        req.get().set_after(after);
        req.get().set_listener(capnp_rpc::new_client(Listener(tx)));
        let answer = req.send().promise.await.map_err(remote)?;
        // Held while following: dropping it ends the subscription.
        let _subscription = answer.get()?.get_subscription()?;
        drop(engine);
        // The listener is dropped with the connection: then `rx` ends.
        while let Some(e) = rx.recv().await {
            each(e)?;
        }
        bail!("the engine closed the connection")
    })
}

/// What the engine answered to a cache request.
#[derive(Debug)]
pub enum CacheAnswer {
    Status(ChunkCacheView),
    Report(Vec<(String, u64)>),
}

/// Client: one cache request (`status`, `verify`, `clear`, `pin`, `unpin`);
/// `progress(done, total)` for a verify's progress, in order, before the
/// answer.
pub fn cache_request(
    state_dir: &Path,
    (action, path, repair): (&str, &[u8], bool),
    mut progress: impl FnMut(u64, u64),
) -> Result<CacheAnswer> {
    let action = action.to_string();
    let path = path.to_vec();
    let timeout = Some(Duration::from_secs(if action == "verify" {
        24 * 3600
    } else {
        60
    }));
    with_engine(state_dir, timeout, |engine| async move {
        let report = |list: capnp::struct_list::Reader<'_, musicfs_schema::counter::Owned>| {
            list.iter()
                .map(|c| (text(c.get_name()), c.get_value()))
                .collect::<Vec<_>>()
        };
        match action.as_str() {
            "status" => {
                let a = engine
                    .cache_status_request()
                    .send()
                    .promise
                    .await
                    .map_err(remote)?;
                let v = read_view(a.get()?.get_status()?)?.context("no chunk cache")?;
                Ok(CacheAnswer::Status(v))
            }
            "verify" => {
                let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
                let mut req = engine.cache_verify_request();
                req.get().set_repair(repair);
                req.get()
                    .set_progress(capnp_rpc::new_client(ProgressForwarder(tx)));
                let a = req.send().promise.await.map_err(remote)?;
                let job = a.get()?.get_job()?;
                let result = job.result_request().send().promise;
                tokio::pin!(result);
                // Progress as it comes; the result after the last of it.
                let answer = loop {
                    tokio::select! {
                        Some((done, total)) = rx.recv() => progress(done, total),
                        r = &mut result => break r.map_err(remote)?,
                    }
                };
                while let Ok((done, total)) = rx.try_recv() {
                    progress(done, total);
                }
                let r = answer.get()?;
                let mut figures = report(r.get_report()?);
                figures.push(("cancelled".into(), u64::from(r.get_cancelled())));
                Ok(CacheAnswer::Report(figures))
            }
            "clear" => {
                let a = engine
                    .cache_clear_request()
                    .send()
                    .promise
                    .await
                    .map_err(remote)?;
                Ok(CacheAnswer::Report(vec![(
                    "freed_bytes".into(),
                    a.get()?.get_freed_bytes(),
                )]))
            }
            "pin" | "unpin" => {
                let mut req = engine.cache_pin_request();
                req.get().set_path(&path);
                req.get().set_pinned(action == "pin");
                let a = req.send().promise.await.map_err(remote)?;
                Ok(CacheAnswer::Report(vec![(
                    "files".into(),
                    a.get()?.get_files(),
                )]))
            }
            other => bail!("unknown cache action {other:?}"),
        }
    })
}

/// Client: the tree paths matching `query` (`musicfs search`).
pub fn search_request(state_dir: &Path, query: &str) -> Result<Vec<String>> {
    let query = query.to_string();
    with_engine(
        state_dir,
        Some(Duration::from_secs(60)),
        |engine| async move {
            let mut req = engine.search_request();
            req.get().set_query(&query);
            let a = req.send().promise.await.map_err(remote)?;
            let paths = a.get()?.get_paths()?;
            let mut out = Vec::with_capacity(paths.len() as usize);
            for p in paths.iter() {
                out.push(p?.to_string()?);
            }
            Ok(out)
        },
    )
}

/// Client: rebuilds the search index (`musicfs search rebuild`), with
/// `progress(done, total)` in tracks; returns the tracks indexed.
pub fn search_rebuild(state_dir: &Path, mut progress: impl FnMut(u64, u64)) -> Result<u64> {
    with_engine(
        state_dir,
        Some(Duration::from_secs(24 * 3600)),
        |engine| async move {
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            let mut req = engine.search_rebuild_request();
            req.get()
                .set_progress(capnp_rpc::new_client(ProgressForwarder(tx)));
            let a = req.send().promise.await.map_err(remote)?;
            let job = a.get()?.get_job()?;
            let result = job.result_request().send().promise;
            tokio::pin!(result);
            let answer = loop {
                tokio::select! {
                    Some((done, total)) = rx.recv() => progress(done, total),
                    r = &mut result => break r.map_err(remote)?,
                }
            };
            while let Ok((done, total)) = rx.try_recv() {
                progress(done, total);
            }
            let tracks = answer
                .get()?
                .get_report()?
                .iter()
                .find(|c| text(c.get_name()) == "tracks")
                .map_or(0, |c| c.get_value());
            Ok(tracks)
        },
    )
}

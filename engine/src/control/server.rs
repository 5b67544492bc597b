//! The control socket's server: capnp-rpc on one thread (a current-thread
//! tokio runtime with a `LocalSet`; capnp-rpc is `!Send`). Connections cost
//! a task each, not a thread, up to `MAX_CONNECTIONS`. Calls into the
//! engine that may wait (status probes origins, reload writes the catalog)
//! run on tokio's blocking pool, so one slow call never holds the others.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use musicfs_schema::{engine, engine_gate, event_listener, job, progress_listener, subscription};
use tracing::{info, warn};

use crate::config::Config;
use crate::config::state::control_socket;
use crate::content::VerifyReport;
use crate::control::Handle;
use crate::control::cache::{ChunkCacheView, write_view};
use crate::control::convert::{len32, write_event, write_status};
use crate::control::rpc::{check_peer, server_connection, server_peer};
use crate::events::Event;
use crate::sys::socket::{SocketGuard, bind_owner_only};

/// Control connections served at once (followers included).
pub const MAX_CONNECTIONS: usize = 4096;
/// Events a follower may fall behind by before it misses some.
const FOLLOW_BACKLOG: usize = 4096;

/// This engine's control protocol range. Fault injection:
/// `MUSICFS_FAKE_CONTROL_PROTOCOL=N` claims version N only (tests of how
/// old and new peers refuse each other).
pub fn control_protocol_range() -> (u32, u32) {
    match std::env::var("MUSICFS_FAKE_CONTROL_PROTOCOL")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        Some(v) => (v, v),
        None => (
            musicfs_schema::MIN_CONTROL_PROTOCOL_VERSION,
            musicfs_schema::CONTROL_PROTOCOL_VERSION,
        ),
    }
}

fn failed(e: impl std::fmt::Display) -> capnp::Error {
    capnp::Error::failed(e.to_string())
}

/// Serves the control socket from its own thread; the guard removes the
/// socket file when dropped.
pub fn serve(rt: Arc<dyn Handle>) -> Result<SocketGuard> {
    let path = control_socket(rt.state_dir());
    let _ = std::fs::remove_file(&path);
    let listener =
        bind_owner_only(&path).with_context(|| format!("cannot listen on {}", path.display()))?;
    listener.set_nonblocking(true)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the control plane's runtime")?;
    let hub = EventHub::start()?;
    std::thread::Builder::new()
        .name("musicfs-control".into())
        .spawn(move || {
            let local = tokio::task::LocalSet::new();
            local.block_on(&runtime, async move {
                if let Err(e) = accept(listener, rt, hub).await {
                    warn!("the control socket stopped: {e:#}");
                }
            });
        })
        .context("cannot start the control thread")?;
    Ok(SocketGuard::new(path))
}

async fn accept(
    listener: std::os::unix::net::UnixListener,
    rt: Arc<dyn Handle>,
    hub: EventHub,
) -> Result<()> {
    let listener = tokio::net::UnixListener::from_std(listener)?;
    let live = Rc::new(Cell::new(0usize));
    let mut refused_logged = Instant::now() - Duration::from_secs(60);
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                warn!("control accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if live.get() >= MAX_CONNECTIONS {
            if refused_logged.elapsed() > Duration::from_secs(10) {
                warn!("{MAX_CONNECTIONS} control connections are open; refusing more");
                refused_logged = Instant::now();
            }
            drop(stream);
            continue;
        }
        let gate: engine_gate::Client = capnp_rpc::new_client(Gate {
            rt: rt.clone(),
            hub: hub.clone(),
            live: live.clone(),
        });
        let system = server_connection(stream, gate.client);
        live.set(live.get() + 1);
        let live = live.clone();
        tokio::task::spawn_local(async move {
            let _ = system.await;
            live.set(live.get() - 1);
        });
    }
}

/// New events for every follower: one thread waits on the event ring and
/// broadcasts; each follower has its own receiver.
#[derive(Clone)]
struct EventHub(tokio::sync::broadcast::Sender<Event>);

impl EventHub {
    fn start() -> Result<EventHub> {
        let (tx, _) = tokio::sync::broadcast::channel(FOLLOW_BACKLOG);
        let sender = tx.clone();
        std::thread::Builder::new()
            .name("musicfs-events".into())
            .spawn(move || {
                let mut last = crate::events::since(0).last().map_or(0, |e| e.seq);
                loop {
                    for e in crate::events::wait_since(last, Duration::from_secs(1)) {
                        last = e.seq;
                        // No follower: nothing to do.
                        let _ = sender.send(e);
                    }
                }
            })
            .context("cannot start the events thread")?;
        Ok(EventHub(tx))
    }
}

struct Gate {
    rt: Arc<dyn Handle>,
    hub: EventHub,
    /// Connections open now.
    live: Rc<Cell<usize>>,
}

impl engine_gate::Server for Gate {
    async fn hello(
        self: capnp::capability::Rc<Self>,
        params: engine_gate::HelloParams,
        mut results: engine_gate::HelloResults,
    ) -> Result<(), capnp::Error> {
        check_peer(
            params.get()?.get_client()?,
            concat!("this engine (", env!("CARGO_PKG_VERSION"), ")"),
        )?;
        let mut r = results.get();
        server_peer(
            r.reborrow().init_server(),
            concat!("musicfs engine ", env!("CARGO_PKG_VERSION")),
        );
        r.set_engine(capnp_rpc::new_client(EngineImpl {
            rt: self.rt.clone(),
            hub: self.hub.clone(),
            live: self.live.clone(),
        }));
        Ok(())
    }
}

struct EngineImpl {
    rt: Arc<dyn Handle>,
    hub: EventHub,
    live: Rc<Cell<usize>>,
}

/// Runs `f` on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T, capnp::Error> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(failed)?
        .map_err(|e| failed(format!("{e:#}")))
}

fn counters(
    mut list: capnp::struct_list::Builder<'_, musicfs_schema::counter::Owned>,
    figures: &[(&str, u64)],
) {
    for (i, (n, v)) in figures.iter().enumerate() {
        let mut e = list.reborrow().get(len32(i));
        e.set_name(n);
        e.set_value(*v);
    }
}

impl engine::Server for EngineImpl {
    async fn status(
        self: capnp::capability::Rc<Self>,
        _: engine::StatusParams,
        mut results: engine::StatusResults,
    ) -> Result<(), capnp::Error> {
        let rt = self.rt.clone();
        let mut st = blocking(move || rt.status()).await?;
        st.cache
            .push(("control_connections".into(), self.live.get() as u64));
        write_status(results.get().init_status(), &st);
        Ok(())
    }

    async fn reload(
        self: capnp::capability::Rc<Self>,
        params: engine::ReloadParams,
        mut results: engine::ReloadResults,
    ) -> Result<(), capnp::Error> {
        let text = params
            .get()?
            .get_config()?
            .to_str()
            .map_err(failed)?
            .to_string();
        let new = if text.is_empty() {
            None
        } else {
            Some(
                serde_json::from_str::<Config>(&text)
                    .map_err(|e| failed(format!("bad configuration: {e}")))?,
            )
        };
        let rt = self.rt.clone();
        let report = tokio::task::spawn_blocking(move || rt.reload(new))
            .await
            .map_err(failed)?
            .map_err(|e| failed(format!("{e:#}; the running configuration stays")))?;
        let mut r = results.get();
        let mut list = r.reborrow().init_applied(len32(report.applied.len()));
        for (i, f) in report.applied.iter().enumerate() {
            list.set(len32(i), f);
        }
        let mut list = r.init_restart_needed(len32(report.restart_needed.len()));
        for (i, f) in report.restart_needed.iter().enumerate() {
            list.set(len32(i), f);
        }
        Ok(())
    }

    async fn shutdown(
        self: capnp::capability::Rc<Self>,
        params: engine::ShutdownParams,
        _: engine::ShutdownResults,
    ) -> Result<(), capnp::Error> {
        let drain = Duration::from_millis(u64::from(params.get()?.get_drain_ms()));
        self.rt.shutdown(drain).map_err(|why| {
            warn!("shutdown refused: {why}");
            failed(why)
        })
    }

    async fn metrics(
        self: capnp::capability::Rc<Self>,
        _: engine::MetricsParams,
        mut results: engine::MetricsResults,
    ) -> Result<(), capnp::Error> {
        let rt = self.rt.clone();
        let text = blocking(move || rt.metrics()).await?;
        results.get().set_text(&text);
        Ok(())
    }

    async fn events(
        self: capnp::capability::Rc<Self>,
        params: engine::EventsParams,
        mut results: engine::EventsResults,
    ) -> Result<(), capnp::Error> {
        let events = crate::events::since(params.get()?.get_after());
        let mut list = results.get().init_events(len32(events.len()));
        for (i, e) in events.iter().enumerate() {
            write_event(list.reborrow().get(len32(i)), e);
        }
        Ok(())
    }

    async fn subscribe(
        self: capnp::capability::Rc<Self>,
        params: engine::SubscribeParams,
        mut results: engine::SubscribeResults,
    ) -> Result<(), capnp::Error> {
        let p = params.get()?;
        let after = p.get_after();
        let listener = p.get_listener()?;
        if self.rt.stopping() {
            return Err(failed("engine stopping"));
        }
        // Subscribed before the backlog is read: nothing falls between.
        let mut rx = self.hub.0.subscribe();
        let ended = Rc::new(tokio::sync::Notify::new());
        results
            .get()
            .set_subscription(capnp_rpc::new_client(SubscriptionImpl(ended.clone())));
        tokio::task::spawn_local(async move {
            let mut last = after;
            for e in crate::events::since(after) {
                last = e.seq;
                if deliver(&listener, &e).await.is_err() {
                    return;
                }
            }
            loop {
                let e = tokio::select! {
                    r = rx.recv() => match r {
                        Ok(e) => e,
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                            warn!(missed = n, "an event follower fell behind; it missed some events");
                            continue;
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    },
                    () = ended.notified() => return,
                };
                if e.seq <= last {
                    continue;
                }
                last = e.seq;
                if deliver(&listener, &e).await.is_err() {
                    return;
                }
            }
        });
        Ok(())
    }

    async fn cache_status(
        self: capnp::capability::Rc<Self>,
        _: engine::CacheStatusParams,
        mut results: engine::CacheStatusResults,
    ) -> Result<(), capnp::Error> {
        let rt = self.rt.clone();
        let status = blocking(move || {
            rt.cache_status().context(
                "no chunk cache: every origin is a local disk (set `cache = true` on an origin to cache it)",
            )
        })
        .await?;
        write_view(results.get().init_status(), &ChunkCacheView::from(&status));
        Ok(())
    }

    async fn cache_verify(
        self: capnp::capability::Rc<Self>,
        params: engine::CacheVerifyParams,
        mut results: engine::CacheVerifyResults,
    ) -> Result<(), capnp::Error> {
        let p = params.get()?;
        let repair = p.get_repair();
        let progress = p.get_progress()?;
        let rt = self.rt.clone();
        let job = Job::start(progress, move |report, cancel| {
            rt.cache_verify(repair, report, cancel)
                .map(|r| verify_figures(&r))
        });
        results.get().set_job(capnp_rpc::new_client(job));
        Ok(())
    }

    async fn cache_clear(
        self: capnp::capability::Rc<Self>,
        _: engine::CacheClearParams,
        mut results: engine::CacheClearResults,
    ) -> Result<(), capnp::Error> {
        let rt = self.rt.clone();
        let freed = blocking(move || rt.cache_clear()).await?;
        results.get().set_freed_bytes(freed);
        Ok(())
    }

    async fn cache_pin(
        self: capnp::capability::Rc<Self>,
        params: engine::CachePinParams,
        mut results: engine::CachePinResults,
    ) -> Result<(), capnp::Error> {
        let p = params.get()?;
        let (path, pinned) = (p.get_path()?.to_vec(), p.get_pinned());
        let rt = self.rt.clone();
        let files = blocking(move || rt.cache_pin(&path, pinned)).await?;
        results.get().set_files(files);
        Ok(())
    }

    async fn search(
        self: capnp::capability::Rc<Self>,
        params: engine::SearchParams,
        mut results: engine::SearchResults,
    ) -> Result<(), capnp::Error> {
        let query = params.get()?.get_query()?.to_string()?;
        let rt = self.rt.clone();
        let paths = blocking(move || rt.search(&query)).await?;
        let mut list = results.get().init_paths(len32(paths.len()));
        for (i, p) in paths.iter().enumerate() {
            list.set(len32(i), p);
        }
        Ok(())
    }

    async fn search_rebuild(
        self: capnp::capability::Rc<Self>,
        params: engine::SearchRebuildParams,
        mut results: engine::SearchRebuildResults,
    ) -> Result<(), capnp::Error> {
        let progress = params.get()?.get_progress()?;
        let rt = self.rt.clone();
        let job = Job::start(progress, move |report, cancel| {
            rt.search_rebuild(report, cancel)
                .map(|n| (vec![("tracks", n)], false))
        });
        results.get().set_job(capnp_rpc::new_client(job));
        Ok(())
    }
}

fn verify_figures(r: &VerifyReport) -> (Vec<(&'static str, u64)>, bool) {
    (
        vec![
            ("checked", r.checked),
            ("bad", r.bad),
            ("missing", r.missing),
            ("repaired", r.repaired),
            ("unrepaired", r.unrepaired),
        ],
        r.cancelled,
    )
}

async fn deliver(listener: &event_listener::Client, e: &Event) -> Result<(), capnp::Error> {
    let mut req = listener.event_request();
    write_event(req.get().init_event(), e);
    req.send().promise.await.map(drop)
}

/// A follower's subscription: dropping it ends the follow.
struct SubscriptionImpl(Rc<tokio::sync::Notify>);

impl subscription::Server for SubscriptionImpl {}

impl Drop for SubscriptionImpl {
    fn drop(&mut self) {
        self.0.notify_one();
    }
}

type JobOutcome = Result<(Vec<(&'static str, u64)>, bool), String>;

/// A long job on the blocking pool: progress goes to the client's listener
/// in order (at most every 50 ms, and the last one always), then the
/// result; dropping the job's capability, or `cancel`, cancels it.
struct Job {
    cancel: Arc<AtomicBool>,
    outcome: Rc<std::cell::RefCell<Option<JobOutcome>>>,
    done: Rc<tokio::sync::Notify>,
}

impl Job {
    fn start(
        progress: progress_listener::Client,
        work: impl FnOnce(
            &mut dyn FnMut(u64, u64),
            &AtomicBool,
        ) -> Result<(Vec<(&'static str, u64)>, bool)>
        + Send
        + 'static,
    ) -> Job {
        let cancel = Arc::new(AtomicBool::new(false));
        let outcome = Rc::new(std::cell::RefCell::new(None));
        let done = Rc::new(tokio::sync::Notify::new());
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(u64, u64)>();
        let c = cancel.clone();
        let worker = tokio::task::spawn_blocking(move || {
            let mut last = Instant::now() - Duration::from_secs(1);
            let mut report = |done: u64, total: u64| {
                if done == total || last.elapsed() >= Duration::from_millis(50) {
                    last = Instant::now();
                    let _ = tx.send((done, total));
                }
            };
            work(&mut report, &c).map_err(|e| format!("{e:#}"))
        });
        let (o, d) = (outcome.clone(), done.clone());
        tokio::task::spawn_local(async move {
            // Progress first, in order, each call awaited (flow control).
            while let Some((n, total)) = rx.recv().await {
                let mut req = progress.progress_request();
                req.get().set_done(n);
                req.get().set_total(total);
                if req.send().promise.await.is_err() {
                    break;
                }
            }
            let result = match worker.await {
                Ok(r) => r,
                Err(e) => Err(format!("the job failed: {e}")),
            };
            *o.borrow_mut() = Some(result);
            d.notify_waiters();
        });
        Job {
            cancel,
            outcome,
            done,
        }
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
    }
}

impl job::Server for Job {
    async fn result(
        self: capnp::capability::Rc<Self>,
        _: job::ResultParams,
        mut results: job::ResultResults,
    ) -> Result<(), capnp::Error> {
        loop {
            let notified = self.done.notified();
            if let Some(outcome) = self.outcome.borrow().as_ref() {
                let (figures, cancelled) = outcome.clone().map_err(failed)?;
                let mut r = results.get();
                r.set_cancelled(cancelled);
                counters(r.init_report(len32(figures.len())), &figures);
                return Ok(());
            }
            notified.await;
        }
    }

    async fn cancel(
        self: capnp::capability::Rc<Self>,
        _: job::CancelParams,
        _: job::CancelResults,
    ) -> Result<(), capnp::Error> {
        info!("a job was cancelled by its client");
        self.cancel.store(true, Ordering::Relaxed);
        Ok(())
    }
}

//! `supervisor.sock` on capnp-rpc (`SupervisorGate`, `Supervisor`): the
//! server runs on its own thread (current-thread runtime, `LocalSet`) and
//! hands each request to the supervisor's loop, which owns the engine and
//! the configuration, through a channel; the answer comes back the same
//! way. The clients are `musicfs shutdown | reload | engine swap`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use musicfs_schema::{supervisor, supervisor_gate};
use tokio::sync::{mpsc, oneshot};
use tracing::warn;

use crate::config::state::supervisor_socket;
use crate::control::{
    ProgressForwarder, check_peer, our_peer, remote, server_connection, server_peer, with_gate,
};
use crate::supervisor::children::STOP_TIMEOUT;
use crate::supervisor::requests::SWAP_HEALTH_TIMEOUT;

/// What the supervisor is asked.
pub(super) enum Request {
    Shutdown(Option<Duration>),
    Reload,
    /// `None`: the engine binary running now. Progress: (step, of).
    Swap(Option<PathBuf>, mpsc::UnboundedSender<(u64, u64)>),
    /// `None`: the shim binary running now.
    ShimSwap(Option<PathBuf>),
}

/// A request with the way back for its answer (a message, or why not).
pub(super) struct Asked {
    pub(super) request: Request,
    pub(super) answer: oneshot::Sender<Result<String, String>>,
}

/// Requests waiting for the supervisor's loop.
const QUEUE: usize = 16;

fn failed(e: impl std::fmt::Display) -> capnp::Error {
    capnp::Error::failed(e.to_string())
}

/// Serves `supervisor.sock` (owner-only) from its own thread; requests
/// come out of the returned channel.
pub(super) fn serve(state_dir: &Path) -> Result<mpsc::Receiver<Asked>> {
    let path = supervisor_socket(state_dir);
    let _ = std::fs::remove_file(&path);
    let listener = crate::sys::socket::bind_owner_only(&path)
        .with_context(|| format!("cannot listen on {}", path.display()))?;
    listener.set_nonblocking(true)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (tx, rx) = mpsc::channel(QUEUE);
    std::thread::Builder::new()
        .name("musicfs-supervisor-rpc".into())
        .spawn(move || {
            let local = tokio::task::LocalSet::new();
            local.block_on(&runtime, async move {
                let listener = match tokio::net::UnixListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => return warn!("the supervisor socket failed: {e}"),
                };
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    };
                    let gate: supervisor_gate::Client = capnp_rpc::new_client(Gate(tx.clone()));
                    let system = server_connection(stream, gate.client);
                    tokio::task::spawn_local(async move {
                        let _ = system.await;
                    });
                }
            });
        })
        .context("cannot start the supervisor's control thread")?;
    Ok(rx)
}

struct Gate(mpsc::Sender<Asked>);

impl supervisor_gate::Server for Gate {
    async fn hello(
        self: capnp::capability::Rc<Self>,
        params: supervisor_gate::HelloParams,
        mut results: supervisor_gate::HelloResults,
    ) -> Result<(), capnp::Error> {
        check_peer(
            params.get()?.get_client()?,
            concat!("this musicfs mount (", env!("CARGO_PKG_VERSION"), ")"),
        )?;
        let mut r = results.get();
        server_peer(
            r.reborrow().init_server(),
            concat!("musicfs mount ", env!("CARGO_PKG_VERSION")),
        );
        r.set_supervisor(capnp_rpc::new_client(Supervisor(self.0.clone())));
        Ok(())
    }
}

struct Supervisor(mpsc::Sender<Asked>);

impl Supervisor {
    async fn ask(&self, request: Request) -> Result<String, capnp::Error> {
        let (answer, back) = oneshot::channel();
        self.0
            .send(Asked { request, answer })
            .await
            .map_err(|_| failed("the mount is stopping"))?;
        back.await
            .map_err(|_| failed("the mount stopped before it answered"))?
            .map_err(failed)
    }
}

impl supervisor::Server for Supervisor {
    async fn swap(
        self: capnp::capability::Rc<Self>,
        params: supervisor::SwapParams,
        mut results: supervisor::SwapResults,
    ) -> Result<(), capnp::Error> {
        let p = params.get()?;
        let binary = p.get_binary()?.to_str().map_err(failed)?;
        let binary = (!binary.is_empty()).then(|| PathBuf::from(binary));
        let listener = p.get_progress()?;
        let (tx, mut rx) = mpsc::unbounded_channel::<(u64, u64)>();
        // Progress in order, each call awaited, while the swap runs.
        let forward = tokio::task::spawn_local(async move {
            while let Some((done, total)) = rx.recv().await {
                let mut req = listener.progress_request();
                req.get().set_done(done);
                req.get().set_total(total);
                if req.send().promise.await.is_err() {
                    break;
                }
            }
        });
        let answer = self.ask(Request::Swap(binary, tx)).await;
        let _ = forward.await;
        results.get().set_message(&answer?);
        Ok(())
    }

    async fn shim_swap(
        self: capnp::capability::Rc<Self>,
        params: supervisor::ShimSwapParams,
        mut results: supervisor::ShimSwapResults,
    ) -> Result<(), capnp::Error> {
        let binary = params.get()?.get_binary()?.to_str().map_err(failed)?;
        let binary = (!binary.is_empty()).then(|| PathBuf::from(binary));
        let answer = self.ask(Request::ShimSwap(binary)).await?;
        results.get().set_message(&answer);
        Ok(())
    }

    async fn reload(
        self: capnp::capability::Rc<Self>,
        _: supervisor::ReloadParams,
        mut results: supervisor::ReloadResults,
    ) -> Result<(), capnp::Error> {
        let summary = self.ask(Request::Reload).await?;
        results.get().set_summary(&summary);
        Ok(())
    }

    async fn shutdown(
        self: capnp::capability::Rc<Self>,
        params: supervisor::ShutdownParams,
        _: supervisor::ShutdownResults,
    ) -> Result<(), capnp::Error> {
        let ms = params.get()?.get_drain_ms();
        let drain = (ms > 0).then(|| Duration::from_millis(u64::from(ms)));
        self.ask(Request::Shutdown(drain)).await.map(drop)
    }
}

/// Runs `f` on the `Supervisor` of `state_dir`'s mount.
fn with_supervisor<T, Fut>(
    state_dir: &Path,
    timeout: Duration,
    f: impl FnOnce(supervisor::Client) -> Fut,
) -> Result<T>
where
    Fut: std::future::Future<Output = Result<T>>,
{
    let path = supervisor_socket(state_dir);
    with_gate(
        &path,
        "musicfs mount",
        Some(timeout),
        |gate: supervisor_gate::Client| async move {
            let mut hello = gate.hello_request();
            our_peer(hello.get().init_client());
            let answer = hello.send().promise.await.map_err(remote)?;
            f(answer.get()?.get_supervisor()?).await
        },
    )
    .with_context(|| format!("the musicfs mount of {}", state_dir.display()))
}

/// The words of a refusal, without the RPC's wrapping.
fn refusal(e: capnp::Error) -> anyhow::Error {
    anyhow!("{}", e.extra.trim_start_matches("remote exception: "))
}

/// `musicfs shutdown` under `musicfs mount`: asks the supervisor to stop in
/// order, then waits (bounded) until it is gone.
pub fn request_shutdown(state_dir: &Path, timeout: Duration) -> Result<()> {
    with_supervisor(state_dir, Duration::from_secs(10), |s| async move {
        let mut req = s.shutdown_request();
        req.get().set_drain_ms(
            u32::try_from(timeout.as_millis())
                .unwrap_or(u32::MAX)
                .max(1),
        );
        req.send().promise.await.map_err(refusal)?;
        Ok(())
    })?;
    // The supervisor removes its socket when it is done.
    let path = supervisor_socket(state_dir);
    let limit = timeout + STOP_TIMEOUT * 2;
    let deadline = Instant::now() + limit;
    while path.exists() {
        if Instant::now() > deadline {
            bail!("the mount did not stop within {} s", limit.as_secs());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// `musicfs reload` under `musicfs mount`: the supervisor reloads its
/// configuration and hands it to the engine. Returns the summary.
pub fn request_reload(state_dir: &Path) -> Result<String> {
    with_supervisor(state_dir, Duration::from_secs(90), |s| async move {
        let answer = s.reload_request().send().promise.await.map_err(refusal)?;
        Ok(answer.get()?.get_summary()?.to_string()?)
    })
}

/// `musicfs engine swap`: asks the supervisor of `state_dir` to swap
/// engines; `progress(step, of)` as it goes.
pub fn request_swap(
    state_dir: &Path,
    binary: Option<&Path>,
    mut progress: impl FnMut(u64, u64),
) -> Result<String> {
    let binary = binary.map(|b| b.display().to_string()).unwrap_or_default();
    let limit = SWAP_HEALTH_TIMEOUT * 2 + Duration::from_secs(30);
    with_supervisor(state_dir, limit, |s| async move {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut req = s.swap_request();
        req.get().set_binary(binary.as_str());
        req.get()
            .set_progress(capnp_rpc::new_client(ProgressForwarder(tx)));
        let answer = req.send().promise;
        tokio::pin!(answer);
        let answer = loop {
            tokio::select! {
                Some((done, total)) = rx.recv() => progress(done, total),
                a = &mut answer => break a.map_err(refusal)?,
            }
        };
        while let Ok((done, total)) = rx.try_recv() {
            progress(done, total);
        }
        Ok(answer.get()?.get_message()?.to_string()?)
    })
}

/// `musicfs shim swap`: asks the supervisor of `state_dir` to replace its
/// shim; the answer says how long the switch took.
pub fn request_shim_swap(state_dir: &Path, binary: Option<&Path>) -> Result<String> {
    let binary = binary.map(|b| b.display().to_string()).unwrap_or_default();
    with_supervisor(state_dir, Duration::from_secs(90), |s| async move {
        let mut req = s.shim_swap_request();
        req.get().set_binary(binary.as_str());
        let answer = req.send().promise.await.map_err(refusal)?;
        Ok(answer.get()?.get_message()?.to_string()?)
    })
}

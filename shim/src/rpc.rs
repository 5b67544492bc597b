//! The shim's side of the engine connection.
//!
//! capnp-rpc is `!Send`, so one dedicated thread owns the connection: a
//! current-thread runtime with a `LocalSet`. FUSE threads hand it jobs through
//! a bounded channel and return at once; each job runs as a local task, makes
//! its round trip and sends the FUSE reply from this thread.
//!
//! The connection is kept by `Link`: it connects (and reconnects after the
//! engine goes away), checks the protocol version, and hands out the current
//! `DataPlane` client. A call that finds no engine waits for one until the
//! request's deadline; a call that loses its engine mid-way is sent again to
//! the next one (every data-plane call is idempotent).

use std::cell::RefCell;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::rc::Rc;
use std::time::Duration;

use capnp_rpc::{RpcSystem, rpc_twoparty_capnp, twoparty};
use futures::AsyncReadExt;
use musicfs_schema::{data_plane, engine};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::compat::TokioAsyncReadCompatExt;
use tracing::{debug, error, info, warn};

/// A unit of work for the RPC thread.
pub type Job = Box<dyn FnOnce(Rc<Link>) -> Pin<Box<dyn Future<Output = ()>>> + Send>;

/// Jobs queued before FUSE threads block (back-pressure, not unbounded memory).
pub const JOB_QUEUE_CAPACITY: usize = 16 * 1024;
/// Pause between connection attempts while no engine answers.
const RECONNECT_PAUSE: Duration = Duration::from_millis(50);

/// Why a call failed, as the FUSE caller will see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallError {
    /// No engine answered before the deadline.
    Timeout,
    /// The engine refused our protocol version.
    Incompatible,
    /// The engine answered with an RPC exception (a bug, not a FUSE errno).
    Failed,
}

impl CallError {
    pub fn errno(self) -> fuser::Errno {
        match self {
            CallError::Timeout => fuser::Errno::ETIMEDOUT,
            CallError::Incompatible => fuser::Errno::from_i32(libc::EPROTO),
            CallError::Failed => fuser::Errno::EIO,
        }
    }
}

#[derive(Clone)]
enum LinkState {
    Connecting,
    Ready(data_plane::Client, u64),
    Incompatible(String),
}

/// The connection to the engine, owned by the RPC thread.
pub struct Link {
    state: watch::Sender<LinkState>,
    request_timeout: Duration,
    generation: RefCell<u64>,
}

impl Link {
    /// The current engine, waiting for one until `deadline`.
    async fn client(&self, deadline: Instant) -> Result<(data_plane::Client, u64), CallError> {
        let mut rx = self.state.subscribe();
        loop {
            match &*rx.borrow_and_update() {
                LinkState::Ready(c, generation) => return Ok((c.clone(), *generation)),
                LinkState::Incompatible(_) => return Err(CallError::Incompatible),
                LinkState::Connecting => {}
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return Err(CallError::Timeout),
            }
        }
    }

    fn mark_broken(&self, generation: u64) {
        self.state.send_if_modified(|s| match s {
            LinkState::Ready(_, g) if *g == generation => {
                *s = LinkState::Connecting;
                true
            }
            _ => false,
        });
    }

    /// Runs `f` against the engine until it answers, the deadline passes, or
    /// it fails for a reason other than a lost connection.
    pub async fn call<T, F, Fut>(&self, what: &'static str, f: F) -> Result<T, CallError>
    where
        F: Fn(data_plane::Client) -> Fut,
        Fut: Future<Output = Result<T, capnp::Error>>,
    {
        let deadline = Instant::now() + self.request_timeout;
        loop {
            let (client, generation) = match self.client(deadline).await {
                Ok(c) => c,
                Err(e) => {
                    warn!(
                        op = what,
                        "no engine answered within {} ms; failing the request",
                        self.request_timeout.as_millis()
                    );
                    return Err(e);
                }
            };
            match tokio::time::timeout_at(deadline, f(client)).await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) if e.kind == capnp::ErrorKind::Disconnected => {
                    debug!(
                        op = what,
                        "engine connection lost mid-call; retrying on the next one"
                    );
                    self.mark_broken(generation);
                }
                Ok(Err(e)) => {
                    error!(op = what, "engine call failed: {e}");
                    return Err(CallError::Failed);
                }
                Err(_) => {
                    warn!(
                        op = what,
                        "engine did not answer within {} ms; failing the request",
                        self.request_timeout.as_millis()
                    );
                    return Err(CallError::Timeout);
                }
            }
        }
    }
}

/// Connects, says hello, and keeps reconnecting for as long as the thread lives.
async fn connection_loop(link: Rc<Link>, socket: PathBuf) {
    let mut logged_waiting = false;
    loop {
        match connect_once(&socket).await {
            Ok((client, rpc_done)) => {
                let generation = {
                    let mut g = link.generation.borrow_mut();
                    *g += 1;
                    *g
                };
                info!(generation, "connected to the engine");
                logged_waiting = false;
                link.state
                    .send_replace(LinkState::Ready(client, generation));
                // Wait until this connection ends.
                let _ = rpc_done.await;
                warn!("engine connection lost; reconnecting");
                link.mark_broken(generation);
            }
            Err(ConnectError::Incompatible(msg)) => {
                error!("{msg}");
                link.state.send_replace(LinkState::Incompatible(msg));
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(ConnectError::Unavailable(e)) => {
                if !logged_waiting {
                    info!("waiting for the engine at {}: {e}", socket.display());
                    logged_waiting = true;
                }
                tokio::time::sleep(RECONNECT_PAUSE).await;
            }
        }
    }
}

enum ConnectError {
    Unavailable(String),
    Incompatible(String),
}

async fn connect_once(
    socket: &PathBuf,
) -> Result<(data_plane::Client, tokio::sync::oneshot::Receiver<()>), ConnectError> {
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|e| ConnectError::Unavailable(e.to_string()))?;
    let (reader, writer) = stream.compat().split();
    let network = twoparty::VatNetwork::new(
        futures::io::BufReader::new(reader),
        futures::io::BufWriter::new(writer),
        rpc_twoparty_capnp::Side::Client,
        Default::default(),
    );
    let mut rpc = RpcSystem::new(Box::new(network), None);
    let bootstrap: engine::Client = rpc.bootstrap(rpc_twoparty_capnp::Side::Server);
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    tokio::task::spawn_local(async move {
        if let Err(e) = rpc.await {
            debug!("rpc system ended: {e}");
        }
        let _ = done_tx.send(());
    });
    let mut req = bootstrap.hello_request();
    req.get()
        .set_client_protocol(musicfs_schema::PROTOCOL_VERSION);
    req.get()
        .set_client_name(concat!("musicfs-shim ", env!("CARGO_PKG_VERSION")));
    let hello = tokio::time::timeout(Duration::from_secs(10), req.send().promise)
        .await
        .map_err(|_| ConnectError::Unavailable("hello timed out".into()))?
        .map_err(|e| ConnectError::Unavailable(e.to_string()))?;
    let r = hello
        .get()
        .map_err(|e| ConnectError::Unavailable(e.to_string()))?;
    let server = (r.get_min_server_protocol(), r.get_server_protocol());
    let ours = (
        musicfs_schema::MIN_PROTOCOL_VERSION,
        musicfs_schema::PROTOCOL_VERSION,
    );
    if r.get_errno() != 0 || !musicfs_schema::compatible(ours, server) {
        let msg = r
            .get_message()
            .ok()
            .and_then(|m| m.to_str().ok())
            .filter(|m| !m.is_empty())
            .map(str::to_string)
            .unwrap_or_else(|| {
                format!(
                    "engine speaks protocol {}..={}, this shim {}..={}: incompatible",
                    server.0, server.1, ours.0, ours.1
                )
            });
        return Err(ConnectError::Incompatible(msg));
    }
    let fs = r
        .get_fs()
        .map_err(|e| ConnectError::Unavailable(e.to_string()))?;
    Ok((fs, done_rx))
}

/// Reports the outcome of the first connection: Ok once an engine serves,
/// or the reason the engine refused this shim.
pub type FirstConnection = std::sync::mpsc::Receiver<Result<(), String>>;

/// Starts the RPC thread. Returns the job sender and a receiver that reports
/// the first connection attempt's outcome (Ok once an engine is ready).
pub fn start(
    socket: PathBuf,
    request_timeout: Duration,
) -> std::io::Result<(mpsc::Sender<Job>, FirstConnection)> {
    let (tx, mut rx) = mpsc::channel::<Job>(JOB_QUEUE_CAPACITY);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("musicfs-rpc".into())
        .spawn(move || {
            let local = tokio::task::LocalSet::new();
            local.block_on(&rt, async move {
                let (state, _) = watch::channel(LinkState::Connecting);
                let link = Rc::new(Link {
                    state,
                    request_timeout,
                    generation: RefCell::new(0),
                });
                // Report the first outcome to main.
                let mut watch_rx = link.state.subscribe();
                tokio::task::spawn_local(async move {
                    loop {
                        let outcome = match &*watch_rx.borrow_and_update() {
                            LinkState::Ready(..) => Some(Ok(())),
                            LinkState::Incompatible(m) => Some(Err(m.clone())),
                            LinkState::Connecting => None,
                        };
                        if let Some(o) = outcome {
                            let _ = ready_tx.send(o);
                            return;
                        }
                        if watch_rx.changed().await.is_err() {
                            return;
                        }
                    }
                });
                tokio::task::spawn_local(connection_loop(link.clone(), socket));
                while let Some(job) = rx.recv().await {
                    tokio::task::spawn_local(job(link.clone()));
                }
            });
        })?;
    Ok((tx, ready_rx))
}

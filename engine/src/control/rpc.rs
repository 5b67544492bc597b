//! What both capnp-rpc sockets share (`control.sock` here, and the
//! supervisor's): the protocol check at a gate, a connection's RPC system,
//! and a progress listener that forwards to a channel.

use capnp_rpc::{RpcSystem, rpc_twoparty_capnp, twoparty};
use futures::AsyncReadExt;
use musicfs_schema::{peer, progress_listener};
use tokio_util::compat::TokioAsyncReadCompatExt;

use crate::control::server::control_protocol_range;

/// Checks a client's `hello` against this side's protocol range; `us`
/// names this side in the refusal ("this engine (0.1.0)").
pub fn check_peer(client: peer::Reader<'_>, us: &str) -> Result<(), capnp::Error> {
    let theirs = (client.get_min_protocol(), client.get_max_protocol());
    let name = client.get_name()?.to_str().unwrap_or("?").to_string();
    let ours = control_protocol_range();
    if musicfs_schema::compatible(ours, theirs) {
        return Ok(());
    }
    let why = format!(
        "{name} speaks control protocol {}..={}, {us} {}..={}: no common version; use the musicfs binary of the same release as the running one",
        theirs.0, theirs.1, ours.0, ours.1
    );
    tracing::warn!("{why}");
    Err(capnp::Error::failed(why))
}

/// Fills in this server's side of a `hello` answer.
pub fn server_peer(mut b: peer::Builder<'_>, name: &str) {
    let ours = control_protocol_range();
    b.set_min_protocol(ours.0);
    b.set_max_protocol(ours.1);
    b.set_name(name);
}

/// The server side of one connection, with `bootstrap` as its capability
/// (spawn it on the `LocalSet`).
pub fn server_connection(
    stream: tokio::net::UnixStream,
    bootstrap: capnp::capability::Client,
) -> RpcSystem<rpc_twoparty_capnp::Side> {
    let (reader, writer) = stream.compat().split();
    let network = twoparty::VatNetwork::new(
        futures::io::BufReader::new(reader),
        futures::io::BufWriter::new(writer),
        rpc_twoparty_capnp::Side::Server,
        Default::default(),
    );
    RpcSystem::new(Box::new(network), Some(bootstrap))
}

/// A client's progress listener: each report goes to the channel.
pub struct ProgressForwarder(pub tokio::sync::mpsc::UnboundedSender<(u64, u64)>);

impl progress_listener::Server for ProgressForwarder {
    async fn progress(
        self: capnp::capability::Rc<Self>,
        params: progress_listener::ProgressParams,
        _: progress_listener::ProgressResults,
    ) -> Result<(), capnp::Error> {
        let p = params.get()?;
        let _ = self.0.send((p.get_done(), p.get_total()));
        Ok(())
    }
}

//! A minimal synchronous data-plane client: the supervisor's heartbeat.

use std::io::{BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use musicfs_schema::{request, response};

fn send(stream: &mut UnixStream, build: impl FnOnce(request::Builder<'_>)) -> Result<()> {
    let mut msg = capnp::message::Builder::new_default();
    build(msg.init_root::<request::Builder<'_>>());
    stream.write_all(&musicfs_schema::to_frame(&msg))?;
    Ok(())
}

/// Why a ping failed.
#[derive(Debug)]
pub enum PingError {
    /// Nobody listens on the socket (starting, or gone).
    NotListening(std::io::Error),
    /// Connected, but no (valid) answer in time: the engine is hung or broken.
    NoAnswer(anyhow::Error),
}

impl std::fmt::Display for PingError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PingError::NotListening(e) => write!(f, "not listening: {e}"),
            PingError::NoAnswer(e) => write!(f, "no answer: {e:#}"),
        }
    }
}

/// Connects, says hello and pings; every step within `timeout`. Returns
/// the engine's uptime in milliseconds.
pub fn ping(socket: &Path, timeout: Duration) -> Result<u64, PingError> {
    let stream = UnixStream::connect(socket).map_err(PingError::NotListening)?;
    talk(stream, timeout).map_err(PingError::NoAnswer)
}

fn talk(mut stream: UnixStream, timeout: Duration) -> Result<u64> {
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    send(&mut stream, |mut r| {
        r.set_id(1);
        let mut h = r.init_hello();
        h.set_min_protocol(musicfs_schema::MIN_PROTOCOL_VERSION);
        h.set_max_protocol(musicfs_schema::PROTOCOL_VERSION);
        h.set_peer_name("musicfs supervisor");
    })?;
    send(&mut stream, |mut r| {
        r.set_id(2);
        r.set_ping(());
    })?;
    let mut reader = BufReader::new(stream);
    loop {
        let msg = musicfs_schema::read_frame(&mut reader)
            .context("no answer")?
            .context("the engine closed the connection")?;
        let resp = msg.get_root::<response::Reader<'_>>()?;
        if resp.get_errno() != 0 {
            bail!("engine answered errno {}", resp.get_errno());
        }
        if let Ok(response::Pong(p)) = resp.which() {
            return Ok(p.get_uptime_ms());
        }
    }
}

//! The command line's side of the supervisor socket.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::config::state::supervisor_socket;
use crate::supervisor::children::STOP_TIMEOUT;
use crate::supervisor::requests::SWAP_HEALTH_TIMEOUT;

/// `musicfs shutdown` under `musicfs mount`: asks the supervisor to stop in
/// order, then waits (bounded) until it is gone.
pub fn request_shutdown(state_dir: &Path, timeout: Duration) -> Result<()> {
    use std::io::{BufRead, Write};
    let path = supervisor_socket(state_dir);
    let mut stream = std::os::unix::net::UnixStream::connect(&path)
        .with_context(|| format!("no running `musicfs mount` for {}", state_dir.display()))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(format!("shutdown {}\n", timeout.as_millis()).as_bytes())?;
    let mut answer = String::new();
    std::io::BufReader::new(stream).read_line(&mut answer)?;
    if !answer.starts_with("ok") {
        bail!("{}", answer.trim().trim_start_matches("error "));
    }
    // The supervisor removes its socket when it is done.
    let deadline = Instant::now() + timeout + STOP_TIMEOUT * 2;
    while path.exists() {
        if Instant::now() > deadline {
            bail!(
                "the mount did not stop within {} s",
                (timeout + STOP_TIMEOUT * 2).as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// `musicfs reload` under `musicfs mount`: the supervisor reloads its
/// configuration and hands it to the engine. Returns the summary.
pub fn request_reload(state_dir: &Path) -> Result<String> {
    use std::io::{BufRead, Write};
    let path = supervisor_socket(state_dir);
    let mut stream = std::os::unix::net::UnixStream::connect(&path)
        .with_context(|| format!("no running `musicfs mount` for {}", state_dir.display()))?;
    stream.set_read_timeout(Some(Duration::from_secs(90)))?;
    stream.write_all(b"reload\n")?;
    let mut answer = String::new();
    std::io::BufReader::new(stream)
        .read_line(&mut answer)
        .context("no answer from the supervisor")?;
    match answer.trim().strip_prefix("ok ") {
        Some(msg) => Ok(msg.to_string()),
        None => bail!("{}", answer.trim().trim_start_matches("error ")),
    }
}

/// `musicfs engine swap`: asks the supervisor of `state_dir` to swap engines.
pub fn request_swap(state_dir: &Path, binary: Option<&Path>) -> Result<String> {
    use std::io::{BufRead, Write};
    let path = supervisor_socket(state_dir);
    let mut stream = std::os::unix::net::UnixStream::connect(&path).with_context(|| {
        format!(
            "no running `musicfs mount` for state directory {} ({} does not answer)",
            state_dir.display(),
            path.display()
        )
    })?;
    stream.set_read_timeout(Some(SWAP_HEALTH_TIMEOUT * 2 + Duration::from_secs(30)))?;
    let line = match binary {
        Some(b) => format!("swap {}\n", b.display()),
        None => "swap\n".to_string(),
    };
    stream.write_all(line.as_bytes())?;
    let mut answer = String::new();
    std::io::BufReader::new(stream)
        .read_line(&mut answer)
        .context("no answer from the supervisor")?;
    match answer.trim().strip_prefix("ok ") {
        Some(msg) => Ok(msg.to_string()),
        None => bail!("{}", answer.trim().trim_start_matches("error ")),
    }
}

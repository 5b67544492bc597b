//! `musicfs events [--follow] [--json]`.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use crate::control::{EngineRefused, NotRunning, stream_events};
use crate::events::Event;

/// `musicfs events [--follow] [--json]`. Following survives an engine
/// restart (sequence numbers start again with the new engine).
pub fn print_events(state_dir: &Path, follow: bool, json: bool) -> Result<()> {
    use std::io::Write as _;
    let print = |e: Event| -> Result<()> {
        let mut out = std::io::stdout().lock();
        if json {
            writeln!(out, "{}", serde_json::to_string(&e)?)?;
        } else {
            let secs = i64::try_from(e.time_ms / 1000).unwrap_or(0);
            let when = chrono_like(secs, e.time_ms % 1000);
            writeln!(out, "{when}  {:<8} {}", e.kind, e.message)?;
        }
        out.flush()?;
        Ok(())
    };
    if !follow {
        return stream_events(state_dir, 0, false, print);
    }
    let mut after = 0;
    let mut first = true;
    // Since when no engine has been followed (None: following one).
    let mut lost: Option<Instant> = None;
    loop {
        let mut streaming = false;
        let outcome = stream_events(state_dir, after, true, |e| {
            if !streaming && lost.is_some() {
                eprintln!("musicfs: the engine restarted; following the new one");
            }
            streaming = true;
            after = e.seq;
            print(e)
        });
        if streaming {
            lost = None;
        }
        if let Err(e) = &outcome {
            // Nothing runs: say so at once (later losses are restarts). No
            // separate probe connection: it would hold a control slot.
            if first && e.downcast_ref::<NotRunning>().is_some() {
                return outcome;
            }
            // Our stdout closed (`| head`): done.
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            {
                return Ok(());
            }
            // Refused (too many followers...): say so, do not retry. A
            // stopping engine is waited out.
            if let Some(r) = e.downcast_ref::<EngineRefused>()
                && r.0 != libc::ESHUTDOWN
            {
                return outcome;
            }
        }
        // The engine went away or is stopping (restart, swap): wait for the
        // next one, bounded, and follow it from its first event.
        let since = *lost.get_or_insert_with(Instant::now);
        if since.elapsed() > Duration::from_secs(60) {
            bail!("the engine stopped and no engine came back within 60 s");
        }
        first = false;
        after = 0;
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `YYYY-MM-DD HH:MM:SS.mmm` (UTC) without a date crate.
pub(crate) fn chrono_like(secs: i64, ms: u64) -> String {
    crate::sys::time::utc_string(secs, ms)
}

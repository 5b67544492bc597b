//! The engine's event log: what happened, in order, for `musicfs events
//! [--follow]`. A bounded ring in memory (the last `CAPACITY` events of this
//! engine process); sequence numbers start at 1 with each engine.

use std::collections::VecDeque;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

/// Events kept for late readers.
const CAPACITY: usize = 1000;

#[derive(Clone, Debug, serde::Serialize)]
pub struct Event {
    pub seq: u64,
    /// Milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// A stable word for scripts: `started`, `sync`, `change`, `origin`,
    /// `reload`, `task`, `shim`, `catalog` (writes failing, working again),
    /// `state` (the state directory's write probe), `stopping`, `stopped`.
    pub kind: String,
    pub message: String,
}

struct Ring {
    next_seq: u64,
    events: VecDeque<Event>,
}

static RING: Mutex<Ring> = Mutex::new(Ring {
    next_seq: 1,
    events: VecDeque::new(),
});
static NEW: Condvar = Condvar::new();

/// Records an event (and wakes followers).
pub fn emit(kind: &str, message: impl Into<String>) {
    let time_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let mut ring = RING.lock();
    let seq = ring.next_seq;
    ring.next_seq += 1;
    if ring.events.len() >= CAPACITY {
        ring.events.pop_front();
    }
    ring.events.push_back(Event {
        seq,
        time_ms,
        kind: kind.to_string(),
        message: message.into(),
    });
    drop(ring);
    NEW.notify_all();
}

/// Events with a sequence number above `after`, oldest first.
pub fn since(after: u64) -> Vec<Event> {
    let ring = RING.lock();
    ring.events
        .iter()
        .filter(|e| e.seq > after)
        .cloned()
        .collect()
}

/// `since(after)`, waiting up to `timeout` for one to arrive when there is
/// none yet.
pub fn wait_since(after: u64, timeout: Duration) -> Vec<Event> {
    let mut ring = RING.lock();
    if ring.next_seq <= after + 1 {
        let _ = NEW.wait_for(&mut ring, timeout);
    }
    ring.events
        .iter()
        .filter(|e| e.seq > after)
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_keeps_order_and_wakes_followers() {
        let before = since(0).last().map_or(0, |e| e.seq);
        let waiter = std::thread::spawn(move || wait_since(before, Duration::from_secs(5)));
        std::thread::sleep(Duration::from_millis(50));
        emit("test", "one");
        emit("test", "two");
        let got = waiter.join().unwrap();
        // Woken by an event (other tests in this process emit too).
        assert!(!got.is_empty());
        let all: Vec<String> = since(before)
            .into_iter()
            .filter(|e| e.kind == "test")
            .map(|e| e.message)
            .collect();
        assert_eq!(all, ["one", "two"]);
        for i in 0..CAPACITY + 10 {
            emit("test", format!("{i}"));
        }
        assert_eq!(since(0).len(), CAPACITY);
    }
}

//! Answers that are sent once, by whoever comes first: the job that did the
//! work, or the deadline sweeper that answers EIO when an origin takes too
//! long (a hung share). A job stuck in a syscall keeps its thread, never
//! the caller.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tracing::warn;

use crate::serve::shared::InFlight;
use crate::serve::wire::{Writer, error_frame, send};

/// How often deadlines are looked at.
const SWEEP_EVERY: Duration = Duration::from_millis(50);

/// The answer to one request.
pub(super) struct Reply {
    pub(super) id: u64,
    writer: Writer,
    done: AtomicBool,
    op: Mutex<Option<InFlight>>,
}

impl Reply {
    pub(super) fn new(id: u64, writer: Writer, op: InFlight) -> Arc<Reply> {
        Arc::new(Reply {
            id,
            writer,
            done: AtomicBool::new(false),
            op: Mutex::new(Some(op)),
        })
    }

    /// Sends `frame` unless an answer went already; true if this one went.
    pub(super) fn send(&self, frame: &[u8]) -> bool {
        if self.done.swap(true, Ordering::AcqRel) {
            return false;
        }
        send(&self.writer, frame);
        self.op.lock().take();
        true
    }

    pub(super) fn answered(&self) -> bool {
        self.done.load(Ordering::Acquire)
    }
}

/// Requests with a deadline.
#[derive(Default)]
pub(super) struct Deadlines {
    pending: Mutex<Vec<(Instant, Weak<Reply>)>>,
}

impl Deadlines {
    /// Answers `reply` with EIO at `now + timeout` unless it is answered
    /// before.
    pub(super) fn watch(&self, reply: &Arc<Reply>, timeout: Duration) {
        self.pending
            .lock()
            .push((Instant::now() + timeout, Arc::downgrade(reply)));
    }

    /// Answers what is overdue; returns how many.
    pub(super) fn sweep(&self) -> usize {
        let now = Instant::now();
        let mut overdue = Vec::new();
        self.pending.lock().retain(|(at, r)| {
            let Some(reply) = r.upgrade() else {
                return false;
            };
            if reply.answered() {
                return false;
            }
            if *at <= now {
                overdue.push(reply);
                return false;
            }
            true
        });
        let mut n = 0;
        for reply in overdue {
            if reply.send(&error_frame(reply.id, libc::EIO)) {
                n += 1;
            }
        }
        if n > 0 {
            warn!(
                requests = n,
                "the origin did not answer within cache_fetch_timeout_ms: answered EIO (the origin's threads keep waiting for it)"
            );
        }
        n
    }

    /// Sweeps until `stop` says so.
    pub(super) fn run(&self, stop: &AtomicBool) {
        while !stop.load(Ordering::Acquire) {
            std::thread::sleep(SWEEP_EVERY);
            self.sweep();
        }
    }
}

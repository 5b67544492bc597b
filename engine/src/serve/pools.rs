//! Origin I/O on a small pool per origin: a hung origin (a NAS that stops
//! answering) holds only its own threads and queue, never another origin's
//! reads or the metadata. A full queue, or an origin whose every thread has
//! been stuck past `STUCK_AFTER`, refuses new jobs at once (EIO); a syscall
//! that timed out is never retried, and the origin answers again as soon as
//! one of its jobs finishes.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, TrySendError};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tracing::{info, warn};

/// Threads per origin that open and read its files.
const THREADS_PER_ORIGIN: usize = 4;
/// Jobs queued per origin before new ones are refused.
const QUEUE_PER_ORIGIN: usize = 256;
/// A job running this long means its origin does not answer.
const STUCK_AFTER: Duration = Duration::from_secs(5);

/// What a job is told: run, or answer that its origin cannot take it.
pub(super) enum Turn {
    Run,
    Refused,
}

pub(super) type IoJob = Box<dyn FnOnce(Turn) + Send>;

struct Pool {
    origin: u32,
    tx: mpsc::SyncSender<IoJob>,
    /// When each worker's current job started (None: idle).
    running: Mutex<Vec<Option<Instant>>>,
    /// Logged as not answering (until a job finishes).
    stuck: AtomicBool,
    refused: AtomicUsize,
}

impl Pool {
    fn start(origin: u32) -> std::io::Result<Arc<Pool>> {
        let (tx, rx) = mpsc::sync_channel::<IoJob>(QUEUE_PER_ORIGIN);
        let pool = Arc::new(Pool {
            origin,
            tx,
            running: Mutex::new(vec![None; THREADS_PER_ORIGIN]),
            stuck: AtomicBool::new(false),
            refused: AtomicUsize::new(0),
        });
        let rx = Arc::new(Mutex::new(rx));
        for worker in 0..THREADS_PER_ORIGIN {
            let (rx, pool) = (rx.clone(), Arc::downgrade(&pool));
            std::thread::Builder::new()
                .name(format!("musicfs-io-{origin}-{worker}"))
                .spawn(move || {
                    loop {
                        let job = rx.lock().recv();
                        let Ok(job) = job else { return };
                        let Some(p) = pool.upgrade() else { return };
                        p.running.lock()[worker] = Some(Instant::now());
                        // A panicking job must not take the pool down (its
                        // request is answered EIO by the job's own guard).
                        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(Turn::Run)))
                            .is_err()
                        {
                            warn!(origin, "an origin I/O job panicked");
                        }
                        p.running.lock()[worker] = None;
                        if p.stuck.swap(false, Ordering::AcqRel) {
                            info!(
                                origin,
                                refused = p.refused.swap(0, Ordering::Relaxed),
                                "origin answers again"
                            );
                        }
                    }
                })?;
        }
        Ok(pool)
    }

    /// Whether every worker has been on one job for longer than `STUCK_AFTER`.
    fn all_stuck(&self) -> bool {
        let now = Instant::now();
        self.running
            .lock()
            .iter()
            .all(|r| r.is_some_and(|t| now.duration_since(t) > STUCK_AFTER))
    }

    fn submit(&self, job: IoJob) {
        if self.all_stuck() {
            if !self.stuck.swap(true, Ordering::AcqRel) {
                warn!(
                    origin = self.origin,
                    "origin does not answer (every I/O thread stuck for over {} s): its opens and reads fail with EIO until it answers again; other origins are not affected",
                    STUCK_AFTER.as_secs()
                );
            }
            self.refused.fetch_add(1, Ordering::Relaxed);
            return job(Turn::Refused);
        }
        match self.tx.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(job)) => {
                self.refused.fetch_add(1, Ordering::Relaxed);
                warn!(
                    origin = self.origin,
                    "{QUEUE_PER_ORIGIN} I/O jobs queued for this origin; refusing this one (EIO)"
                );
                job(Turn::Refused)
            }
            Err(TrySendError::Disconnected(job)) => job(Turn::Refused),
        }
    }
}

/// The pools, one per origin, started on first use.
#[derive(Default)]
pub(super) struct OriginPools {
    pools: Mutex<HashMap<u32, Arc<Pool>>>,
}

impl OriginPools {
    /// Whether `origin` answers: no thread of its pool has been on one job
    /// past `STUCK_AFTER`, and its queue is short (background work such as
    /// prefetch never queues behind a busy or hung origin).
    pub(super) fn answering(&self, origin: u32) -> bool {
        let Some(pool) = self.pools.lock().get(&origin).cloned() else {
            return true;
        };
        let now = Instant::now();
        let stuck = pool
            .running
            .lock()
            .iter()
            .any(|r| r.is_some_and(|t| now.duration_since(t) > STUCK_AFTER));
        !stuck && !pool.stuck.load(Ordering::Acquire)
    }

    /// Runs `job` on `origin`'s pool, or tells it `Refused` at once.
    pub(super) fn submit(&self, origin: u32, job: IoJob) {
        let pool = {
            let mut pools = self.pools.lock();
            match pools.get(&origin) {
                Some(p) => p.clone(),
                None => match Pool::start(origin) {
                    Ok(p) => {
                        pools.insert(origin, p.clone());
                        p
                    }
                    Err(e) => {
                        drop(pools);
                        warn!(origin, "cannot start I/O threads: {e}");
                        return job(Turn::Refused);
                    }
                },
            }
        };
        pool.submit(job);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::channel;

    /// A hung origin fills its own pool and queue, then is refused at
    /// once; another origin's jobs run meanwhile.
    #[test]
    fn a_hung_origin_holds_only_its_own_pool() {
        let pools = OriginPools::default();
        let (release_tx, release_rx) = channel::<()>();
        let release_rx = Arc::new(Mutex::new(release_rx));
        let (done_tx, done_rx) = channel::<(u32, bool)>();
        // Origin 1 hangs: every job waits for a release.
        for _ in 0..THREADS_PER_ORIGIN + QUEUE_PER_ORIGIN + 3 {
            let (rx, done) = (release_rx.clone(), done_tx.clone());
            pools.submit(
                1,
                Box::new(move |turn| match turn {
                    Turn::Run => {
                        let _ = rx.lock().recv_timeout(Duration::from_secs(30));
                        let _ = done.send((1, true));
                    }
                    Turn::Refused => {
                        let _ = done.send((1, false));
                    }
                }),
            );
        }
        // Origin 2 is served meanwhile; the jobs past origin 1's queue
        // were refused at once (how many depends on how many its workers
        // had taken off the queue).
        let done = done_tx.clone();
        pools.submit(
            2,
            Box::new(move |turn| {
                let _ = done.send((2, matches!(turn, Turn::Run)));
            }),
        );
        let mut refused = 0;
        loop {
            match done_rx.recv_timeout(Duration::from_secs(5)).unwrap() {
                (1, false) => refused += 1,
                (2, ran) => {
                    assert!(ran, "origin 2 was refused");
                    break;
                }
                other => panic!("a hung job finished: {other:?}"),
            }
        }
        assert!(
            (3..=3 + THREADS_PER_ORIGIN).contains(&refused),
            "{refused} refused"
        );
        for _ in 0..THREADS_PER_ORIGIN + QUEUE_PER_ORIGIN {
            let _ = release_tx.send(());
        }
    }
}

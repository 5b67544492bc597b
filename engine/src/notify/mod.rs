//! The change feed for media servers: inotify does not cross FUSE or NFS,
//! so MusicFS announces what each commit changed in the tree — generic
//! webhooks (a JSON batch per commit) and the built-in Jellyfin, Plex and
//! Subsonic (Navidrome) triggers (`requests`).
//!
//! Each target has its own thread, its own bounded queue of batches and
//! its own HTTP client on a current-thread tokio runtime. `Notifier::send`
//! only queues (a full queue drops its oldest batch, counted), so a dead or
//! slow target never holds back the syncer, the data plane or another
//! target. A target's thread merges what is queued into one delivery, sends
//! it under `timeout_ms` with up to `attempts` tries and doubling backoff,
//! and drops it (counted) when every try failed. Secrets come from files
//! and appear in no log line, status or event (errors are reported without
//! their URL).
//!
//! May use: config, events, sys.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::{Condvar, Mutex};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::notify::NotifyConfig;

mod requests;

use requests::{Call, Kind};

/// Changes named in one delivery at most; past it the batch says
/// `truncated` (Jellyfin and Plex then refresh the whole library).
pub const CHANGES_MAX: usize = 1000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeKind {
    Added,
    Changed,
    Removed,
}

impl ChangeKind {
    pub fn word(self) -> &'static str {
        match self {
            ChangeKind::Added => "added",
            ChangeKind::Changed => "changed",
            ChangeKind::Removed => "removed",
        }
    }
}

/// One changed file, by its path in the tree (relative to the mount).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub kind: ChangeKind,
    pub path: String,
}

/// What one commit changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Batch {
    pub changes: Vec<Change>,
    /// More changed than `changes` names.
    pub truncated: bool,
}

impl Batch {
    fn merge(&mut self, other: Batch) {
        self.truncated |= other.truncated;
        for c in other.changes {
            if self.changes.len() >= CHANGES_MAX {
                self.truncated = true;
                break;
            }
            self.changes.push(c);
        }
    }
}

/// A target's figures, for `musicfs status`.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct TargetStatus {
    /// `jellyfin http://host:8096` (no secret: URLs may carry none).
    pub name: String,
    /// `idle` (nothing sent yet), `ok`, `retrying`, `failing`.
    pub state: String,
    pub delivered: u64,
    pub failed_attempts: u64,
    pub dropped: u64,
    pub queued: u64,
    pub last_error: String,
    pub last_ok_ms: u64,
}

struct Target {
    kind: Kind,
    name: String,
    queue: Mutex<VecDeque<Batch>>,
    wake: Condvar,
    status: Mutex<TargetStatus>,
}

/// Batches dropped by every target (full queues, failed deliveries).
pub static DROPPED: AtomicU64 = AtomicU64::new(0);

pub struct Notifier {
    targets: Vec<Arc<Target>>,
    cancel: CancellationToken,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
    queue_max: usize,
}

impl Notifier {
    /// Starts a thread per configured target; `None` when there is none.
    pub fn start(cfg: &NotifyConfig) -> anyhow::Result<Option<Arc<Notifier>>> {
        if cfg.is_empty() {
            return Ok(None);
        }
        let kinds = cfg
            .webhook
            .iter()
            .cloned()
            .map(Kind::Webhook)
            .chain(cfg.jellyfin.iter().cloned().map(Kind::Jellyfin))
            .chain(cfg.plex.iter().cloned().map(Kind::Plex))
            .chain(cfg.subsonic.iter().cloned().map(Kind::Subsonic));
        let cancel = CancellationToken::new();
        let prefix = cfg
            .path_prefix
            .as_ref()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut targets = Vec::new();
        let mut threads = Vec::new();
        for kind in kinds {
            let name = format!("{} {}", kind.word(), kind.url());
            let t = Arc::new(Target {
                status: Mutex::new(TargetStatus {
                    name: name.clone(),
                    state: "idle".into(),
                    ..TargetStatus::default()
                }),
                kind,
                name,
                queue: Mutex::new(VecDeque::new()),
                wake: Condvar::new(),
            });
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let client = reqwest::Client::builder()
                .timeout(Duration::from_millis(cfg.timeout_ms))
                .connect_timeout(Duration::from_millis(cfg.timeout_ms))
                .build()?;
            let run = Run {
                target: t.clone(),
                cancel: cancel.clone(),
                prefix: prefix.clone(),
                timeout: Duration::from_millis(cfg.timeout_ms),
                attempts: cfg.attempts,
                backoff: Duration::from_millis(cfg.backoff_ms),
            };
            threads.push(
                std::thread::Builder::new()
                    .name(format!("notify-{}", t.kind.word()))
                    .spawn(move || run.run(&rt, &client))?,
            );
            info!(target = %t.name, "change feed target ready");
            targets.push(t);
        }
        Ok(Some(Arc::new(Notifier {
            targets,
            cancel,
            threads: Mutex::new(threads),
            queue_max: cfg.queue,
        })))
    }

    /// Queues a commit's changes for every target; never waits.
    pub fn send(&self, batch: &Batch) {
        if batch.changes.is_empty() && !batch.truncated {
            return;
        }
        for t in &self.targets {
            let mut q = t.queue.lock();
            if q.len() >= self.queue_max {
                q.pop_front();
                DROPPED.fetch_add(1, Ordering::Relaxed);
                t.status.lock().dropped += 1;
                debug!(target = %t.name, "change feed queue full: dropped the oldest batch");
            }
            q.push_back(batch.clone());
            drop(q);
            t.wake.notify_one();
        }
    }

    pub fn status(&self) -> Vec<TargetStatus> {
        self.targets
            .iter()
            .map(|t| {
                let mut s = t.status.lock().clone();
                s.queued = t.queue.lock().len() as u64;
                s
            })
            .collect()
    }

    /// Stops every target's thread (a delivery in flight is abandoned),
    /// waiting up to `timeout` in all.
    pub fn stop(&self, timeout: Duration) {
        self.cancel.cancel();
        for t in &self.targets {
            t.wake.notify_all();
        }
        let deadline = std::time::Instant::now() + timeout;
        for h in self.threads.lock().drain(..) {
            while !h.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if h.is_finished() {
                let _ = h.join();
            } else {
                warn!("a change feed thread did not stop in time; left to end with the process");
            }
        }
    }
}

/// One target's thread.
struct Run {
    target: Arc<Target>,
    cancel: CancellationToken,
    prefix: String,
    timeout: Duration,
    attempts: u32,
    backoff: Duration,
}

impl Run {
    fn run(self, rt: &tokio::runtime::Runtime, client: &reqwest::Client) {
        let t = &self.target;
        while !self.cancel.is_cancelled() {
            let batch = {
                let mut q = t.queue.lock();
                if q.is_empty() {
                    t.wake.wait_for(&mut q, Duration::from_secs(1));
                }
                let mut merged: Option<Batch> = None;
                while let Some(b) = q.pop_front() {
                    match &mut merged {
                        Some(m) => m.merge(b),
                        None => merged = Some(b),
                    }
                }
                merged
            };
            let Some(batch) = batch else { continue };
            self.deliver(rt, client, &batch);
        }
    }

    fn deliver(&self, rt: &tokio::runtime::Runtime, client: &reqwest::Client, batch: &Batch) {
        let t = &self.target;
        let mut backoff = self.backoff;
        for attempt in 1..=self.attempts {
            let result = t
                .kind
                .calls(batch, &self.prefix)
                .map_err(|e| format!("{e:#}"))
                .and_then(|calls| {
                    rt.block_on(async {
                        tokio::select! {
                            r = self.send_all(client, &calls) => r,
                            () = self.cancel.cancelled() => Err("stopped".to_string()),
                        }
                    })
                });
            match result {
                Ok(()) => {
                    let mut s = t.status.lock();
                    s.delivered += 1;
                    s.state = "ok".into();
                    s.last_ok_ms = crate::sys::time::now_ms();
                    debug!(target = %t.name, changes = batch.changes.len(), "change feed delivered");
                    return;
                }
                Err(e) => {
                    if self.cancel.is_cancelled() {
                        return;
                    }
                    let last = attempt == self.attempts;
                    {
                        let mut s = t.status.lock();
                        s.failed_attempts += 1;
                        s.last_error = e.clone();
                        s.state = if last { "failing" } else { "retrying" }.into();
                        if last {
                            s.dropped += 1;
                        }
                    }
                    if last {
                        DROPPED.fetch_add(1, Ordering::Relaxed);
                        warn!(target = %t.name, attempts = self.attempts, "change feed delivery failed, batch dropped: {e}");
                        crate::events::emit(
                            "notify",
                            format!("{}: delivery failed, batch dropped: {e}", t.name),
                        );
                        return;
                    }
                    debug!(target = %t.name, attempt, "change feed delivery failed, retrying: {e}");
                    rt.block_on(async {
                        tokio::select! {
                            () = tokio::time::sleep(backoff) => {},
                            () = self.cancel.cancelled() => {},
                        }
                    });
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
    }

    async fn send_all(&self, client: &reqwest::Client, calls: &[Call]) -> Result<(), String> {
        for call in calls {
            let mut req = if call.post {
                client.post(&call.url)
            } else {
                client.get(&call.url)
            };
            for (k, v) in &call.headers {
                req = req.header(*k, v);
            }
            if let Some(b) = &call.body {
                req = req.body(b.clone());
            }
            // The client's timeout covers the whole call; this one also
            // bounds reading the answer.
            let answer = tokio::time::timeout(self.timeout, async {
                let resp = req.send().await.map_err(|e| e.without_url().to_string())?;
                let status = resp.status();
                let body = resp
                    .bytes()
                    .await
                    .map_err(|e| e.without_url().to_string())?;
                Ok::<_, String>((status, body))
            })
            .await
            .map_err(|_| format!("no answer within {} ms", self.timeout.as_millis()))??;
            let (status, body) = answer;
            if !status.is_success() {
                return Err(format!("the server answered {status}"));
            }
            if let Some(e) = self.target.kind.answer_error(&body) {
                return Err(e);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;

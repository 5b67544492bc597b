//! The task supervisor: background tasks (watchers, reconciles, syncs) run
//! on their own threads and are restarted with backoff when they fail or
//! panic; the status lists them. Uses only `events`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;
use tracing::error;

/// Runs `task` on its own thread until it returns `Ok` or `stop` is set,
/// restarting it with backoff when it fails or panics (1 s, doubling to 60 s;
/// reset after a healthy 5 minutes). The task is listed under `name` in the
/// status while it exists; the returned handle lets shutdown wait for it.
pub fn supervise(
    name: impl Into<String>,
    stop: Arc<AtomicBool>,
    task: impl Fn() -> Result<()> + Send + 'static,
) -> Option<std::thread::JoinHandle<()>> {
    let key: String = name.into();
    // A task restarted under the same name (a watcher after a reload) gets
    // a new token; the old thread, winding down, must not touch its entry.
    static NEXT_TOKEN: AtomicU64 = AtomicU64::new(1);
    let token = NEXT_TOKEN.fetch_add(1, Ordering::Relaxed);
    TASKS.lock().insert(
        key.clone(),
        TaskState {
            running: true,
            restarts: 0,
            last_error: String::new(),
            token,
        },
    );
    let remove = move |key: &str| {
        let mut tasks = TASKS.lock();
        if tasks.get(key).is_some_and(|t| t.token == token) {
            tasks.remove(key);
        }
    };
    let thread_name = format!("musicfs-{key}");
    let name = key.clone();
    let spawned = std::thread::Builder::new()
        .name(thread_name)
        .spawn(move || {
            let mut backoff = Duration::from_secs(1);
            let record = |error: Option<String>, running: bool| {
                if let Some(t) = TASKS.lock().get_mut(&key)
                    && t.token == token
                {
                    t.running = running;
                    if let Some(e) = error {
                        t.restarts += 1;
                        t.last_error = e;
                    }
                }
            };
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(&task));
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let why = match outcome {
                    Ok(Ok(())) => break,
                    Ok(Err(e)) => format!("{e:#}"),
                    Err(_) => "panicked".to_string(),
                };
                error!(
                    task = %key,
                    "failed: {why}; restarting in {} s",
                    backoff.as_secs()
                );
                crate::events::emit(
                    "task",
                    format!(
                        "{key} failed ({why}); restarting in {} s",
                        backoff.as_secs()
                    ),
                );
                record(Some(why), true);
                if started.elapsed() > Duration::from_secs(300) {
                    backoff = Duration::from_secs(1);
                }
                // Sleep in steps, so that a stop is never held up by a backoff.
                let until = Instant::now() + backoff;
                while Instant::now() < until && !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(50));
                }
                backoff = (backoff * 2).min(Duration::from_secs(60));
            }
            if stop.load(Ordering::Relaxed) {
                // Stopped on purpose (shutdown, or its origin went away).
                remove(&key);
            } else {
                record(None, false);
            }
        });
    match spawned {
        Ok(h) => Some(h),
        Err(e) => {
            error!(task = %name, "cannot start: {e}");
            remove(&name);
            None
        }
    }
}

/// A supervised background task, as the status shows it.
#[derive(Clone, Debug)]
pub struct TaskState {
    pub running: bool,
    pub restarts: u32,
    pub last_error: String,
    /// Which incarnation of the name this is.
    token: u64,
}

static TASKS: parking_lot::Mutex<std::collections::BTreeMap<String, TaskState>> =
    parking_lot::Mutex::new(std::collections::BTreeMap::new());

/// Every supervised task with its state.
pub fn task_states() -> Vec<(String, TaskState)> {
    TASKS
        .lock()
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A task restarted under the same name keeps its status entry when the
    /// old incarnation winds down; a stopped task leaves the status.
    #[test]
    fn restarted_task_keeps_its_status_entry() {
        let (old_stop, new_stop) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
        );
        let wait = |stop: Arc<AtomicBool>| {
            move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Ok(())
            }
        };
        let old = supervise("test-same-name", old_stop.clone(), wait(old_stop.clone())).unwrap();
        let new = supervise("test-same-name", new_stop.clone(), wait(new_stop.clone())).unwrap();
        old_stop.store(true, Ordering::Relaxed);
        old.join().unwrap();
        let listed = |name: &str| {
            task_states()
                .into_iter()
                .any(|(n, t)| n == name && t.running)
        };
        assert!(
            listed("test-same-name"),
            "the new task vanished from the status"
        );
        new_stop.store(true, Ordering::Relaxed);
        new.join().unwrap();
        assert!(!task_states().iter().any(|(n, _)| n == "test-same-name"));
    }
}

//! The configured origins by persistent id, shared by the data plane and the
//! syncer. A reload swaps the whole table at once: readers take a snapshot
//! (an `Arc`) and never see half an update.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::RwLock;

use crate::origin_io::is_local_fs;

/// One snapshot of the origins, indexed by origin id.
#[derive(Debug, Default)]
pub struct OriginTable {
    roots: Vec<Option<PathBuf>>,
    local: Vec<bool>,
}

impl OriginTable {
    /// The table for `roots` (by id; `None` for ids not configured).
    pub fn new(roots: Vec<Option<PathBuf>>) -> OriginTable {
        let local = roots
            .iter()
            .map(|o| o.as_deref().is_some_and(is_local_fs))
            .collect();
        OriginTable { roots, local }
    }

    /// The root directory of origin `id`, if it is configured.
    pub fn root(&self, id: u32) -> Option<&Path> {
        self.roots.get(id as usize)?.as_deref()
    }

    /// Whether origin `id` is on a local filesystem (checked when configured).
    pub fn is_local(&self, id: u32) -> bool {
        self.local.get(id as usize).copied().unwrap_or(false)
    }

    /// Every configured origin: (id, root).
    pub fn iter(&self) -> impl Iterator<Item = (u32, &Path)> {
        self.roots.iter().enumerate().filter_map(|(id, r)| {
            r.as_deref()
                .map(|r| (u32::try_from(id).unwrap_or(u32::MAX), r))
        })
    }
}

/// The live origin table.
#[derive(Debug, Default)]
pub struct Origins(RwLock<Arc<OriginTable>>);

impl Origins {
    pub fn new(roots: Vec<Option<PathBuf>>) -> Arc<Origins> {
        Arc::new(Origins(RwLock::new(Arc::new(OriginTable::new(roots)))))
    }

    /// The current table (cheap: one `Arc` clone).
    pub fn snapshot(&self) -> Arc<OriginTable> {
        self.0.read().clone()
    }

    /// The root of origin `id`, if configured.
    pub fn root(&self, id: u32) -> Option<PathBuf> {
        self.snapshot().root(id).map(Path::to_path_buf)
    }

    /// Replaces the table (reload).
    pub fn replace(&self, roots: Vec<Option<PathBuf>>) {
        let table = Arc::new(OriginTable::new(roots));
        *self.0.write() = table;
    }

    /// Looks again at which filesystem each origin is on (an origin that
    /// was away at start could not tell). A reload in between wins.
    pub fn refresh(&self) {
        let before = self.snapshot();
        let table = Arc::new(OriginTable::new(before.roots.clone()));
        let mut current = self.0.write();
        if Arc::ptr_eq(&current, &before) {
            *current = table;
        }
    }
}

/// How long an origin directory may take to answer a stat.
pub const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// Origins whose probe has not returned yet (a hung NFS server): no second
/// probe is started for them, so repeated checks cannot pile up threads
/// stuck in `stat`.
static PROBING: parking_lot::Mutex<std::collections::BTreeSet<PathBuf>> =
    parking_lot::Mutex::new(std::collections::BTreeSet::new());

/// Whether each path is a usable origin directory (`Ok`), or why not, within
/// one common deadline (`PROBE_TIMEOUT`): probed in parallel, at most one
/// probe per path at a time.
pub fn probe_dirs(paths: &[PathBuf]) -> Vec<Result<(), String>> {
    probe_with(paths, |p| match std::fs::metadata(p) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err("not a directory".into()),
        Err(e) => Err(e.to_string()),
    })
}

fn probe_with(
    paths: &[PathBuf],
    probe: fn(&Path) -> Result<(), String>,
) -> Vec<Result<(), String>> {
    use std::time::Instant;
    let deadline = Instant::now() + PROBE_TIMEOUT;
    let answers: Vec<Option<std::sync::mpsc::Receiver<Result<(), String>>>> = paths
        .iter()
        .map(|p| {
            if !PROBING.lock().insert(p.clone()) {
                return None; // still stuck in the previous probe
            }
            let (tx, rx) = std::sync::mpsc::channel();
            let path = p.clone();
            let spawned = std::thread::Builder::new()
                .name("musicfs-stat".into())
                .spawn(move || {
                    let answer = probe(&path);
                    PROBING.lock().remove(&path);
                    let _ = tx.send(answer);
                });
            if spawned.is_err() {
                PROBING.lock().remove(p);
                return None;
            }
            Some(rx)
        })
        .collect();
    let hung = || {
        Err(format!(
            "no answer within {} ms (hung network filesystem?)",
            PROBE_TIMEOUT.as_millis()
        ))
    };
    answers
        .into_iter()
        .map(|rx| match rx {
            None => hung(),
            Some(rx) => rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .unwrap_or_else(|_| hung()),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    static PROBES: AtomicUsize = AtomicUsize::new(0);

    fn slow_probe(p: &Path) -> Result<(), String> {
        PROBES.fetch_add(1, Ordering::SeqCst);
        if p.ends_with("hung") {
            std::thread::sleep(Duration::from_secs(3));
        }
        Ok(())
    }

    /// A hung origin is reported at the deadline, and a second check while
    /// it still hangs starts no second probe for it.
    #[test]
    fn hung_origin_probes_do_not_pile_up() {
        let paths: Vec<PathBuf> = ["/probe-test/a", "/probe-test/hung", "/probe-test/b"]
            .iter()
            .map(PathBuf::from)
            .collect();
        let ok = |v: Vec<Result<(), String>>| v.iter().map(Result::is_ok).collect::<Vec<_>>();
        assert_eq!(ok(probe_with(&paths, slow_probe)), [true, false, true]);
        assert_eq!(PROBES.load(Ordering::SeqCst), 3);
        assert_eq!(ok(probe_with(&paths, slow_probe)), [true, false, true]);
        assert_eq!(
            PROBES.load(Ordering::SeqCst),
            5,
            "the hung origin was probed again"
        );
    }

    #[test]
    fn probes_say_why() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        let r = probe_dirs(&[dir.path().to_path_buf(), file, dir.path().join("missing")]);
        assert_eq!(r[0], Ok(()));
        assert_eq!(r[1], Err("not a directory".to_string()));
        assert!(r[2].as_ref().unwrap_err().contains("No such file"), "{r:?}");
    }
}

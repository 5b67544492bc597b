//! The cache disk's health probe: while the disk is unhealthy it is probed
//! (write, sync, read back, remove) and the index reopened once it heals;
//! while healthy, a check that the cache directory is still the one opened.

use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;
use tracing::{info, warn};

use crate::content::cache::ChunkCache;
use crate::content::health::{State, Transition};

impl ChunkCache {
    /// One probe of the cache disk: write, sync, read back, remove.
    pub(super) fn probe_once(&self) -> io::Result<()> {
        std::fs::create_dir_all(self.tmp_dir())?;
        std::fs::create_dir_all(self.dir.join("chunks"))?;
        let path = self.tmp_dir().join(format!("probe.{}", std::process::id()));
        let result = (|| {
            let mut f = std::fs::File::create(&path)?;
            f.write_all(b"musicfs cache probe")?;
            f.sync_all()?;
            if std::fs::read(&path)? != b"musicfs cache probe" {
                return Err(io::Error::other("the probe read back other bytes"));
            }
            Ok(())
        })();
        let _ = std::fs::remove_file(&path);
        result
    }

    /// The health probe: while the disk is unhealthy, probes it every
    /// `probe_interval` and reopens the index once it is healthy again;
    /// while healthy, checks every few seconds that the cache directory is
    /// still the one opened (deleted or replaced: opened afresh).
    pub fn run_probe(&self, stop: &AtomicBool) -> Result<()> {
        let mut last_check = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(self.probe_interval);
            let state = self.health.lock().state;
            if state == State::Normal {
                if last_check.elapsed() < Duration::from_secs(2).max(self.probe_interval * 4) {
                    continue;
                }
                last_check = Instant::now();
                let ino = std::fs::metadata(self.index_path()).map(|m| m.ino()).ok();
                if ino != Some(self.index_ino.load(Ordering::Acquire)) {
                    warn!(dir = %self.dir.display(), "the cache directory was removed or replaced: opening it afresh");
                    crate::events::emit(
                        "cache",
                        "the cache directory was removed or replaced; opened afresh",
                    );
                    if let Err(e) = self.open_index() {
                        self.disk_error(&format!("reopening the cache: {e:#}"));
                    }
                }
                continue;
            }
            let t = match self.probe_once() {
                Ok(()) => self.health.lock().ok(),
                Err(e) => self.health.lock().error(format!("probe: {e}")),
            };
            let t = if t == Transition::None {
                self.health.lock().tick()
            } else {
                t
            };
            match t {
                Transition::Restored => match self.open_index() {
                    Ok(()) => {
                        info!(dir = %self.dir.display(), "the cache disk is healthy again: caching resumes");
                        crate::events::emit("cache", "restored: the cache disk is healthy again");
                    }
                    Err(e) => {
                        self.health
                            .lock()
                            .bypass_now(format!("reopening the cache: {e:#}"));
                    }
                },
                Transition::Down => {
                    warn!(dir = %self.dir.display(), "the cache disk has been unstable for 30 minutes: down");
                    crate::events::emit("cache", "down: unstable for 30 minutes");
                }
                _ => {}
            }
        }
        Ok(())
    }
}

//! The chunk cache's writer: one thread takes fetched chunks off the queue,
//! writes each atomically (a temporary file in `tmp/`, fsync, rename),
//! commits them to the index in batches with the read times, evicts least
//! recently used chunks to stay within the size limit and the free-space
//! watermark, and at start removes chunk files the index does not know.

use std::collections::HashSet;
use std::io::{self, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::Result;
use tracing::{info, warn};

use std::sync::mpsc;

use crate::content::cache::{
    ChunkCache, Job, SPACE_CHECK, TOUCH_FLUSH, WRITE_BATCH, bump, hex, unhex,
};
use crate::content::index::{Batch, Hash};
use crate::content::layout::ContentKey;

impl ChunkCache {
    /// Writes one chunk: a temporary file in `tmp/`, fsync, rename.
    pub(super) fn write_chunk(&self, hash: &Hash, bytes: &[u8]) -> io::Result<()> {
        let path = self.chunk_path(hash);
        let tmp = self.tmp_dir().join(format!(
            "{}.{}.{}",
            &hex(hash)[..16],
            std::process::id(),
            self.seq.fetch_add(1, Ordering::Relaxed)
        ));
        let write = |tmp: &Path| -> io::Result<()> {
            let mut f = std::fs::File::create(tmp)?;
            f.write_all(bytes)?;
            f.sync_data()?;
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::rename(tmp, &path)
        };
        let mut result = write(&tmp);
        if result
            .as_ref()
            .is_err_and(|e| e.kind() == io::ErrorKind::NotFound)
        {
            // The cache directory was removed under us: make it again.
            std::fs::create_dir_all(self.tmp_dir())?;
            result = write(&tmp);
        }
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }

    /// Free space of the cache disk, in percent.
    pub(super) fn free_percent_now(&self) -> Option<u32> {
        let s = nix::sys::statvfs::statvfs(&self.dir).ok()?;
        let blocks = s.blocks() as u64;
        if blocks == 0 {
            return None;
        }
        Some(((s.blocks_available() as u64).saturating_mul(100) / blocks) as u32)
    }

    /// Removes least recently used chunks (never pinned ones) until
    /// `used + need <= max` and the disk has its free space; false if it
    /// cannot make that room.
    pub(super) fn make_room(&self, need: u64) -> bool {
        let max = self.max_bytes.load(Ordering::Acquire);
        if need > max {
            return false;
        }
        let min_free = self.min_free_percent.load(Ordering::Acquire);
        let mut pinned: Option<HashSet<Hash>> = None;
        loop {
            let Some(used) = self.with_index(|i| i.used_bytes()) else {
                return false;
            };
            let free_low = self.free_percent_now().is_some_and(|f| f < min_free);
            if used + need <= max && !free_low {
                return true;
            }
            if pinned.is_none() {
                pinned = Some(
                    self.with_index(|i| i.pinned_hashes())
                        .map(|p| p.1)
                        .unwrap_or_default(),
                );
            }
            let keep = pinned.as_ref().map_or_else(HashSet::new, Clone::clone);
            let Some(victims) = self.with_index(|i| i.oldest(64, &keep)) else {
                return false;
            };
            if victims.is_empty() {
                return used + need <= max;
            }
            let mut batch = Batch::default();
            let mut left = used;
            for (hash, size) in victims {
                // One at a time: no more than the room needed goes.
                if left + need <= max && self.free_percent_now().is_none_or(|f| f >= min_free) {
                    break;
                }
                left = left.saturating_sub(u64::from(size));
                match std::fs::remove_file(self.chunk_path(&hash)) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => {
                        self.disk_error(&format!("removing a chunk: {e}"));
                        return false;
                    }
                }
                bump(&self.counters.evicted);
                batch.forget.push(hash);
            }
            if self.with_index(|i| i.commit(&batch)).is_none() {
                return false;
            }
        }
    }

    /// Looks at the free space: below half the watermark, no more writes.
    pub(super) fn check_space(&self) {
        let Some(free) = self.free_percent_now() else {
            return;
        };
        self.free_percent.store(free, Ordering::Relaxed);
        let min_free = self.min_free_percent.load(Ordering::Acquire);
        let why = if free < min_free / 2 {
            format!(
                "the cache disk has {free}% free, below the critical {}%",
                min_free / 2
            )
        } else {
            String::new()
        };
        let mut stopped = self.writes_stopped.lock();
        if *stopped != why {
            if why.is_empty() {
                info!("the cache disk has room again: caching resumes");
            } else {
                warn!("{why}: no more chunks are written (reads still use what is cached)");
            }
            crate::events::emit(
                "cache",
                if why.is_empty() {
                    "writes resume".to_string()
                } else {
                    why.clone()
                },
            );
            *stopped = why;
        }
        if free < min_free {
            self.make_room(0);
        }
    }

    /// The writer: takes chunks off the queue, writes them, commits them to
    /// the index in batches with the read times, and keeps the size and the
    /// free space within bounds. Returns at `stop` after a last flush.
    pub fn run_writer(&self, stop: &AtomicBool) -> Result<()> {
        let Some(rx) = self.rx.lock().take() else {
            anyhow::bail!("the cache writer runs once");
        };
        self.writing.store(true, Ordering::Release);
        let result = self.writer_loop(&rx, stop);
        self.writing.store(false, Ordering::Release);
        *self.rx.lock() = Some(rx);
        result
    }

    pub(super) fn writer_loop(&self, rx: &Receiver<Job>, stop: &AtomicBool) -> Result<()> {
        self.reclaim_orphans(stop);
        let mut last_flush = Instant::now();
        let mut last_space = Instant::now() - SPACE_CHECK;
        loop {
            let first = match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(job) => Some(job),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => return Ok(()),
            };
            let stopping = stop.load(Ordering::Relaxed);
            let mut jobs: Vec<Job> = first.into_iter().collect();
            while jobs.len() < WRITE_BATCH {
                match rx.try_recv() {
                    Ok(j) => jobs.push(j),
                    Err(_) => break,
                }
            }
            if last_space.elapsed() >= SPACE_CHECK {
                last_space = Instant::now();
                if self.usable() {
                    self.check_space();
                }
            }
            let mut batch = Batch::default();
            let mut acks = Vec::new();
            let need: u64 = jobs
                .iter()
                .map(|j| match j {
                    Job::Put(p, _) => u64::from(p.size_bytes),
                    _ => 0,
                })
                .sum();
            let room = need == 0 || (self.usable() && self.make_room(need));
            for job in jobs {
                match job {
                    Job::Put(put, bytes) => {
                        if !room || !self.usable() {
                            self.unwritten(put);
                            continue;
                        }
                        match self.write_chunk(&put.hash, &bytes) {
                            Ok(()) => {
                                bump(&self.counters.written);
                                batch.puts.push(put);
                            }
                            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => {
                                self.unwritten(put);
                                self.check_space();
                                self.make_room(bytes.len() as u64 * 4);
                            }
                            Err(e) => {
                                self.unwritten(put);
                                self.disk_error(&format!("writing a chunk: {e}"));
                            }
                        }
                    }
                    Job::Forget(hash) => {
                        // A reader found it bad or gone; another may have
                        // written it back since (a chunk two files share).
                        let good = std::fs::read(self.chunk_path(&hash))
                            .is_ok_and(|b| *blake3::hash(&b).as_bytes() == hash);
                        if !good {
                            batch.forget.push(hash);
                        }
                    }
                    Job::Flush(ack) => acks.push(ack),
                }
            }
            if last_flush.elapsed() >= TOUCH_FLUSH || !acks.is_empty() || stopping {
                last_flush = Instant::now();
                batch.touches = self.touches.lock().drain().collect();
            }
            if !batch.is_empty() && self.usable() {
                let done: Vec<(ContentKey, u32)> =
                    batch.puts.iter().map(|p| (p.key, p.index)).collect();
                if self.with_index(|i| i.commit(&batch)).is_some() {
                    let mut recent = self.recent.lock();
                    for k in done {
                        recent.remove(&k);
                    }
                }
            }
            for ack in acks {
                let _ = ack.send(());
            }
            if stopping {
                return Ok(());
            }
        }
    }

    /// Waits (bounded) until every chunk queued so far is written and the
    /// read times are in the index.
    pub fn flush(&self, timeout: Duration) -> bool {
        if !self.writing.load(Ordering::Acquire) {
            return false;
        }
        let (tx, rx) = mpsc::channel();
        if self.tx.send(Job::Flush(tx)).is_err() {
            return false;
        }
        rx.recv_timeout(timeout).is_ok()
    }

    /// Chunk files the index does not know (written just before a crash,
    /// before their commit) are removed; the index is the size account.
    pub(super) fn reclaim_orphans(&self, stop: &AtomicBool) {
        let Ok(dirs) = std::fs::read_dir(self.dir.join("chunks")) else {
            return;
        };
        let mut removed = 0u64;
        for d in dirs.flatten() {
            let Ok(files) = std::fs::read_dir(d.path()) else {
                continue;
            };
            for f in files.flatten() {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let name = f.file_name();
                let known = unhex(&name.to_string_lossy())
                    .and_then(|h| self.with_index(|i| i.has_chunk(&h)));
                if (known == Some(false) || (known.is_none() && self.usable()))
                    && std::fs::remove_file(f.path()).is_ok()
                {
                    removed += 1;
                }
            }
        }
        if removed > 0 {
            info!(
                removed,
                "removed chunk files the index did not know (left by a crash)"
            );
        }
    }
}

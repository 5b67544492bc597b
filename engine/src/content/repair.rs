//! Checking and repairing the cache: `verify` (every chunk, with repair
//! from the origins), the scrubber's bounded `scrub`, `clear` and `pin`.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Result;

use crate::content::cache::{ChunkCache, Hot, Refetch, VerifyReport, bump};
use crate::content::index::{Batch, Hash, Put};
use crate::content::layout::ContentKey;

impl ChunkCache {
    /// Removes every chunk (pinned ones too) and returns the bytes freed.
    pub fn clear(&self) -> Result<u64> {
        let guard = self.index.read();
        let index = guard.as_ref().ok_or_else(|| {
            anyhow::anyhow!("the cache is bypassed: {}", self.health.lock().reason)
        })?;
        let used = index.used_bytes()?;
        index.clear()?;
        drop(guard);
        *self.hot.lock() = Hot::default();
        self.recent.lock().clear();
        let chunks = self.dir.join("chunks");
        if let Ok(dirs) = std::fs::read_dir(&chunks) {
            for d in dirs.flatten() {
                let _ = std::fs::remove_dir_all(d.path());
            }
        }
        Ok(used)
    }

    /// Keeps (or stops keeping) content versions off the eviction list.
    pub fn pin(&self, keys: &[ContentKey], pinned: bool) -> Result<()> {
        let guard = self.index.read();
        let index = guard.as_ref().ok_or_else(|| {
            anyhow::anyhow!("the cache is bypassed: {}", self.health.lock().reason)
        })?;
        index.set_pins(keys, pinned)
    }

    /// Checks cached chunks against their hashes: every content version's
    /// chunks (or, with `limit`, at most that many chunks after `cursor` in
    /// hash order, for the scrubber). A bad or missing chunk is removed; with
    /// `refetch` it is fetched again and written back. `progress(done,
    /// total)` is called as it goes; `cancel` stops it.
    pub fn verify(
        &self,
        refetch: Option<Refetch<'_>>,
        progress: &mut dyn FnMut(u64, u64),
        cancel: &AtomicBool,
    ) -> Result<VerifyReport> {
        let contents = {
            let guard = self.index.read();
            let index = guard.as_ref().ok_or_else(|| {
                anyhow::anyhow!("the cache is bypassed: {}", self.health.lock().reason)
            })?;
            let mut all = Vec::new();
            for (key, info) in index.contents()? {
                let chunks = index.cached_chunks(&key)?;
                all.push((key, info, chunks));
            }
            all
        };
        let total: u64 = contents.iter().map(|c| c.2.len() as u64).sum();
        let mut report = VerifyReport::default();
        let mut done = 0;
        progress(0, total);
        for (key, info, chunks) in contents {
            for (idx, hash, size) in chunks {
                // Fault injection: a slow disk (tests of progress and cancel).
                if crate::sys::fault::injected("slow-verify") {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                if cancel.load(Ordering::Relaxed) {
                    report.cancelled = true;
                    return Ok(report);
                }
                report.checked += 1;
                let good = match std::fs::read(self.chunk_path(&hash)) {
                    Ok(b) => b.len() == size as usize && *blake3::hash(&b).as_bytes() == hash,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        report.missing += 1;
                        false
                    }
                    Err(e) => return Err(anyhow::anyhow!("reading a chunk: {e}")),
                };
                if !good {
                    if !matches!(std::fs::metadata(self.chunk_path(&hash)), Err(ref e) if e.kind() == io::ErrorKind::NotFound)
                    {
                        report.bad += 1;
                        bump(&self.counters.corrupt);
                    }
                    let _ = std::fs::remove_file(self.chunk_path(&hash));
                    self.hot.lock().remove(&hash);
                    let mut batch = Batch::default();
                    batch.forget.push(hash);
                    let mut repaired = false;
                    if let Some(fetch) = refetch
                        && let Some(bytes) = fetch(&info, idx)
                        && *blake3::hash(&bytes).as_bytes() == hash
                        && self.write_chunk(&hash, &bytes).is_ok()
                    {
                        batch.forget.clear();
                        batch.puts.push(Put {
                            key,
                            index: idx,
                            hash,
                            size_bytes: size,
                            info: info.clone(),
                        });
                        repaired = true;
                    }
                    self.with_index(|i| i.commit(&batch));
                    if repaired {
                        report.repaired += 1;
                    } else if refetch.is_some() {
                        report.unrepaired += 1;
                    }
                }
                done += 1;
                progress(done, total);
            }
        }
        Ok(report)
    }

    /// The scrubber: checks at most `chunks` chunks after `cursor` (in hash
    /// order, wrapping) and removes bad ones (the next read fetches them
    /// again). Returns the new cursor and how many were bad.
    pub fn scrub(&self, cursor: Option<Hash>, chunks: usize) -> (Option<Hash>, u64) {
        if !self.usable() {
            return (cursor, 0);
        }
        let Some(mut batch) = self.with_index(|i| i.chunks_after(cursor, chunks)) else {
            return (cursor, 0);
        };
        if batch.is_empty() && cursor.is_some() {
            return (None, 0);
        }
        let mut bad = 0;
        let mut forget = Batch::default();
        let next = batch.last().map(|(h, _)| *h);
        for (hash, size) in batch.drain(..) {
            let good = std::fs::read(self.chunk_path(&hash))
                .is_ok_and(|b| b.len() == size as usize && *blake3::hash(&b).as_bytes() == hash);
            if !good {
                bad += 1;
                bump(&self.counters.corrupt);
                self.log_bad_once(&hash, "failed the scrubber's check");
                let _ = std::fs::remove_file(self.chunk_path(&hash));
                self.hot.lock().remove(&hash);
                forget.forget.push(hash);
            }
        }
        if !forget.forget.is_empty() {
            self.with_index(|i| i.commit(&forget));
        }
        (next, bad)
    }
}

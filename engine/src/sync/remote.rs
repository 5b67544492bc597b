//! Listing sync of remote origins (S3, WebDAV): list, compare each
//! object's size, mtime and ETag with the catalog, read the tags of what
//! changed by bounded range reads through the chunk cache (so a later play
//! reuses the head and tail chunks), commit in checkpoints. O(changed): an
//! unchanged object costs one comparison. An interrupted listing resumes:
//! what was committed before is unchanged the next time and is skipped.
//!
//! The seed's scanner trap: a server that is down, or that answers with an
//! empty listing while the catalog holds its files, never empties the
//! catalog. The origin is marked away, its files stay and are served from
//! the catalog and the cache.

use std::io::{self, Read, Seek, SeekFrom};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Result, bail};
use tracing::{debug, info, warn};

use crate::catalog::file_key;
use crate::content::{ChunkCache, ContentInfo, ContentKey, Layout};
use crate::model::FileRecord;
use crate::origins::remote::{Remote, RemoteEntry};
use crate::scan::probe_source;
use crate::sync::syncer::Syncer;

/// One object read by range, a chunk at a time, through the chunk cache
/// (when there is one), only at the version its listing gave.
pub struct RemoteSource<'a> {
    remote: &'a Remote,
    cache: Option<&'a ChunkCache>,
    entry: &'a RemoteEntry,
    key: ContentKey,
    info: ContentInfo,
    layout: Layout,
    pos: u64,
    chunk: Option<(u32, Arc<[u8]>)>,
}

impl<'a> RemoteSource<'a> {
    pub fn new(
        remote: &'a Remote,
        cache: Option<&'a ChunkCache>,
        origin: u32,
        entry: &'a RemoteEntry,
    ) -> RemoteSource<'a> {
        RemoteSource {
            remote,
            cache,
            entry,
            key: ContentKey::of(&file_key(origin, &entry.rel), entry.size, entry.mtime_ns),
            info: ContentInfo {
                origin,
                rel_path: entry.rel.clone(),
                size_bytes: entry.size,
                mtime_ns: entry.mtime_ns,
            },
            layout: Layout::new(entry.size),
            pos: 0,
            chunk: None,
        }
    }

    fn chunk(&mut self, i: u32) -> io::Result<Arc<[u8]>> {
        if let Some((at, bytes)) = &self.chunk
            && *at == i
        {
            return Ok(bytes.clone());
        }
        let (start, len) = self.layout.range(i);
        let cached = self.cache.and_then(|c| c.get(&self.key, i, len));
        let bytes = match cached {
            Some(b) => b,
            None => {
                let got = self
                    .remote
                    .read(&self.entry.rel, start, len, self.entry.etag.as_deref())
                    .map_err(|e| io::Error::other(e.to_string()))?;
                if got.len() as u64 != len {
                    return Err(io::Error::other(format!(
                        "the server sent {} bytes of {len} at {start}: the object changed",
                        got.len()
                    )));
                }
                let bytes: Arc<[u8]> = got.into();
                if let Some(c) = self.cache {
                    c.put(&self.key, i, &self.info, bytes.clone());
                }
                bytes
            }
        };
        self.chunk = Some((i, bytes.clone()));
        Ok(bytes)
    }
}

impl Read for RemoteSource<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos >= self.entry.size || buf.is_empty() {
            return Ok(0);
        }
        let i = self.layout.index_of(self.pos);
        let (start, _) = self.layout.range(i);
        let chunk = self.chunk(i)?;
        let at = (self.pos - start) as usize;
        let n = buf.len().min(chunk.len() - at);
        buf[..n].copy_from_slice(&chunk[at..at + n]);
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for RemoteSource<'_> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let to = match pos {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::End(d) => self.entry.size.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos =
            to.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before 0"))?;
        Ok(self.pos)
    }
}

impl Syncer {
    /// The remote origin `origin`'s client, or why it has none.
    pub(super) fn remote_of(&self, origin: u32) -> Option<Result<Arc<Remote>>> {
        let table = self.origins.snapshot();
        match table.remote(origin)? {
            Ok(r) => Some(Ok(r.clone())),
            Err(why) => Some(Err(anyhow::anyhow!("{why}"))),
        }
    }

    /// Lists remote origin `origin` and applies what changed.
    pub fn sync_remote(&self, origin: u32, remote: &Remote) -> Result<()> {
        let url = remote.spec.url.clone();
        let listing = match remote.list(self.stop_flag()) {
            Ok(l) => l,
            Err(e) => {
                self.mark_away(origin, &url, format!("its listing failed: {e}"));
                bail!("origin {url}: listing failed: {e}");
            }
        };
        let exts = self.extensions();
        let mut known = self.store.file_stats(origin, b"")?;
        let listing: Vec<RemoteEntry> = listing
            .into_iter()
            .filter(|e| {
                let name = e.rel.rsplit(|b| *b == b'/').next().unwrap_or(&e.rel);
                exts.matches(name)
            })
            .collect();
        if listing.is_empty() && !known.is_empty() {
            self.mark_away(
                origin,
                &url,
                format!(
                    "its listing is empty, but the catalog holds {} of its files",
                    known.len()
                ),
            );
            bail!("origin {url}: an empty listing where the catalog holds files; kept them");
        }
        self.take_back_remote(origin, &url);
        let mut changed: Vec<&RemoteEntry> = Vec::new();
        for e in &listing {
            known.mark_seen(&e.rel);
            let same = known
                .get(&e.rel)
                .is_some_and(|k| (k.size, k.mtime_ns, k.ino) == (e.size, e.mtime_ns, e.ino()));
            // Folder images (cover sources) are not tracks: not counted.
            let track = u64::from(!crate::model::is_folder_image(&e.rel));
            if same {
                self.counters.unchanged.fetch_add(track, Ordering::Relaxed);
            } else {
                self.counters.found.fetch_add(track, Ordering::Relaxed);
                changed.push(e);
            }
        }
        let step = self.checkpoint_files.load(Ordering::Relaxed).max(1);
        for batch in changed.chunks(step) {
            self.check_stop()?;
            let recs = self.probe_remote(origin, remote, batch);
            self.commit(recs, &[], false)?;
        }
        let removals: Vec<Vec<u8>> = known.unseen().map(|rel| file_key(origin, rel)).collect();
        if !removals.is_empty() {
            self.commit(Vec::new(), &removals, false)?;
        }
        debug!(origin = %url, listed = listing.len(), changed = changed.len(), removed = removals.len(), "remote listing applied");
        Ok(())
    }

    /// Reads the tags of `batch` in parallel (as many at a time as the
    /// origin has connections, at most 16).
    fn probe_remote(
        &self,
        origin: u32,
        remote: &Remote,
        batch: &[&RemoteEntry],
    ) -> Vec<FileRecord> {
        let next = AtomicUsize::new(0);
        let cache = self.content().filter(|c| c.usable());
        let threads = self
            .origins
            .snapshot()
            .settings(origin)
            .connections
            .unwrap_or(8)
            .clamp(1, 16);
        let mut out = Vec::with_capacity(batch.len());
        std::thread::scope(|s| {
            let workers: Vec<_> = (0..threads.min(batch.len()))
                .map(|_| {
                    s.spawn(|| {
                        let mut mine = Vec::new();
                        while let Some(e) = batch.get(next.fetch_add(1, Ordering::Relaxed)) {
                            let source = RemoteSource::new(remote, cache, origin, e);
                            let rec = probe_source(
                                origin,
                                e.rel.clone(),
                                (e.size, e.mtime_ns, e.ino()),
                                source,
                            );
                            if let Some(why) = &rec.probe_error {
                                warn!(origin = %remote.spec.url, path = %String::from_utf8_lossy(&e.rel), "unreadable tags, listed by file name: {why}");
                            }
                            mine.push(rec);
                        }
                        mine
                    })
                })
                .collect();
            for w in workers {
                match w.join() {
                    Ok(mut v) => out.append(&mut v),
                    Err(_) => {
                        warn!("a remote probe worker panicked; its files wait for the next listing")
                    }
                }
            }
        });
        // Folder images (cover sources) are not tracks: not counted.
        let tracks = out.iter().filter(|r| !r.is_image).count();
        self.counters
            .probed
            .fetch_add(tracks as u64, Ordering::Relaxed);
        out
    }

    /// Marks a remote origin away (once per reason): its files are kept.
    fn mark_away(&self, origin: u32, url: &str, why: String) {
        let mut offline = self.offline.lock();
        if offline.get(&origin) != Some(&why) {
            warn!(
                origin = url,
                "origin is not reachable ({why}); its files are kept and served from the catalog and the cache, and it is listed again once it is back"
            );
            crate::events::emit("origin", format!("origin {url} is not reachable: {why}"));
            offline.insert(origin, why);
        }
    }

    /// A remote origin answered a listing: it is back, if it was away.
    fn take_back_remote(&self, origin: u32, url: &str) {
        if self.offline.lock().remove(&origin).is_some() {
            info!(
                origin = url,
                "origin is reachable again; its listing is applied"
            );
            crate::events::emit("origin", format!("origin {url} is back"));
        }
    }
}

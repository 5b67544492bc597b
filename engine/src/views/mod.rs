//! Views: the library seen through its tags as searches rather than as a
//! tree. A tantivy index of every track (`index`), fed by the catalog's
//! commits through its one writer thread (`worker`), and the virtual
//! directories made from it (`tree`): `/.search/<query>/`,
//! `/.collections/<name>/` and `/.playlists/<name>.m3u8`.
//!
//! The index lives in `<state dir>/search/v<format>/`. Each commit of it
//! records (format, catalog generation, catalog commit sequence); at start
//! an index that is missing, does not open, fails its checksums or does not
//! match the catalog is rebuilt from the catalog in the background, and the
//! mount serves meanwhile (searches read the old index if one is open, else
//! answer EAGAIN). Entries of a search directory are the tree's own inodes
//! (the same file, as a hard link is): they read what the tree reads, with
//! its page cache, and need no symlink support from the client. After each
//! commit of the index the listings the kernel may hold are computed again
//! and the names that came or went are invalidated.
//!
//! May use: catalog, model, config, events, sys. Used by: serve, runtime,
//! control (through the `Handle`).

pub mod index;
pub mod tree;
mod worker;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{Result, bail};
use parking_lot::{Mutex, RwLock};
use tracing::warn;

use crate::catalog::{InvalidationSink, Invalidations, Store};
use crate::views::index::{Search, Searchable};
use crate::views::tree::{
    COLLECTIONS_DIR, Kind, Listing, PLAYLISTS_DIR, README, README_NAME, README_TEXT, SEARCH_DIR,
    hashed_ino, kind_of,
};
use crate::views::worker::Worker;

pub use tree::{is_virtual, root_entry};

/// The built-in collections.
pub const ALL_TRACKS: &str = "All tracks";
pub const RECENTLY_ADDED: &str = "Recently added";
/// What `Recently added` covers.
const RECENT: Duration = Duration::from_secs(30 * 24 * 3600);
/// Query directories remembered (by inode), and listings kept and kept
/// true after each commit.
const QUERIES_MAX: usize = 4096;
const LISTINGS_MAX: usize = 64;

/// A virtual node as the data plane answers it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VNode {
    Dir,
    /// A file made here (README, playlist): its size and version.
    File {
        size: u64,
        version: u64,
    },
    /// A track of the tree, by its inode.
    Track(u64),
}

struct Cached {
    search: Search,
    listing: Arc<Listing>,
    used: u64,
}

pub struct Views {
    worker: Worker,
    collections: RwLock<Vec<(String, Search)>>,
    max_results: AtomicUsize,
    queries: Mutex<HashMap<u64, String>>,
    listings: Mutex<HashMap<u64, Cached>>,
    tick: AtomicU64,
    sink: OnceLock<Arc<dyn InvalidationSink>>,
    /// The last query refused (logged once).
    last_refused: Mutex<String>,
    /// The mtime of the virtual nodes: when this engine started.
    pub started_ns: i64,
}

/// Checks a `[collections]` table: names that can be file names, queries
/// that parse.
pub fn validate_collections(table: &BTreeMap<String, String>) -> Result<()> {
    let (schema, _) = index::schema();
    let idx = tantivy::Index::create_in_ram(schema);
    index::register_tokenizer(&idx);
    let s = Searchable::from_index(idx)?;
    for (name, query) in table {
        if name.is_empty() || name.contains('/') || name.contains('\0') || name.starts_with('.') {
            bail!("collection name {name:?}: not empty, no '/', not starting with '.'");
        }
        if name.len() > 200 {
            bail!("collection name {name:?} is longer than 200 bytes");
        }
        if name == ALL_TRACKS || name == RECENTLY_ADDED {
            bail!("collection name {name:?} is built in");
        }
        if let Err(e) = s.parse(query) {
            bail!("collection {name:?}: query {query:?} does not parse: {e}");
        }
    }
    Ok(())
}

fn collection_list(table: &BTreeMap<String, String>) -> Vec<(String, Search)> {
    let mut v = vec![
        (ALL_TRACKS.to_string(), Search::All),
        (RECENTLY_ADDED.to_string(), Search::AddedSince(0)),
    ];
    v.extend(
        table
            .iter()
            .map(|(n, q)| (n.clone(), Search::Query(q.clone()))),
    );
    v
}

impl Views {
    pub fn new(
        state_dir: &Path,
        store: Arc<Store>,
        origin_name: Box<dyn Fn(u32) -> String + Send + Sync>,
        max_results: usize,
        collections: &BTreeMap<String, String>,
    ) -> Views {
        Views {
            worker: Worker::new(state_dir, store, origin_name),
            collections: RwLock::new(collection_list(collections)),
            max_results: AtomicUsize::new(max_results.max(1)),
            queries: Mutex::new(HashMap::new()),
            listings: Mutex::new(HashMap::new()),
            tick: AtomicU64::new(0),
            sink: OnceLock::new(),
            started_ns: crate::sys::time::now_ns(),
            last_refused: Mutex::new(String::new()),
        }
    }

    /// Where the kernel's notices for the virtual directories go.
    pub fn set_sink(&self, sink: Arc<dyn InvalidationSink>) {
        let _ = self.sink.set(sink);
    }

    /// The index writer's loop (a supervised task).
    pub fn run(&self, stop: &AtomicBool) -> Result<()> {
        self.worker.run(stop, &|| self.refresh())
    }

    /// A catalog commit: queued for the index.
    pub fn committed(&self, inval: &Invalidations) {
        self.worker.committed(inval);
    }

    pub fn set_max_results(&self, n: usize) {
        self.max_results.store(n.max(1), Ordering::Relaxed);
        self.refresh();
    }

    /// A new `[collections]` table (validated): the collections' and
    /// playlists' listings are dropped by the kernel.
    pub fn set_collections(&self, table: &BTreeMap<String, String>) {
        let old = std::mem::replace(&mut *self.collections.write(), collection_list(table));
        let mut inval = Invalidations::default();
        for (name, _) in &old {
            inval.entries.push((COLLECTIONS_DIR, name.clone()));
            inval.entries.push((PLAYLISTS_DIR, format!("{name}.m3u8")));
            self.listings
                .lock()
                .remove(&hashed_ino(Kind::Collection, name));
        }
        for (name, _) in self.collections.read().iter() {
            inval.entries.push((COLLECTIONS_DIR, name.clone()));
            inval.entries.push((PLAYLISTS_DIR, format!("{name}.m3u8")));
        }
        inval.inodes.extend([COLLECTIONS_DIR, PLAYLISTS_DIR]);
        self.notify(&inval);
    }

    fn notify(&self, inval: &Invalidations) {
        if let Some(s) = self.sink.get()
            && !inval.is_empty()
        {
            s.invalidate(inval);
        }
    }

    fn index(&self) -> Result<Arc<Searchable>, i32> {
        self.worker.current.read().clone().ok_or(libc::EAGAIN)
    }

    fn run_search(&self, search: &Search) -> Result<Arc<Listing>, i32> {
        let s = self.index()?;
        let search = match search {
            Search::AddedSince(_) => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default();
                Search::AddedSince(now.saturating_sub(RECENT).as_secs())
            }
            other => other.clone(),
        };
        match s.search(&search, self.max_results.load(Ordering::Relaxed)) {
            Ok(hits) => Ok(Arc::new(Listing::new(hits))),
            Err(e) => {
                if let Search::Query(q) = &search {
                    // A lookup is often asked twice (stat, then open): one line.
                    let mut last = self.last_refused.lock();
                    if *last != *q {
                        warn!(query = %q, "search query refused: {e:#}");
                        *last = q.clone();
                    }
                } else {
                    warn!("search failed: {e:#}");
                }
                Err(libc::ENOENT)
            }
        }
    }

    /// The listing of a query or collection directory (cached, kept true).
    fn listing(&self, dir: u64, search: &Search) -> Result<Arc<Listing>, i32> {
        let tick = self.tick.fetch_add(1, Ordering::Relaxed);
        if let Some(c) = self.listings.lock().get_mut(&dir) {
            c.used = tick;
            return Ok(c.listing.clone());
        }
        let listing = self.run_search(search)?;
        let mut evicted = None;
        {
            let mut map = self.listings.lock();
            map.insert(
                dir,
                Cached {
                    search: search.clone(),
                    listing: listing.clone(),
                    used: tick,
                },
            );
            if map.len() > LISTINGS_MAX
                && let Some(old) = map.iter().min_by_key(|(_, c)| c.used).map(|(k, _)| *k)
            {
                evicted = map.remove(&old).map(|c| (old, c));
            }
        }
        // No longer kept true: the kernel forgets it.
        if let Some((ino, c)) = evicted {
            let mut inval = Invalidations::default();
            inval.inodes.push(ino);
            for (name, _) in &c.listing.entries {
                inval.entries.push((ino, name.to_string()));
            }
            self.notify(&inval);
        }
        Ok(listing)
    }

    /// After a commit of the index: every kept listing again; what changed
    /// goes to the kernel.
    fn refresh(&self) {
        let kept: Vec<(u64, Search, Arc<Listing>)> = self
            .listings
            .lock()
            .iter()
            .map(|(k, c)| (*k, c.search.clone(), c.listing.clone()))
            .collect();
        let mut inval = Invalidations::default();
        for (dir, search, old) in kept {
            let Ok(new) = self.run_search(&search) else {
                continue;
            };
            if new.same_as(&old) {
                continue;
            }
            for name in new.changed_names(&old) {
                inval.entries.push((dir, name));
            }
            inval.inodes.push(dir);
            if kind_of(dir) == Some(Kind::Collection)
                && let Some(name) = self.collection_name(dir)
            {
                inval.inodes.push(hashed_ino(
                    Kind::Playlist,
                    &playlist_or(Kind::Playlist, &name),
                ));
            }
            if let Some(c) = self.listings.lock().get_mut(&dir) {
                c.listing = new;
            }
        }
        self.notify(&inval);
    }

    fn collection_name(&self, dir: u64) -> Option<String> {
        let kind = kind_of(dir)?;
        self.collections
            .read()
            .iter()
            .find(|(n, _)| hashed_ino(kind, &playlist_or(kind, n)) == dir)
            .map(|(n, _)| n.clone())
    }

    fn collection(&self, name: &str) -> Option<Search> {
        self.collections
            .read()
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, s)| s.clone())
    }

    /// The search behind a query or collection directory.
    fn search_of(&self, dir: u64) -> Result<Search, i32> {
        match kind_of(dir) {
            Some(Kind::Query) => self
                .queries
                .lock()
                .get(&dir)
                .map(|q| Search::Query(q.clone()))
                .ok_or(libc::ESTALE),
            Some(Kind::Collection) => self
                .collection_name(dir)
                .and_then(|n| self.collection(&n))
                .ok_or(libc::ESTALE),
            _ => Err(libc::ENOTDIR),
        }
    }

    /// A name in a virtual directory.
    pub fn lookup(&self, parent: u64, name: &str) -> Result<(u64, VNode), i32> {
        match parent {
            SEARCH_DIR if name == README_NAME => Ok((README, self.attr(README)?)),
            // What file managers and tools probe for (`.hidden`,
            // `.Trash-0`, `.git`): no query starts with a dot.
            SEARCH_DIR if name.starts_with('.') => Err(libc::ENOENT),
            SEARCH_DIR => {
                let ino = hashed_ino(Kind::Query, name);
                // Runs the query: a bad one is ENOENT.
                self.listing(ino, &Search::Query(name.to_string()))?;
                let mut q = self.queries.lock();
                if q.len() >= QUERIES_MAX && !q.contains_key(&ino) {
                    q.clear();
                }
                q.insert(ino, name.to_string());
                Ok((ino, VNode::Dir))
            }
            COLLECTIONS_DIR => {
                self.collection(name).ok_or(libc::ENOENT)?;
                Ok((hashed_ino(Kind::Collection, name), VNode::Dir))
            }
            PLAYLISTS_DIR => {
                let stem = name.strip_suffix(".m3u8").ok_or(libc::ENOENT)?;
                self.collection(stem).ok_or(libc::ENOENT)?;
                let ino = hashed_ino(Kind::Playlist, name);
                Ok((ino, self.attr(ino)?))
            }
            dir => {
                let listing = self.listing(dir, &self.search_of(dir)?)?;
                let hit = listing.get(name).ok_or(libc::ENOENT)?;
                Ok((hit.ino, VNode::Track(hit.ino)))
            }
        }
    }

    /// What a virtual inode is now.
    pub fn attr(&self, ino: u64) -> Result<VNode, i32> {
        match ino {
            SEARCH_DIR | COLLECTIONS_DIR | PLAYLISTS_DIR => Ok(VNode::Dir),
            README => Ok(VNode::File {
                size: README_TEXT.len() as u64,
                version: 1,
            }),
            _ => match kind_of(ino) {
                Some(Kind::Playlist) => {
                    let body = self.content(ino)?;
                    Ok(VNode::File {
                        size: body.len() as u64,
                        version: version_of(&body),
                    })
                }
                Some(_) => self.search_of(ino).map(|_| VNode::Dir),
                None => Err(libc::ESTALE),
            },
        }
    }

    /// The entries of a virtual directory, sorted by name.
    pub fn list(&self, dir: u64) -> Result<Vec<(Arc<str>, u64, bool)>, i32> {
        let names = |kind: Kind| -> Vec<(Arc<str>, u64, bool)> {
            let mut v: Vec<(Arc<str>, u64, bool)> = self
                .collections
                .read()
                .iter()
                .map(|(n, _)| {
                    let name = playlist_or(kind, n);
                    let ino = hashed_ino(kind, &name);
                    (Arc::from(name.as_str()), ino, kind == Kind::Collection)
                })
                .collect();
            v.sort_by(|a, b| a.0.cmp(&b.0));
            v
        };
        match dir {
            SEARCH_DIR => Ok(vec![(Arc::from(README_NAME), README, false)]),
            COLLECTIONS_DIR => Ok(names(Kind::Collection)),
            PLAYLISTS_DIR => Ok(names(Kind::Playlist)),
            _ => {
                let listing = self.listing(dir, &self.search_of(dir)?)?;
                let mut v: Vec<(Arc<str>, u64, bool)> = listing
                    .entries
                    .iter()
                    .map(|(n, h)| (n.clone(), h.ino, false))
                    .collect();
                v.sort_by(|a, b| a.0.cmp(&b.0));
                Ok(v)
            }
        }
    }

    /// The bytes of a virtual file (README, playlist).
    pub fn content(&self, ino: u64) -> Result<Arc<Vec<u8>>, i32> {
        if ino == README {
            return Ok(Arc::new(README_TEXT.as_bytes().to_vec()));
        }
        if kind_of(ino) != Some(Kind::Playlist) {
            return Err(libc::EISDIR);
        }
        let name = self.collection_name(ino).ok_or(libc::ESTALE)?;
        let search = self.collection(&name).ok_or(libc::ESTALE)?;
        let listing = self.listing(hashed_ino(Kind::Collection, &name), &search)?;
        Ok(Arc::new(listing.m3u8()))
    }

    /// The tree paths matching `query` (the CLI's `musicfs search`).
    pub fn search_paths(&self, query: &str) -> Result<Vec<String>> {
        let s = self
            .index()
            .map_err(|_| anyhow::anyhow!("the search index is being built; try again soon"))?;
        let mut hits = s.search(
            &Search::Query(query.to_string()),
            self.max_results.load(Ordering::Relaxed),
        )?;
        hits.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(hits.into_iter().map(|h| h.path).collect())
    }

    /// Rebuilds the index from the catalog and waits for it, reporting
    /// (done, total) tracks; returns the tracks indexed. `cancel` stops the
    /// wait (not the rebuild).
    pub fn rebuild(&self, progress: &mut dyn FnMut(u64, u64), cancel: &AtomicBool) -> Result<u64> {
        let ticket = self.worker.ask_rebuild();
        let deadline = std::time::Instant::now() + Duration::from_secs(24 * 3600);
        while !self.worker.rebuilt(ticket) {
            if cancel.load(Ordering::Relaxed) || std::time::Instant::now() > deadline {
                bail!("stopped waiting for the rebuild (it goes on)");
            }
            if self.worker.rebuilding.load(Ordering::Relaxed) {
                progress(
                    self.worker.progress_done.load(Ordering::Relaxed),
                    self.worker.progress_total.load(Ordering::Relaxed),
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let n = self.worker.progress_done.load(Ordering::Relaxed);
        progress(n, n);
        Ok(n)
    }

    /// Tracks in the index (None: no index open yet), and whether it is
    /// being rebuilt.
    pub fn figures(&self) -> (Option<u64>, bool) {
        (
            self.worker.current.read().as_ref().map(|s| s.num_docs()),
            self.worker.rebuilding.load(Ordering::Relaxed),
        )
    }
}

/// The name of a collection's node of `kind`: the playlist's has `.m3u8`.
fn playlist_or(kind: Kind, name: &str) -> String {
    if kind == Kind::Playlist {
        format!("{name}.m3u8")
    } else {
        name.to_string()
    }
}

/// A version number of a virtual file's bytes (its open handle).
pub fn version_of(body: &[u8]) -> u64 {
    let h = blake3::hash(body);
    let mut b = [0u8; 8];
    b.copy_from_slice(&h.as_bytes()[..8]);
    u64::from_le_bytes(b) | 1
}

/// The sink the syncer writes to: the data plane's notices first, then the
/// index's queue.
pub struct Tee {
    pub kernel: Arc<dyn InvalidationSink>,
    pub views: Arc<Views>,
}

impl InvalidationSink for Tee {
    fn invalidate(&self, inval: &Invalidations) {
        self.kernel.invalidate(inval);
        self.views.committed(inval);
    }
}

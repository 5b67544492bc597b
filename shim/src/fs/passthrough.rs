//! Open handles and the kernel's caches. A handle is the content version
//! it opened (the engine's file handle), so two handles of one inode may
//! read different files: passthrough backing ids are kept per (inode,
//! version), and at most one version of an inode reads through the page
//! cache at a time (a handle of another version meanwhile reads direct).

use std::collections::{HashMap, VecDeque};
use std::os::fd::{OwnedFd, RawFd};
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use fuser::{FileHandle, FopenFlags, ReplyOpen};
use parking_lot::Mutex;
use tracing::warn;

use crate::takeover::{Kind, Slot, StateFile};

/// Inodes remembered by the page-cache table when none of their handles is
/// open (their cached version); past it those are forgotten, and the next
/// open of one drops what the kernel cached (safe, costs a re-read).
const PAGE_CACHE_INODES_MAX: usize = 64 * 1024;

/// Backing ids kept while no handle is open, for reopens of the same
/// version (each holds its origin file open in the kernel: a file struct and its
/// inode, about 2 KB).
const IDLE_BACKINGS_MAX: usize = 8192;

/// Kernel passthrough for local origins: the engine hands over the origin
/// file and the kernel reads it directly, without a round trip per read.
/// A handle reads the content version it opened, so backing ids are kept
/// per (inode, version), shared by the handles of that version and counted.
///
/// Reopens are answered here: the version the engine last opened for an
/// inode stays current until a notice says the inode changed (or the
/// kernel drops everything), and its backing id stays registered after its
/// last close (at most `IDLE_BACKINGS_MAX` of them), so a reopen costs no
/// round trip to the engine. That is what an open from the engine would
/// give too: the engine serves the catalog's version until the change is
/// committed, and the notice follows the commit.
///
/// The kernel (Linux 6.18) takes one backing file per inode while any
/// handle on it is open, and fails any other open of that inode (EIO to the
/// caller): so an open of a new version while a handle of the old one is
/// still open fails, and is never served the old bytes. Once the old
/// handles close (the kernel drops its backing at close, before our
/// release arrives) the new version opens normally.
///
/// Ids are kept raw (fuser's `BackingId` would close them when a shim
/// drops them): they live in the connection, so a successor shim adopts
/// them from the takeover state, idle ones included, and closes each when
/// it drops it. The state forgets an id before it is closed: a shim killed
/// in between leaks it (until unmount), the other order would leave a
/// successor a closed id, or one the kernel gave again to another file.
/// The opens answered here are in the state too (`Kind::LocalOpens`): a
/// successor does not tell the engine of their releases either.
pub(super) struct Passthrough {
    pub(super) enabled: AtomicBool,
    table: Mutex<Table>,
}

#[derive(Default)]
struct Table {
    backing: HashMap<(u64, u64), Backing>,
    /// The version of each inode that reopens get.
    current: HashMap<u64, u64>,
    /// Idle backings, oldest first: (inode, version, when it went idle).
    idle: VecDeque<(u64, u64, u64)>,
    idle_count: usize,
    tick: u64,
    /// The session's /dev/fuse fd (to close backing ids on), once known.
    dev: Option<RawFd>,
    /// Where every change is recorded for a successor.
    store: Option<Arc<StateFile>>,
    /// Ids closed (unit tests look at them).
    #[cfg(test)]
    closed: Vec<u32>,
}

struct Backing {
    id: u32,
    /// Open handles the engine answered (it counts them until release).
    engine_opens: u32,
    /// Open handles answered here.
    local_opens: u32,
    /// When it went idle (no handle open), if it did.
    idle_since: Option<u64>,
}

fn backing_value(id: u32, engine_opens: u32) -> u64 {
    (u64::from(id) << 32) | u64::from(engine_opens)
}

impl Table {
    /// Records the backing id and engine opens of (ino, version).
    fn save_engine(&self, ino: u64, version: u64) {
        if let (Some(s), Some(b)) = (&self.store, self.backing.get(&(ino, version))) {
            s.set(
                Kind::Backing,
                ino,
                version,
                backing_value(b.id, b.engine_opens),
            );
        }
    }

    /// Records the opens of (ino, version) answered here.
    fn save_local(&self, ino: u64, version: u64) {
        if let (Some(s), Some(b)) = (&self.store, self.backing.get(&(ino, version))) {
            match b.local_opens {
                0 => s.remove(Kind::LocalOpens, ino, version),
                n => s.set(Kind::LocalOpens, ino, version, u64::from(n)),
            }
        }
    }

    /// Drops the backing of (ino, version): forgotten in the state, then
    /// closed in the kernel.
    fn discard(&mut self, ino: u64, version: u64) {
        let Some(b) = self.backing.remove(&(ino, version)) else {
            return;
        };
        if b.idle_since.is_some() {
            self.idle_count -= 1;
        }
        if let Some(s) = &self.store {
            s.remove(Kind::LocalOpens, ino, version);
            s.remove(Kind::Backing, ino, version);
        }
        self.close(b.id);
    }

    /// FUSE_DEV_IOC_BACKING_CLOSE of `id`.
    fn close(&mut self, id: u32) {
        #[cfg(test)]
        self.closed.push(id);
        const FUSE_DEV_IOC_BACKING_CLOSE: libc::Ioctl = 0x4004_e502;
        let Some(dev) = self.dev else {
            return;
        };
        // SAFETY: the ioctl reads one u32 from a valid pointer; `dev` is
        // the session's /dev/fuse fd, open for the life of the process.
        if unsafe { libc::ioctl(dev, FUSE_DEV_IOC_BACKING_CLOSE, &id) } < 0 {
            warn!(
                id,
                "cannot close a backing id: {}",
                std::io::Error::last_os_error()
            );
        }
    }

    /// Drops the idle backing of (ino, version), if there is one.
    fn drop_idle(&mut self, ino: u64, version: u64) {
        if self
            .backing
            .get(&(ino, version))
            .is_some_and(|b| b.idle_since.is_some())
        {
            self.discard(ino, version);
        }
    }

    /// A backing went idle: kept while it is current, oldest dropped first.
    fn went_idle(&mut self, ino: u64, version: u64) {
        if self.current.get(&ino) != Some(&version) {
            return self.discard(ino, version);
        }
        self.tick += 1;
        let tick = self.tick;
        if let Some(b) = self.backing.get_mut(&(ino, version)) {
            b.idle_since = Some(tick);
            self.idle_count += 1;
            self.idle.push_back((ino, version, tick));
        }
        while self.idle_count > IDLE_BACKINGS_MAX {
            let Some((i, v, t)) = self.idle.pop_front() else {
                break;
            };
            if self
                .backing
                .get(&(i, v))
                .is_some_and(|b| b.idle_since == Some(t))
            {
                self.discard(i, v);
            }
        }
        if self.idle.len() > 4 * IDLE_BACKINGS_MAX {
            let backing = &self.backing;
            self.idle.retain(|(i, v, t)| {
                backing
                    .get(&(*i, *v))
                    .is_some_and(|b| b.idle_since == Some(*t))
            });
        }
    }

    /// A handle of (ino, version) opens on its backing, if it has one:
    /// counted (and recorded, before the answer: a shim killed in between
    /// leaves one handle too many, never too few); returns the id.
    fn open_existing(&mut self, ino: u64, version: u64, local: bool) -> Option<u32> {
        let b = self.backing.get_mut(&(ino, version))?;
        if local {
            b.local_opens += 1;
        } else {
            b.engine_opens += 1;
        }
        let (id, was_idle) = (b.id, b.idle_since.take().is_some());
        if was_idle {
            self.idle_count -= 1;
        }
        if local {
            self.save_local(ino, version);
        } else {
            self.save_engine(ino, version);
        }
        Some(id)
    }

    /// A new backing id for (ino, version), opened by the engine.
    fn insert(&mut self, ino: u64, version: u64, id: u32) {
        let b = Backing {
            id,
            engine_opens: 1,
            local_opens: 0,
            idle_since: None,
        };
        self.backing.insert((ino, version), b);
        self.save_engine(ino, version);
    }

    /// See `Passthrough::release`.
    fn release(&mut self, ino: u64, version: u64) -> Option<bool> {
        let b = self.backing.get_mut(&(ino, version))?;
        let tell_engine = if b.local_opens > 0 {
            b.local_opens -= 1;
            false
        } else {
            b.engine_opens = b.engine_opens.saturating_sub(1);
            true
        };
        let idle = b.local_opens == 0 && b.engine_opens == 0 && b.idle_since.is_none();
        if tell_engine {
            self.save_engine(ino, version);
        } else {
            self.save_local(ino, version);
        }
        if idle {
            self.went_idle(ino, version);
        }
        Some(tell_engine)
    }

    /// Every backing that is idle goes, and no version is current.
    fn forget_all(&mut self) {
        self.current.clear();
        let idle: Vec<(u64, u64)> = self
            .backing
            .iter()
            .filter(|(_, b)| b.idle_since.is_some())
            .map(|(k, _)| *k)
            .collect();
        for (i, v) in idle {
            self.discard(i, v);
        }
        self.idle.clear();
        self.idle_count = 0;
    }

    /// Takes over a predecessor's backings. None is current (the engine's
    /// notices while no shim ran are lost): the idle ones are closed now.
    fn adopt(&mut self, slots: &[Slot]) -> usize {
        let mut local: HashMap<(u64, u64), u32> = HashMap::new();
        for s in slots.iter().filter(|s| s.kind == Kind::LocalOpens) {
            local.insert((s.ino, s.fh), u32::try_from(s.value).unwrap_or(u32::MAX));
        }
        for s in slots.iter().filter(|s| s.kind == Kind::Backing) {
            let b = Backing {
                id: (s.value >> 32) as u32,
                engine_opens: s.value as u32,
                local_opens: local.get(&(s.ino, s.fh)).copied().unwrap_or(0),
                idle_since: None,
            };
            self.backing.insert((s.ino, s.fh), b);
        }
        let idle: Vec<(u64, u64)> = self
            .backing
            .iter()
            .filter(|(_, b)| b.engine_opens == 0 && b.local_opens == 0)
            .map(|(k, _)| *k)
            .collect();
        for (i, v) in idle {
            self.discard(i, v);
        }
        self.backing.len()
    }
}

impl Passthrough {
    pub(super) fn new(enabled: bool) -> Passthrough {
        Passthrough {
            enabled: AtomicBool::new(enabled),
            table: Mutex::new(Table::default()),
        }
    }

    /// The session's /dev/fuse fd: backing ids are closed on it.
    pub(super) fn set_dev(&self, dev: RawFd) {
        self.table.lock().dev = Some(dev);
    }

    /// From now on every change is recorded in `state`.
    pub(super) fn attach(&self, state: &Arc<StateFile>) {
        self.table.lock().store = Some(state.clone());
    }

    /// Takes over a predecessor's backing ids (after `set_dev` and
    /// `attach`); returns how many stay (those with open handles).
    pub(super) fn adopt(&self, slots: &[Slot]) -> usize {
        self.table.lock().adopt(slots)
    }

    /// Answers `reply` by passthrough with backing `id` (kept open).
    fn send(reply: ReplyOpen, fh: u64, id: u32) {
        // SAFETY: `id` is open in this connection (created by this shim or
        // a predecessor, recorded in the table) and stays open: the
        // wrapper is turned back into the raw id at once, never dropped.
        let b = unsafe { reply.wrap_backing(id) };
        reply.opened_passthrough(FileHandle(fh), FopenFlags::FOPEN_NOFLUSH, &b);
        let _ = b.into_raw();
    }

    /// Answers an open of `ino` here if its current version has a backing
    /// id; gives the reply back otherwise (the engine must answer).
    pub(super) fn open_cached(&self, ino: u64, reply: ReplyOpen) -> Option<ReplyOpen> {
        if !self.enabled.load(Ordering::Relaxed) {
            return Some(reply);
        }
        let mut t = self.table.lock();
        let Some(&version) = t.current.get(&ino) else {
            return Some(reply);
        };
        let Some(id) = t.open_existing(ino, version, true) else {
            return Some(reply);
        };
        Self::send(reply, version, id);
        None
    }

    /// Replies to an open of version `fh` with the origin file `fd`, by
    /// passthrough if the kernel takes it, else as a plain open through
    /// `cache`.
    pub(super) fn reply(
        &self,
        reply: ReplyOpen,
        ino: u64,
        fh: u64,
        fd: &OwnedFd,
        cache: &PageCache,
    ) {
        let mut t = self.table.lock();
        let previous = t.current.insert(ino, fh).filter(|old| *old != fh);
        if let Some(old) = previous {
            t.drop_idle(ino, old);
        }
        if let Some(id) = t.open_existing(ino, fh, false) {
            return Self::send(reply, fh, id);
        }
        // The previous version's backing is left only if handles hold it
        // (its idle one was just dropped). Looked up by key: a scan of the
        // table cost every open that missed about 10 us at 8,192 idle ids.
        if let Some((old, b)) = previous.and_then(|old| Some((old, t.backing.get(&(ino, old))?))) {
            warn!(
                ino,
                old_version = old,
                open_handles = b.engine_opens + b.local_opens,
                "the file changed while handles of its previous version may still be open by passthrough; the kernel takes one backing file per inode, so until they close this open fails (passthrough = false avoids it)"
            );
        }
        match reply.open_backing(fd) {
            Ok(id) => {
                let id = id.into_raw();
                t.insert(ino, fh, id);
                Self::send(reply, fh, id);
            }
            Err(e) => {
                t.current.remove(&ino);
                if self.enabled.swap(false, Ordering::Relaxed) {
                    warn!("kernel passthrough unavailable ({e}); reads go through the engine");
                }
                reply.opened(
                    FileHandle(fh),
                    cache.open(ino, fh, true).0 | FopenFlags::FOPEN_NOFLUSH,
                );
            }
        }
    }

    /// A handle of version `fh` was released: None if it was not a
    /// passthrough handle, else whether the engine must be told (it
    /// answered as many opens of that version as it is told releases).
    pub(super) fn release(&self, ino: u64, fh: u64) -> Option<bool> {
        self.table.lock().release(ino, fh)
    }
}

impl crate::kcache::OpenCache for Passthrough {
    fn forget(&self, ino: u64) {
        let mut t = self.table.lock();
        if let Some(v) = t.current.remove(&ino) {
            t.drop_idle(ino, v);
        }
    }

    fn forget_all(&self) {
        self.table.lock().forget_all();
    }
}

/// Per inode: whose bytes its page cache holds, and the open handles by
/// version.
#[derive(Default)]
pub(super) struct InodeCache {
    pub(super) cached: u64,
    pub(super) open: HashMap<u64, u32>,
}

/// The page cache policy for handles read through the shim.
#[derive(Default)]
pub(super) struct PageCache {
    pub(super) inodes: Mutex<HashMap<u64, InodeCache>>,
    /// Where every change is recorded for a successor.
    pub(super) store: OnceLock<Arc<StateFile>>,
}

impl PageCache {
    /// The open flags for a handle of version `fh` of `ino`:
    /// - no handle of another version is open: it reads through the page
    ///   cache, kept if it already holds this version (and the engine lets
    ///   it keep it), else dropped by the kernel at this open;
    /// - another version is open and the cache holds this one: kept;
    /// - another version owns the cache: this handle reads direct, so the
    ///   two never see each other's pages.
    ///
    /// Also says whether this open takes the cache over from another
    /// version: then the kernel's attributes must be dropped first, since
    /// short reads of the other (shorter) version may have cut its size.
    pub(super) fn open(&self, ino: u64, fh: u64, engine_keeps: bool) -> (FopenFlags, bool) {
        let mut inodes = self.inodes.lock();
        let store = self.store.get();
        if inodes.len() >= PAGE_CACHE_INODES_MAX && !inodes.contains_key(&ino) {
            inodes.retain(|i, c| {
                let keep = !c.open.is_empty();
                if !keep && let Some(s) = store {
                    s.remove(Kind::CacheOwner, *i, 0);
                }
                keep
            });
        }
        let c = inodes.entry(ino).or_default();
        let others = c.open.keys().any(|v| *v != fh);
        let mut switched = false;
        let flags = if !others {
            let keep = c.cached == fh && engine_keeps;
            switched = c.cached != 0 && c.cached != fh;
            c.cached = fh;
            if keep {
                FopenFlags::FOPEN_KEEP_CACHE
            } else {
                FopenFlags::empty()
            }
        } else if c.cached == fh {
            FopenFlags::FOPEN_KEEP_CACHE
        } else {
            FopenFlags::FOPEN_DIRECT_IO
        };
        let opens = c.open.entry(fh).or_insert(0);
        *opens += 1;
        if let Some(s) = store {
            // Before the answer: too many handles is safe, too few is not.
            s.set(Kind::CacheOpen, ino, fh, u64::from(*opens));
            s.set(Kind::CacheOwner, ino, 0, c.cached);
        }
        (flags, switched)
    }

    /// A handle of version `fh` of `ino` was released.
    pub(super) fn release(&self, ino: u64, fh: u64) {
        let mut inodes = self.inodes.lock();
        let Some(c) = inodes.get_mut(&ino) else {
            return;
        };
        if let Some(n) = c.open.get_mut(&fh) {
            *n = n.saturating_sub(1);
            let left = *n;
            if left == 0 {
                c.open.remove(&fh);
            }
            if let Some(s) = self.store.get() {
                match left {
                    0 => s.remove(Kind::CacheOpen, ino, fh),
                    n => s.set(Kind::CacheOpen, ino, fh, u64::from(n)),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One version reads through the cache at a time; a second version
    /// open at once reads direct; once alone, a new version drops the
    /// cache and takes it over.
    #[test]
    fn one_version_per_inode_reads_through_the_page_cache() {
        let c = PageCache::default();
        let (empty, keep, direct) = (
            FopenFlags::empty(),
            FopenFlags::FOPEN_KEEP_CACHE,
            FopenFlags::FOPEN_DIRECT_IO,
        );
        assert_eq!(c.open(5, 11, true), (empty, false)); // nothing cached yet
        assert_eq!(c.open(5, 11, true), (keep, false));
        assert_eq!(c.open(5, 22, true), (direct, false));
        c.release(5, 11);
        c.release(5, 11);
        // 22 is still open (direct); a second 22 is alone among versions
        // and takes the cache over from 11.
        assert_eq!(c.open(5, 22, true), (empty, true));
        c.release(5, 22);
        c.release(5, 22);
        assert_eq!(c.open(5, 22, true), (keep, false));
        assert_eq!(c.open(6, 22, true), (empty, false));
        assert_eq!(c.open(6, 22, false), (empty, false));
    }

    fn slots_of(state: &StateFile) -> Vec<Slot> {
        let dup = state.fd().try_clone_to_owned().unwrap();
        let (_, _, mut slots) = StateFile::open(dup).unwrap();
        slots.sort_by_key(|s| (s.ino, s.fh, s.kind as u32));
        slots
    }

    fn table_with_state() -> (Table, Arc<StateFile>) {
        let n = crate::takeover::Negotiated {
            init_in: [0; 64],
            init_out: [0; 64],
            passthrough: true,
        };
        let state = Arc::new(StateFile::create(&n).unwrap());
        let t = Table {
            store: Some(state.clone()),
            ..Table::default()
        };
        (t, state)
    }

    /// Idle backing ids and the opens answered here are in the state; a
    /// successor keeps the ids with open handles (and does not tell the
    /// engine of the local ones' releases), and closes the idle ones,
    /// each forgotten in the state before it is closed.
    #[test]
    fn idle_ids_and_local_opens_go_through_the_state() {
        let (mut a, state) = table_with_state();
        // (5, 11): opened by the engine, then once here, engine's closed.
        a.current.insert(5, 11);
        a.insert(5, 11, 40);
        assert_eq!(a.open_existing(5, 11, true), Some(40));
        assert_eq!(a.release(5, 11), Some(false), "the local open first");
        // (6, 22): opened by the engine, closed: idle (and current).
        a.current.insert(6, 22);
        a.insert(6, 22, 41);
        assert_eq!(a.release(6, 22), Some(true));
        assert!(a.backing[&(6, 22)].idle_since.is_some());
        assert!(a.closed.is_empty(), "idle ids stay open");
        // (7, 33): opened by the engine and twice here.
        a.current.insert(7, 33);
        a.insert(7, 33, 42);
        a.open_existing(7, 33, true);
        a.open_existing(7, 33, true);
        let slots = slots_of(&state);
        let value = |k, i| {
            slots
                .iter()
                .find(|s| s.kind == k && s.ino == i)
                .map(|s| s.value)
        };
        assert_eq!(value(Kind::Backing, 5), Some((40 << 32) | 1));
        assert_eq!(value(Kind::LocalOpens, 5), None);
        assert_eq!(value(Kind::Backing, 6), Some(41 << 32), "idle, recorded");
        assert_eq!(value(Kind::LocalOpens, 7), Some(2));

        let mut b = Table {
            store: Some(state.clone()),
            ..Table::default()
        };
        assert_eq!(b.adopt(&slots), 2);
        assert_eq!(b.closed, vec![41], "the idle id is closed by the successor");
        assert!(!slots_of(&state).iter().any(|s| s.ino == 6));
        // The local releases stay here; the engine's goes to it.
        assert_eq!(b.release(7, 33), Some(false));
        assert_eq!(b.release(7, 33), Some(false));
        assert_eq!(b.release(7, 33), Some(true));
        // Not current in the successor: closed at once, forgotten first.
        assert_eq!(b.closed, vec![41, 42]);
        assert!(!slots_of(&state).iter().any(|s| s.ino == 7));
        assert_eq!(b.release(5, 11), Some(true));
        assert_eq!(b.closed, vec![41, 42, 40]);
        assert!(slots_of(&state).is_empty());
    }

    /// Idle ids past the limit, and all of them at "everything", are
    /// closed and leave the state.
    #[test]
    fn dropped_idle_ids_are_closed_and_forgotten() {
        let (mut t, state) = table_with_state();
        for i in 0..(IDLE_BACKINGS_MAX as u64 + 2) {
            t.current.insert(i, 1);
            t.insert(i, 1, i as u32);
            t.release(i, 1);
        }
        assert_eq!(t.closed, vec![0, 1], "the oldest go first");
        assert_eq!(t.idle_count, IDLE_BACKINGS_MAX);
        assert_eq!(slots_of(&state).len(), IDLE_BACKINGS_MAX);
        // A notice drops one, "everything" the rest.
        if let Some(v) = t.current.remove(&5) {
            t.drop_idle(5, v);
        }
        assert_eq!(t.closed.len(), 3);
        t.forget_all();
        assert_eq!(t.closed.len(), IDLE_BACKINGS_MAX + 2);
        assert!(t.backing.is_empty() && slots_of(&state).is_empty());
    }
}

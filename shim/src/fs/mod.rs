//! The FUSE side: every operation becomes a request to the engine whose
//! completion (run by the transport's reader thread) sends the FUSE reply.
//! FUSE threads never wait on the engine. Write-type operations are answered
//! here with EROFS.

mod passthrough;
mod tables;
mod wire;

pub use tables::Tables;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use fuser::{
    AccessFlags, BsdFileFlags, Errno, FileHandle, Filesystem, FopenFlags, Generation, INodeNo,
    InitFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite,
    ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use musicfs_schema::response;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};

use tracing::{debug, info};

use crate::kcache::KernelCache;
use crate::rpc::{Resp, Transport};
use passthrough::{PageCache, Passthrough};
use wire::{
    Owner, attr_from, body, ends_listing, entry_from, kind_of, readdir_request, reply_xattr,
};

pub struct ShimFs {
    t: Transport,
    uid: u32,
    gid: u32,
    passthrough: Arc<Passthrough>,
    page_cache: Arc<PageCache>,
    /// The session's notifier, once the session exists (for attribute
    /// invalidations the open path needs at once).
    notifier: Arc<OnceLock<fuser::Notifier>>,
    /// What the kernel offered at INIT (kept for a successor shim).
    offer: Arc<OnceLock<crate::takeover::KernelOffer>>,
    /// What the kernel may cache, and the TTLs it may cache it for.
    kcache: Arc<KernelCache>,
}

/// The open flags of a handle read through the page cache. When it takes
/// the cache over from another version of the file, the kernel's cached
/// attributes are dropped before the answer (offset -1: attributes only),
/// so its next read past the old size asks for the new one.
fn cache_flags(
    cache: &PageCache,
    notifier: &OnceLock<fuser::Notifier>,
    ino: u64,
    fh: u64,
    engine_keeps: bool,
) -> FopenFlags {
    let (flags, switched) = cache.open(ino, fh, engine_keeps);
    if switched
        && let Some(n) = notifier.get()
        && let Err(e) = n.inval_inode(INodeNo(ino), -1, 0)
        && e.raw_os_error() != Some(libc::ENOENT)
    {
        debug!(ino, "attribute invalidation not delivered: {e}");
    }
    // Read-only: a close needs no flush round trip.
    flags | FopenFlags::FOPEN_NOFLUSH
}

impl ShimFs {
    pub fn new(
        t: Transport,
        passthrough: bool,
        notifier: Arc<OnceLock<fuser::Notifier>>,
        kcache: Arc<KernelCache>,
    ) -> ShimFs {
        // The open cache is given to `kcache` by whoever keeps this
        // filesystem (`Tables::open_cache`): a probe's must not be.
        let passthrough = Arc::new(Passthrough::new(passthrough));
        ShimFs {
            notifier,
            offer: Arc::default(),
            kcache,
            t,
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
            passthrough,
            page_cache: Arc::new(PageCache::default()),
        }
    }
}

impl ShimFs {
    /// The handle tables, shared with this filesystem.
    pub fn tables(&self) -> Tables {
        Tables {
            passthrough: self.passthrough.clone(),
            page_cache: self.page_cache.clone(),
        }
    }

    /// Filled by `init` with the kernel's offer.
    pub fn kernel_offer(&self) -> Arc<OnceLock<crate::takeover::KernelOffer>> {
        self.offer.clone()
    }

    fn owner(&self) -> Owner {
        Owner {
            uid: self.uid,
            gid: self.gid,
        }
    }
}

/// Notes a request the kernel resent after a shim died (bit 63 in its
/// id): fuser answers it with that exact id.
fn note_resent(req: &Request) {
    if req.unique().0 >> 63 == 1 {
        info!(
            id = format_args!("{:#x}", req.unique().0),
            "answering a request the kernel resent"
        );
    }
}

impl Filesystem for ShimFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        self.kcache.set_kernel_minor(config.kernel_abi().1);
        let mut wanted = InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_READDIRPLUS_AUTO
            | InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_AUTO_INVAL_DATA;
        if self.passthrough.enabled.load(Ordering::Relaxed) {
            wanted |= InitFlags::FUSE_PASSTHROUGH;
        }
        if let Err(unsupported) = config.add_capabilities(wanted) {
            debug!("kernel lacks FUSE capabilities {unsupported:?}");
            let _ = config.add_capabilities(wanted - unsupported);
            if unsupported.contains(InitFlags::FUSE_PASSTHROUGH) {
                self.passthrough.enabled.store(false, Ordering::Relaxed);
            }
        }
        if self.passthrough.enabled.load(Ordering::Relaxed)
            && config.set_max_stack_depth(1).is_err()
        {
            self.passthrough.enabled.store(false, Ordering::Relaxed);
        }
        info!(
            passthrough = self.passthrough.enabled.load(Ordering::Relaxed),
            "FUSE session initialised"
        );
        let _ = config.set_max_background(64);
        let _ = self.offer.set(crate::takeover::KernelOffer::record(config));
        Ok(())
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        note_resent(req);
        let owner = self.owner();
        let kcache = self.kcache.clone();
        self.t.call(
            "lookup",
            |r| {
                let mut l = r.init_lookup();
                l.set_parent(parent.0);
                l.set_name(name.as_bytes());
            },
            move |res| match body(res) {
                // A miss is an entry of inode 0: the kernel keeps it as a
                // negative entry for its TTL (the engine pushes the name
                // when it appears).
                Ok(response::Entry(Ok(e))) => match entry_from(e, owner) {
                    Ok(e) => reply.entry(&kcache.ttl(e.ttl), &e.attr, Generation(e.generation)),
                    Err(_) => reply.error(Errno::EIO),
                },
                Ok(_) => reply.error(Errno::EIO),
                Err(errno) => reply.error(errno),
            },
        );
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.t.send_oneway(|r| {
            let mut items = r.init_forget(1);
            items.reborrow().get(0).set_ino(ino.0);
            items.reborrow().get(0).set_nlookup(nlookup);
        });
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let owner = self.owner();
        let kcache = self.kcache.clone();
        self.t.call(
            "getattr",
            |mut r| r.set_getattr(ino.0),
            move |res| match body(res) {
                Ok(response::Attr(a)) => match a.get_attr() {
                    Ok(attr) => reply.attr(
                        &kcache.ttl(Duration::from_millis(u64::from(a.get_ttl_ms()))),
                        &attr_from(attr, owner),
                    ),
                    Err(_) => reply.error(Errno::EIO),
                },
                Ok(_) => reply.error(Errno::EIO),
                Err(errno) => reply.error(errno),
            },
        );
    }

    /// Directories open without a word to the engine: ENOSYS makes the
    /// kernel stop sending opendir and releasedir (`no_opendir`), and open
    /// every directory with `FOPEN_KEEP_CACHE | FOPEN_CACHE_DIR`, so a
    /// cached listing costs no round trip. readdir then carries no handle;
    /// the engine keeps what a reader started on by the offsets.
    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        reply.error(Errno::ENOSYS);
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        self.kcache.note_dir(ino.0);
        if self.kcache.take_eof(ino.0, offset) {
            return reply.ok();
        }
        let kcache = self.kcache.clone();
        self.t.call(
            "readdir",
            |r| readdir_request(r, ino, fh, offset, false),
            move |res| {
                let entries = match body(res) {
                    Ok(response::Entries(Ok(e))) => e,
                    Ok(_) => return reply.error(Errno::EIO),
                    Err(errno) => return reply.error(errno),
                };
                let (mut added, mut last) = (0, 0);
                for e in entries.iter() {
                    let (Ok(name), Ok(entry)) = (e.get_name(), e.get_entry()) else {
                        continue;
                    };
                    let Ok(a) = entry.get_attr() else { continue };
                    if reply.add(
                        INodeNo(a.get_ino()),
                        e.get_offset(),
                        kind_of(a),
                        OsStr::from_bytes(name),
                    ) {
                        break;
                    }
                    (added, last) = (added + 1, e.get_offset());
                }
                if ends_listing(added, entries.len(), false) {
                    kcache.note_eof(ino.0, last);
                }
                reply.ok();
            },
        );
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        self.kcache.note_dir(ino.0);
        if self.kcache.take_eof(ino.0, offset) {
            return reply.ok();
        }
        let owner = self.owner();
        let kcache = self.kcache.clone();
        self.t.call(
            "readdirplus",
            |r| readdir_request(r, ino, fh, offset, true),
            move |res| {
                let entries = match body(res) {
                    Ok(response::Entries(Ok(e))) => e,
                    Ok(_) => return reply.error(Errno::EIO),
                    Err(errno) => return reply.error(errno),
                };
                let (mut added, mut last) = (0, 0);
                for e in entries.iter() {
                    let (Ok(name), Ok(entry)) = (e.get_name(), e.get_entry()) else {
                        continue;
                    };
                    let Ok(entry) = entry_from(entry, owner) else {
                        continue;
                    };
                    if reply.add(
                        entry.attr.ino,
                        e.get_offset(),
                        OsStr::from_bytes(name),
                        &kcache.ttl(entry.ttl),
                        &entry.attr,
                        Generation(entry.generation),
                    ) {
                        break;
                    }
                    (added, last) = (added + 1, e.get_offset());
                }
                if ends_listing(added, entries.len(), true) {
                    kcache.note_eof(ino.0, last);
                }
                reply.ok();
            },
        );
    }

    fn releasedir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        // The kernel ignores releasedir errors: answer now, tell the engine after.
        reply.ok();
        self.t.send_oneway(|r| {
            let mut p = r.init_releasedir();
            p.set_ino(ino.0);
            p.set_fh(fh.0);
        });
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        note_resent(req);
        let raw = flags.0;
        if raw & (libc::O_WRONLY | libc::O_RDWR | libc::O_TRUNC | libc::O_APPEND) != 0 {
            return reply.error(Errno::EROFS);
        }
        // A reopen of the version the engine last opened (and no notice
        // changed since) is answered here.
        let Some(reply) = self.passthrough.open_cached(ino.0, reply) else {
            return;
        };
        let pt = self.passthrough.clone();
        let cache = self.page_cache.clone();
        let notifier = self.notifier.clone();
        let want_fd = pt.enabled.load(Ordering::Relaxed);
        self.t.call(
            "open",
            |r| {
                let mut o = r.init_open();
                o.set_ino(ino.0);
                o.set_flags(raw as u32);
                o.set_passthrough(want_fd);
            },
            move |res| match res {
                Ok(Resp { msg, fd: Some(fd) }) if msg.get_errno() == 0 => match msg.which() {
                    Ok(response::Opened(o)) if pt.enabled.load(Ordering::Relaxed) => {
                        pt.reply(reply, ino.0, o.get_fh(), &fd, &cache);
                    }
                    Ok(response::Opened(o)) => {
                        let fh = o.get_fh();
                        reply.opened(
                            FileHandle(fh),
                            cache_flags(&cache, &notifier, ino.0, fh, o.get_keep_cache()),
                        )
                    }
                    _ => reply.error(Errno::EIO),
                },
                res => match body(res) {
                    Ok(response::Opened(o)) => {
                        let fh = o.get_fh();
                        reply.opened(
                            FileHandle(fh),
                            cache_flags(&cache, &notifier, ino.0, fh, o.get_keep_cache()),
                        );
                    }
                    Ok(_) => reply.error(Errno::EIO),
                    Err(errno) => reply.error(errno),
                },
            },
        );
    }

    fn read(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        note_resent(req);
        self.t.call(
            "read",
            |r| {
                let mut p = r.init_read();
                p.set_ino(ino.0);
                p.set_fh(fh.0);
                p.set_offset(offset);
                p.set_size(size);
            },
            move |res| match body(res) {
                Ok(response::Data(Ok(data))) => reply.data(data),
                Ok(_) => reply.error(Errno::EIO),
                Err(errno) => reply.error(errno),
            },
        );
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        // The kernel ignores release errors: answer now, tell the engine after.
        reply.ok();
        match self.passthrough.release(ino.0, fh.0) {
            Some(false) => return, // opened here: the engine never saw it
            Some(true) => {}
            None => self.page_cache.release(ino.0, fh.0),
        }
        self.t.send_oneway(|r| {
            let mut p = r.init_release();
            p.set_ino(ino.0);
            p.set_fh(fh.0);
        });
    }

    fn statfs(&self, _req: &Request, ino: INodeNo, reply: ReplyStatfs) {
        self.t.call(
            "statfs",
            |mut r| r.set_statfs(ino.0),
            move |res| match body(res) {
                Ok(response::Statfs(Ok(s))) => reply.statfs(
                    s.get_blocks(),
                    s.get_bfree(),
                    s.get_bavail(),
                    s.get_files(),
                    s.get_ffree(),
                    s.get_bsize(),
                    s.get_namelen(),
                    s.get_frsize(),
                ),
                Ok(_) => reply.error(Errno::EIO),
                Err(errno) => reply.error(errno),
            },
        );
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        self.t.call(
            "readlink",
            |mut r| r.set_readlink(ino.0),
            move |res| match body(res) {
                Ok(response::Data(Ok(target))) => reply.data(target),
                Ok(_) => reply.error(Errno::EIO),
                Err(errno) => reply.error(errno),
            },
        );
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        self.t.call(
            "getxattr",
            |r| {
                let mut g = r.init_getxattr();
                g.set_ino(ino.0);
                g.set_name(name.as_bytes());
            },
            move |res| match body(res) {
                Ok(response::Data(Ok(v))) => reply_xattr(reply, size, Ok(v)),
                Ok(_) => reply.error(Errno::EIO),
                Err(errno) => reply.error(errno),
            },
        );
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        self.t.call(
            "listxattr",
            |mut r| r.set_listxattr(ino.0),
            move |res| match body(res) {
                Ok(response::Names(Ok(names))) => {
                    let mut out = Vec::new();
                    for n in names.iter().flatten() {
                        out.extend_from_slice(n);
                        out.push(0);
                    }
                    reply_xattr(reply, size, Ok(&out));
                }
                Ok(_) => reply.error(Errno::EIO),
                Err(errno) => reply.error(errno),
            },
        );
    }

    fn access(&self, _req: &Request, _ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        if mask.contains(AccessFlags::W_OK) {
            reply.error(Errno::EROFS);
        } else {
            reply.ok();
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    // Everything below would change the filesystem: it is read-only.

    fn setattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        _size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        reply.error(Errno::EROFS);
    }

    fn mknod(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn mkdir(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn unlink(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn rmdir(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn symlink(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _link_name: &OsStr,
        _target: &Path,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn rename(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _newparent: INodeNo,
        _newname: &OsStr,
        _flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS);
    }

    fn link(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _newparent: INodeNo,
        _newname: &OsStr,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        reply.error(Errno::EROFS);
    }

    fn create(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        reply.error(Errno::EROFS);
    }

    fn setxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS);
    }

    fn removexattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _length: u64,
        _mode: i32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS);
    }
}

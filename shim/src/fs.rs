//! The FUSE side: every operation is turned into a job for the RPC thread and
//! answered from there after the round trip. FUSE threads never wait on the
//! engine. Write-type operations are answered here with EROFS.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, BsdFileFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, InitFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr,
    ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen,
    ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use musicfs_schema::{NodeKind, attr, entry};
use tokio::sync::mpsc;
use tracing::{debug, error};

use crate::rpc::{CallError, Job, Link};

/// Entries asked for per readdir round trip; the kernel's buffer (usually one
/// page) takes what fits and asks again from the next offset.
const READDIR_BATCH: u32 = 128;
const READDIRPLUS_BATCH: u32 = 48;

pub struct ShimFs {
    jobs: mpsc::Sender<Job>,
    uid: u32,
    gid: u32,
}

impl ShimFs {
    pub fn new(jobs: mpsc::Sender<Job>) -> ShimFs {
        ShimFs {
            jobs,
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
        }
    }

    /// Queues a job for the RPC thread. If that thread is gone the job, and the
    /// reply inside it, is dropped, which answers the kernel with EIO.
    fn submit<F, Fut>(&self, f: F)
    where
        F: FnOnce(Rc<Link>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + 'static,
    {
        let job: Job = Box::new(move |link| Box::pin(f(link)));
        if self.jobs.blocking_send(job).is_err() {
            error!("the RPC thread is gone; failing the request with EIO");
        }
    }
}

/// Converts a wire result: the outer error is engine trouble, the inner an errno.
fn finish<T>(res: Result<Result<T, i32>, CallError>) -> Result<T, Errno> {
    match res {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(errno)) => Err(Errno::from_i32(errno)),
        Err(e) => Err(e.errno()),
    }
}

fn to_time(ns: i64) -> SystemTime {
    if ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    } else {
        UNIX_EPOCH
    }
}

#[derive(Clone, Copy)]
struct Owner {
    uid: u32,
    gid: u32,
}

fn attr_from(a: attr::Reader<'_>, owner: Owner) -> FileAttr {
    let t = to_time(a.get_mtime_ns());
    let kind = match a.get_kind() {
        Ok(NodeKind::Directory) => FileType::Directory,
        Ok(NodeKind::Symlink) => FileType::Symlink,
        _ => FileType::RegularFile,
    };
    FileAttr {
        ino: INodeNo(a.get_ino()),
        size: a.get_size_bytes(),
        blocks: a.get_blocks(),
        atime: t,
        mtime: t,
        ctime: t,
        crtime: t,
        kind,
        perm: a.get_perm(),
        nlink: a.get_nlink(),
        uid: owner.uid,
        gid: owner.gid,
        rdev: 0,
        blksize: 128 * 1024,
        flags: 0,
    }
}

struct OwnedEntry {
    attr: FileAttr,
    generation: u64,
    ttl: Duration,
}

fn entry_from(e: entry::Reader<'_>, owner: Owner) -> capnp::Result<OwnedEntry> {
    Ok(OwnedEntry {
        attr: attr_from(e.get_attr()?, owner),
        generation: e.get_generation(),
        ttl: Duration::from_millis(u64::from(e.get_entry_ttl_ms())),
    })
}

impl ShimFs {
    fn owner(&self) -> Owner {
        Owner {
            uid: self.uid,
            gid: self.gid,
        }
    }
}

impl Filesystem for ShimFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let wanted = InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_READDIRPLUS_AUTO
            | InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_AUTO_INVAL_DATA;
        if let Err(unsupported) = config.add_capabilities(wanted) {
            debug!("kernel lacks FUSE capabilities {unsupported:?}");
            let _ = config.add_capabilities(wanted - unsupported);
        }
        let _ = config.set_max_background(64);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let name = name.as_bytes().to_vec();
        let owner = self.owner();
        self.submit(move |link| async move {
            let res = link
                .call("lookup", |fs| {
                    let mut req = fs.lookup_request();
                    req.get().set_parent(parent.0);
                    req.get().set_name(&name);
                    async move {
                        let resp = req.send().promise.await?;
                        let r = resp.get()?;
                        if r.get_errno() != 0 {
                            return Ok(Err(r.get_errno()));
                        }
                        Ok(Ok(entry_from(r.get_entry()?, owner)?))
                    }
                })
                .await;
            match finish(res) {
                Ok(e) => reply.entry(&e.ttl, &e.attr, Generation(e.generation)),
                Err(errno) => reply.error(errno),
            }
        });
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.submit(move |link| async move {
            let _ = link
                .call("forget", |fs| {
                    let mut req = fs.forget_request();
                    let mut items = req.get().init_items(1);
                    items.reborrow().get(0).set_ino(ino.0);
                    items.reborrow().get(0).set_nlookup(nlookup);
                    async move { req.send().promise.await.map(|_| ()) }
                })
                .await;
        });
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let owner = self.owner();
        self.submit(move |link| async move {
            let res = link
                .call("getattr", |fs| {
                    let mut req = fs.getattr_request();
                    req.get().set_ino(ino.0);
                    async move {
                        let resp = req.send().promise.await?;
                        let r = resp.get()?;
                        if r.get_errno() != 0 {
                            return Ok(Err(r.get_errno()));
                        }
                        let ttl = Duration::from_millis(u64::from(r.get_attr_ttl_ms()));
                        Ok(Ok((attr_from(r.get_attr()?, owner), ttl)))
                    }
                })
                .await;
            match finish(res) {
                Ok((attr, ttl)) => reply.attr(&ttl, &attr),
                Err(errno) => reply.error(errno),
            }
        });
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        self.submit(move |link| async move {
            let res = link
                .call("opendir", |fs| {
                    let mut req = fs.opendir_request();
                    req.get().set_ino(ino.0);
                    req.get().set_flags(flags.0 as u32);
                    async move {
                        let resp = req.send().promise.await?;
                        let r = resp.get()?;
                        if r.get_errno() != 0 {
                            return Ok(Err(r.get_errno()));
                        }
                        Ok(Ok(r.get_fh()))
                    }
                })
                .await;
            match finish(res) {
                Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE),
                Err(errno) => reply.error(errno),
            }
        });
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        self.submit(move |link| async move {
            let res = link
                .call("readdir", |fs| {
                    let mut req = fs.readdir_request();
                    {
                        let mut p = req.get();
                        p.set_ino(ino.0);
                        p.set_fh(fh.0);
                        p.set_offset(offset);
                        p.set_max_entries(READDIR_BATCH);
                        p.set_plus(false);
                    }
                    async move { req.send().promise.await }
                })
                .await;
            let resp = match res {
                Ok(resp) => resp,
                Err(e) => return reply.error(e.errno()),
            };
            let r = match resp.get() {
                Ok(r) => r,
                Err(_) => return reply.error(Errno::EIO),
            };
            if r.get_errno() != 0 {
                return reply.error(Errno::from_i32(r.get_errno()));
            }
            let Ok(entries) = r.get_entries() else {
                return reply.error(Errno::EIO);
            };
            for e in entries.iter() {
                let (Ok(name), Ok(entry)) = (e.get_name(), e.get_entry()) else {
                    continue;
                };
                let Ok(a) = entry.get_attr() else { continue };
                let kind = match a.get_kind() {
                    Ok(NodeKind::Directory) => FileType::Directory,
                    Ok(NodeKind::Symlink) => FileType::Symlink,
                    _ => FileType::RegularFile,
                };
                if reply.add(
                    INodeNo(a.get_ino()),
                    e.get_offset(),
                    kind,
                    OsStr::from_bytes(name),
                ) {
                    break;
                }
            }
            reply.ok();
        });
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let owner = self.owner();
        self.submit(move |link| async move {
            let res = link
                .call("readdirplus", |fs| {
                    let mut req = fs.readdir_request();
                    {
                        let mut p = req.get();
                        p.set_ino(ino.0);
                        p.set_fh(fh.0);
                        p.set_offset(offset);
                        p.set_max_entries(READDIRPLUS_BATCH);
                        p.set_plus(true);
                    }
                    async move { req.send().promise.await }
                })
                .await;
            let resp = match res {
                Ok(resp) => resp,
                Err(e) => return reply.error(e.errno()),
            };
            let r = match resp.get() {
                Ok(r) => r,
                Err(_) => return reply.error(Errno::EIO),
            };
            if r.get_errno() != 0 {
                return reply.error(Errno::from_i32(r.get_errno()));
            }
            let Ok(entries) = r.get_entries() else {
                return reply.error(Errno::EIO);
            };
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
                    &entry.ttl,
                    &entry.attr,
                    Generation(entry.generation),
                ) {
                    break;
                }
            }
            reply.ok();
        });
    }

    fn releasedir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.submit(move |link| async move {
            let _ = link
                .call("releasedir", |fs| {
                    let mut req = fs.releasedir_request();
                    req.get().set_ino(ino.0);
                    req.get().set_fh(fh.0);
                    async move { req.send().promise.await.map(|_| ()) }
                })
                .await;
            reply.ok();
        });
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let raw = flags.0;
        if raw & (libc::O_WRONLY | libc::O_RDWR | libc::O_TRUNC | libc::O_APPEND) != 0 {
            return reply.error(Errno::EROFS);
        }
        self.submit(move |link| async move {
            let res = link
                .call("open", |fs| {
                    let mut req = fs.open_request();
                    req.get().set_ino(ino.0);
                    req.get().set_flags(raw as u32);
                    async move {
                        let resp = req.send().promise.await?;
                        let r = resp.get()?;
                        if r.get_errno() != 0 {
                            return Ok(Err(r.get_errno()));
                        }
                        Ok(Ok((r.get_fh(), r.get_keep_cache())))
                    }
                })
                .await;
            match finish(res) {
                Ok((fh, keep)) => {
                    let flags = if keep {
                        FopenFlags::FOPEN_KEEP_CACHE
                    } else {
                        FopenFlags::empty()
                    };
                    reply.opened(FileHandle(fh), flags);
                }
                Err(errno) => reply.error(errno),
            }
        });
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.submit(move |link| async move {
            let res = link
                .call("read", |fs| {
                    let mut req = fs.read_request();
                    {
                        let mut p = req.get();
                        p.set_ino(ino.0);
                        p.set_fh(fh.0);
                        p.set_offset(offset);
                        p.set_size(size);
                    }
                    async move { req.send().promise.await }
                })
                .await;
            let resp = match res {
                Ok(resp) => resp,
                Err(e) => return reply.error(e.errno()),
            };
            match resp.get() {
                Ok(r) if r.get_errno() != 0 => reply.error(Errno::from_i32(r.get_errno())),
                Ok(r) => match r.get_data() {
                    Ok(data) => reply.data(data),
                    Err(_) => reply.error(Errno::EIO),
                },
                Err(_) => reply.error(Errno::EIO),
            }
        });
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
        // The kernel ignores release errors; answer at once and tell the engine after.
        reply.ok();
        self.submit(move |link| async move {
            let _ = link
                .call("release", |fs| {
                    let mut req = fs.release_request();
                    req.get().set_ino(ino.0);
                    req.get().set_fh(fh.0);
                    async move { req.send().promise.await.map(|_| ()) }
                })
                .await;
        });
    }

    fn statfs(&self, _req: &Request, ino: INodeNo, reply: ReplyStatfs) {
        self.submit(move |link| async move {
            let res = link
                .call("statfs", |fs| {
                    let mut req = fs.statfs_request();
                    req.get().set_ino(ino.0);
                    async move {
                        let resp = req.send().promise.await?;
                        let r = resp.get()?;
                        if r.get_errno() != 0 {
                            return Ok(Err(r.get_errno()));
                        }
                        let s = r.get_statfs()?;
                        Ok(Ok([
                            s.get_blocks(),
                            s.get_bfree(),
                            s.get_bavail(),
                            s.get_files(),
                            s.get_ffree(),
                            u64::from(s.get_bsize()),
                            u64::from(s.get_namelen()),
                            u64::from(s.get_frsize()),
                        ]))
                    }
                })
                .await;
            match finish(res) {
                Ok([blocks, bfree, bavail, files, ffree, bsize, namelen, frsize]) => reply.statfs(
                    blocks,
                    bfree,
                    bavail,
                    files,
                    ffree,
                    bsize as u32,
                    namelen as u32,
                    frsize as u32,
                ),
                Err(errno) => reply.error(errno),
            }
        });
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        self.submit(move |link| async move {
            let res = link
                .call("readlink", |fs| {
                    let mut req = fs.readlink_request();
                    req.get().set_ino(ino.0);
                    async move {
                        let resp = req.send().promise.await?;
                        let r = resp.get()?;
                        if r.get_errno() != 0 {
                            return Ok(Err(r.get_errno()));
                        }
                        Ok(Ok(r.get_target()?.to_vec()))
                    }
                })
                .await;
            match finish(res) {
                Ok(target) => reply.data(&target),
                Err(errno) => reply.error(errno),
            }
        });
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let name = name.as_bytes().to_vec();
        self.submit(move |link| async move {
            let res = link
                .call("getxattr", |fs| {
                    let mut req = fs.getxattr_request();
                    req.get().set_ino(ino.0);
                    req.get().set_name(&name);
                    async move {
                        let resp = req.send().promise.await?;
                        let r = resp.get()?;
                        if r.get_errno() != 0 {
                            return Ok(Err(r.get_errno()));
                        }
                        Ok(Ok(r.get_value()?.to_vec()))
                    }
                })
                .await;
            reply_xattr(reply, size, finish(res));
        });
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        self.submit(move |link| async move {
            let res = link
                .call("listxattr", |fs| {
                    let mut req = fs.listxattr_request();
                    req.get().set_ino(ino.0);
                    async move {
                        let resp = req.send().promise.await?;
                        let r = resp.get()?;
                        if r.get_errno() != 0 {
                            return Ok(Err(r.get_errno()));
                        }
                        let mut out = Vec::new();
                        for n in r.get_names()?.iter() {
                            out.extend_from_slice(n?);
                            out.push(0);
                        }
                        Ok(Ok(out))
                    }
                })
                .await;
            reply_xattr(reply, size, finish(res));
        });
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

fn reply_xattr(reply: ReplyXattr, size: u32, res: Result<Vec<u8>, Errno>) {
    match res {
        Ok(v) if size == 0 => reply.size(u32::try_from(v.len()).unwrap_or(u32::MAX)),
        Ok(v) if v.len() > size as usize => reply.error(Errno::from_i32(libc::ERANGE)),
        Ok(v) => reply.data(&v),
        Err(errno) => reply.error(errno),
    }
}

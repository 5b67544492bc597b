//! Translation between the engine's messages and FUSE: the readdir request, response bodies,
//! attributes and entries, and xattr replies.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{Errno, FileAttr, FileHandle, FileType, INodeNo, ReplyXattr};
use musicfs_schema::{NodeKind, attr, entry, request, response};

use crate::rpc::{CallError, Resp};

/// Entries asked for per readdir round trip; the kernel's buffer (usually one
/// page) takes what fits and asks again from the next offset.
const READDIR_BATCH: u32 = 128;
const READDIRPLUS_BATCH: u32 = 48;

/// Whether an answer of `got` entries (of which `added` went to the
/// kernel) ended the listing: the engine gives as many as were asked for
/// unless the listing ends first, and every one of them went in.
pub(super) fn ends_listing(added: usize, got: u32, plus: bool) -> bool {
    let asked = if plus {
        READDIRPLUS_BATCH
    } else {
        READDIR_BATCH
    };
    added > 0 && added == got as usize && got < asked
}

/// The body of a successful response, or the errno for the caller.
pub(super) fn body(res: Result<Resp<'_>, CallError>) -> Result<response::WhichReader<'_>, Errno> {
    let r = res.map_err(CallError::errno)?.msg;
    if r.get_errno() != 0 {
        return Err(Errno::from_i32(r.get_errno()));
    }
    r.which().map_err(|_| Errno::EIO)
}

/// A readdir request: plain or plus, with the batch size that suits each.
pub(super) fn readdir_request(
    r: request::Builder<'_>,
    ino: INodeNo,
    fh: FileHandle,
    offset: u64,
    plus: bool,
) {
    let mut p = r.init_readdir();
    p.set_ino(ino.0);
    p.set_fh(fh.0);
    p.set_offset(offset);
    p.set_max_entries(if plus {
        READDIRPLUS_BATCH
    } else {
        READDIR_BATCH
    });
    p.set_plus(plus);
}

pub(super) fn kind_of(a: attr::Reader<'_>) -> FileType {
    match a.get_kind() {
        Ok(NodeKind::Directory) => FileType::Directory,
        Ok(NodeKind::Symlink) => FileType::Symlink,
        _ => FileType::RegularFile,
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
pub(super) struct Owner {
    pub(super) uid: u32,
    pub(super) gid: u32,
}

pub(super) fn attr_from(a: attr::Reader<'_>, owner: Owner) -> FileAttr {
    let t = to_time(a.get_mtime_ns());
    let kind = kind_of(a);
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

pub(super) struct OwnedEntry {
    pub(super) attr: FileAttr,
    pub(super) generation: u64,
    pub(super) ttl: Duration,
}

pub(super) fn entry_from(e: entry::Reader<'_>, owner: Owner) -> capnp::Result<OwnedEntry> {
    Ok(OwnedEntry {
        attr: attr_from(e.get_attr()?, owner),
        generation: e.get_generation(),
        ttl: Duration::from_millis(u64::from(e.get_entry_ttl_ms())),
    })
}

pub(super) fn reply_xattr(reply: ReplyXattr, size: u32, res: Result<&[u8], Errno>) {
    match res {
        Ok(v) if size == 0 => reply.size(u32::try_from(v.len()).unwrap_or(u32::MAX)),
        Ok(v) if v.len() > size as usize => reply.error(Errno::from_i32(libc::ERANGE)),
        Ok(v) => reply.data(v),
        Err(errno) => reply.error(errno),
    }
}

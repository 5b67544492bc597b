//! Requests for the virtual directories of the search views (`/.search`,
//! `/.collections`, `/.playlists`): answered from `views`, inline. Their
//! track entries are the tree's own inodes, so opens and reads of them
//! never come here; the README and playlists are read from memory.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::Result;
use musicfs_schema::request;

use crate::catalog::{Child, NodeRec, ROOT_INO};
use crate::serve::dir_handles::{join_offset, split_offset};
use crate::serve::shared::{MAX_READ_BYTES, MAX_READDIR_ENTRIES, Shared};
use crate::serve::wire::{error_frame, fill_attr, fill_entry, respond};
use crate::views::{VNode, Views, is_virtual, root_entry};

/// The node record a virtual node is answered with.
fn vrec(views: &Views, shared: &Shared, ino: u64, node: VNode) -> Result<Option<NodeRec>> {
    let (is_dir, size, version) = match node {
        VNode::Dir => (true, 0, 0),
        VNode::File { size, version } => (false, size, version),
        VNode::Track(ino) => return shared.store.node(ino),
    };
    let _ = ino;
    Ok(Some(NodeRec {
        parent: ROOT_INO,
        name: String::new(),
        wanted: String::new(),
        is_dir,
        file_key: Vec::new(),
        size_bytes: size,
        mtime_ns: views.started_ns,
        version,
        cover: None,
    }))
}

/// The answer to `which` if it is about a virtual node (None: it is not).
pub(super) fn answer(
    shared: &Shared,
    id: u64,
    which: &request::WhichReader<'_>,
) -> Option<Result<Vec<u8>>> {
    let views = shared.views.get()?;
    let ttl = shared.entry_ttl_ms.load(Ordering::Relaxed);
    let generation = shared.store.generation();
    let errno = |e: i32| Ok(error_frame(id, e));
    Some(match which {
        request::Lookup(l) => {
            let parent = l.get_parent();
            let name = match l.get_name().map(std::str::from_utf8) {
                Ok(Ok(n)) => n,
                _ if is_virtual(parent) => return Some(errno(libc::ENOENT)),
                _ => return None,
            };
            let found = if parent == ROOT_INO {
                let ino = root_entry(name)?;
                Ok((ino, VNode::Dir))
            } else if is_virtual(parent) {
                views.lookup(parent, name)
            } else {
                return None;
            };
            match found.map(|(ino, node)| (ino, vrec(views, shared, ino, node))) {
                Ok((ino, Ok(Some(rec)))) => Ok(respond(id, 0, |r| {
                    // Names in a search directory come and go with the
                    // index; each change is noticed (views::refresh).
                    fill_entry(r.init_entry(), ino, &rec, ttl, generation)
                })),
                Ok((_, Ok(None))) => errno(libc::ENOENT),
                Ok((_, Err(e))) => Err(e),
                Err(e) => errno(e),
            }
        }
        request::Getattr(ino) if is_virtual(*ino) => {
            match views.attr(*ino).map(|n| vrec(views, shared, *ino, n)) {
                Ok(Ok(Some(rec))) => Ok(respond(id, 0, |r| {
                    let mut a = r.init_attr();
                    a.set_ttl_ms(ttl);
                    fill_attr(a.init_attr(), *ino, &rec);
                })),
                Ok(Ok(None)) => errno(libc::ESTALE),
                Ok(Err(e)) => Err(e),
                Err(e) => errno(e),
            }
        }
        request::Opendir(o) if is_virtual(o.get_ino()) => {
            let ino = o.get_ino();
            match children(views, ino) {
                Ok(list) => {
                    let fh = shared.dir_handles.open(ino, list);
                    Ok(respond(id, 0, |r| {
                        let mut o = r.init_opened();
                        o.set_fh(fh);
                        o.set_keep_cache(false);
                    }))
                }
                Err(e) => errno(e),
            }
        }
        request::Readdir(rd) if is_virtual(rd.get_ino()) => readdir(shared, views, id, *rd, ttl),
        request::Getxattr(g) if is_virtual(g.get_ino()) => errno(libc::ENODATA),
        request::Listxattr(ino) if is_virtual(*ino) => Ok(respond(id, 0, |r| {
            r.init_names(0);
        })),
        _ => return None,
    })
}

fn children(views: &Views, dir: u64) -> Result<Arc<Vec<Child>>, i32> {
    Ok(Arc::new(
        views
            .list(dir)?
            .into_iter()
            .map(|(name, ino, is_dir)| Child { name, ino, is_dir })
            .collect(),
    ))
}

fn readdir(
    shared: &Shared,
    views: &Views,
    id: u64,
    rd: request::readdir::Reader<'_>,
    ttl: u32,
) -> Result<Vec<u8>> {
    let (ino, plus) = (rd.get_ino(), rd.get_plus());
    let max = rd.get_max_entries().clamp(1, MAX_READDIR_ENTRIES) as usize;
    let (sid, offset) = split_offset(rd.get_offset());
    // As in the tree: the opendir handle's listing, else the snapshot the
    // offset names, else a new one (kept when it takes several answers).
    let (list, sid) = match shared.dir_handles.get(rd.get_fh(), ino) {
        Some(l) => (l, 0),
        None => match (sid != 0)
            .then(|| shared.dir_handles.snapshot(sid, ino))
            .flatten()
        {
            Some(l) => (l, sid),
            None => match children(views, ino) {
                Ok(l) if offset == 0 && l.len() + 2 > max => {
                    (l.clone(), shared.dir_handles.keep(ino, l))
                }
                Ok(l) => (l, 0),
                Err(e) => return Ok(error_frame(id, e)),
            },
        },
    };
    let parent = match ino {
        crate::views::tree::SEARCH_DIR
        | crate::views::tree::COLLECTIONS_DIR
        | crate::views::tree::PLAYLISTS_DIR => ROOT_INO,
        _ if crate::views::tree::kind_of(ino) == Some(crate::views::tree::Kind::Query) => {
            crate::views::tree::SEARCH_DIR
        }
        _ => crate::views::tree::COLLECTIONS_DIR,
    };
    let total = list.len() + 2;
    let start = usize::try_from(offset).unwrap_or(usize::MAX).min(total);
    let end = (start + max).min(total);
    let batch: Vec<(&str, u64, bool)> = (start..end)
        .map(|pos| match pos {
            0 => (".", ino, true),
            1 => ("..", parent, true),
            _ => {
                let c = &list[pos - 2];
                (c.name.as_ref(), c.ino, c.is_dir)
            }
        })
        .collect();
    let mut recs = Vec::new();
    if plus {
        for (_, child, _) in &batch {
            let node = if is_virtual(*child) || *child == ROOT_INO {
                if *child == ROOT_INO {
                    shared.store.node(ROOT_INO)?
                } else {
                    match views.attr(*child) {
                        Ok(n) => vrec(views, shared, *child, n)?,
                        Err(_) => None,
                    }
                }
            } else {
                shared.store.node(*child)?
            };
            recs.push(node);
        }
    }
    let generation = shared.store.generation();
    Ok(respond(id, 0, |r| {
        let mut out = r.init_entries(u32::try_from(batch.len()).unwrap_or(0));
        for (i, (name, child, is_dir)) in batch.iter().enumerate() {
            let mut e = out.reborrow().get(u32::try_from(i).unwrap_or(0));
            e.set_name(name.as_bytes());
            e.set_offset(join_offset(sid, (start + i) as u64 + 1));
            if plus {
                if let Some(Some(rec)) = recs.get(i) {
                    fill_entry(e.init_entry(), *child, rec, ttl, generation);
                }
            } else {
                let mut a = e.init_entry().init_attr();
                a.set_ino(*child);
                a.set_kind(if *is_dir {
                    musicfs_schema::NodeKind::Directory
                } else {
                    musicfs_schema::NodeKind::File
                });
            }
        }
    }))
}

/// Opens a virtual file (README, playlist): its bytes' version is the handle.
pub(super) fn open(shared: &Shared, id: u64, ino: u64, flags: u32) -> Vec<u8> {
    let Some(views) = shared.views.get() else {
        return error_frame(id, libc::ESTALE);
    };
    if flags & (libc::O_WRONLY | libc::O_RDWR | libc::O_TRUNC | libc::O_APPEND) as u32 != 0 {
        return error_frame(id, libc::EROFS);
    }
    match views.content(ino) {
        Ok(body) => respond(id, 0, |r| {
            let mut o = r.init_opened();
            o.set_fh(crate::views::version_of(&body));
            o.set_keep_cache(false);
            o.set_fd_attached(false);
        }),
        Err(e) => error_frame(id, e),
    }
}

/// Reads a virtual file (its bytes as they are now).
pub(super) fn read(shared: &Shared, id: u64, ino: u64, offset: u64, size: u32) -> Vec<u8> {
    let Some(views) = shared.views.get() else {
        return error_frame(id, libc::ESTALE);
    };
    match views.content(ino) {
        Ok(body) => {
            let start = usize::try_from(offset)
                .unwrap_or(usize::MAX)
                .min(body.len());
            let end = start
                .saturating_add(size.min(MAX_READ_BYTES) as usize)
                .min(body.len());
            respond(id, 0, |mut r| r.set_data(&body[start..end]))
        }
        Err(e) => error_frame(id, e),
    }
}

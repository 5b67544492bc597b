//! Metadata requests, answered inline from the catalog: lookup, getattr,
//! opendir/readdir (from the opendir snapshot), statfs, xattrs, ping.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::Result;
use musicfs_schema::request;
use tracing::warn;

use crate::catalog::Child;
use crate::serve::dir_handles::{join_offset, split_offset};
use crate::serve::shared::{MAX_READDIR_ENTRIES, Shared};
use crate::serve::wire::{error_frame, fill_attr, fill_entry, fill_negative_entry, respond};

pub(super) fn metadata(shared: &Shared, id: u64, which: request::WhichReader<'_>) -> Vec<u8> {
    let result = (|| -> Result<Vec<u8>> {
        let store = &shared.store;
        let ttl = shared.entry_ttl_ms.load(Ordering::Relaxed);
        let generation = store.generation();
        if let Some(answer) = crate::serve::views::answer(shared, id, &which) {
            return answer;
        }
        Ok(match which {
            request::Lookup(l) => {
                let (parent, name) = (l.get_parent(), l.get_name()?);
                // Fault injection: a lookup that panics the engine.
                if name == b"musicfs-panic-test" && crate::sys::fault::injected("panic-lookup") {
                    panic!("injected fault (MUSICFS_FAULT=panic-lookup)");
                }
                // And one that kills the whole engine, every time.
                if name == b"musicfs-abort-test" && crate::sys::fault::injected("abort-lookup") {
                    tracing::error!("injected fault (MUSICFS_FAULT=abort-lookup): aborting");
                    std::process::abort();
                }
                let found = match std::str::from_utf8(name) {
                    Ok(n) => store.lookup(parent, n)?,
                    Err(_) => None,
                };
                match found {
                    Some((ino, node)) => respond(id, 0, |r| {
                        fill_entry(r.init_entry(), ino, &node, ttl, generation)
                    }),
                    None if store.node(parent)?.is_some() => {
                        match shared.negative_ttl_ms.load(Ordering::Relaxed) {
                            0 => error_frame(id, libc::ENOENT),
                            neg => respond(id, 0, |r| fill_negative_entry(r.init_entry(), neg)),
                        }
                    }
                    None => error_frame(id, libc::ESTALE),
                }
            }
            request::Forget(_) | request::Releasedir(_) | request::Release(_) => {
                respond(id, 0, |mut r| r.set_none(()))
            }
            request::Getattr(ino) => match store.node(ino)? {
                Some(node) => respond(id, 0, |r| {
                    let mut a = r.init_attr();
                    a.set_ttl_ms(ttl);
                    fill_attr(a.init_attr(), ino, &node);
                }),
                None => error_frame(id, libc::ESTALE),
            },
            request::Opendir(o) => match store.node(o.get_ino())? {
                Some(n) if n.is_dir => {
                    // The listing as of opendir: readdir offsets index it, so
                    // a change while the directory is being read can neither
                    // skip nor repeat an entry that did not change.
                    let fh = shared
                        .dir_handles
                        .open(o.get_ino(), store.children(o.get_ino())?);
                    respond(id, 0, |r| {
                        let mut o = r.init_opened();
                        o.set_fh(fh);
                        o.set_keep_cache(true);
                    })
                }
                Some(_) => error_frame(id, libc::ENOTDIR),
                None => error_frame(id, libc::ESTALE),
            },
            request::Readdir(rd) => {
                let snapshot = shared.dir_handles.get(rd.get_fh(), rd.get_ino());
                readdir(shared, id, rd, ttl, snapshot)?
            }
            request::Statfs(_) => {
                let (files, nodes, bytes) = store.totals()?;
                respond(id, 0, |r| {
                    let mut s = r.init_statfs();
                    s.set_bsize(4096);
                    s.set_frsize(4096);
                    s.set_blocks(bytes.div_ceil(4096));
                    s.set_files(nodes.max(files));
                    s.set_namelen(crate::model::template::NAME_MAX_BYTES as u32);
                })
            }
            request::Readlink(_) => error_frame(id, libc::EINVAL),
            request::Getxattr(g) => {
                let name = g.get_name()?;
                match crate::serve::xattrs::xattrs(shared, g.get_ino())
                    .into_iter()
                    .find(|(n, _)| n.as_bytes() == name)
                {
                    Some((_, v)) => respond(id, 0, |mut r| r.set_data(&v)),
                    None => error_frame(id, libc::ENODATA),
                }
            }
            request::Listxattr(ino) => {
                let attrs = crate::serve::xattrs::xattrs(shared, ino);
                respond(id, 0, |r| {
                    let mut list = r.init_names(u32::try_from(attrs.len()).unwrap_or(0));
                    for (i, (n, _)) in attrs.iter().enumerate() {
                        list.set(u32::try_from(i).unwrap_or(0), n.as_bytes());
                    }
                })
            }
            request::Ping(()) => respond(id, 0, |r| {
                let mut p = r.init_pong();
                p.set_uptime_ms(
                    u64::try_from(shared.started.elapsed().as_millis()).unwrap_or(u64::MAX),
                );
                p.set_engine_version(env!("CARGO_PKG_VERSION"));
            }),
            request::Hello(_) => error_frame(id, libc::EPROTO),
            request::Open(_) | request::Read(_) => error_frame(id, libc::EIO),
        })
    })();
    result.unwrap_or_else(|e| {
        warn!("request {id} failed: {e:#}");
        error_frame(id, libc::EIO)
    })
}

fn readdir(
    shared: &Shared,
    id: u64,
    rd: request::readdir::Reader<'_>,
    ttl: u32,
    handle: Option<Arc<Vec<Child>>>,
) -> Result<Vec<u8>> {
    let store = &shared.store;
    let (ino, plus) = (rd.get_ino(), rd.get_plus());
    let max = rd.get_max_entries().clamp(1, MAX_READDIR_ENTRIES) as usize;
    if ino == crate::catalog::ROOT_INO && rd.get_offset() == 0 {
        // A walk starts here: the catalog is read ahead of it.
        store.read_ahead();
    }
    let Some(node) = store.node(ino)? else {
        return Ok(error_frame(id, libc::ESTALE));
    };
    if !node.is_dir {
        return Ok(error_frame(id, libc::ENOTDIR));
    }
    // The listing a reader started on: its handle's (opendir), else the
    // snapshot its offset names. A reader starting without a handle gets a
    // snapshot when its listing takes more than one answer. A handle or
    // snapshot from another engine (before a restart), or one that was
    // dropped, is read from the current listing.
    let (sid, offset) = split_offset(rd.get_offset());
    let (children, sid) = match handle {
        Some(s) => (s, 0),
        None => match (sid != 0)
            .then(|| shared.dir_handles.snapshot(sid, ino))
            .flatten()
        {
            Some(s) => (s, sid),
            None => {
                let current = store.children(ino)?;
                if offset == 0 && current.len() + 2 > max {
                    (current.clone(), shared.dir_handles.keep(ino, current))
                } else {
                    (current, 0)
                }
            }
        },
    };
    // Positions: 0 = ".", 1 = "..", 2.. = children. An entry's offset cookie
    // is its position + 1, i.e. where the next call starts.
    let total = children.len() + 2;
    let start = usize::try_from(offset).unwrap_or(usize::MAX).min(total);
    let end = (start + max).min(total);
    let batch: Vec<(&str, u64, bool)> = (start..end)
        .map(|pos| match pos {
            0 => (".", ino, true),
            1 => ("..", node.parent, true),
            _ => {
                let c = &children[pos - 2];
                (c.name.as_ref(), c.ino, c.is_dir)
            }
        })
        .collect();
    let recs = if plus {
        store.nodes(&batch.iter().map(|b| b.1).collect::<Vec<_>>())?
    } else {
        Vec::new()
    };
    Ok(respond(id, 0, |r| {
        let mut list = r.init_entries(u32::try_from(batch.len()).unwrap_or(0));
        for (i, (name, child, is_dir)) in batch.iter().enumerate() {
            let mut e = list.reborrow().get(u32::try_from(i).unwrap_or(0));
            e.set_name(name.as_bytes());
            e.set_offset(join_offset(sid, (start + i) as u64 + 1));
            if plus {
                if let Some(Some(rec)) = recs.get(i) {
                    fill_entry(e.init_entry(), *child, rec, ttl, store.generation());
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

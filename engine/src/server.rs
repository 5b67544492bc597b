//! The data plane over Cap'n Proto: answers the shim's requests from the
//! current tree snapshot and the origin files.
//!
//! capnp-rpc is single-threaded (`!Send`), so the server runs on one thread
//! with a current-thread runtime and a `LocalSet`. Metadata requests are
//! answered inline (they only read the in-memory snapshot); origin reads run on
//! tokio's blocking pool so that a slow disk never stalls metadata.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use capnp::capability::Rc;
use capnp_rpc::{RpcSystem, rpc_twoparty_capnp, twoparty};
use futures::AsyncReadExt;
use musicfs_schema::{data_plane, engine};
use parking_lot::{Mutex, RwLock};
use tokio_util::compat::TokioAsyncReadCompatExt;
use tracing::{debug, info, warn};

use crate::tree::{Node, NodeKind, Tree};

/// Largest read the engine serves in one request.
pub const MAX_READ_BYTES: u32 = 4 * 1024 * 1024;
/// Largest number of directory entries in one readdir answer.
pub const MAX_READDIR_ENTRIES: u32 = 1024;
/// Origin files kept open for reads.
const FD_CACHE_CAPACITY: usize = 256;

/// State shared by every connection.
pub struct Shared {
    tree: RwLock<Arc<Tree>>,
    origins: Vec<PathBuf>,
    started: Instant,
    entry_ttl_ms: u32,
    fds: FdCache,
}

impl Shared {
    pub fn new(tree: Tree, origins: Vec<PathBuf>, entry_ttl_ms: u32) -> Arc<Shared> {
        Arc::new(Shared {
            tree: RwLock::new(Arc::new(tree)),
            origins,
            started: Instant::now(),
            entry_ttl_ms,
            fds: FdCache::default(),
        })
    }

    pub fn tree(&self) -> Arc<Tree> {
        self.tree.read().clone()
    }

    pub fn origin_path(&self, origin: u32, rel: &[u8]) -> Option<PathBuf> {
        let root = self.origins.get(origin as usize)?;
        Some(root.join(OsStr::from_bytes(rel)))
    }
}

/// A small LRU of open origin files, keyed by inode.
#[derive(Default)]
struct FdCache {
    inner: Mutex<FdCacheInner>,
}

#[derive(Default)]
struct FdCacheInner {
    clock: u64,
    files: std::collections::HashMap<u64, (Arc<File>, u64, u64)>, // ino -> (file, version, last use)
}

impl FdCache {
    fn get(&self, ino: u64, version: u64, path: &Path) -> io::Result<Arc<File>> {
        {
            let mut inner = self.inner.lock();
            inner.clock += 1;
            let now = inner.clock;
            if let Some((f, v, used)) = inner.files.get_mut(&ino)
                && *v == version
            {
                *used = now;
                return Ok(f.clone());
            }
        }
        let file = Arc::new(File::open(path)?);
        let mut inner = self.inner.lock();
        if inner.files.len() >= FD_CACHE_CAPACITY
            && let Some(oldest) = inner
                .files
                .iter()
                .min_by_key(|(_, (_, _, used))| *used)
                .map(|(k, _)| *k)
        {
            inner.files.remove(&oldest);
        }
        let now = inner.clock;
        inner.files.insert(ino, (file.clone(), version, now));
        Ok(file)
    }
}

fn errno_of(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

fn fill_attr(mut a: musicfs_schema::attr::Builder<'_>, tree: &Tree, ino: u64, node: &Node) {
    a.set_ino(ino);
    a.set_mtime_ns(node.mtime_ns);
    match &node.kind {
        NodeKind::Dir { children } => {
            a.set_kind(musicfs_schema::NodeKind::Directory);
            a.set_perm(0o555);
            let subdirs = children
                .iter()
                .filter(|(_, c)| {
                    matches!(tree.get(*c).map(|n| &n.kind), Some(NodeKind::Dir { .. }))
                })
                .count();
            a.set_nlink(2 + u32::try_from(subdirs).unwrap_or(u32::MAX - 2));
            a.set_size_bytes(4096);
            a.set_blocks(8);
        }
        NodeKind::File { file } => {
            let size = tree.file(*file).map_or(0, |f| f.size_bytes);
            a.set_kind(musicfs_schema::NodeKind::File);
            a.set_perm(0o444);
            a.set_nlink(1);
            a.set_size_bytes(size);
            a.set_blocks(size.div_ceil(512));
        }
    }
}

fn fill_entry(
    mut e: musicfs_schema::entry::Builder<'_>,
    tree: &Tree,
    ino: u64,
    node: &Node,
    ttl_ms: u32,
) {
    e.set_generation(1);
    e.set_entry_ttl_ms(ttl_ms);
    e.set_attr_ttl_ms(ttl_ms);
    fill_attr(e.init_attr(), tree, ino, node);
}

/// Bootstrap object: version negotiation, then the data plane.
pub struct EngineImpl {
    shared: Arc<Shared>,
}

impl engine::Server for EngineImpl {
    async fn hello(
        self: Rc<Self>,
        params: engine::HelloParams,
        mut results: engine::HelloResults,
    ) -> Result<(), capnp::Error> {
        let p = params.get()?;
        let client = p.get_client_protocol();
        let name = p.get_client_name()?.to_str().unwrap_or("?").to_string();
        let mut r = results.get();
        r.set_server_protocol(musicfs_schema::PROTOCOL_VERSION);
        r.set_min_server_protocol(musicfs_schema::MIN_PROTOCOL_VERSION);
        r.set_engine_version(env!("CARGO_PKG_VERSION"));
        // A client speaks exactly its own version; we accept it if it is in our range.
        if !musicfs_schema::compatible(
            (
                musicfs_schema::MIN_PROTOCOL_VERSION,
                musicfs_schema::PROTOCOL_VERSION,
            ),
            (client, client),
        ) {
            let msg = format!(
                "protocol version {client} of {name} is not supported by this engine (supports {}..={})",
                musicfs_schema::MIN_PROTOCOL_VERSION,
                musicfs_schema::PROTOCOL_VERSION
            );
            warn!("{msg}");
            r.set_errno(libc::EPROTO);
            r.set_message(&msg);
            return Ok(());
        }
        info!(client = %name, protocol = client, "client connected");
        let fs: data_plane::Client = capnp_rpc::new_client(DataPlaneImpl {
            shared: self.shared.clone(),
        });
        r.set_fs(fs);
        Ok(())
    }
}

pub struct DataPlaneImpl {
    shared: Arc<Shared>,
}

impl data_plane::Server for DataPlaneImpl {
    async fn lookup(
        self: Rc<Self>,
        params: data_plane::LookupParams,
        mut results: data_plane::LookupResults,
    ) -> Result<(), capnp::Error> {
        let p = params.get()?;
        let parent = p.get_parent();
        let name = p.get_name()?;
        let tree = self.shared.tree();
        let mut r = results.get();
        let found = std::str::from_utf8(name)
            .ok()
            .and_then(|n| tree.lookup(parent, n))
            .and_then(|ino| tree.get(ino).map(|node| (ino, node)));
        match found {
            Some((ino, node)) => {
                fill_entry(r.init_entry(), &tree, ino, node, self.shared.entry_ttl_ms)
            }
            None => r.set_errno(if tree.get(parent).is_some() {
                libc::ENOENT
            } else {
                libc::ESTALE
            }),
        }
        Ok(())
    }

    async fn forget(
        self: Rc<Self>,
        _params: data_plane::ForgetParams,
        _results: data_plane::ForgetResults,
    ) -> Result<(), capnp::Error> {
        // Inodes are stable for ever, so there is no lookup count to keep.
        Ok(())
    }

    async fn getattr(
        self: Rc<Self>,
        params: data_plane::GetattrParams,
        mut results: data_plane::GetattrResults,
    ) -> Result<(), capnp::Error> {
        let ino = params.get()?.get_ino();
        let tree = self.shared.tree();
        let mut r = results.get();
        match tree.get(ino) {
            Some(node) => {
                r.set_attr_ttl_ms(self.shared.entry_ttl_ms);
                fill_attr(r.init_attr(), &tree, ino, node);
            }
            None => r.set_errno(libc::ESTALE),
        }
        Ok(())
    }

    async fn opendir(
        self: Rc<Self>,
        params: data_plane::OpendirParams,
        mut results: data_plane::OpendirResults,
    ) -> Result<(), capnp::Error> {
        let ino = params.get()?.get_ino();
        let tree = self.shared.tree();
        let mut r = results.get();
        match tree.get(ino).map(|n| &n.kind) {
            Some(NodeKind::Dir { .. }) => r.set_fh(0),
            Some(NodeKind::File { .. }) => r.set_errno(libc::ENOTDIR),
            None => r.set_errno(libc::ESTALE),
        }
        Ok(())
    }

    async fn readdir(
        self: Rc<Self>,
        params: data_plane::ReaddirParams,
        mut results: data_plane::ReaddirResults,
    ) -> Result<(), capnp::Error> {
        let p = params.get()?;
        let (ino, offset, plus) = (p.get_ino(), p.get_offset(), p.get_plus());
        let max = p.get_max_entries().clamp(1, MAX_READDIR_ENTRIES) as usize;
        let tree = self.shared.tree();
        let mut r = results.get();
        let Some(node) = tree.get(ino) else {
            r.set_errno(libc::ESTALE);
            return Ok(());
        };
        let NodeKind::Dir { children } = &node.kind else {
            r.set_errno(libc::ENOTDIR);
            return Ok(());
        };
        // Positions: 0 = ".", 1 = "..", 2.. = children. An entry's offset
        // cookie is its position + 1, i.e. where the next call starts.
        let total = children.len() + 2;
        let start = usize::try_from(offset).unwrap_or(usize::MAX).min(total);
        let end = (start + max).min(total);
        let mut list = r.init_entries(u32::try_from(end - start).unwrap_or(0));
        for (i, pos) in (start..end).enumerate() {
            let (name, child): (&str, u64) = match pos {
                0 => (".", ino),
                1 => ("..", node.parent),
                _ => (&children[pos - 2].0, children[pos - 2].1),
            };
            let mut e = list.reborrow().get(u32::try_from(i).unwrap_or(0));
            e.set_name(name.as_bytes());
            e.set_offset(pos as u64 + 1);
            let Some(child_node) = tree.get(child) else {
                continue;
            };
            if plus {
                fill_entry(
                    e.init_entry(),
                    &tree,
                    child,
                    child_node,
                    self.shared.entry_ttl_ms,
                );
            } else {
                let mut a = e.init_entry().init_attr();
                a.set_ino(child);
                a.set_kind(match child_node.kind {
                    NodeKind::Dir { .. } => musicfs_schema::NodeKind::Directory,
                    NodeKind::File { .. } => musicfs_schema::NodeKind::File,
                });
            }
        }
        Ok(())
    }

    async fn releasedir(
        self: Rc<Self>,
        _params: data_plane::ReleasedirParams,
        _results: data_plane::ReleasedirResults,
    ) -> Result<(), capnp::Error> {
        Ok(())
    }

    async fn open(
        self: Rc<Self>,
        params: data_plane::OpenParams,
        mut results: data_plane::OpenResults,
    ) -> Result<(), capnp::Error> {
        let p = params.get()?;
        let (ino, flags) = (p.get_ino(), p.get_flags());
        let tree = self.shared.tree();
        let mut r = results.get();
        if flags & (libc::O_WRONLY | libc::O_RDWR | libc::O_TRUNC | libc::O_APPEND) as u32 != 0 {
            r.set_errno(libc::EROFS);
            return Ok(());
        }
        match tree.get(ino).map(|n| &n.kind) {
            Some(NodeKind::File { .. }) => {}
            Some(NodeKind::Dir { .. }) => {
                r.set_errno(libc::EISDIR);
                return Ok(());
            }
            None => {
                r.set_errno(libc::ESTALE);
                return Ok(());
            }
        }
        let Some(rec) = tree.file_of(ino) else {
            r.set_errno(libc::ESTALE);
            return Ok(());
        };
        let version = rec.version();
        let Some(path) = self.shared.origin_path(rec.origin, &rec.rel_path) else {
            r.set_errno(libc::EIO);
            return Ok(());
        };
        drop(tree);
        // Open now, so that a vanished origin file fails the open(2), not a later read.
        let shared = self.shared.clone();
        let opened =
            tokio::task::spawn_blocking(move || shared.fds.get(ino, version, &path).map(|_| ()))
                .await;
        match opened {
            Ok(Ok(())) => {
                r.set_fh(version);
                r.set_keep_cache(true);
            }
            Ok(Err(e)) => {
                debug!(ino, "open failed: {e}");
                r.set_errno(errno_of(&e));
            }
            Err(_) => r.set_errno(libc::EIO),
        }
        Ok(())
    }

    async fn read(
        self: Rc<Self>,
        params: data_plane::ReadParams,
        mut results: data_plane::ReadResults,
    ) -> Result<(), capnp::Error> {
        let p = params.get()?;
        let (ino, offset) = (p.get_ino(), p.get_offset());
        let size = p.get_size().min(MAX_READ_BYTES) as usize;
        let tree = self.shared.tree();
        let Some(rec) = tree.file_of(ino) else {
            results.get().set_errno(libc::ESTALE);
            return Ok(());
        };
        let version = rec.version();
        let Some(path) = self.shared.origin_path(rec.origin, &rec.rel_path) else {
            results.get().set_errno(libc::EIO);
            return Ok(());
        };
        drop(tree);
        let shared = self.shared.clone();
        let res = tokio::task::spawn_blocking(move || -> io::Result<Vec<u8>> {
            let file = shared.fds.get(ino, version, &path)?;
            let mut buf = vec![0u8; size];
            let mut filled = 0;
            while filled < size {
                match file.read_at(&mut buf[filled..], offset + filled as u64) {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            buf.truncate(filled);
            Ok(buf)
        })
        .await;
        let mut r = results.get();
        match res {
            Ok(Ok(buf)) => r.set_data(&buf),
            Ok(Err(e)) => {
                warn!(ino, path = ?e, "origin read failed");
                r.set_errno(errno_of(&e));
            }
            Err(_) => r.set_errno(libc::EIO),
        }
        Ok(())
    }

    async fn release(
        self: Rc<Self>,
        _params: data_plane::ReleaseParams,
        _results: data_plane::ReleaseResults,
    ) -> Result<(), capnp::Error> {
        Ok(())
    }

    async fn statfs(
        self: Rc<Self>,
        _params: data_plane::StatfsParams,
        mut results: data_plane::StatfsResults,
    ) -> Result<(), capnp::Error> {
        let tree = self.shared.tree();
        let mut s = results.get().init_statfs();
        s.set_bsize(4096);
        s.set_frsize(4096);
        s.set_blocks(tree.total_bytes().div_ceil(4096));
        s.set_files(tree.node_count() as u64);
        s.set_namelen(crate::template::NAME_MAX_BYTES as u32);
        Ok(())
    }

    async fn readlink(
        self: Rc<Self>,
        _params: data_plane::ReadlinkParams,
        mut results: data_plane::ReadlinkResults,
    ) -> Result<(), capnp::Error> {
        results.get().set_errno(libc::EINVAL);
        Ok(())
    }

    async fn getxattr(
        self: Rc<Self>,
        params: data_plane::GetxattrParams,
        mut results: data_plane::GetxattrResults,
    ) -> Result<(), capnp::Error> {
        let p = params.get()?;
        let (ino, name) = (p.get_ino(), p.get_name()?);
        let value = self
            .xattrs(ino)
            .into_iter()
            .find(|(n, _)| n.as_bytes() == name);
        let mut r = results.get();
        match value {
            Some((_, v)) => r.set_value(&v),
            None => r.set_errno(libc::ENODATA),
        }
        Ok(())
    }

    async fn listxattr(
        self: Rc<Self>,
        params: data_plane::ListxattrParams,
        mut results: data_plane::ListxattrResults,
    ) -> Result<(), capnp::Error> {
        let ino = params.get()?.get_ino();
        let attrs = self.xattrs(ino);
        let mut list = results
            .get()
            .init_names(u32::try_from(attrs.len()).unwrap_or(0));
        for (i, (n, _)) in attrs.iter().enumerate() {
            list.set(u32::try_from(i).unwrap_or(0), n.as_bytes());
        }
        Ok(())
    }

    async fn ping(
        self: Rc<Self>,
        _params: data_plane::PingParams,
        mut results: data_plane::PingResults,
    ) -> Result<(), capnp::Error> {
        let ms = u64::try_from(self.shared.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        results.get().set_uptime_ms(ms);
        Ok(())
    }
}

impl DataPlaneImpl {
    /// The `user.musicfs.*` extended attributes of a node.
    fn xattrs(&self, ino: u64) -> Vec<(&'static str, Vec<u8>)> {
        let tree = self.shared.tree();
        let Some(rec) = tree.file_of(ino) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        if let Some(path) = self.shared.origin_path(rec.origin, &rec.rel_path) {
            out.push(("user.musicfs.origin", path.as_os_str().as_bytes().to_vec()));
        }
        if let Some(f) = &rec.format {
            out.push(("user.musicfs.format", f.as_bytes().to_vec()));
        }
        if let Some(e) = &rec.probe_error {
            out.push(("user.musicfs.error", e.as_bytes().to_vec()));
        }
        out
    }
}

/// Serves the data plane on `socket` until `shutdown` resolves. Must run
/// inside a `LocalSet`.
pub async fn serve(
    shared: Arc<Shared>,
    socket: &Path,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    if socket.exists() {
        std::fs::remove_file(socket)
            .with_context(|| format!("cannot remove old socket {}", socket.display()))?;
    }
    let listener = tokio::net::UnixListener::bind(socket)
        .with_context(|| format!("cannot listen on {}", socket.display()))?;
    let client: engine::Client = capnp_rpc::new_client(EngineImpl { shared });
    info!(socket = %socket.display(), "engine serving");
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => {
                let (stream, _) = match accepted {
                    Ok(s) => s,
                    Err(e) => {
                        warn!("accept failed: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let (reader, writer) = stream.compat().split();
                let network = twoparty::VatNetwork::new(
                    futures::io::BufReader::new(reader),
                    futures::io::BufWriter::new(writer),
                    rpc_twoparty_capnp::Side::Server,
                    Default::default(),
                );
                let rpc = RpcSystem::new(Box::new(network), Some(client.clone().client));
                tokio::task::spawn_local(async move {
                    if let Err(e) = rpc.await {
                        debug!("connection ended: {e}");
                    }
                });
            }
        }
    }
    let _ = std::fs::remove_file(socket);
    Ok(())
}

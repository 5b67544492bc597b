//! The tree's one writer: a batch of changes in one write transaction, in
//! O(changed), with the names and inodes the kernel must forget.

use anyhow::{Context, Result};
use redb::{ReadableTable, WriteTransaction};

use crate::catalog::records::{FileEntry, Invalidations, NodeRec};
use crate::catalog::store::Store;
use crate::catalog::tables::{
    CHILDREN, FILES, FIRST_SEEN, INODES, META, NODES, ORIGINS, ROOT_INO, child_key, child_value,
    file_key, split_child_value, split_file_key,
};
use crate::model::FileRecord;
use crate::model::template::{Template, with_collision_suffix};
use crate::sys::time::now_ns;

impl Store {
    /// Applies a batch of changes in one transaction: `upserts` (new or
    /// changed files) and `removals` (file keys that are gone). Upserts are
    /// applied in (virtual path, origin path) order, so collision suffixes
    /// do not depend on scan timing. Returns what the kernel must forget.
    pub fn apply(
        &self,
        upserts: Vec<FileRecord>,
        removals: &[Vec<u8>],
        mark_scan_complete: bool,
    ) -> Result<Invalidations> {
        self.writing(|| self.apply_now(upserts, removals, mark_scan_complete))
    }

    fn apply_now(
        &self,
        mut upserts: Vec<FileRecord>,
        removals: &[Vec<u8>],
        mark_scan_complete: bool,
    ) -> Result<Invalidations> {
        let mut inval = Invalidations::default();
        let mut touched_dirs = Vec::new();
        let db = self.db()?;
        let mut txn = db.begin_write()?;
        txn.set_quick_repair(true);
        {
            let mut w = Writer::new(&txn)?;
            for key in removals {
                if let Some(old) = w.take_file(key)? {
                    if old.rec.is_image {
                        w.image_changed(&old.rec);
                    } else {
                        w.release_node(old.ino, key, &mut inval, &mut touched_dirs)?;
                    }
                }
            }
            // Folder images are no tracks: kept beside them for the covers.
            let (images, tracks): (Vec<FileRecord>, Vec<FileRecord>) =
                upserts.drain(..).partition(|r| r.is_image);
            for rec in images {
                w.put_image(rec)?;
            }
            let template = self.template.read();
            let mut rendered: Vec<(Vec<String>, FileRecord)> = tracks
                .into_iter()
                .map(|r| (template.render(&r), r))
                .collect();
            drop(template);
            rendered.sort_by(|a, b| {
                (&a.0, a.1.origin, &a.1.rel_path).cmp(&(&b.0, b.1.origin, &b.1.rel_path))
            });
            for (path, rec) in rendered {
                w.upsert(rec, &path, &mut inval, &mut touched_dirs)?;
            }
            w.refresh_covers(self.cover_art(), &mut inval, &mut touched_dirs)?;
            if mark_scan_complete {
                w.meta.insert("scan_complete", 1)?;
            }
            // Only a commit that changed the tree moves the sequence (the
            // search index records the last one it holds).
            let changed =
                !inval.entries.is_empty() || !inval.inodes.is_empty() || !touched_dirs.is_empty();
            inval.commit_seq = w.finish(changed)?;
        }
        txn.commit()?;
        let mut cache = self.listings.lock();
        for d in &touched_dirs {
            cache.remove(*d);
        }
        drop(cache);
        // The kernel may cache listings (FOPEN_CACHE_DIR): every directory
        // whose children changed is invalidated with the changed inodes.
        inval.inodes.extend(touched_dirs);
        inval.inodes.sort_unstable();
        inval.inodes.dedup();
        Ok(inval)
    }

    /// Rebuilds nodes and children from the file records (template change).
    pub(super) fn rebuild_tree_in(
        &self,
        txn: &WriteTransaction,
        template: &Template,
    ) -> Result<()> {
        let entries: Vec<FileRecord> = {
            let files = txn.open_table(FILES)?;
            let mut v = Vec::new();
            for row in files.iter()? {
                let (_, val) = row?;
                let e: FileEntry =
                    postcard::from_bytes(val.value()).context("corrupt file record")?;
                v.push(e.rec);
            }
            v
        };
        txn.delete_table(NODES)?;
        txn.delete_table(CHILDREN)?;
        txn.open_table(NODES)?;
        txn.open_table(CHILDREN)?;
        txn.open_table(META)?.insert("node_count", 1)?;
        ensure_root(txn)?;
        let mut w = Writer::new(txn)?;
        let (images, tracks): (Vec<FileRecord>, Vec<FileRecord>) =
            entries.into_iter().partition(|r| r.is_image);
        for rec in images {
            w.take_file(&file_key(rec.origin, &rec.rel_path))?;
            w.put_image(rec)?;
        }
        let mut rendered: Vec<(Vec<String>, FileRecord)> = tracks
            .into_iter()
            .map(|r| (template.render(&r), r))
            .collect();
        rendered.sort_by(|a, b| {
            (&a.0, a.1.origin, &a.1.rel_path).cmp(&(&b.0, b.1.origin, &b.1.rel_path))
        });
        let (mut inval, mut dirs) = (Invalidations::default(), Vec::new());
        for (path, rec) in rendered {
            w.take_file(&file_key(rec.origin, &rec.rel_path))?;
            w.upsert(rec, &path, &mut inval, &mut dirs)?;
        }
        w.refresh_covers(self.cover_art(), &mut inval, &mut dirs)?;
        w.finish(true)?;
        self.listings.lock().map.clear();
        Ok(())
    }
}

pub(super) fn ensure_root(txn: &WriteTransaction) -> Result<()> {
    let mut nodes = txn.open_table(NODES)?;
    if nodes.get(ROOT_INO)?.is_none() {
        let root = NodeRec {
            parent: ROOT_INO,
            name: String::new(),
            wanted: String::new(),
            is_dir: true,
            file_key: Vec::new(),
            size_bytes: 0,
            mtime_ns: now_ns(),
            version: 0,
            cover: None,
        };
        nodes.insert(ROOT_INO, postcard::to_allocvec(&root)?.as_slice())?;
    }
    Ok(())
}

/// The tables of one write transaction, with the tree operations.
pub(super) struct Writer<'t> {
    meta: redb::Table<'t, &'static str, u64>,
    inodes: redb::Table<'t, &'static str, u64>,
    pub(super) files: redb::Table<'t, &'static [u8], &'static [u8]>,
    pub(super) nodes: redb::Table<'t, u64, &'static [u8]>,
    pub(super) children: redb::Table<'t, &'static [u8], u64>,
    first_seen: redb::Table<'t, u64, i64>,
    /// Directories whose tracks changed: their cover is chosen again.
    pub(super) cover_dirs: Vec<u64>,
    /// Origin folders (origin, folder) whose images changed.
    pub(super) image_folders: Vec<(u32, Vec<u8>)>,
    next_ino: u64,
    /// Every origin id the catalog knows (where replicas may be).
    origins: Vec<u32>,
    files_delta: i64,
    nodes_delta: i64,
    bytes_delta: i64,
}

impl<'t> Writer<'t> {
    fn new(txn: &'t WriteTransaction) -> Result<Writer<'t>> {
        let meta = txn.open_table(META)?;
        let next_ino = meta.get("next_ino")?.map_or(ROOT_INO + 1, |v| v.value());
        let mut origins = Vec::new();
        for row in txn.open_table(ORIGINS)?.iter()? {
            origins.push(row?.1.value());
        }
        Ok(Writer {
            origins,
            meta,
            inodes: txn.open_table(INODES)?,
            files: txn.open_table(FILES)?,
            nodes: txn.open_table(NODES)?,
            children: txn.open_table(CHILDREN)?,
            first_seen: txn.open_table(FIRST_SEEN)?,
            next_ino,
            cover_dirs: Vec::new(),
            image_folders: Vec::new(),
            files_delta: 0,
            nodes_delta: 0,
            bytes_delta: 0,
        })
    }

    /// Writes the counters; returns the commit sequence number (moved on
    /// if the tree `changed`).
    fn finish(mut self, changed: bool) -> Result<u64> {
        self.meta.insert("next_ino", self.next_ino)?;
        let mut seq = self.meta.get("commit_seq")?.map_or(0, |v| v.value());
        if changed {
            seq += 1;
            self.meta.insert("commit_seq", seq)?;
        }
        for (key, delta) in [
            ("file_count", self.files_delta),
            ("node_count", self.nodes_delta),
            ("total_bytes", self.bytes_delta),
        ] {
            let old = self.meta.get(key)?.map_or(0, |v| v.value());
            self.meta.insert(key, old.saturating_add_signed(delta))?;
        }
        Ok(seq)
    }

    pub(super) fn put_file(&mut self, key: &[u8], entry: &FileEntry) -> Result<()> {
        let old = self
            .files
            .insert(key, postcard::to_allocvec(entry)?.as_slice())?;
        // Folder images are not tracks: not counted.
        if entry.rec.is_image {
            return Ok(());
        }
        if old.is_none() {
            self.files_delta += 1;
        }
        self.bytes_delta += entry.rec.size_bytes as i64;
        Ok(())
    }

    pub(super) fn inode_for(&mut self, path: &str) -> Result<u64> {
        if let Some(v) = self.inodes.get(path)? {
            return Ok(v.value());
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        self.inodes.insert(path, ino)?;
        self.first_seen.insert(ino, now_ns())?;
        Ok(ino)
    }

    pub(super) fn get_node(&self, ino: u64) -> Result<Option<NodeRec>> {
        match self.nodes.get(ino)? {
            Some(v) => Ok(Some(
                postcard::from_bytes(v.value()).context("corrupt node record")?,
            )),
            None => Ok(None),
        }
    }

    pub(super) fn put_node(&mut self, ino: u64, n: &NodeRec) -> Result<()> {
        if self
            .nodes
            .insert(ino, postcard::to_allocvec(n)?.as_slice())?
            .is_none()
        {
            self.nodes_delta += 1;
        }
        Ok(())
    }

    fn take_file(&mut self, key: &[u8]) -> Result<Option<FileEntry>> {
        let old: Option<FileEntry> = match self.files.remove(key)? {
            Some(v) => Some(postcard::from_bytes(v.value()).context("corrupt file record")?),
            None => None,
        };
        if let Some(e) = &old
            && !e.rec.is_image
        {
            self.files_delta -= 1;
            self.bytes_delta -= e.rec.size_bytes as i64;
        }
        Ok(old)
    }

    /// The virtual path of a node, components joined by '/'.
    pub(super) fn path_of(&self, mut ino: u64) -> Result<String> {
        let mut parts = Vec::new();
        while ino != ROOT_INO {
            let Some(n) = self.get_node(ino)? else { break };
            parts.push(n.name);
            ino = n.parent;
        }
        parts.reverse();
        Ok(parts.join("/"))
    }

    fn upsert(
        &mut self,
        rec: FileRecord,
        path: &[String],
        inval: &mut Invalidations,
        dirs: &mut Vec<u64>,
    ) -> Result<()> {
        let key = file_key(rec.origin, &rec.rel_path);
        if let Some(old) = self.take_file(&key)? {
            // Same place in the tree? Then only the attributes change.
            if let Some(mut node) = self.get_node(old.ino)?
                && node.file_key == key
            {
                let same_place = self.wanted_path(old.ino)? == *path;
                if same_place {
                    self.cover_dirs.push(node.parent);
                    node.size_bytes = rec.size_bytes;
                    node.mtime_ns = rec.mtime_ns;
                    node.version = rec.version();
                    self.put_node(old.ino, &node)?;
                    inval.inodes.push(old.ino);
                    let ino = old.ino;
                    self.put_file(&key, &FileEntry { rec, ino })?;
                    return Ok(());
                }
            }
            self.release_node(old.ino, &key, inval, dirs)?;
        }
        // A copy of a file another origin holds (same relative path, size
        // and fingerprint): the tree shows it once, and reads may use
        // either (see `serve::cached`).
        if let Some(ino) = self.replica_of(&rec)? {
            if let Some(n) = self.get_node(ino)? {
                self.cover_dirs.push(n.parent);
            }
            inval.inodes.push(ino);
            self.put_file(&key, &FileEntry { rec, ino })?;
            return Ok(());
        }
        let (file_name, dir_names) = path.split_last().context("empty virtual path")?;
        let mut parent = ROOT_INO;
        for name in dir_names {
            parent = self.dir(parent, name, inval, dirs)?;
        }
        let name = self.unique_name(parent, file_name, true)?;
        let full = {
            let p = self.path_of(parent)?;
            if p.is_empty() {
                name.clone()
            } else {
                format!("{p}/{name}")
            }
        };
        let ino = self.inode_for(&full)?;
        let node = NodeRec {
            parent,
            name: name.clone(),
            wanted: file_name.clone(),
            is_dir: false,
            file_key: key.clone(),
            size_bytes: rec.size_bytes,
            mtime_ns: rec.mtime_ns,
            version: rec.version(),
            cover: None,
        };
        self.put_node(ino, &node)?;
        self.children
            .insert(child_key(parent, &name).as_slice(), child_value(ino, false))?;
        self.touch_dir(parent, dirs)?;
        self.cover_dirs.push(parent);
        inval.entries.push((parent, name));
        self.put_file(&key, &FileEntry { rec, ino })?;
        Ok(())
    }

    /// The template path a node was created for (its ancestors' wanted names).
    fn wanted_path(&self, mut ino: u64) -> Result<Vec<String>> {
        let mut parts = Vec::new();
        while ino != ROOT_INO {
            let Some(n) = self.get_node(ino)? else { break };
            parts.push(n.wanted);
            ino = n.parent;
        }
        parts.reverse();
        Ok(parts)
    }

    /// The directory that files wanting `name` under `parent` live in.
    fn dir(
        &mut self,
        parent: u64,
        name: &str,
        inval: &mut Invalidations,
        dirs: &mut Vec<u64>,
    ) -> Result<u64> {
        // The plain name, or a suffixed one, holding a directory made for `name`.
        let mut n = 1;
        loop {
            let candidate = if n == 1 {
                name.to_string()
            } else {
                with_collision_suffix(name, false, n)
            };
            match self
                .children
                .get(child_key(parent, &candidate).as_slice())?
                .map(|v| split_child_value(v.value()).0)
            {
                None => break,
                Some(ino) => {
                    if let Some(node) = self.get_node(ino)?
                        && node.is_dir
                        && node.wanted == name
                    {
                        return Ok(ino);
                    }
                }
            }
            n += 1;
        }
        let actual = self.unique_name(parent, name, false)?;
        let full = {
            let p = self.path_of(parent)?;
            if p.is_empty() {
                actual.clone()
            } else {
                format!("{p}/{actual}")
            }
        };
        let ino = self.inode_for(&full)?;
        let node = NodeRec {
            parent,
            name: actual.clone(),
            wanted: name.to_string(),
            is_dir: true,
            file_key: Vec::new(),
            size_bytes: 4096,
            mtime_ns: now_ns(),
            version: 0,
            cover: None,
        };
        self.put_node(ino, &node)?;
        self.children.insert(
            child_key(parent, &actual).as_slice(),
            child_value(ino, true),
        )?;
        self.touch_dir(parent, dirs)?;
        dirs.push(ino);
        // The kernel may hold a negative entry for the new name.
        inval.entries.push((parent, actual));
        Ok(ino)
    }

    pub(super) fn unique_name(&self, parent: u64, name: &str, is_file: bool) -> Result<String> {
        let mut candidate = name.to_string();
        let mut n = 2;
        while self
            .children
            .get(child_key(parent, &candidate).as_slice())?
            .is_some()
        {
            candidate = with_collision_suffix(name, is_file, n);
            n += 1;
        }
        Ok(candidate)
    }

    pub(super) fn touch_dir(&mut self, dir: u64, dirs: &mut Vec<u64>) -> Result<()> {
        if let Some(mut n) = self.get_node(dir)? {
            n.mtime_ns = now_ns();
            self.put_node(dir, &n)?;
        }
        dirs.push(dir);
        Ok(())
    }

    /// The node of another origin's copy of `rec`, if there is one.
    fn replica_of(&self, rec: &FileRecord) -> Result<Option<u64>> {
        for &o in &self.origins {
            if o == rec.origin {
                continue;
            }
            let Some(v) = self.files.get(file_key(o, &rec.rel_path).as_slice())? else {
                continue;
            };
            let other: FileEntry =
                postcard::from_bytes(v.value()).context("corrupt file record")?;
            let same_content = other.rec.size_bytes == rec.size_bytes
                && (other.rec.fingerprint == rec.fingerprint
                    || other.rec.fingerprint == 0
                    || rec.fingerprint == 0);
            if !same_content {
                continue;
            }
            // The node must still be that file's (a stale entry mid-rebuild
            // may name an inode another file holds now).
            if let Some(node) = self.get_node(other.ino)?
                && split_file_key(&node.file_key).map(|(_, r)| r) == Some(&rec.rel_path[..])
            {
                return Ok(Some(other.ino));
            }
        }
        Ok(None)
    }

    /// The copy with key `key` leaves node `ino`: another origin's copy
    /// takes the node over, or it goes. A replica that was not the node's
    /// own copy leaves the node as it is.
    fn release_node(
        &mut self,
        ino: u64,
        key: &[u8],
        inval: &mut Invalidations,
        dirs: &mut Vec<u64>,
    ) -> Result<()> {
        let Some(mut node) = self.get_node(ino)? else {
            return Ok(());
        };
        if node.file_key != key {
            inval.inodes.push(ino);
            return Ok(());
        }
        let rel = split_file_key(key)
            .map(|(_, r)| r.to_vec())
            .unwrap_or_default();
        for &o in &self.origins {
            let other_key = file_key(o, &rel);
            if other_key == key {
                continue;
            }
            let other: FileEntry = match self.files.get(other_key.as_slice())? {
                Some(v) => postcard::from_bytes(v.value()).context("corrupt file record")?,
                None => continue,
            };
            if other.ino == ino {
                self.cover_dirs.push(node.parent);
                node.file_key = other_key;
                node.size_bytes = other.rec.size_bytes;
                node.mtime_ns = other.rec.mtime_ns;
                node.version = other.rec.version();
                self.put_node(ino, &node)?;
                inval.inodes.push(ino);
                return Ok(());
            }
        }
        self.remove_node(ino, inval, dirs)
    }

    /// Removes a node and every directory it leaves empty.
    pub(super) fn remove_node(
        &mut self,
        ino: u64,
        inval: &mut Invalidations,
        dirs: &mut Vec<u64>,
    ) -> Result<()> {
        let Some(node) = self.get_node(ino)? else {
            return Ok(());
        };
        if self.nodes.remove(ino)?.is_some() {
            self.nodes_delta -= 1;
        }
        self.children
            .remove(child_key(node.parent, &node.name).as_slice())?;
        inval.entries.push((node.parent, node.name.clone()));
        inval.inodes.push(ino);
        self.touch_dir(node.parent, dirs)?;
        dirs.push(ino);
        let parent = node.parent;
        if !node.is_dir && node.cover.is_none() {
            self.cover_dirs.push(parent);
        }
        if parent != ROOT_INO && self.is_empty_dir(parent)? {
            self.remove_node(parent, inval, dirs)?;
        }
        Ok(())
    }

    fn is_empty_dir(&self, dir: u64) -> Result<bool> {
        let lo = dir.to_be_bytes();
        let hi = (dir + 1).to_be_bytes();
        Ok(self
            .children
            .range(lo.as_slice()..hi.as_slice())?
            .next()
            .is_none())
    }
}

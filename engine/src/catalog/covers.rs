//! Album covers: each directory that holds tracks gets one `cover.<ext>`
//! node, chosen in the same commit that changes its tracks or a folder
//! image beside them, so it is invalidated like a track.
//!
//! The source, in order: the largest folder image (`cover.*`, `folder.*`,
//! `front.*`, `album.*`, any case; kept in the files table as records that
//! are no tracks, `is_image`) of the origin folders the directory's tracks
//! come from, else the embedded front cover of its first track (by name)
//! that has one; of its first `COVER_TRACKS_MAX` tracks by name, so that
//! the work per commit is bounded however big a directory grows. The node
//! names the origin file (`file_key`) and the range of it to serve
//! (`NodeRec::cover`); no byte is copied.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::Ordering;

use anyhow::{Context, Result};
use redb::{ReadableDatabase, ReadableTable};

use crate::catalog::records::{CoverSource, FileEntry, Invalidations, NodeRec};
use crate::catalog::store::Store;
use crate::catalog::tables::{
    META, child_key, child_value, file_key, split_child_value, split_file_key,
};
use crate::catalog::tree::Writer;
use crate::model::{FileRecord, is_folder_image};

/// Rows looked at per folder, per first letter of an image's name, at
/// most (a folder with thousands of files costs no more than this).
const ROWS_MAX: usize = 2000;

/// Tracks of a directory its cover is chosen from, at most (its first by
/// name): a catch-all directory of thousands of tracks (`Unknown Album`)
/// costs a commit that adds to it no more than an album does.
const COVER_TRACKS_MAX: usize = 64;

/// The best image of each origin folder, as far as one commit looked.
type FolderImages = HashMap<(u32, Vec<u8>), Option<FileRecord>>;

/// Whether `rec` beats `best` as a cover: the largest wins; of equal ones,
/// the first by name.
fn better_image(rec: &FileRecord, best: Option<&FileRecord>) -> bool {
    best.is_none_or(|b| {
        rec.size_bytes > b.size_bytes
            || (rec.size_bytes == b.size_bytes && rec.rel_path < b.rel_path)
    })
}

/// The folder of a relative path (`b""` for the origin's root).
fn folder_of(rel: &[u8]) -> &[u8] {
    rel.iter()
        .rposition(|b| *b == b'/')
        .map_or(&b""[..], |i| &rel[..i])
}

/// The key prefix of the files directly in `folder` of `origin`.
fn prefix(origin: u32, folder: &[u8]) -> Vec<u8> {
    let mut p = folder.to_vec();
    if !p.is_empty() {
        p.push(b'/');
    }
    file_key(origin, &p)
}

impl Store {
    /// Whether album directories get covers (`cover_art`).
    pub fn cover_art(&self) -> bool {
        self.covers.load(Ordering::Relaxed)
    }

    /// Switches covers on or off; when that differs from what the tree was
    /// built with, the tree is rebuilt (one commit) and the kernel must
    /// forget everything.
    pub fn set_cover_art(&self, on: bool) -> Result<Option<Invalidations>> {
        self.covers.store(on, Ordering::Relaxed);
        let built_with = {
            let db = self.db()?;
            let txn = db.begin_read()?;
            let meta = txn.open_table(META)?;
            meta.get("cover_art")?.map(|v| v.value())
        };
        if built_with == Some(u64::from(on)) {
            return Ok(None);
        }
        let inval = self.set_template(self.template())?;
        self.writing(|| {
            let db = self.db()?;
            let txn = db.begin_write()?;
            txn.open_table(META)?.insert("cover_art", u64::from(on))?;
            txn.commit()?;
            Ok(())
        })?;
        Ok(Some(inval))
    }
}

impl Writer<'_> {
    /// Stores a folder image (no node) and marks its folder's covers.
    pub(super) fn put_image(&mut self, rec: FileRecord) -> Result<()> {
        self.image_changed(&rec);
        let key = file_key(rec.origin, &rec.rel_path);
        self.put_file(&key, &FileEntry { rec, ino: 0 })
    }

    pub(super) fn image_changed(&mut self, rec: &FileRecord) {
        self.image_folders
            .push((rec.origin, folder_of(&rec.rel_path).to_vec()));
    }

    /// Files directly in a folder: the folder images among the names that
    /// start with one of `firsts` (each range bounded by `ROWS_MAX`), or
    /// all of them.
    fn files_in(
        &self,
        origin: u32,
        folder: &[u8],
        firsts: Option<&[u8]>,
    ) -> Result<Vec<FileEntry>> {
        let base = prefix(origin, folder);
        let starts: Vec<Vec<u8>> = match firsts {
            Some(f) => f
                .iter()
                .map(|c| {
                    let mut p = base.clone();
                    p.push(*c);
                    p
                })
                .collect(),
            None => vec![base.clone()],
        };
        let mut out = Vec::new();
        for start in starts {
            for row in self.files.range(start.as_slice()..)?.take(ROWS_MAX) {
                let (k, v) = row?;
                let k = k.value();
                if !k.starts_with(&start) {
                    break;
                }
                let name = &k[base.len()..];
                // Only images are wanted when looking by first letter: any
                // other name is skipped before its record is decoded.
                if name.contains(&b'/') || (firsts.is_some() && !is_folder_image(name)) {
                    continue;
                }
                out.push(postcard::from_bytes(v.value()).context("corrupt file record")?);
            }
        }
        Ok(out)
    }

    /// The inodes of the files (no directories) among the children keyed
    /// `lo..hi`, in name order, `max` at most.
    fn files_among(&self, lo: Vec<u8>, hi: Vec<u8>, max: usize) -> Result<Vec<u64>> {
        let mut out = Vec::new();
        for row in self.children.range(lo.as_slice()..hi.as_slice())? {
            if out.len() == max {
                break;
            }
            let (ino, is_dir) = split_child_value(row?.1.value());
            if !is_dir {
                out.push(ino);
            }
        }
        Ok(out)
    }

    /// Chooses again the cover of every directory marked in this commit.
    pub(super) fn refresh_covers(
        &mut self,
        on: bool,
        inval: &mut Invalidations,
        dirs: &mut Vec<u64>,
    ) -> Result<()> {
        // The directories holding tracks of folders whose images changed.
        let folders: BTreeSet<(u32, Vec<u8>)> = self.image_folders.drain(..).collect();
        for (origin, folder) in folders {
            for e in self.files_in(origin, &folder, None)? {
                if !e.rec.is_image
                    && let Some(n) = self.get_node(e.ino)?
                {
                    self.cover_dirs.push(n.parent);
                }
            }
        }
        let mut done = BTreeSet::new();
        // The best image of each origin folder, looked up once per commit
        // (the tracks of one flat folder of thousands may land in as many
        // directories).
        let mut images = FolderImages::new();
        while let Some(dir) = self.cover_dirs.pop() {
            if done.insert(dir) {
                self.refresh_cover(dir, on, inval, dirs, &mut images)?;
            }
        }
        Ok(())
    }

    fn refresh_cover(
        &mut self,
        dir: u64,
        on: bool,
        inval: &mut Invalidations,
        dirs: &mut Vec<u64>,
        images: &mut FolderImages,
    ) -> Result<()> {
        if !self.get_node(dir)?.is_some_and(|d| d.is_dir) {
            return Ok(());
        }
        // Its covers: `cover.<ext>`, or `cover (2).<ext>` beside a track of
        // that name, so all in the children named `cover...`.
        let mut covers = Vec::new();
        let (lo, hi) = (child_key(dir, "cover"), child_key(dir, "coves"));
        for ino in self.files_among(lo, hi, usize::MAX)? {
            if let Some(n) = self.get_node(ino)?
                && n.cover.is_some()
            {
                covers.push((ino, n));
            }
        }
        // The tracks it is chosen from: the first COVER_TRACKS_MAX by name.
        let (lo, hi) = (dir.to_be_bytes().to_vec(), (dir + 1).to_be_bytes().to_vec());
        let mut tracks = Vec::new();
        for ino in self.files_among(lo, hi, COVER_TRACKS_MAX + covers.len())? {
            match self.get_node(ino)? {
                Some(n) if n.cover.is_none() => tracks.push(n),
                _ => {}
            }
        }
        tracks.truncate(COVER_TRACKS_MAX);
        let want = if on && !tracks.is_empty() {
            self.choose(dir, &tracks, images)?
        } else {
            None
        };
        let have = covers.pop();
        // Only one cover per directory.
        for (ino, _) in covers {
            self.remove_node(ino, inval, dirs)?;
        }
        match (have, want) {
            (None, None) => {}
            (Some((ino, _)), None) => self.remove_node(ino, inval, dirs)?,
            (Some((ino, old)), Some(new)) if old.name == new.name => {
                if old != new {
                    self.put_node(ino, &new)?;
                    inval.inodes.push(ino);
                }
            }
            (have, Some(new)) => {
                if let Some((ino, _)) = have {
                    self.remove_node(ino, inval, dirs)?;
                }
                let name = self.unique_name(dir, &new.name, true)?;
                let full = format!("{}/{name}", self.path_of(dir)?);
                let ino = self.inode_for(full.trim_start_matches('/'))?;
                let node = NodeRec {
                    name: name.clone(),
                    wanted: name.clone(),
                    ..new
                };
                self.put_node(ino, &node)?;
                self.children.insert(
                    crate::catalog::tables::child_key(dir, &name).as_slice(),
                    child_value(ino, false),
                )?;
                self.touch_dir(dir, dirs)?;
                inval.entries.push((dir, name));
            }
        }
        Ok(())
    }

    /// The best image with a picture directly in `folder` of `origin`.
    fn folder_image(&self, origin: u32, folder: &[u8]) -> Result<Option<FileRecord>> {
        let mut best: Option<FileRecord> = None;
        for e in self.files_in(origin, folder, Some(b"ACFacf"))? {
            if e.rec.is_image && e.rec.art.is_some() && better_image(&e.rec, best.as_ref()) {
                best = Some(e.rec);
            }
        }
        Ok(best)
    }

    /// The cover node `dir` should have, from its tracks' folder images or
    /// embedded pictures.
    fn choose(
        &self,
        dir: u64,
        tracks: &[NodeRec],
        images: &mut FolderImages,
    ) -> Result<Option<NodeRec>> {
        let folders: BTreeSet<(u32, Vec<u8>)> = tracks
            .iter()
            .filter_map(|t| split_file_key(&t.file_key))
            .map(|(o, rel)| (o, folder_of(rel).to_vec()))
            .collect();
        let mut best: Option<FileRecord> = None;
        for key in folders {
            let image = match images.get(&key) {
                Some(i) => i.clone(),
                None => {
                    let i = self.folder_image(key.0, &key.1)?;
                    images.insert(key, i.clone());
                    i
                }
            };
            if let Some(rec) = image
                && better_image(&rec, best.as_ref())
            {
                best = Some(rec);
            }
        }
        if best.is_none() {
            // Tracks are in name order (the children table's).
            for t in tracks {
                if let Some(v) = self.files.get(t.file_key.as_slice())? {
                    let e: FileEntry =
                        postcard::from_bytes(v.value()).context("corrupt file record")?;
                    if e.rec.art.is_some() {
                        best = Some(e.rec);
                        break;
                    }
                }
            }
        }
        Ok(best.and_then(|rec| {
            let art = rec.art.clone()?;
            Some(NodeRec {
                parent: dir,
                name: format!("cover.{}", art.ext),
                wanted: format!("cover.{}", art.ext),
                is_dir: false,
                file_key: file_key(rec.origin, &rec.rel_path),
                size_bytes: art.len,
                mtime_ns: rec.mtime_ns,
                version: rec.version(),
                cover: Some(CoverSource {
                    offset: art.offset,
                    source_size: rec.size_bytes,
                }),
            })
        }))
    }
}

//! The virtual tree: an immutable snapshot built from the catalog's file
//! records and the path template. Requests read a snapshot (`Arc<Tree>`);
//! a rebuild swaps in a new one.
//!
//! Invariants:
//! - every name is a sanitised path component (see `template::sanitize_name`);
//! - names in a directory are unique; collisions get ` (2)`, ` (3)`, ... in the
//!   order of (virtual path, origin, origin path), so the same library always
//!   gives the same names;
//! - inode numbers come from the `InodeAllocator`, which maps a virtual path
//!   to one inode for ever.

use std::collections::HashMap;

use crate::model::FileRecord;
use crate::template::{Template, with_collision_suffix};

pub const ROOT_INO: u64 = 1;

/// Hands out stable inode numbers by virtual path.
pub trait InodeAllocator {
    /// The inode of `path` (components joined by '/'), allocating one if new.
    fn inode_for(&mut self, path: &str) -> u64;
}

#[derive(Debug)]
pub enum NodeKind {
    Dir {
        /// Sorted by name (bytes), unique.
        children: Vec<(Box<str>, u64)>,
    },
    File {
        /// Index into `Tree::files`.
        file: usize,
    },
}

#[derive(Debug)]
pub struct Node {
    pub parent: u64,
    pub name: Box<str>,
    pub kind: NodeKind,
    /// Newest mtime below this node (directories) or the file's mtime.
    pub mtime_ns: i64,
}

#[derive(Debug, Default)]
pub struct Tree {
    nodes: HashMap<u64, Node>,
    files: Vec<FileRecord>,
    total_bytes: u64,
}

impl Tree {
    pub fn get(&self, ino: u64) -> Option<&Node> {
        self.nodes.get(&ino)
    }

    pub fn file(&self, idx: usize) -> Option<&FileRecord> {
        self.files.get(idx)
    }

    /// The file record behind a file inode.
    pub fn file_of(&self, ino: u64) -> Option<&FileRecord> {
        match &self.nodes.get(&ino)?.kind {
            NodeKind::File { file } => self.files.get(*file),
            NodeKind::Dir { .. } => None,
        }
    }

    pub fn lookup(&self, parent: u64, name: &str) -> Option<u64> {
        match &self.nodes.get(&parent)?.kind {
            NodeKind::Dir { children } => children
                .binary_search_by(|(n, _)| n.as_ref().cmp(name))
                .ok()
                .map(|i| children[i].1),
            NodeKind::File { .. } => None,
        }
    }

    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    pub fn file_count(&self) -> usize {
        self.files.len()
    }

    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    /// Builds the tree. `files` may be in any order.
    pub fn build(
        mut files: Vec<FileRecord>,
        template: &Template,
        alloc: &mut dyn InodeAllocator,
    ) -> Tree {
        // Render, then sort so that collision suffixes are deterministic.
        files.sort_by(|a, b| (a.origin, &a.rel_path).cmp(&(b.origin, &b.rel_path)));
        let mut rendered: Vec<(Vec<String>, usize)> = files
            .iter()
            .enumerate()
            .map(|(i, f)| (template.render(f), i))
            .collect();
        rendered.sort();

        let mut b = Builder {
            nodes: HashMap::new(),
            // (parent ino, wanted dir name) -> actual dir ino
            dirs: HashMap::new(),
            names: HashMap::new(),
        };
        b.nodes.insert(
            ROOT_INO,
            Node {
                parent: ROOT_INO,
                name: "".into(),
                kind: NodeKind::Dir {
                    children: Vec::new(),
                },
                mtime_ns: 0,
            },
        );
        let mut total_bytes = 0;
        for (components, idx) in &rendered {
            let rec = &files[*idx];
            total_bytes += rec.size_bytes;
            let mut parent = ROOT_INO;
            let mut path = String::new();
            let (file_name, dir_names) = components.split_last().expect("template has a component");
            for name in dir_names {
                parent = b.dir(parent, name, &mut path, alloc);
            }
            let name = b.unique_name(parent, file_name, true);
            path_push(&mut path, &name);
            let ino = alloc.inode_for(&path);
            b.attach(
                parent,
                ino,
                Node {
                    parent,
                    name: name.into(),
                    kind: NodeKind::File { file: *idx },
                    mtime_ns: rec.mtime_ns,
                },
            );
        }
        // Sort children, and give every directory the newest mtime below it.
        let mut dir_mtimes: HashMap<u64, i64> = HashMap::new();
        for node in b.nodes.values() {
            if let NodeKind::File { .. } = node.kind {
                let mut p = node.parent;
                loop {
                    let m = dir_mtimes.entry(p).or_insert(i64::MIN);
                    if *m >= node.mtime_ns {
                        break;
                    }
                    *m = node.mtime_ns;
                    if p == ROOT_INO {
                        break;
                    }
                    p = b.nodes.get(&p).map_or(ROOT_INO, |n| n.parent);
                }
            }
        }
        for (ino, node) in b.nodes.iter_mut() {
            if let NodeKind::Dir { children } = &mut node.kind {
                children.sort_by(|a, b| a.0.cmp(&b.0));
                node.mtime_ns = dir_mtimes.get(ino).copied().unwrap_or(0).max(0);
            }
        }
        Tree {
            nodes: b.nodes,
            files,
            total_bytes,
        }
    }
}

fn path_push(path: &mut String, name: &str) {
    if !path.is_empty() {
        path.push('/');
    }
    path.push_str(name);
}

struct Builder {
    nodes: HashMap<u64, Node>,
    dirs: HashMap<(u64, String), u64>,
    /// Names taken in each directory.
    names: HashMap<u64, std::collections::HashSet<String>>,
}

impl Builder {
    /// The directory `name` under `parent`, created if needed; `path` is
    /// extended with its actual name.
    fn dir(
        &mut self,
        parent: u64,
        name: &str,
        path: &mut String,
        alloc: &mut dyn InodeAllocator,
    ) -> u64 {
        if let Some(&ino) = self.dirs.get(&(parent, name.to_string())) {
            let actual = &self.nodes[&ino].name;
            path_push(path, actual);
            return ino;
        }
        let actual = self.unique_name(parent, name, false);
        path_push(path, &actual);
        let ino = alloc.inode_for(path);
        self.attach(
            parent,
            ino,
            Node {
                parent,
                name: actual.into(),
                kind: NodeKind::Dir {
                    children: Vec::new(),
                },
                mtime_ns: 0,
            },
        );
        self.dirs.insert((parent, name.to_string()), ino);
        ino
    }

    fn unique_name(&mut self, parent: u64, name: &str, is_file: bool) -> String {
        let taken = self.names.entry(parent).or_default();
        let mut candidate = name.to_string();
        let mut n = 2;
        while taken.contains(&candidate) {
            candidate = with_collision_suffix(name, is_file, n);
            n += 1;
        }
        taken.insert(candidate.clone());
        candidate
    }

    fn attach(&mut self, parent: u64, ino: u64, node: Node) {
        let name = node.name.clone();
        self.nodes.insert(ino, node);
        if let Some(Node {
            kind: NodeKind::Dir { children },
            ..
        }) = self.nodes.get_mut(&parent)
        {
            children.push((name, ino));
        }
    }
}

/// An allocator for tests and throw-away trees: numbers paths in order of first use.
#[derive(Default)]
pub struct MemoryInodes {
    map: HashMap<String, u64>,
    next: u64,
}

impl InodeAllocator for MemoryInodes {
    fn inode_for(&mut self, path: &str) -> u64 {
        if self.next <= ROOT_INO {
            self.next = ROOT_INO + 1;
        }
        if let Some(&ino) = self.map.get(path) {
            return ino;
        }
        let ino = self.next;
        self.next += 1;
        self.map.insert(path.to_string(), ino);
        ino
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{AudioProps, Tags};
    use crate::template::DEFAULT_TEMPLATE;

    fn rec(path: &str, artist: &str, title: &str, track: u32) -> FileRecord {
        FileRecord {
            origin: 0,
            rel_path: path.as_bytes().to_vec(),
            size_bytes: 10,
            mtime_ns: 5,
            origin_ino: 1,
            format: None,
            tags: Tags {
                artist: Some(artist.into()),
                album: Some("Album".into()),
                title: Some(title.into()),
                track: Some(track),
                ..Tags::default()
            },
            props: AudioProps::default(),
            probe_error: None,
        }
    }

    fn names(tree: &Tree, ino: u64) -> Vec<String> {
        match &tree.get(ino).unwrap().kind {
            NodeKind::Dir { children } => children.iter().map(|c| c.0.to_string()).collect(),
            NodeKind::File { .. } => vec![],
        }
    }

    #[test]
    fn collisions_get_deterministic_suffixes_in_any_input_order() {
        let t = Template::parse(DEFAULT_TEMPLATE).unwrap();
        let files = vec![
            rec("b.flac", "A", "Song", 1),
            rec("a.flac", "A", "Song", 1),
            rec("c.flac", "A", "Song", 1),
        ];
        let mut rev = files.clone();
        rev.reverse();
        let t1 = Tree::build(files, &t, &mut MemoryInodes::default());
        let t2 = Tree::build(rev, &t, &mut MemoryInodes::default());
        let artist = t1.lookup(ROOT_INO, "A").unwrap();
        let album = t1.lookup(artist, "Album").unwrap();
        assert_eq!(
            names(&t1, album),
            ["01 - Song (2).flac", "01 - Song (3).flac", "01 - Song.flac"]
        );
        // Same names map to the same origin files whatever the input order.
        for name in names(&t1, album) {
            let f1 = t1.file_of(t1.lookup(album, &name).unwrap()).unwrap();
            let a2 = t2
                .lookup(t2.lookup(ROOT_INO, "A").unwrap(), "Album")
                .unwrap();
            let f2 = t2.file_of(t2.lookup(a2, &name).unwrap()).unwrap();
            assert_eq!(f1.rel_path, f2.rel_path);
        }
        let first = t1
            .file_of(t1.lookup(album, "01 - Song.flac").unwrap())
            .unwrap();
        assert_eq!(first.rel_path, b"a.flac");
    }

    #[test]
    fn inodes_are_stable_by_path() {
        let t = Template::parse(DEFAULT_TEMPLATE).unwrap();
        let mut alloc = MemoryInodes::default();
        let t1 = Tree::build(vec![rec("a.flac", "A", "X", 1)], &t, &mut alloc);
        let t2 = Tree::build(
            vec![rec("z.flac", "B", "Y", 2), rec("a.flac", "A", "X", 1)],
            &t,
            &mut alloc,
        );
        let path = |tr: &Tree| {
            let a = tr.lookup(ROOT_INO, "A").unwrap();
            let al = tr.lookup(a, "Album").unwrap();
            tr.lookup(al, "01 - X.flac").unwrap()
        };
        assert_eq!(path(&t1), path(&t2));
        assert_eq!(t2.file_count(), 2);
        assert_eq!(t2.total_bytes(), 20);
        assert_eq!(names(&t2, ROOT_INO), ["A", "B"]);
    }
}

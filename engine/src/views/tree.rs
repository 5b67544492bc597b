//! The virtual directories' inodes and contents: `/.search`, its README
//! and query directories, `/.collections/<name>/`, `/.playlists/<name>.m3u8`.
//!
//! Inodes: bit 62 marks a virtual node (catalog inodes count up from 2 and
//! never get there). The three roots and the README are fixed; a query
//! directory, a collection and a playlist are `kind << 56 | 56 bits of the
//! blake3 hash of the name`: the same name has the same inode in every
//! engine, so a kernel that kept it across a restart still names it.

use std::collections::HashMap;
use std::sync::Arc;

use crate::model::template::with_collision_suffix;
use crate::views::index::Hit;

pub const VIRTUAL: u64 = 1 << 62;
pub const SEARCH_DIR: u64 = VIRTUAL | 1;
pub const COLLECTIONS_DIR: u64 = VIRTUAL | 2;
pub const PLAYLISTS_DIR: u64 = VIRTUAL | 3;
pub const README: u64 = VIRTUAL | 4;

pub const SEARCH_NAME: &str = ".search";
pub const COLLECTIONS_NAME: &str = ".collections";
pub const PLAYLISTS_NAME: &str = ".playlists";
pub const README_NAME: &str = "README.txt";

/// What a hashed virtual inode is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Query = 1,
    Collection = 2,
    Playlist = 3,
}

pub fn is_virtual(ino: u64) -> bool {
    ino & VIRTUAL != 0 && ino < (1 << 63)
}

/// The inode of a query directory, collection or playlist called `name`.
pub fn hashed_ino(kind: Kind, name: &str) -> u64 {
    let h = blake3::hash(name.as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&h.as_bytes()[..8]);
    VIRTUAL | ((kind as u64) << 56) | (u64::from_le_bytes(b) & ((1 << 56) - 1))
}

pub fn kind_of(ino: u64) -> Option<Kind> {
    match (ino >> 56) & 0x3f {
        1 => Some(Kind::Query),
        2 => Some(Kind::Collection),
        3 => Some(Kind::Playlist),
        _ => None,
    }
}

/// The root names of the virtual directories, with their inodes.
pub fn root_entry(name: &str) -> Option<u64> {
    match name {
        SEARCH_NAME => Some(SEARCH_DIR),
        COLLECTIONS_NAME => Some(COLLECTIONS_DIR),
        PLAYLISTS_NAME => Some(PLAYLISTS_DIR),
        _ => None,
    }
}

/// The matches of one search as a directory: each track by its tree name,
/// a name taken twice (two albums' `01 - Intro.flac`) suffixed as the tree
/// suffixes collisions, in tree-path order.
#[derive(Debug, Default)]
pub struct Listing {
    pub entries: Vec<(Arc<str>, Hit)>,
    pub by_name: HashMap<Arc<str>, usize>,
}

impl Listing {
    pub fn new(mut hits: Vec<Hit>) -> Listing {
        hits.sort_by(|a, b| a.path.cmp(&b.path));
        let mut l = Listing::default();
        for hit in hits {
            let base = hit.path.rsplit('/').next().unwrap_or(&hit.path).to_string();
            let mut name = base.clone();
            let mut n = 2;
            while l.by_name.contains_key(name.as_str()) {
                name = with_collision_suffix(&base, true, n);
                n += 1;
            }
            let name: Arc<str> = name.into();
            l.by_name.insert(name.clone(), l.entries.len());
            l.entries.push((name, hit));
        }
        l
    }

    pub fn get(&self, name: &str) -> Option<&Hit> {
        self.by_name.get(name).map(|i| &self.entries[*i].1)
    }

    /// The same names for the same tracks.
    pub fn same_as(&self, other: &Listing) -> bool {
        self.entries.len() == other.entries.len()
            && self
                .entries
                .iter()
                .zip(&other.entries)
                .all(|(a, b)| a.0 == b.0 && a.1 == b.1)
    }

    /// Names in one listing and not the other (both ways), and those whose
    /// track changed.
    pub fn changed_names(&self, other: &Listing) -> Vec<String> {
        let mut out = Vec::new();
        for (name, hit) in &self.entries {
            if other.get(name).is_none_or(|h| h.ino != hit.ino) {
                out.push(name.to_string());
            }
        }
        for (name, _) in &other.entries {
            if self.get(name).is_none() {
                out.push(name.to_string());
            }
        }
        out
    }

    /// The extended M3U of the listing, from `/.playlists/`: entries are
    /// relative to the playlist's directory.
    pub fn m3u8(&self) -> Vec<u8> {
        let mut out = String::from("#EXTM3U\n");
        for (_, hit) in &self.entries {
            let who = match (hit.artist.is_empty(), hit.title.is_empty()) {
                (false, false) => format!("{} - {}", hit.artist, hit.title),
                (true, false) => hit.title.clone(),
                _ => hit.path.rsplit('/').next().unwrap_or_default().to_string(),
            };
            // A line break in a tag would end the line early.
            let who = who.replace(['\n', '\r'], " ");
            out.push_str(&format!(
                "#EXTINF:{},{who}\n../{}\n",
                hit.duration_s, hit.path
            ));
        }
        out.into_bytes()
    }
}

/// `/.search/README.txt`.
pub const README_TEXT: &str = "\
MusicFS search
==============

Any name under this directory is a search: `ls '/mnt/music/.search/QUERY'`
lists the tracks that match QUERY, each by its name in the tree, and each
reads the same bytes as the track in the tree (the same file).

The query syntax is tantivy's:

  bjork                         a word in artist, albumartist, album,
                                title, genre or composer (accents and case
                                do not matter)
  artist:björk                  a word in one field
  \"love song\"                   a phrase
  genre:jazz AND year:[1990 TO 1999]
  artist:miles -album:live      AND is the default; OR; `-` or NOT excludes
                                (write `a -b` or `a NOT b`: `a AND NOT b`
                                finds nothing)
  format:flac  duration:[600 TO 3600]  bitrate:[320 TO *]

Fields: artist, albumartist, album, title, genre, composer, path (in the
tree), origin, format; numbers: year (also date), track, disc, duration
(seconds), bitrate (kbit/s), added (first seen, seconds since 1970).

A query that does not parse is \"No such file or directory\" (the log says
why), and so is a name that starts with a dot (what file managers probe).
Results are bounded by `search_max_results` (10,000 by default).
While the index is rebuilt from the catalog (the first start, or after it
was lost), searches read the previous index, or answer \"Resource
temporarily unavailable\" if there is none.

Saved searches: the `[collections]` table of the configuration, each shown
as /.collections/NAME/ and /.playlists/NAME.m3u8 (besides the built-in
\"All tracks\" and \"Recently added\", the last 30 days).
";

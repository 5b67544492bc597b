#![allow(clippy::unwrap_used)]

use super::index::{Hit, Search, Searchable, document, register_tokenizer, schema};
use super::tree::{Kind, Listing, hashed_ino, is_virtual, kind_of};
use crate::catalog::{FileEntry, Track};
use crate::model::{AudioProps, FileRecord, Tags};

fn track(ino: u64, path: &str, artist: &str, title: &str, genre: &str, year: u32) -> Track {
    Track {
        ino,
        parent: 100,
        path: path.into(),
        first_seen_ns: 1_700_000_000_000_000_000 + ino as i64,
        entry: FileEntry {
            ino,
            rec: FileRecord {
                origin: 0,
                rel_path: path.as_bytes().to_vec(),
                size_bytes: 1,
                mtime_ns: 1,
                origin_ino: ino,
                fingerprint: 0,
                format: Some("flac".into()),
                tags: Tags {
                    artist: Some(artist.into()),
                    title: Some(title.into()),
                    genre: Some(genre.into()),
                    year: Some(year),
                    ..Tags::default()
                },
                props: AudioProps {
                    duration_ms: 61_500,
                    ..AudioProps::default()
                },
                probe_error: None,
                art: None,
                is_image: false,
            },
        },
    }
}

fn index() -> Searchable {
    let (s, fields) = schema();
    let idx = tantivy::Index::create_in_ram(s);
    register_tokenizer(&idx);
    let mut w: tantivy::IndexWriter = idx.writer(15_000_000).unwrap();
    for t in [
        track(
            2,
            "Björk/Post (1995)/01 - Army of Me.flac",
            "Björk",
            "Army of Me",
            "Pop",
            1995,
        ),
        track(
            3,
            "Miles/Kind (1959)/01 - So What.flac",
            "Miles Davis",
            "So What",
            "Jazz",
            1959,
        ),
        track(
            4,
            "Trio/Late (1994)/01 - Love Song.flac",
            "Trio",
            "Love Song",
            "Jazz",
            1994,
        ),
        track(
            5,
            "Trio/Late (1994)/02 - Song of Love.flac",
            "Trio",
            "Song of Love",
            "Jazz",
            1994,
        ),
    ] {
        w.add_document(document(&fields, &t, "/music")).unwrap();
    }
    w.commit().unwrap();
    Searchable::from_index(idx).unwrap()
}

fn inos(s: &Searchable, q: &str) -> Vec<u64> {
    s.search(&Search::Query(q.into()), 100)
        .unwrap()
        .iter()
        .map(|h| h.ino)
        .collect()
}

#[test]
fn queries_find_by_field_word_accent_range_and_phrase() {
    let s = index();
    s.reader.reload().unwrap();
    assert_eq!(inos(&s, "artist:björk"), vec![2]);
    assert_eq!(inos(&s, "artist:bjork"), vec![2], "accents folded");
    assert_eq!(inos(&s, "genre:jazz AND year:[1990 TO 1999]"), vec![4, 5]);
    assert_eq!(inos(&s, "\"love song\""), vec![4], "a phrase, in order");
    assert_eq!(inos(&s, "love song"), vec![4, 5]);
    assert_eq!(inos(&s, "duration:61"), vec![2, 3, 4, 5]);
    assert!(inos(&s, "artist:nobody").is_empty());
    assert!(s.parse("genre:(").is_err(), "a bad query is an error");
    assert_eq!(s.search(&Search::All, 2).unwrap().len(), 2, "bounded");
    let since = 1_700_000_000;
    assert_eq!(s.search(&Search::AddedSince(since), 10).unwrap().len(), 4);
    assert!(
        s.search(&Search::AddedSince(since + 10), 10)
            .unwrap()
            .is_empty()
    );
}

fn hit(ino: u64, path: &str) -> Hit {
    Hit {
        ino,
        path: path.into(),
        artist: "A".into(),
        title: format!("T{ino}"),
        duration_s: 61,
    }
}

#[test]
fn listings_name_tracks_by_tree_name_with_collision_suffixes() {
    let l = Listing::new(vec![
        hit(9, "B/Y/01 - Intro.flac"),
        hit(7, "A/X/01 - Intro.flac"),
        hit(8, "A/X/02 - Song.flac"),
    ]);
    let names: Vec<&str> = l.entries.iter().map(|(n, _)| n.as_ref()).collect();
    assert_eq!(
        names,
        ["01 - Intro.flac", "02 - Song.flac", "01 - Intro (2).flac"]
    );
    assert_eq!(l.get("01 - Intro (2).flac").unwrap().ino, 9);
    let m3u = String::from_utf8(l.m3u8()).unwrap();
    assert!(m3u.starts_with("#EXTM3U\n#EXTINF:61,A - T7\n../A/X/01 - Intro.flac\n"));
    let fewer = Listing::new(vec![hit(7, "A/X/01 - Intro.flac")]);
    let mut changed = l.changed_names(&fewer);
    changed.sort();
    assert_eq!(changed, ["01 - Intro (2).flac", "02 - Song.flac"]);
    assert!(!l.same_as(&fewer));
}

#[test]
fn virtual_inodes_are_stable_and_never_catalog_inodes() {
    let a = hashed_ino(Kind::Query, "artist:björk");
    assert_eq!(a, hashed_ino(Kind::Query, "artist:björk"));
    assert_ne!(a, hashed_ino(Kind::Collection, "artist:björk"));
    assert!(is_virtual(a) && !is_virtual(1) && !is_virtual(1 << 40));
    assert_eq!(kind_of(a), Some(Kind::Query));
    assert_eq!(
        kind_of(hashed_ino(Kind::Playlist, "x.m3u8")),
        Some(Kind::Playlist)
    );
}

#[test]
fn collections_are_validated() {
    let ok: std::collections::BTreeMap<String, String> = [(
        "90s Jazz".to_string(),
        "genre:jazz AND year:[1990 TO 1999]".to_string(),
    )]
    .into();
    super::validate_collections(&ok).unwrap();
    for (name, q) in [
        ("a/b", "x"),
        (".hidden", "x"),
        ("All tracks", "x"),
        ("Bad", "genre:("),
    ] {
        let t = [(name.to_string(), q.to_string())].into();
        assert!(super::validate_collections(&t).is_err(), "{name} {q}");
    }
}

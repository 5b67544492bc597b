use std::path::Path;

use redb::{Database, ReadableTable};

use super::tables::META;
use super::{ROOT_INO, Store, file_key};
use crate::model::template::{DEFAULT_TEMPLATE, Template};
use crate::model::{AudioProps, FileRecord, Tags};

fn rec(path: &str, artist: &str, title: &str) -> FileRecord {
    FileRecord {
        origin: 0,
        rel_path: path.as_bytes().to_vec(),
        size_bytes: 10,
        mtime_ns: 5,
        origin_ino: 1,
        fingerprint: 0,
        format: None,
        tags: Tags {
            artist: Some(artist.into()),
            album: Some("Album".into()),
            title: Some(title.into()),
            track: Some(1),
            ..Tags::default()
        },
        props: AudioProps::default(),
        probe_error: None,
        art: None,
        is_image: false,
    }
}

fn open(dir: &Path) -> Store {
    Store::open(
        &dir.join("c.redb"),
        Template::parse(DEFAULT_TEMPLATE).unwrap(),
    )
    .unwrap()
}

fn ls(s: &Store, dir: u64) -> Vec<String> {
    s.children(dir)
        .unwrap()
        .iter()
        .map(|c| c.name.to_string())
        .collect()
}

fn resolve(s: &Store, path: &str) -> Option<u64> {
    let mut ino = ROOT_INO;
    for part in path.split('/') {
        ino = s.lookup(ino, part).unwrap()?.0;
    }
    Some(ino)
}

#[test]
fn collisions_are_deterministic_whatever_the_batch_order() {
    let dir = tempfile::tempdir().unwrap();
    let files = vec![
        rec("b.flac", "A", "Song"),
        rec("a.flac", "A", "Song"),
        rec("c.flac", "A", "Song"),
    ];
    let s1 = {
        let d = dir.path().join("1");
        std::fs::create_dir(&d).unwrap();
        let s = open(&d);
        s.apply(files.clone(), &[], true).unwrap();
        s
    };
    let mut rev = files;
    rev.reverse();
    let d = dir.path().join("2");
    std::fs::create_dir(&d).unwrap();
    let s2 = open(&d);
    s2.apply(rev, &[], true).unwrap();
    let album = resolve(&s1, "A/Album").unwrap();
    assert_eq!(
        ls(&s1, album),
        ["01 - Song (2).flac", "01 - Song (3).flac", "01 - Song.flac"]
    );
    for name in ls(&s1, album) {
        let k1 = s1
            .node(resolve(&s1, &format!("A/Album/{name}")).unwrap())
            .unwrap()
            .unwrap()
            .file_key;
        let k2 = s2
            .node(resolve(&s2, &format!("A/Album/{name}")).unwrap())
            .unwrap()
            .unwrap()
            .file_key;
        assert_eq!(k1, k2);
    }
}

#[test]
fn changes_apply_incrementally_and_prune_empty_dirs() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    s.apply(
        vec![rec("a.mp3", "A", "One"), rec("b.mp3", "B", "Two")],
        &[],
        true,
    )
    .unwrap();
    let one = resolve(&s, "A/Album/01 - One.mp3").unwrap();
    assert_eq!(ls(&s, ROOT_INO), ["A", "B"]);
    // Retag b.mp3 to artist A: B disappears, A/Album gains it.
    let inval = s.apply(vec![rec("b.mp3", "A", "Two")], &[], false).unwrap();
    assert_eq!(ls(&s, ROOT_INO), ["A"]);
    assert!(
        inval
            .entries
            .iter()
            .any(|(p, n)| *p == ROOT_INO && n == "B")
    );
    assert_eq!(
        ls(&s, resolve(&s, "A/Album").unwrap()),
        ["01 - One.mp3", "01 - Two.mp3"]
    );
    // Modify a.mp3 in place (same tags, new size): same inode, new size.
    let mut changed = rec("a.mp3", "A", "One");
    changed.size_bytes = 99;
    let inval = s.apply(vec![changed], &[], false).unwrap();
    assert_eq!(inval.inodes, [one]);
    assert_eq!(resolve(&s, "A/Album/01 - One.mp3"), Some(one));
    assert_eq!(s.node(one).unwrap().unwrap().size_bytes, 99);
    // Delete everything: only the root is left.
    s.apply(
        vec![],
        &[file_key(0, b"a.mp3"), file_key(0, b"b.mp3")],
        false,
    )
    .unwrap();
    assert!(ls(&s, ROOT_INO).is_empty());
    assert!(s.node(one).unwrap().is_none());
    // The path comes back with its old inode.
    s.apply(vec![rec("a.mp3", "A", "One")], &[], false).unwrap();
    assert_eq!(resolve(&s, "A/Album/01 - One.mp3"), Some(one));
}

#[test]
fn listing_cache_limit_applies_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let recs: Vec<FileRecord> = (0..20)
        .map(|i| rec(&format!("{i}.mp3"), &format!("Artist {i}"), "T"))
        .collect();
    s.apply(recs, &[], true).unwrap();
    // Root (20 entries) and every artist and album directory (1 each).
    for name in ls(&s, ROOT_INO) {
        let artist = resolve(&s, &name).unwrap();
        ls(&s, resolve(&s, &format!("{name}/Album")).unwrap());
        ls(&s, artist);
    }
    let (dirs, entries, _) = s.cache_figures();
    assert_eq!((dirs, entries), (41, 60));
    // Shrinking drops the oldest listings until it fits.
    s.set_listing_cache_limit(10);
    let (dirs, entries, _) = s.cache_figures();
    assert!(entries <= 10 && dirs == entries, "{dirs} {entries}");
    assert_eq!(s.listing_cache_limit(), 10);
    // A listing larger than the whole limit is still served (and kept
    // alone until the next insert).
    assert_eq!(ls(&s, ROOT_INO).len(), 20);
    let (dirs, entries, _) = s.cache_figures();
    assert_eq!((dirs, entries), (1, 20));
    ls(&s, resolve(&s, "Artist 3").unwrap());
    assert!(s.cache_figures().1 <= 10);
    // Listings stay right whatever was evicted.
    assert_eq!(ls(&s, resolve(&s, "Artist 7").unwrap()), ["Album"]);
}

#[test]
fn reopen_keeps_tree_and_inodes() {
    let dir = tempfile::tempdir().unwrap();
    let ino = {
        let s = open(dir.path());
        s.apply(vec![rec("a.mp3", "A", "One")], &[], true).unwrap();
        resolve(&s, "A/Album/01 - One.mp3").unwrap()
    };
    let s = open(dir.path());
    assert!(s.scan_complete().unwrap());
    assert_eq!(resolve(&s, "A/Album/01 - One.mp3"), Some(ino));
}

#[test]
fn template_change_rebuilds_tree_keeping_known_paths() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = open(dir.path());
        s.apply(vec![rec("a.mp3", "A", "One")], &[], true).unwrap();
    }
    let s = Store::open(
        &dir.path().join("c.redb"),
        Template::parse("{artist}/{title}.{ext}").unwrap(),
    )
    .unwrap();
    assert!(resolve(&s, "A/One.mp3").is_some());
    assert!(resolve(&s, "A/Album").is_none());
}

#[test]
fn newer_schema_version_is_refused_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.redb");
    {
        let db = Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(META)
            .unwrap()
            .insert("schema_version", 99)
            .unwrap();
        txn.commit().unwrap();
    }
    let t = Template::parse(DEFAULT_TEMPLATE).unwrap();
    let err = Store::open(&path, t.clone())
        .err()
        .expect("a future schema was accepted");
    assert!(format!("{err:#}").contains("schema version 99"), "{err:#}");
    // Never discarded: an engine swap that rolls back must not lose it.
    let err = Store::open_or_rebuild(&path, t)
        .err()
        .expect("a newer catalog was replaced");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("schema version 99") && msg.contains("newer than this engine's"),
        "{msg}"
    );
    let files: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(files.len(), 1, "the catalog was moved aside");
    let db = Database::open(&path).unwrap();
    let txn = redb::ReadableDatabase::begin_read(&db).unwrap();
    let v = txn
        .open_table(META)
        .unwrap()
        .get("schema_version")
        .unwrap()
        .unwrap()
        .value();
    assert_eq!(v, 99);
}

#[test]
fn garbage_catalog_is_moved_aside() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.redb");
    std::fs::write(&path, vec![0x42u8; 8192]).unwrap();
    assert!(Store::open(&path, Template::parse(DEFAULT_TEMPLATE).unwrap()).is_err());
    let s = Store::open_or_rebuild(&path, Template::parse(DEFAULT_TEMPLATE).unwrap()).unwrap();
    assert_eq!(s.file_count().unwrap(), 0);
    let aside: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("broken"))
        .collect();
    assert_eq!(aside.len(), 1);
}

#[test]
fn replicas_show_once_and_keep_their_node() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    s.assign_origins(&["/a".into(), "/b".into()]).unwrap();
    let mut a = rec("x/song.flac", "A", "Song");
    a.fingerprint = 7;
    let mut b = a.clone();
    b.origin = 1;
    b.mtime_ns = 99;
    let mut other = b.clone();
    other.rel_path = b"x/other.flac".to_vec();
    other.tags.title = Some("Other".into());
    s.apply(vec![a.clone()], &[], false).unwrap();
    s.apply(vec![b.clone(), other], &[], false).unwrap();
    let album = resolve(&s, "A/Album").unwrap();
    assert_eq!(
        ls(&s, album),
        ["01 - Other.flac", "01 - Song.flac"],
        "one entry per song"
    );
    let ino = resolve(&s, "A/Album/01 - Song.flac").unwrap();
    assert_eq!(
        s.file(&file_key(1, b"x/song.flac")).unwrap().unwrap().ino,
        ino
    );
    // A copy with other content is not a replica.
    let mut c = a.clone();
    c.fingerprint = 8;
    c.rel_path = b"x/song.flac".to_vec();
    c.origin = 2;
    s.assign_origins(&["/a".into(), "/b".into(), "/c".into()])
        .unwrap();
    s.apply(vec![c], &[], false).unwrap();
    assert_eq!(ls(&s, album).len(), 3, "different bytes: its own entry");
    // The node's own copy goes: the replica takes the node over.
    s.apply(Vec::new(), &[file_key(0, b"x/song.flac")], false)
        .unwrap();
    assert_eq!(resolve(&s, "A/Album/01 - Song.flac"), Some(ino));
    let node = s.node(ino).unwrap().unwrap();
    assert_eq!(node.file_key, file_key(1, b"x/song.flac"));
    assert_eq!(node.version, b.version());
    // The last copy goes: so does the entry.
    s.apply(Vec::new(), &[file_key(1, b"x/song.flac")], false)
        .unwrap();
    assert_eq!(resolve(&s, "A/Album/01 - Song.flac"), None);
}

#[test]
fn tracks_have_tree_paths_first_seen_times_and_a_commit_sequence() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let before = crate::sys::time::now_ns();
    let inval = s
        .apply(
            vec![rec("a.flac", "A", "One"), rec("b.flac", "A", "Two")],
            &[],
            true,
        )
        .unwrap();
    assert_eq!(inval.commit_seq, 1);
    assert_eq!(s.commit_seq().unwrap(), 1);
    let mut all = Vec::new();
    let seq = s
        .for_each_track(|t| {
            all.push(t);
            Ok(())
        })
        .unwrap();
    assert_eq!(seq, 1);
    all.sort_by(|a, b| a.path.cmp(&b.path));
    let paths: Vec<&str> = all.iter().map(|t| t.path.as_str()).collect();
    assert_eq!(paths, ["A/Album/01 - One.flac", "A/Album/01 - Two.flac"]);
    for t in &all {
        assert!(t.first_seen_ns >= before, "first seen now");
        let one = s.track(t.ino).unwrap().unwrap();
        assert_eq!((one.path.as_str(), one.parent), (t.path.as_str(), t.parent));
        assert_eq!(resolve(&s, &t.path), Some(t.ino));
    }
    assert!(
        s.track(ROOT_INO).unwrap().is_none(),
        "a directory is no track"
    );
    // A commit that changes nothing leaves the sequence; a removal moves it.
    assert_eq!(s.apply(Vec::new(), &[], false).unwrap().commit_seq, 1);
    let gone = s
        .apply(Vec::new(), &[file_key(0, b"a.flac")], false)
        .unwrap();
    assert_eq!(gone.commit_seq, 2);
    assert!(s.track(all[0].ino).unwrap().is_none());
}

#[test]
fn a_schema_5_catalog_gets_its_directories_marked_and_lists_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.redb");
    let before: Vec<(String, bool)>;
    {
        let s = open(dir.path());
        s.apply(
            vec![rec("a.mp3", "A", "One"), rec("b.mp3", "B", "Two")],
            &[],
            true,
        )
        .unwrap();
        let artist = resolve(&s, "A").unwrap();
        let album = s.children(artist).unwrap()[0].ino;
        before = [ROOT_INO, artist, album]
            .iter()
            .flat_map(|d| s.children(*d).unwrap().to_vec())
            .map(|c| (c.name.to_string(), c.is_dir))
            .collect();
        assert!(before.iter().any(|c| c.1) && before.iter().any(|c| !c.1));
        s.close(std::time::Duration::from_secs(5)).unwrap();
    }
    // What a schema 5 engine wrote: plain inode numbers, version 5.
    {
        let db = Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut children = txn.open_table(super::tables::CHILDREN).unwrap();
            let rows: Vec<(Vec<u8>, u64)> = children
                .iter()
                .unwrap()
                .map(|r| {
                    let (k, v) = r.unwrap();
                    (k.value().to_vec(), v.value() & !super::tables::CHILD_DIR)
                })
                .collect();
            for (k, v) in rows {
                children.insert(k.as_slice(), v).unwrap();
            }
            txn.open_table(META)
                .unwrap()
                .insert("schema_version", 5)
                .unwrap();
        }
        txn.commit().unwrap();
    }
    let s = open(dir.path());
    let artist = resolve(&s, "A").unwrap();
    let album = s.children(artist).unwrap()[0].ino;
    let after: Vec<(String, bool)> = [ROOT_INO, artist, album]
        .iter()
        .flat_map(|d| s.children(*d).unwrap().to_vec())
        .map(|c| (c.name.to_string(), c.is_dir))
        .collect();
    assert_eq!(after, before);
    assert!(resolve(&s, "B").is_some());
}

fn with_art(mut r: FileRecord, len: u64) -> FileRecord {
    r.art = Some(crate::model::Art {
        offset: 0,
        len,
        ext: "jpg".into(),
    });
    r
}

/// A flat origin folder (`Incoming`) of tracks of many albums, with a
/// folder image among names that start with the same letters: every album
/// directory its tracks land in gets that image as its cover (looked up
/// once for the commit). A directory of more tracks than a cover is chosen
/// from takes an embedded picture from its first tracks by name only, so a
/// commit adding to a catch-all directory of thousands costs what one to
/// an album does.
#[test]
fn covers_of_a_flat_folder_and_of_a_big_directory() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let mut files: Vec<FileRecord> = (0..20)
        .map(|i| {
            rec(
                &format!("Incoming/Folder song {i}.mp3"),
                &format!("Artist {i}"),
                "Song",
            )
        })
        .collect();
    let mut image = with_art(rec("Incoming/FOLDER.jpg", "", ""), 5000);
    image.is_image = true;
    image.tags = Tags::default();
    files.push(image);
    s.apply(files, &[], true).unwrap();
    for i in 0..20 {
        let album = resolve(&s, &format!("Artist {i}/Album")).unwrap();
        assert!(
            ls(&s, album).contains(&"cover.jpg".to_string()),
            "Artist {i}: {:?}",
            ls(&s, album)
        );
    }

    let big = |i: usize| rec(&format!("big/{i:03}/t.mp3"), "Big", &format!("Song {i:03}"));
    let mut files: Vec<FileRecord> = (0..100).map(big).collect();
    files[80] = with_art(big(80), 100);
    s.apply(files, &[], true).unwrap();
    let album = resolve(&s, "Big/Album").unwrap();
    assert_eq!(
        ls(&s, album).len(),
        100,
        "the 81st track's picture is past the first 64"
    );
    s.apply(vec![with_art(big(10), 100)], &[], true).unwrap();
    assert!(
        ls(&s, album).contains(&"cover.jpg".to_string()),
        "{:?}",
        ls(&s, album)
    );
}

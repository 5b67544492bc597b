//! Search views on real mounts: `/.search/<query>/` against the generator's
//! manifest, a bad query, byte identity, the index rebuilt after it was
//! deleted, corrupted or truncated while reads go on, collections and their
//! playlists (mpv plays one), a new matching track showing up, SIGHUP, and
//! the `musicfs search` command.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use musicfs_integration::*;

const TRACKS: usize = 2000;

/// Which manifest tracks a query should find.
type Predicate = Box<dyn Fn(&ManifestTags) -> bool>;
/// A way to damage the index directory.
type Damage = fn(&Path);
const SEED: u64 = 7;

/// Words as the index cuts them: alphanumeric runs, lower case.
fn words(s: &Option<String>) -> Vec<String> {
    s.as_deref()
        .unwrap_or_default()
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

fn has_word(s: &Option<String>, w: &str) -> bool {
    words(s).iter().any(|x| x == w)
}

/// The origin paths (relative to `lib`) of the entries of a directory of
/// the mount, by their `user.musicfs.origin`.
fn origins_of(dir: &Path, lib: &Path) -> BTreeSet<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            let o = getxattr(&p, "user.musicfs.origin").expect("origin xattr");
            Path::new(OsStr::from_bytes(&o))
                .strip_prefix(lib)
                .unwrap()
                .to_path_buf()
        })
        .collect()
}

fn expected(manifest: &[ManifestEntry], pred: impl Fn(&ManifestTags) -> bool) -> BTreeSet<PathBuf> {
    manifest
        .iter()
        .filter(|e| pred(&e.tags))
        .map(|e| PathBuf::from(OsStr::from_bytes(&e.raw_path())))
        .collect()
}

fn write_config(dir: &Path, origin: &Path, collections: &[(&str, &str)]) -> PathBuf {
    let mut text = format!(
        "origins = [{:?}]\n[collections]\n",
        origin.display().to_string()
    );
    for (n, q) in collections {
        text.push_str(&format!("{n:?} = '{q}'\n"));
    }
    let path = dir.join("config.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn search_dir(mnt: &Path, query: &str) -> PathBuf {
    mnt.join(".search").join(query)
}

fn musicfs_search(state: &Path, args: &[&str]) -> std::process::Output {
    Command::new(musicfs_bin())
        .arg("search")
        .args(args)
        .arg("--state-dir")
        .arg(state)
        .output()
        .unwrap()
}

/// Queries list exactly the tracks whose tags match, by tree name, and
/// each reads the bytes of its origin; a bad query is ENOENT with one log
/// line; `/.search` holds only its README; the root does not list the
/// virtual directories; `musicfs search` prints the same tracks.
#[test]
fn searches_match_the_manifest() {
    let lib = generated_library(TRACKS, SEED);
    let manifest = read_manifest(&lib);
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &lib, &[]);
    let m = Mount::start_with_config(&cfg, &[]);
    // The index is built in the background after the first scan.
    assert!(eventually(Duration::from_secs(60), || {
        search_dir(&m.mnt, "genre:blues").is_dir()
    }));
    // A phrase from some title with two ASCII words in a row.
    let (w1, w2) = manifest
        .iter()
        .filter(|e| e.kind == "normal")
        .find_map(|e| {
            let w = words(&e.tags.title);
            (w.len() >= 2 && w[0].is_ascii() && w[1].is_ascii() && w[0].len() > 3)
                .then(|| (w[0].clone(), w[1].clone()))
        })
        .unwrap();
    let phrase = format!("title:\"{w1} {w2}\"");
    let cases: Vec<(String, Predicate)> = vec![
        (
            "genre:blues".into(),
            Box::new(|t| has_word(&t.genre, "blues")),
        ),
        (
            "artist:reed".into(),
            Box::new(|t| has_word(&t.artist, "reed")),
        ),
        (
            "genre:jazz AND year:[1950 TO 1999]".into(),
            Box::new(|t| {
                has_word(&t.genre, "jazz") && t.year.is_some_and(|y| (1950..=1999).contains(&y))
            }),
        ),
        (
            phrase.clone(),
            Box::new(move |t| words(&t.title).windows(2).any(|p| p[0] == w1 && p[1] == w2)),
        ),
    ];
    for (query, pred) in &cases {
        let want = expected(&manifest, pred);
        assert!(!want.is_empty(), "{query} matches nothing in the manifest");
        let d = search_dir(&m.mnt, query);
        let got = origins_of(&d, &lib);
        assert_eq!(got, want, "{query}");
        // Names are the tree's (a collision takes a suffix, as in the tree).
        for e in std::fs::read_dir(&d).unwrap() {
            let name = e.unwrap().file_name();
            assert!(!name.as_bytes().starts_with(b"."), "{name:?}");
        }
        // `musicfs search` prints the same tracks, as tree paths.
        let out = musicfs_search(&m.state, &[query]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let paths: Vec<String> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect();
        assert_eq!(paths.len(), want.len(), "{query}");
        for p in &paths {
            assert!(m.mnt.join(p).is_file(), "{p} is not in the tree");
        }
        let out = musicfs_search(&m.state, &["--json", query]);
        let json: Vec<String> = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(json, paths, "--json lists the same paths");
    }
    // Byte identity, and the same file as the tree's.
    let d = search_dir(&m.mnt, "genre:blues");
    for e in std::fs::read_dir(&d).unwrap().take(10) {
        let p = e.unwrap().path();
        let origin = PathBuf::from(OsStr::from_bytes(
            &getxattr(&p, "user.musicfs.origin").unwrap(),
        ));
        assert_eq!(hash_file(&p).unwrap(), hash_file(&origin).unwrap());
    }
    // A bad query: ENOENT, one log line; the CLI fails and says why.
    let bad = search_dir(&m.mnt, "genre:(");
    let err = std::fs::metadata(&bad).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
    let _ = std::fs::read_dir(&bad);
    assert!(eventually(Duration::from_secs(5), || m
        .log_text()
        .contains("search query refused")));
    assert_eq!(
        m.log_text().matches("search query refused").count(),
        1,
        "one line for a bad query"
    );
    assert!(
        !search_dir(&m.mnt, ".hidden").exists(),
        "dot names are no queries"
    );
    let out = musicfs_search(&m.state, &["genre:("]);
    assert!(!out.status.success());
    // /.search lists only its README; the root lists no virtual directory.
    let names: Vec<_> = std::fs::read_dir(m.mnt.join(".search"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["README.txt"]);
    let readme = std::fs::read_to_string(m.mnt.join(".search/README.txt")).unwrap();
    assert!(readme.contains("year:[1990 TO 1999]"));
    let root: Vec<_> = std::fs::read_dir(&m.mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(root.iter().all(|n| !n.as_bytes().starts_with(b".")));
    assert!(
        list_files(&m.mnt)
            .iter()
            .all(|p| !p.to_string_lossy().contains("/.")),
        "walks see the tree only"
    );
    m.stop();
}

/// Hashes tree files in a loop until told to stop; counts reads and errors.
fn reader(
    files: Vec<PathBuf>,
    stop: Arc<AtomicBool>,
    reads: Arc<AtomicU64>,
) -> std::thread::JoinHandle<Vec<String>> {
    std::thread::spawn(move || {
        let mut errors = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            for f in &files {
                match hash_file(f) {
                    Ok(_) => reads.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        if errors.len() < 5 {
                            errors.push(format!(
                                "{}: {e} (after {} good reads)",
                                f.display(),
                                reads.load(Ordering::Relaxed)
                            ));
                        }
                        0
                    }
                };
            }
        }
        errors
    })
}

/// The index comes back after its directory is deleted (live, with
/// `musicfs search rebuild`), corrupted or truncated (while stopped): the
/// mount serves at once and reads go on while it is rebuilt.
#[test]
fn the_index_is_rebuilt_when_lost() {
    let lib = generated_library(TRACKS, SEED);
    let manifest = read_manifest(&lib);
    let want = expected(&manifest, |t| has_word(&t.genre, "blues"));
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &lib, &[]);
    let state = dir.path().join("state");
    let index_dir = state.join("search/v1");
    let m = Mount::start_with_config_state(&cfg, &state, &[]);
    assert!(eventually(Duration::from_secs(60), || {
        search_dir(&m.mnt, "genre:blues").is_dir()
    }));
    let rel: Vec<PathBuf> = list_files(&m.mnt).into_iter().take(50).collect();
    let files: Vec<PathBuf> = rel.iter().map(|f| m.mnt.join(f)).collect();
    let (stop, reads) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
    );
    let r = reader(files.clone(), stop.clone(), reads.clone());
    // Deleted while the engine runs, then rebuilt on demand.
    std::fs::remove_dir_all(&index_dir).unwrap();
    let out = musicfs_search(&m.state, &["rebuild"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("{TRACKS}/{TRACKS} tracks")),
        "{text}"
    );
    assert!(
        text.contains(&format!("rebuilt: {TRACKS} tracks")),
        "{text}"
    );
    assert!(index_dir.join("meta.json").is_file());
    assert_eq!(
        origins_of(&search_dir(&m.mnt, "genre:blues -genre:x"), &lib),
        want
    );
    stop.store(true, Ordering::Relaxed);
    assert_eq!(r.join().unwrap(), Vec::<String>::new(), "no read failed");
    assert!(reads.load(Ordering::Relaxed) > 0);
    m.stop();

    // Corrupted, then truncated, while no engine runs: the next start
    // serves at once (reads go on) and rebuilds it in the background.
    let damages: [(&str, Damage); 2] = [
        ("corrupted", |d| {
            std::fs::write(d.join("meta.json"), b"{ not json").unwrap()
        }),
        ("truncated", |d| {
            let biggest = std::fs::read_dir(d)
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| p.extension().is_some_and(|e| e != "json" && e != "lock"))
                .max_by_key(|p| std::fs::metadata(p).unwrap().len())
                .unwrap();
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(&biggest)
                .unwrap();
            let len = f.metadata().unwrap().len();
            f.set_len(len / 2).unwrap();
        }),
    ];
    for (what, damage) in damages {
        damage(&index_dir);
        let m = Mount::start_with_config_state(&cfg, &state, &[]);
        let (stop, reads) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU64::new(0)),
        );
        let files: Vec<PathBuf> = rel.iter().map(|f| m.mnt.join(f)).collect();
        let r = reader(files, stop.clone(), reads.clone());
        assert!(
            eventually(Duration::from_secs(60), || m
                .log_text()
                .contains("search index rebuilt from the catalog")),
            "{what}: not rebuilt:\n{}",
            m.log_text()
        );
        assert_eq!(
            origins_of(&search_dir(&m.mnt, "genre:blues"), &lib),
            want,
            "{what}"
        );
        stop.store(true, Ordering::Relaxed);
        let errors = r.join().unwrap();
        assert!(errors.is_empty(), "{what}: {errors:?}");
        assert!(reads.load(Ordering::Relaxed) > 0, "{what}: reads went on");
        m.stop();
    }
    // In step at the next start: no rebuild.
    let m = Mount::start_with_config_state(&cfg, &state, &[]);
    assert!(eventually(Duration::from_secs(30), || m
        .log_text()
        .contains("search index open, in step with the catalog")));
    assert!(!m.log_text().contains("rebuilt from the catalog"));
    m.stop();
}

/// A collection lists what its search lists; its playlist is an extended
/// M3U whose entries all resolve from `/.playlists`, and mpv plays it; a
/// new matching track shows up in both; a SIGHUP adds a collection.
#[test]
fn collections_and_playlists() {
    let lib = generated_library(TRACKS, SEED);
    let manifest = read_manifest(&lib);
    let dir = tempfile::tempdir().unwrap();
    let origin = dir.path().join("origin");
    // Two albums' worth of blues, and some of everything else.
    let blues: Vec<ManifestEntry> = manifest
        .iter()
        .filter(|e| e.kind == "normal" && has_word(&e.tags.genre, "blues"))
        .cloned()
        .collect();
    assert!(blues.len() > 6);
    copy_tracks(&lib, &blues, 0, 5, &origin);
    copy_tracks(&lib, &manifest, 0, 40, &origin);
    let query = "genre:blues";
    let cfg = write_config(dir.path(), &origin, &[("Blues", query)]);
    let m = Mount::start_with_config(&cfg, &[]);
    let coll = m.mnt.join(".collections/Blues");
    // Listed once the index is built (EAGAIN before).
    assert!(eventually(Duration::from_secs(60), || std::fs::read_dir(
        &coll
    )
    .is_ok_and(|mut d| d.all(|e| e.is_ok()))));
    let names = |d: &Path| -> BTreeSet<String> {
        std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect()
    };
    let listed = names(&coll);
    assert_eq!(listed, names(&search_dir(&m.mnt, query)));
    let mut colls = names(&m.mnt.join(".collections"));
    assert_eq!(
        colls,
        ["All tracks", "Blues", "Recently added"]
            .map(String::from)
            .into()
    );
    let all = names(&m.mnt.join(".collections/All tracks")).len();
    assert_eq!(
        all,
        list_files(&m.mnt).len(),
        "All tracks lists every track"
    );
    assert_eq!(
        names(&m.mnt.join(".collections/Recently added")).len(),
        all,
        "everything was first seen just now"
    );
    // The playlist.
    let playlist = m.mnt.join(".playlists/Blues.m3u8");
    let text = std::fs::read_to_string(&playlist).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("#EXTM3U"));
    let rest: Vec<&str> = lines.collect();
    assert_eq!(rest.len(), 2 * listed.len(), "{text}");
    for pair in rest.chunks(2) {
        let (secs, who) = pair[0]
            .strip_prefix("#EXTINF:")
            .and_then(|l| l.split_once(','))
            .unwrap_or_else(|| panic!("{}", pair[0]));
        secs.parse::<u64>().unwrap();
        assert!(who.contains(" - "), "{who}");
        assert!(pair[1].starts_with("../"), "relative: {}", pair[1]);
        let target = m.mnt.join(".playlists").join(pair[1]);
        assert!(target.is_file(), "{} does not resolve", pair[1]);
    }
    let first = m.mnt.join(".playlists").join(rest[1]);
    let out = Command::new("mpv")
        .args(["--no-config", "--ao=null", "--vo=null", "--length=0.3"])
        .arg(format!("--playlist={}", playlist.display()))
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "mpv: {said}");
    assert!(said.contains("Playing:"), "{said}");
    assert!(
        said.contains(rest[1]) || said.contains(&first.display().to_string()),
        "{said}"
    );
    // A new matching track shows up in the collection and its playlist.
    let fresh = blues
        .iter()
        .position(|e| !origin.join(OsStr::from_bytes(&e.raw_path())).exists())
        .unwrap();
    copy_tracks(&lib, &blues, fresh, 1, &origin);
    assert!(
        eventually(Duration::from_secs(15), || names(&coll).len()
            == listed.len() + 1),
        "the new track did not show up: {:?}",
        names(&coll)
    );
    assert!(eventually(
        Duration::from_secs(5),
        || std::fs::read_to_string(&playlist).unwrap().lines().count()
            == 1 + 2 * (listed.len() + 1)
    ));
    // And goes again when it is removed: the name the kernel knew is gone.
    let added: Vec<String> = names(&coll).difference(&listed).cloned().collect();
    assert_eq!(added.len(), 1, "{added:?}");
    let entry = coll.join(&added[0]);
    assert!(entry.is_file());
    std::fs::remove_file(origin.join(OsStr::from_bytes(&blues[fresh].raw_path()))).unwrap();
    assert!(
        eventually(Duration::from_secs(15), || names(&coll) == listed
            && !entry.exists()),
        "the removed track stayed: {:?}",
        names(&coll)
    );
    // SIGHUP: a new collection.
    write_config(
        dir.path(),
        &origin,
        &[("Blues", query), ("Reed", "artist:reed")],
    );
    // SAFETY: a signal to our own child.
    unsafe { libc::kill(m.pid() as i32, libc::SIGHUP) };
    colls.insert("Reed".into());
    assert!(eventually(Duration::from_secs(15), || names(
        &m.mnt.join(".collections")
    ) == colls));
    assert!(m.mnt.join(".playlists/Reed.m3u8").is_file());
    assert!(!m.mnt.join(".collections/Nope").exists());
    m.stop();
}

/// The composer tag is read and searchable (`composer:`), across tag
/// formats (FLAC's Vorbis comments, MP3's ID3v2 TCOM).
#[test]
fn composers_are_searchable() {
    let dir = tempfile::tempdir().unwrap();
    let origin = dir.path().join("origin");
    std::fs::create_dir(&origin).unwrap();
    for (name, composer, title) in [
        ("a.flac", "Erik Satie", "Gymnopedie"),
        ("b.mp3", "Erik Satie", "Gnossienne"),
        ("c.flac", "Claude Debussy", "Reverie"),
    ] {
        let out = Command::new("ffmpeg")
            .args([
                "-loglevel",
                "error",
                "-y",
                "-f",
                "lavfi",
                "-i",
                "sine=d=0.5",
            ])
            .args(["-metadata", &format!("composer={composer}")])
            .args(["-metadata", &format!("title={title}")])
            .args(["-metadata", "artist=Pianist"])
            .arg(origin.join(name))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let cfg = write_config(dir.path(), &origin, &[]);
    let m = Mount::start_with_config(&cfg, &[]);
    let names = |q: &str| -> BTreeSet<String> {
        std::fs::read_dir(search_dir(&m.mnt, q))
            .map(|d| {
                d.filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    let found = eventually(Duration::from_secs(30), || {
        names("composer:satie").len() == 2
    });
    assert!(found, "{:?}", names("composer:satie"));
    assert!(
        names("composer:satie")
            .iter()
            .all(|n| n.contains("Gymnopedie") || n.contains("Gnossienne"))
    );
    let debussy = names("composer:debussy");
    assert_eq!(debussy.len(), 1, "{debussy:?}");
    assert!(debussy.iter().all(|n| n.contains("Reverie")));
    m.stop();
}

//! The kernel caches names, attributes, misses and listings for hours
//! (`entry_ttl_ms`, `negative_ttl_ms`, `FOPEN_CACHE_DIR`): these tests walk
//! a real mount so that the kernel holds all of it, change things, and
//! walk again. What the cached mount shows must equal what a fresh mount
//! of the same origin shows (names, and every file's bytes), after origin
//! changes (within the debounce), a template change, and a new engine on
//! a rebuilt catalog (other inode numbers).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use musicfs_integration::*;

const TRACKS: usize = 2000;
const SEED: u64 = 7;
/// How long a change may take to show (the tests run with a 200 ms debounce).
const WINDOW: Duration = Duration::from_secs(10);

/// Every file of the tree: its path and its bytes' hash (read through
/// the mount), with every directory listed and every entry stat'ed.
fn walk(mnt: &Path) -> BTreeMap<PathBuf, blake3::Hash> {
    list_files_lenient(mnt)
        .into_iter()
        .filter_map(|rel| {
            let h = hash_file(&mnt.join(&rel)).ok()?;
            Some((rel, h))
        })
        .collect()
}

/// The tree a fresh mount of `origin` shows (no kernel cache, a new
/// catalog), with `config` lines added.
fn fresh_walk(origin: &Path, config: &str) -> BTreeMap<PathBuf, blake3::Hash> {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("fresh.toml");
    std::fs::write(&cfg, format!("origins = [{origin:?}]\n{config}")).unwrap();
    let m = Mount::start_with_config(&cfg, &[("MUSICFS_WATCH", "off")]);
    let tree = walk(&m.mnt);
    assert!(m.stop().success());
    tree
}

/// Rewrites tags of an mp3 in place (ffmpeg to a temporary file, rename).
fn retag(file: &Path, tags: &[(&str, &str)]) {
    let tmp = file.with_file_name(".retag.tmp.mp3");
    let mut cmd = Command::new("ffmpeg");
    cmd.args(["-loglevel", "error", "-y", "-i"])
        .arg(file)
        .args(["-map_metadata", "0"]);
    for (k, v) in tags {
        cmd.arg("-metadata").arg(format!("{k}={v}"));
    }
    let ok = cmd
        .args(["-c", "copy"])
        .arg(&tmp)
        .status()
        .unwrap()
        .success();
    assert!(ok, "ffmpeg retag failed");
    std::fs::rename(&tmp, file).unwrap();
}

/// An origin of `n` real mp3 tracks with ASCII names and titles; returns
/// their origin paths and titles.
fn mp3_origin(to: &Path, n: usize) -> Vec<(PathBuf, String)> {
    let lib = generated_library(TRACKS, SEED);
    let mut out = Vec::new();
    for e in read_manifest(&lib).iter().filter(|e| {
        e.kind == "normal"
            && e.format == "mp3"
            && e.path.is_ascii()
            && e.tags.title.as_deref().is_some_and(|t| {
                t.chars().all(|c| c.is_ascii_alphanumeric() || c == ' ') && !t.is_empty()
            })
    }) {
        if out.len() == n {
            break;
        }
        let dst = to.join(format!("t{:03}.mp3", out.len()));
        std::fs::create_dir_all(to).unwrap();
        std::fs::copy(lib.join(&e.path), &dst).unwrap();
        out.push((dst, e.tags.title.clone().unwrap()));
    }
    assert_eq!(out.len(), n, "not enough plain mp3 tracks in the library");
    out
}

/// The mounted path of an origin file.
fn mounted(mnt: &Path, origin: &Path) -> Option<PathBuf> {
    list_files_lenient(mnt)
        .into_iter()
        .map(|r| mnt.join(r))
        .find(|p| {
            getxattr(p, "user.musicfs.origin").as_deref()
                == Some(origin.as_os_str().as_encoded_bytes())
        })
}

fn missing(p: &Path) -> bool {
    matches!(std::fs::symlink_metadata(p), Err(e) if e.kind() == std::io::ErrorKind::NotFound)
}

/// Walk, change the origin (add, remove, retag, rename, rewrite, a new
/// artist directory), walk again: within the debounce window the cached
/// mount shows exactly the tree and bytes of a fresh mount. Names that
/// were looked up and missing (negative entries) appear once they exist.
#[test]
fn a_walk_after_origin_changes_sees_every_change() {
    let dir = tempfile::tempdir().unwrap();
    let origin = dir.path().join("o");
    let tracks = mp3_origin(&origin, 24);
    let spare = dir.path().join("spare");
    let extra = mp3_origin(&spare, 26).split_off(24);
    let m = Mount::start_with(&[&origin], None, &[("MUSICFS_DEBOUNCE_MS", "200")]);
    let before = walk(&m.mnt);
    assert_eq!(before.len(), 24);
    assert_eq!(before, fresh_walk(&origin, ""), "the first walk is wrong");
    assert!(
        m.log_text().contains("FUSE session initialised"),
        "{}",
        m.log_text()
    );

    // Names that do not exist yet, looked up now (the kernel keeps the
    // misses): a file the retag below will name, a new artist's directory,
    // and what media servers probe for.
    let (retagged, old_title) = &tracks[1];
    let old_path = mounted(&m.mnt, retagged).unwrap();
    let old_name = old_path.file_name().unwrap().to_string_lossy().into_owned();
    assert!(old_name.contains(old_title.as_str()), "{old_name}");
    let new_path = old_path.with_file_name(old_name.replace(old_title.as_str(), "Brand New Title"));
    let new_artist = m.mnt.join("Zz Negative Probe");
    let probe = old_path.with_file_name("folder.jpg");
    for p in [&new_path, &new_artist, &probe] {
        assert!(missing(p), "{} exists", p.display());
        assert!(missing(p), "{} exists", p.display());
    }

    // The changes.
    std::fs::copy(&extra[0].0, origin.join("added.mp3")).unwrap();
    std::fs::remove_file(&tracks[0].0).unwrap();
    retag(retagged, &[("title", "Brand New Title")]);
    std::fs::rename(&tracks[2].0, origin.join("renamed.mp3")).unwrap();
    std::fs::copy(&extra[1].0, &tracks[3].0).unwrap(); // other bytes, same name
    let artist = origin.join("artist.mp3");
    std::fs::copy(&tracks[4].0, &artist).unwrap();
    retag(
        &artist,
        &[
            ("artist", "Zz Negative Probe"),
            ("album_artist", "Zz Negative Probe"),
        ],
    );
    // A new name in a directory whose listing the kernel holds, never
    // looked up: only the directory's invalidation can show it.
    let sibling = origin.join("sibling.mp3");
    std::fs::copy(&tracks[5].0, &sibling).unwrap();
    retag(&sibling, &[("title", "Second Copy")]);

    assert!(
        eventually(WINDOW, || new_path.is_file() && new_artist.is_dir()),
        "names looked up while missing did not appear: {:?}",
        list_files_lenient(&m.mnt)
    );
    assert!(missing(&old_path), "the retagged file's old name stayed");
    assert!(missing(&probe));
    let expected = fresh_walk(&origin, "");
    assert_eq!(expected.len(), 26);
    let mut after = BTreeMap::new();
    assert!(
        eventually(WINDOW, || {
            after = walk(&m.mnt);
            after == expected
        }),
        "the cached mount differs from a fresh one:\ncached {after:#?}\nfresh {expected:#?}"
    );
    assert_eq!(assert_files_match(&m.mnt, &[&origin]), 26);
    assert!(m.stop().success());
}

/// A template change re-lays the whole tree out while the kernel holds
/// every listing of the old one (directories that keep their path get
/// other children): the next walk shows the new tree only, as a fresh
/// mount with the new template does.
#[test]
fn a_template_change_drops_every_cached_listing() {
    let dir = tempfile::tempdir().unwrap();
    let origin = dir.path().join("o");
    mp3_origin(&origin, 20);
    let by_album = "template = \"{artist|\\\"Unknown Artist\\\"}/{album|\\\"Unknown Album\\\"}/{title|filename}.{ext}\"\n";
    let by_artist = "template = \"{artist|\\\"Unknown Artist\\\"}/{title|filename}.{ext}\"\n";
    let cfg = dir.path().join("musicfs.toml");
    std::fs::write(&cfg, format!("origins = [{origin:?}]\n{by_album}")).unwrap();
    let m = Mount::start_with_config(&cfg, &[]);
    let before = walk(&m.mnt);
    assert_eq!(before, fresh_walk(&origin, by_album));
    // Every file is two levels down; looked up through the new shape's
    // names before the change, they are misses the kernel keeps.
    assert!(before.keys().all(|p| p.components().count() == 3));
    let probes: Vec<PathBuf> = before
        .keys()
        .map(|p| {
            let mut c = p.components();
            let artist = c.next().unwrap();
            m.mnt.join(artist).join(p.file_name().unwrap())
        })
        .collect();
    assert!(probes.iter().all(|p| missing(p)));

    std::fs::write(&cfg, format!("origins = [{origin:?}]\n{by_artist}")).unwrap();
    let out = Command::new(musicfs_bin())
        .args(["reload", "--state-dir"])
        .arg(&m.state)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let expected = fresh_walk(&origin, by_artist);
    assert!(expected.keys().all(|p| p.components().count() == 2));
    let mut after = BTreeMap::new();
    assert!(
        eventually(WINDOW, || {
            after = walk(&m.mnt);
            after == expected
        }),
        "the tree after the template change differs from a fresh mount's:\ncached {after:#?}\nfresh {expected:#?}"
    );
    assert!(probes.iter().all(|p| p.is_file()), "a cached miss stayed");
    assert!(m.stop().success());
}

fn engine_pid(state: &Path) -> Option<i32> {
    pids_with_cmdline(&format!("engine --state-dir {}", state.display()))
        .into_iter()
        .next()
}

/// A new engine on a rebuilt catalog numbers the inodes anew (here every
/// number moves: files that sort first were added last). The shim stays,
/// and with it everything the kernel cached from the old engine: after
/// the new engine is up, every path shows the bytes a fresh mount shows,
/// never another file's by an old inode number.
#[test]
fn a_new_engine_on_a_rebuilt_catalog_serves_nothing_stale() {
    let dir = tempfile::tempdir().unwrap();
    let origin = dir.path().join("o");
    let tracks = mp3_origin(&origin, 16);
    let state = dir.path().join("state");
    let m = Mount::start_with(
        &[&origin],
        Some(&state),
        &[
            ("MUSICFS_DEBOUNCE_MS", "200"),
            ("MUSICFS_HEARTBEAT_INTERVAL_MS", "200"),
            ("MUSICFS_HEARTBEAT_TIMEOUT_MS", "1000"),
        ],
    );
    // Files that sort before all others, added after the first scan: they
    // take the highest inodes now, the lowest in a rebuilt catalog.
    for (i, (t, _)) in tracks.iter().take(4).enumerate() {
        let first = origin.join(format!("first{i}.mp3"));
        std::fs::copy(t, &first).unwrap();
        retag(
            &first,
            &[
                ("artist", "Aaa First"),
                ("album_artist", "Aaa First"),
                ("title", &format!("First {i}")),
            ],
        );
    }
    let before = fresh_walk(&origin, "");
    assert_eq!(before.len(), 20);
    assert!(
        eventually(WINDOW, || walk(&m.mnt) == before),
        "the added files did not appear as a fresh mount shows them"
    );

    // Stop the engine, make its catalog unreadable, kill it: the next
    // engine moves the catalog aside and scans into a new one.
    let old = engine_pid(&state).expect("no engine");
    // SAFETY: plain kill(2) on the engine this test's mount started.
    unsafe { libc::kill(old, libc::SIGSTOP) };
    let catalog = state.join("catalog.redb");
    let len = std::fs::metadata(&catalog).unwrap().len() as usize;
    std::fs::write(&catalog, vec![0xa5u8; len.max(4096)]).unwrap();
    // SAFETY: as above.
    unsafe { libc::kill(old, libc::SIGKILL) };
    assert!(
        eventually(Duration::from_secs(30), || engine_pid(&state)
            .is_some_and(|p| p != old)
            && m.log_text().contains("moved it to")),
        "no new engine on a rebuilt catalog:\n{}",
        m.log_text()
    );
    let mut after = BTreeMap::new();
    assert!(
        eventually(Duration::from_secs(30), || {
            after = walk(&m.mnt);
            after == before
        }),
        "after the new engine the mount differs from a fresh one:\ncached {after:#?}\nfresh {before:#?}"
    );
    assert!(m.stop().success());
}

/// Opens the engine answered, from its metrics.
fn engine_opens(state: &Path) -> u64 {
    let out = Command::new(musicfs_bin())
        .args(["metrics", "--state-dir"])
        .arg(state)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .find_map(|l| l.strip_prefix("musicfs_request_duration_seconds_count{op=\"open\"} "))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or_else(|| panic!("no open count in the metrics:\n{text}"))
}

/// With passthrough, reopens of a file that did not change are answered
/// by the shim (the engine sees the first open only); once the file
/// changes at the origin, the next open gets the new version, and its
/// reopens are again answered by the shim.
#[test]
fn reopens_of_an_unchanged_file_skip_the_engine_until_it_changes() {
    let dir = tempfile::tempdir().unwrap();
    let origin = dir.path().join("o");
    let tracks = mp3_origin(&origin, 3);
    let m = Mount::start_with(&[&origin], None, &[("MUSICFS_DEBOUNCE_MS", "200")]);
    let file = mounted(&m.mnt, &tracks[0].0).unwrap();
    let read = || std::fs::read(&file).unwrap();
    assert_eq!(read(), std::fs::read(&tracks[0].0).unwrap());
    let passthrough = m.log_text().contains("passthrough=true");
    let first = engine_opens(&m.state);
    for _ in 0..20 {
        assert_eq!(read(), std::fs::read(&tracks[0].0).unwrap());
    }
    let after = engine_opens(&m.state);
    if passthrough {
        assert_eq!(
            after, first,
            "reopens of an unchanged file reached the engine"
        );
    } else {
        assert_eq!(after, first + 20);
    }

    // Other bytes at the same origin path, with the same tags: the same
    // name and inode, a new version.
    let mut new_bytes = std::fs::read(&tracks[0].0).unwrap();
    new_bytes.extend_from_slice(&[7u8; 4096]);
    let tmp = origin.join(".swap.tmp");
    std::fs::write(&tmp, &new_bytes).unwrap();
    std::fs::rename(&tmp, &tracks[0].0).unwrap();
    assert!(
        eventually(WINDOW, || mounted(&m.mnt, &tracks[0].0)
            .is_some_and(|p| std::fs::read(&p).is_ok_and(|b| b == new_bytes))),
        "the new bytes were not served"
    );
    assert_eq!(
        mounted(&m.mnt, &tracks[0].0).unwrap(),
        file,
        "the name changed"
    );
    let opened = engine_opens(&m.state);
    for _ in 0..10 {
        assert_eq!(std::fs::read(&file).unwrap(), new_bytes);
    }
    if passthrough {
        assert_eq!(engine_opens(&m.state), opened);
    }
    assert!(m.stop().success());
}

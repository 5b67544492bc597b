//! The walking skeleton on a real kernel mount: a generated library of 2,000
//! tracks in several formats, mounted through the shim + engine pair.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsStr;
use std::io::{ErrorKind, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use musicfs_engine::model::template::{DEFAULT_TEMPLATE, Template, with_collision_suffix};
use musicfs_engine::model::{AudioProps, FileRecord, Tags};
use musicfs_integration::*;

const TRACKS: usize = 2000;
const SEED: u64 = 7;

fn library() -> &'static PathBuf {
    static LIB: OnceLock<PathBuf> = OnceLock::new();
    LIB.get_or_init(|| generated_library(TRACKS, SEED))
}

fn record(e: &ManifestEntry) -> FileRecord {
    let t = &e.tags;
    FileRecord {
        origin: 0,
        rel_path: e.raw_path(),
        size_bytes: e.size,
        mtime_ns: 0,
        origin_ino: 0,
        fingerprint: 0,
        format: Some(e.format.clone()),
        tags: Tags {
            artist: t.artist.clone(),
            album_artist: t.album_artist.clone(),
            album: t.album.clone(),
            title: t.title.clone(),
            year: t.year,
            track: t.track,
            track_total: t.track_total,
            disc: t.disc,
            disc_total: t.disc_total,
            genre: t.genre.clone(),
            compilation: t.compilation.unwrap_or(false),
            composer: None,
        },
        props: AudioProps::default(),
        probe_error: None,
        art: None,
        is_image: false,
    }
}

/// Whether `actual` is `expected`, or `expected` with a collision suffix.
fn name_matches(actual: &str, expected: &str, is_file: bool) -> bool {
    actual == expected || (2..10_000).any(|n| actual == with_collision_suffix(expected, is_file, n))
}

fn path_matches(actual: &Path, expected: &[String]) -> bool {
    let comps: Vec<&OsStr> = actual.iter().collect();
    comps.len() == expected.len()
        && comps.iter().zip(expected).enumerate().all(|(i, (a, e))| {
            let a = a.to_str().expect("mount names are UTF-8");
            name_matches(a, e, i + 1 == expected.len())
        })
}

/// Every origin file appears exactly once, at the path the template gives
/// for the tags the generator wrote, with the origin's size and bytes.
#[test]
fn every_file_is_at_its_template_path_with_identical_bytes() {
    let lib = library();
    let manifest = read_manifest(lib);
    assert!(
        manifest.len() >= TRACKS,
        "manifest has {} entries",
        manifest.len()
    );
    let formats: HashSet<&str> = manifest.iter().map(|e| e.format.as_str()).collect();
    assert!(formats.len() >= 6, "only formats {formats:?}");

    let mount = Mount::start(&[lib]);
    let template = Template::parse(DEFAULT_TEMPLATE).unwrap();
    let by_origin: HashMap<Vec<u8>, &ManifestEntry> = manifest
        .iter()
        .map(|e| {
            (
                lib.join(OsStr::from_bytes(&e.raw_path()))
                    .as_os_str()
                    .as_bytes()
                    .to_vec(),
                e,
            )
        })
        .collect();

    let files = list_files(&mount.mnt);
    assert_eq!(
        files.len(),
        manifest.len(),
        "mount shows a different number of files"
    );
    let mut seen = HashSet::new();
    let mut checked_paths = 0;
    for rel in &files {
        let path = mount.mnt.join(rel);
        let origin = getxattr(&path, "user.musicfs.origin")
            .unwrap_or_else(|| panic!("{} has no user.musicfs.origin", rel.display()));
        let entry = by_origin.get(&origin).unwrap_or_else(|| {
            panic!(
                "{} maps to unknown origin {:?}",
                rel.display(),
                String::from_utf8_lossy(&origin)
            )
        });
        assert!(
            seen.insert(origin.clone()),
            "origin listed twice: {}",
            entry.path
        );

        // Path: the template applied to the tags that were written.
        let with_tags = template.render(&record(entry));
        let mut untagged = record(entry);
        untagged.tags = Tags::default();
        let fallback = template.render(&untagged);
        let ok = match entry.kind.as_str() {
            "normal" | "misnamed" => path_matches(rel, &with_tags),
            "corrupt" | "empty" | "untagged" => path_matches(rel, &fallback),
            // A cut file keeps the tags stored at its start and loses the others.
            "truncated" => {
                path_matches(rel, &with_tags)
                    || path_matches(rel, &fallback)
                    || rel.components().count() == 3
            }
            k => panic!("unknown kind {k}"),
        };
        assert!(
            ok,
            "{} ({} file {}) is not at its template path {:?}",
            rel.display(),
            entry.kind,
            entry.path,
            with_tags
        );
        checked_paths += 1;

        // Size and bytes.
        let origin_path = Path::new(OsStr::from_bytes(&origin));
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), entry.size, "stat size of {}", rel.display());
        assert_eq!(meta.len(), std::fs::metadata(origin_path).unwrap().len());
        assert_eq!(
            hash_file(&path).unwrap(),
            hash_file(origin_path).unwrap(),
            "bytes differ: {}",
            rel.display()
        );
    }
    assert_eq!(checked_paths, manifest.len());
    assert_eq!(seen.len(), manifest.len());

    // The tricky cases are really in this library and really in the mount.
    let names: Vec<String> = files
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().any(|n| !n.is_ascii()), "no unicode names");
    assert!(
        names.iter().any(|n| n.contains(" (2).")),
        "no collision suffix"
    );
    assert!(
        manifest
            .iter()
            .any(|e| std::str::from_utf8(&e.raw_path()).is_err()),
        "generator made no non-UTF-8 file name"
    );
    for kind in ["corrupt", "truncated", "empty", "untagged", "misnamed"] {
        assert!(
            manifest.iter().any(|e| e.kind == kind),
            "generator made no {kind} file"
        );
    }
    // Every name is a valid component: not too long, no '/' (walkdir would split), not "."/"..".
    for rel in &files {
        for c in rel.iter() {
            assert!(
                c.len() <= 255,
                "{} is longer than 255 bytes",
                c.to_string_lossy()
            );
            assert!(c != "." && c != "..");
        }
    }
    assert!(mount.stop().success());
}

fn expect_erofs<T: std::fmt::Debug>(what: &str, r: std::io::Result<T>) {
    match r {
        Err(e) if e.raw_os_error() == Some(libc::EROFS) => {}
        other => panic!("{what}: expected EROFS, got {other:?}"),
    }
}

/// Every write-type operation fails with EROFS and changes nothing.
#[test]
fn writes_fail_with_erofs() {
    let lib = library();
    let mount = Mount::start(&[lib]);
    let file = mount.mnt.join(&list_files(&mount.mnt)[0]);
    let dir = file.parent().unwrap().to_path_buf();
    let before = hash_file(&file).unwrap();

    expect_erofs(
        "open for write",
        std::fs::OpenOptions::new().write(true).open(&file),
    );
    expect_erofs(
        "open O_RDWR",
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&file),
    );
    expect_erofs(
        "truncate",
        std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&file),
    );
    expect_erofs("create", std::fs::File::create(dir.join("new.mp3")));
    expect_erofs(
        "create excl",
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(dir.join("n2")),
    );
    expect_erofs("unlink", std::fs::remove_file(&file));
    expect_erofs("rename", std::fs::rename(&file, dir.join("renamed.mp3")));
    expect_erofs("mkdir", std::fs::create_dir(dir.join("sub")));
    expect_erofs("rmdir", std::fs::remove_dir(&dir));
    expect_erofs(
        "chmod (setattr)",
        std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o600)),
    );
    expect_erofs("symlink", std::os::unix::fs::symlink("x", dir.join("link")));
    expect_erofs("hard link", std::fs::hard_link(&file, dir.join("hl")));
    let c = std::ffi::CString::new(file.as_os_str().as_bytes()).unwrap();
    // SAFETY: c is a valid NUL-terminated path.
    let rc = unsafe { libc::truncate(c.as_ptr(), 0) };
    assert_eq!(rc, -1);
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::EROFS),
        "truncate(2)"
    );
    // SAFETY: as above; the value pointer is valid for 1 byte.
    let rc = unsafe { libc::setxattr(c.as_ptr(), c"user.x".as_ptr(), c"1".as_ptr().cast(), 1, 0) };
    assert_eq!(rc, -1);
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::EROFS),
        "setxattr"
    );

    assert_eq!(
        hash_file(&file).unwrap(),
        before,
        "a failed write changed the file"
    );
    assert!(!dir.join("new.mp3").exists());
    // Reading still works after all that.
    let mut f = std::fs::File::open(&file).unwrap();
    let mut one = [0u8; 1];
    assert_eq!(std::io::Read::read(&mut f, &mut one).unwrap(), 1);
    drop(f);
    assert!(mount.stop().success());
}

/// A directory with 20,000 entries lists completely and exactly.
#[test]
fn readdir_of_a_directory_with_20000_entries() {
    const N: usize = 20_000;
    let dir = tempfile::tempdir().unwrap();
    let origin = dir.path().join("flat");
    std::fs::create_dir(&origin).unwrap();
    // Untagged files all land in one fallback folder, named by file name.
    let mut expected = HashSet::new();
    for i in 0..N {
        let name = format!("track {i:05} é.mp3");
        let mut f = std::fs::File::create(origin.join(&name)).unwrap();
        f.write_all(&(i as u32).to_le_bytes()).unwrap();
        expected.insert(name);
    }
    let mount = Mount::start_with(
        &[&origin],
        None,
        &[("MUSICFS_LOG", "warn,musicfs_engine::scan=error")],
    );
    let album = mount.mnt.join("Unknown Artist/Unknown Album");
    let names: Vec<String> = std::fs::read_dir(&album)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.len(), N, "readdir returned {} entries", names.len());
    let got: HashSet<String> = names.into_iter().collect();
    assert_eq!(got, expected);
    // `ls -f` (plain getdents, includes . and ..) agrees.
    let out = Command::new("ls").arg("-f").arg(&album).output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().lines().count(),
        N + 2
    );
    // Spot-check contents at the start, middle and end.
    for i in [0, N / 2, N - 1] {
        let data = std::fs::read(album.join(format!("track {i:05} é.mp3"))).unwrap();
        assert_eq!(data, (i as u32).to_le_bytes());
    }
    assert!(mount.stop().success());
}

/// The same library mounted twice with the same state keeps every inode number.
#[test]
fn inode_numbers_are_stable_across_restarts() {
    let lib = library();
    let state_root = tempfile::tempdir().unwrap();
    let state = state_root.path().join("state");
    let inos = |m: &Mount| -> BTreeMap<PathBuf, u64> {
        walkdir::WalkDir::new(&m.mnt)
            .min_depth(1)
            .into_iter()
            .map(|e| e.unwrap())
            .map(|e| {
                (
                    e.path().strip_prefix(&m.mnt).unwrap().to_path_buf(),
                    e.metadata().unwrap().ino(),
                )
            })
            .collect()
    };
    let m1 = Mount::start_with(&[lib], Some(&state), &[]);
    let first = inos(&m1);
    assert!(m1.stop().success());
    let m2 = Mount::start_with(&[lib], Some(&state), &[]);
    let second = inos(&m2);
    assert!(m2.stop().success());
    assert_eq!(first.len(), second.len());
    assert_eq!(first, second, "inode numbers changed across a restart");
    let unique: HashSet<u64> = first.values().copied().collect();
    assert_eq!(unique.len(), first.len(), "two paths share an inode");
}

/// Errors a user can make get one clear message and a non-zero exit, not a panic.
#[test]
fn bad_arguments_give_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let run = |args: &[&OsStr]| {
        let out = Command::new(musicfs_bin())
            .args(args)
            .env("HOME", dir.path())
            .output()
            .unwrap();
        (
            out.status,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let missing = dir.path().join("no-such-dir");
    let (status, err) = run(&[
        "mount".as_ref(),
        "--origin".as_ref(),
        missing.as_os_str(),
        mnt.as_os_str(),
    ]);
    assert!(!status.success());
    assert!(
        err.contains("no-such-dir") && err.contains("origin"),
        "unclear: {err}"
    );
    assert!(!err.contains("panicked"), "{err}");

    let (status, err) = run(&[
        "mount".as_ref(),
        "--origin".as_ref(),
        dir.path().as_os_str(),
        missing.as_os_str(),
    ]);
    assert!(!status.success());
    assert!(
        err.contains("mountpoint") && err.contains("no-such-dir"),
        "unclear: {err}"
    );
    assert!(!err.contains("panicked"), "{err}");

    let (status, err) = run(&["mount".as_ref(), mnt.as_os_str()]);
    assert!(!status.success());
    assert!(err.contains("no origin"), "unclear: {err}");

    let (status, err) = run(&["unmount".as_ref(), mnt.as_os_str()]);
    assert!(!status.success());
    assert!(err.contains("not mounted"), "unclear: {err}");
    assert!(!is_mountpoint(&mnt));
}

/// A directory the engine cannot read is logged and skipped; the rest is served.
#[test]
fn unreadable_directory_is_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let origin = dir.path().join("o");
    std::fs::create_dir_all(origin.join("locked")).unwrap();
    std::fs::create_dir_all(origin.join("open")).unwrap();
    std::fs::write(origin.join("open/a.mp3"), b"x").unwrap();
    std::fs::write(origin.join("locked/b.mp3"), b"y").unwrap();
    std::fs::set_permissions(
        origin.join("locked"),
        std::os::unix::fs::PermissionsExt::from_mode(0o000),
    )
    .unwrap();
    for p in [dir.path(), origin.as_path(), &origin.join("open")] {
        std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    // Root reads everything, so scan as an unprivileged user.
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(musicfs_bin())
        .arg("scan")
        .arg("--origin")
        .arg(&origin)
        .env("HOME", "/tmp")
        .output();
    let out = match out {
        Ok(o) => o,
        Err(e) if e.kind() == ErrorKind::NotFound => panic!("setpriv (util-linux) is missing"),
        Err(e) => panic!("{e}"),
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "scan failed: {stderr}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["tracks"], 1, "{report}");
    assert_eq!(report["unreadable_dirs"], 1, "{report}");
    assert!(
        stderr.contains("locked"),
        "the skipped directory is not named in the log: {stderr}"
    );
}

/// Ctrl-C and SIGTERM unmount cleanly: exit 0, no mount left, no stray processes.
#[test]
fn ctrl_c_and_sigterm_unmount_cleanly() {
    let lib = library();
    for signal in [libc::SIGINT, libc::SIGTERM] {
        let mut mount = Mount::start(&[lib]);
        let mnt = mount.mnt.clone();
        let state = mount.state.clone();
        assert!(!list_files(&mnt).is_empty());
        let status = mount.stop_with_signal(signal);
        assert!(
            status.success(),
            "exit status {status} after signal {signal}"
        );
        assert!(!is_mountpoint(&mnt), "still mounted after signal {signal}");
        assert!(std::fs::read_dir(&mnt).is_ok(), "mountpoint left broken");
        assert!(
            !state.join("engine.sock").exists(),
            "engine socket left behind"
        );
        // The catalog opens again (no other process holds it) and knows the library.
        let store = musicfs_engine::catalog::Store::open(
            &state.join("catalog.redb"),
            Template::parse(DEFAULT_TEMPLATE).unwrap(),
        )
        .unwrap();
        assert!(store.scan_complete().unwrap());
        assert!(store.file_count().unwrap() > 0);
    }
}

/// With passthrough off every read goes through the engine: the bytes are still
/// the origin's, including reads at odd offsets and past the end.
#[test]
fn reads_through_the_engine_match_the_origin() {
    use std::io::{Read, Seek, SeekFrom};
    let lib = library();
    let mount = Mount::start_with(&[lib], None, &[("MUSICFS_PASSTHROUGH", "false")]);
    assert!(
        mount.log_text().contains("passthrough=false"),
        "{}",
        mount.log_text()
    );
    let files = list_files(&mount.mnt);
    for rel in files.iter().step_by(7) {
        let path = mount.mnt.join(rel);
        let origin = PathBuf::from(OsStr::from_bytes(
            &getxattr(&path, "user.musicfs.origin").unwrap(),
        ));
        assert_eq!(
            hash_file(&path).unwrap(),
            hash_file(&origin).unwrap(),
            "{}",
            rel.display()
        );
        let len = std::fs::metadata(&origin).unwrap().len();
        let mut f = std::fs::File::open(&path).unwrap();
        let mut o = std::fs::File::open(&origin).unwrap();
        for off in [1, len / 3, len.saturating_sub(5), len + 10] {
            let (mut a, mut b) = (vec![0u8; 4099], vec![0u8; 4099]);
            f.seek(SeekFrom::Start(off)).unwrap();
            o.seek(SeekFrom::Start(off)).unwrap();
            let (na, nb) = (f.read(&mut a).unwrap(), o.read(&mut b).unwrap());
            assert_eq!(a[..na], b[..nb], "{} at {off}", rel.display());
        }
    }
    assert!(mount.stop().success());
}

//! Album covers on a real mount: `cover.<ext>` in each album directory,
//! from a folder image (the largest wins), from an embedded picture, or
//! none; served by range from the origin file, byte for byte; `file` says
//! image data; not counted as tracks; a folder image change updates it; off
//! with `cover_art = false`; the same through the chunk cache of a share.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use musicfs_integration::*;

fn ffmpeg(args: &[&str]) {
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-y"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ffmpeg {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn image(path: &Path, size: &str) {
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        &format!("testsrc=size={size}"),
        "-frames:v",
        "1",
        path.to_str().unwrap(),
    ]);
}

/// A short FLAC (or MP3, by `path`'s extension) tagged as track `n` of
/// `album`, with `picture` embedded as its front cover if given.
fn track(path: &Path, album: &str, n: u32, picture: Option<&Path>) {
    let mut args: Vec<String> = ["-f", "lavfi", "-i", "sine=frequency=440:duration=1"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    if let Some(p) = picture {
        args.extend(["-i".into(), p.to_str().unwrap().into()]);
        args.extend(
            [
                "-map",
                "0",
                "-map",
                "1",
                "-c:v",
                "copy",
                "-disposition:v",
                "attached_pic",
            ]
            .map(String::from),
        );
    }
    for (k, v) in [
        ("album", album.to_string()),
        ("artist", "Painter".to_string()),
        ("album_artist", "Painter".to_string()),
        ("title", format!("Song {n}")),
        ("track", n.to_string()),
    ] {
        args.extend(["-metadata".into(), format!("{k}={v}")]);
    }
    args.push(path.to_str().unwrap().into());
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    ffmpeg(&refs);
}

/// `file -b`'s word for a file.
fn file_type(p: &Path) -> String {
    let out = Command::new("file")
        .arg("-b")
        .arg(p)
        .output()
        .expect("file is installed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An origin with three albums: one with folder images, one with an
/// embedded picture (in its second track), one with none.
struct Library {
    _dir: tempfile::TempDir,
    origin: PathBuf,
    big_png: PathBuf,
    embedded: PathBuf,
    jpeg: PathBuf,
}

fn library() -> Library {
    let dir = tempfile::Builder::new()
        .prefix("mfs-covers")
        .tempdir_in("/tmp")
        .unwrap();
    let origin = dir.path().join("music");
    for a in ["painted", "embedded", "bare"] {
        std::fs::create_dir_all(origin.join(a)).unwrap();
    }
    // Folder images: the largest (the PNG) wins over a small JPEG.
    let big_png = origin.join("painted/Front.PNG");
    image(&big_png, "640x480");
    image(&origin.join("painted/cover.jpg"), "32x32");
    for n in 1..=3 {
        track(
            &origin.join(format!("painted/{n}.flac")),
            "Painted",
            n,
            None,
        );
    }
    let embedded = dir.path().join("art.png");
    image(&embedded, "200x150");
    track(&origin.join("embedded/1.flac"), "Embedded", 1, None);
    track(
        &origin.join("embedded/2.flac"),
        "Embedded",
        2,
        Some(&embedded),
    );
    track(&origin.join("embedded/3.flac"), "Embedded", 3, None);
    for n in 1..=2 {
        track(&origin.join(format!("bare/{n}.flac")), "Bare", n, None);
    }
    // An ID3v2 APIC frame in an MP3.
    std::fs::create_dir_all(origin.join("mp3")).unwrap();
    let jpeg = dir.path().join("art.jpg");
    image(&jpeg, "120x90");
    track(&origin.join("mp3/1.mp3"), "Mpeg", 1, Some(&jpeg));
    Library {
        _dir: dir,
        origin,
        big_png,
        embedded,
        jpeg,
    }
}

const TRACKS: usize = 9;

fn covers_in(mnt: &Path) -> Vec<PathBuf> {
    list_files(mnt)
        .into_iter()
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("cover.")
        })
        .collect()
}

/// Every cover there is, with what it must read.
fn check_covers(mnt: &Path, lib: &Library) {
    let painted = mnt.join("Painter/Painted/cover.png");
    let embedded = mnt.join("Painter/Embedded/cover.png");
    assert_eq!(
        covers_in(mnt),
        [
            PathBuf::from("Painter/Embedded/cover.png"),
            PathBuf::from("Painter/Mpeg/cover.jpg"),
            PathBuf::from("Painter/Painted/cover.png")
        ],
        "{:#?}",
        list_files(mnt)
    );
    let mp3 = mnt.join("Painter/Mpeg/cover.jpg");
    assert_eq!(
        std::fs::read(&mp3).unwrap(),
        std::fs::read(&lib.jpeg).unwrap()
    );
    assert!(
        file_type(&mp3).starts_with("JPEG image data"),
        "{}",
        file_type(&mp3)
    );
    assert_eq!(
        std::fs::read(&painted).unwrap(),
        std::fs::read(&lib.big_png).unwrap()
    );
    assert_eq!(
        std::fs::read(&embedded).unwrap(),
        std::fs::read(&lib.embedded).unwrap()
    );
    for p in [&painted, &embedded] {
        assert!(
            file_type(p).starts_with("PNG image data"),
            "{}: {}",
            p.display(),
            file_type(p)
        );
        assert_eq!(
            std::fs::metadata(p).unwrap().len(),
            std::fs::read(p).unwrap().len() as u64
        );
    }
    assert!(!mnt.join("Painter/Bare").read_dir().unwrap().any(|e| {
        e.unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with("cover.")
    }));
}

#[test]
fn covers_from_folder_images_embedded_pictures_or_none() {
    let lib = library();
    let m = Mount::start(&[&lib.origin]);
    check_covers(&m.mnt, &lib);
    assert_eq!(list_files(&m.mnt).len(), TRACKS + 3);
    // Nor in the search index: `All tracks` lists the tracks, no cover.
    let all = m.mnt.join(".collections/All tracks");
    let names = || -> Vec<String> {
        std::fs::read_dir(&all)
            .map(|d| {
                d.filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    let indexed = eventually(std::time::Duration::from_secs(30), || {
        names().len() == TRACKS
    });
    assert!(indexed, "All tracks lists {:?}", names());
    assert!(
        names().iter().all(|n| !n.starts_with("cover.")),
        "{:?}",
        names()
    );
    // Not tracks: the status counts only the tracks.
    assert_eq!(status_json(&m.state)["files"], TRACKS as u64);
    // The embedded cover is a range of its track, read in pieces too.
    let cover = m.mnt.join("Painter/Embedded/cover.png");
    let want = std::fs::read(&lib.embedded).unwrap();
    let got: Vec<u8> = {
        use std::io::{Read, Seek, SeekFrom};
        let mut f = std::fs::File::open(&cover).unwrap();
        f.seek(SeekFrom::Start(100)).unwrap();
        let mut tail = Vec::new();
        f.read_to_end(&mut tail).unwrap();
        tail
    };
    assert_eq!(got, want[100..]);
    let origin = String::from_utf8(getxattr(&cover, "user.musicfs.origin").unwrap()).unwrap();
    assert!(origin.ends_with("embedded/2.flac"), "{origin}");

    // A folder image that changes: the cover follows (now the JPEG, made
    // the largest), and without any image the cover goes.
    std::fs::remove_file(&lib.big_png).unwrap();
    image(&lib.origin.join("painted/cover.jpg"), "800x600");
    let jpg = m.mnt.join("Painter/Painted/cover.jpg");
    assert!(
        eventually(Duration::from_secs(20), || std::fs::read(&jpg).ok()
            == std::fs::read(lib.origin.join("painted/cover.jpg")).ok()),
        "{:#?}",
        list_files(&m.mnt)
    );
    assert!(
        file_type(&jpg).starts_with("JPEG image data"),
        "{}",
        file_type(&jpg)
    );
    assert!(!m.mnt.join("Painter/Painted/cover.png").exists());
    std::fs::remove_file(lib.origin.join("painted/cover.jpg")).unwrap();
    assert!(
        eventually(Duration::from_secs(20), || covers_in(&m.mnt).len() == 2),
        "{:#?}",
        covers_in(&m.mnt)
    );
    // The last track of an album going takes its cover and directory along.
    for n in 1..=3 {
        std::fs::remove_file(lib.origin.join(format!("embedded/{n}.flac"))).unwrap();
    }
    assert!(
        eventually(Duration::from_secs(20), || !m
            .mnt
            .join("Painter/Embedded")
            .exists()),
        "{:#?}",
        list_files(&m.mnt)
    );
    assert_eq!(covers_in(&m.mnt), [PathBuf::from("Painter/Mpeg/cover.jpg")]);
    assert!(m.stop().success());
}

#[test]
fn cover_art_can_be_switched_off() {
    let lib = library();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        format!("origins = [{:?}]\ncover_art = false\n", lib.origin),
    )
    .unwrap();
    let m = Mount::start_with_config_state(&config, &state, &[]);
    assert!(covers_in(&m.mnt).is_empty(), "{:#?}", list_files(&m.mnt));
    assert_eq!(list_files(&m.mnt).len(), TRACKS);
    assert!(m.stop().success());
    // Switched on: the same catalog gets its covers at the next start.
    std::fs::write(
        &config,
        format!("origins = [{:?}]\ncover_art = true\n", lib.origin),
    )
    .unwrap();
    let m = Mount::start_with_config_state(&config, &state, &[]);
    assert!(
        eventually(Duration::from_secs(20), || covers_in(&m.mnt).len() == 3),
        "{:#?}",
        list_files(&m.mnt)
    );
    check_covers(&m.mnt, &lib);
    assert!(m.stop().success());
}

/// On an sshfs share the covers read through the chunk cache, right.
#[test]
fn covers_of_a_cached_share() {
    let lib = library();
    let share = SshShare::start(&lib.origin);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        format!(
            "origins = [{:?}]\ncache_dir = {:?}\ncache_min_free_percent = 0\n",
            share.mountpoint(),
            dir.path().join("cache")
        ),
    )
    .unwrap();
    let m = Mount::start_with_config(&config, &[]);
    check_covers(&m.mnt, &lib);
    let cover = m.mnt.join("Painter/Painted/cover.png");
    let cached: u64 = String::from_utf8(getxattr(&cover, "user.musicfs.cached").unwrap())
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        cached >= std::fs::metadata(&cover).unwrap().len().min(256 * 1024),
        "{cached}"
    );
    assert!(m.stop().success());
}

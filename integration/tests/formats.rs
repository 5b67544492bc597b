//! Every audio file appears: the formats lofty does not read (WMA, TTA,
//! Matroska, WebM made by ffmpeg; a DSF with an ID3v2 tag written here)
//! are listed by their tags, a truncated DSF and a file that only has an
//! audio extension by their file names; every byte reads back.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use musicfs_integration::*;

/// ffmpeg encodes 2 s of a sine with these tags.
fn encode(out: &Path, codec: &str, tag: &str) {
    let ok = Command::new("ffmpeg")
        .args([
            "-loglevel",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "sine=duration=2",
        ])
        .args(["-c:a", codec])
        .args(["-metadata", &format!("title=Song {tag}")])
        .args(["-metadata", &format!("artist=Artist {tag}")])
        .args(["-metadata", &format!("album=Album {tag}")])
        .args(["-metadata", "track=3"])
        .arg(out)
        .status()
        .expect("ffmpeg is installed (apt-get install ffmpeg)");
    assert!(ok.success(), "ffmpeg could not write {}", out.display());
}

/// An ID3v2.3 tag with ISO-8859-1 text frames.
fn id3v23(frames: &[(&str, &str)]) -> Vec<u8> {
    let mut body = Vec::new();
    for (id, text) in frames {
        body.extend_from_slice(id.as_bytes());
        body.extend_from_slice(&(text.len() as u32 + 1).to_be_bytes());
        body.extend_from_slice(&[0, 0, 0]);
        body.extend_from_slice(text.as_bytes());
    }
    let size = body.len() as u32;
    let mut tag = b"ID3\x03\x00\x00".to_vec();
    for shift in [21, 14, 7, 0] {
        tag.push(((size >> shift) & 0x7f) as u8);
    }
    tag.extend(body);
    tag
}

/// A minimal valid DSF (2.8224 MHz stereo) with `id3` as its metadata.
fn dsf(id3: &[u8]) -> Vec<u8> {
    let rate: u32 = 2_822_400;
    let data_len = 8192u64;
    let meta_at = 28 + 52 + 12 + data_len;
    let mut f = b"DSD ".to_vec();
    for v in [28, meta_at + id3.len() as u64, meta_at] {
        f.extend_from_slice(&v.to_le_bytes());
    }
    f.extend_from_slice(b"fmt ");
    f.extend_from_slice(&52u64.to_le_bytes());
    for v in [1u32, 0, 2, 2, rate, 1] {
        f.extend_from_slice(&v.to_le_bytes());
    }
    f.extend_from_slice(&(u64::from(rate) * 2).to_le_bytes());
    f.extend_from_slice(&4096u32.to_le_bytes());
    f.extend_from_slice(&0u32.to_le_bytes());
    f.extend_from_slice(b"data");
    f.extend_from_slice(&(12 + data_len).to_le_bytes());
    f.extend(std::iter::repeat_n(0x69, data_len as usize));
    f.extend_from_slice(id3);
    f
}

#[test]
fn formats_lofty_does_not_read_are_listed_by_their_tags() {
    let origin = tempfile::tempdir().unwrap();
    let o = origin.path();
    encode(&o.join("a.wma"), "wmav2", "wma");
    encode(&o.join("b.tta"), "tta", "tta");
    encode(&o.join("c.mka"), "flac", "mka");
    encode(&o.join("d.webm"), "libopus", "webm");
    let tagged = dsf(&id3v23(&[
        ("TIT2", "Song dsf"),
        ("TPE1", "Artist dsf"),
        ("TALB", "Album dsf"),
        ("TRCK", "3"),
    ]));
    std::fs::write(o.join("e.dsf"), &tagged).unwrap();
    // Broken ones: listed by their file names.
    std::fs::write(o.join("cut.dsf"), &tagged[..tagged.len() - 7]).unwrap();
    std::fs::write(o.join("noise.wma"), vec![0x5au8; 3000]).unwrap();

    let m = Mount::start(&[o]);
    let listed = list_files(&m.mnt);
    let mut expected: Vec<PathBuf> = ["wma", "tta", "mka", "webm", "dsf"]
        .iter()
        .map(|t| PathBuf::from(format!("Artist {t}/Album {t}/03 - Song {t}.{t}")))
        .collect();
    expected.push("Unknown Artist/Unknown Album/cut.dsf".into());
    expected.push("Unknown Artist/Unknown Album/noise.wma".into());
    expected.sort();
    assert_eq!(listed, expected, "{}", m.log_text());
    // Every byte, through the mount.
    for path in &listed {
        let origin_file = getxattr(&m.mnt.join(path), "user.musicfs.origin")
            .map(|p| PathBuf::from(String::from_utf8(p).unwrap()))
            .unwrap();
        assert_eq!(
            hash_file(&m.mnt.join(path)).unwrap(),
            hash_file(&origin_file).unwrap(),
            "{}",
            path.display()
        );
    }
    // The broken DSF says why in its xattr.
    let why = getxattr(
        &m.mnt.join("Unknown Artist/Unknown Album/cut.dsf"),
        "user.musicfs.error",
    )
    .unwrap();
    assert!(
        String::from_utf8_lossy(&why).contains("ID3v2"),
        "{}",
        String::from_utf8_lossy(&why)
    );
    assert!(m.stop().success());
}

/// `audio_extensions` decides what is listed: a file whose extension is not
/// in it is not, one added is.
#[test]
fn audio_extensions_are_configurable() {
    let origin = tempfile::tempdir().unwrap();
    let o = origin.path();
    encode(&o.join("a.tta"), "tta", "tta");
    std::fs::copy(o.join("a.tta"), o.join("b.truealbum")).unwrap();
    let m = Mount::start_with(
        &[o],
        None,
        &[("MUSICFS_AUDIO_EXTENSIONS", "truealbum, mp3")],
    );
    let listed = list_files(&m.mnt);
    assert_eq!(
        listed,
        [PathBuf::from(
            "Artist tta/Album tta/03 - Song tta.truealbum"
        )],
        "{}",
        m.log_text()
    );
    assert!(m.stop().success());
}

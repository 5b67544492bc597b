//! Real clients read the mount: ffprobe, mpv (null output), rsync -c and
//! fio --readonly, on the same generated library as `mount.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use musicfs_integration::*;

const TRACKS: usize = 2000;
const SEED: u64 = 7;

fn library() -> &'static PathBuf {
    static LIB: OnceLock<PathBuf> = OnceLock::new();
    LIB.get_or_init(|| generated_library(TRACKS, SEED))
}

/// A real client, ffprobe, sees the same streams and tags through the mount.
#[test]
fn ffprobe_reports_the_same_tags_and_duration() {
    let lib = library();
    let manifest = read_manifest(lib);
    let mount = Mount::start(&[lib]);
    let sample = sample_per_format(&manifest, 4);
    let by_origin = mounted_by_origin(&mount.mnt);
    let probe = |p: &Path| {
        let out = Command::new("ffprobe")
            .args(["-v", "error", "-show_entries", "format=duration,format_name,bit_rate:format_tags:stream=codec_name,sample_rate,channels", "-of", "json"])
            .arg(p)
            .output()
            .expect("ffprobe is installed (apt-get install ffmpeg)");
        assert!(
            out.status.success(),
            "ffprobe failed on {}: {}",
            p.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    for e in sample {
        let origin = lib.join(OsStr::from_bytes(&e.raw_path()));
        let mounted = &by_origin[&origin];
        let (a, b) = (probe(&origin), probe(mounted));
        assert_eq!(a, b, "ffprobe differs for {} ({})", e.path, e.format);
        assert!(
            a["format"]["duration"].as_str().is_some(),
            "no duration for {}",
            e.path
        );
    }
    assert!(mount.stop().success());
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (packaging/install-deps.sh installs it)"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A sample across formats: up to `per` normal files of each, covering at
/// least 6 formats.
fn sample_per_format(manifest: &[ManifestEntry], per: usize) -> Vec<&ManifestEntry> {
    let mut per_format: BTreeMap<&str, usize> = BTreeMap::new();
    let mut sample = Vec::new();
    for e in manifest.iter().filter(|e| e.kind == "normal") {
        let n = per_format.entry(&e.format).or_default();
        if *n < per {
            *n += 1;
            sample.push(e);
        }
    }
    assert!(per_format.len() >= 6, "sample covers only {per_format:?}");
    sample
}

/// The mounted path of each origin file, from the `user.musicfs.origin` xattr.
fn mounted_by_origin(mnt: &Path) -> HashMap<PathBuf, PathBuf> {
    list_files(mnt)
        .into_iter()
        .map(|rel| {
            let p = mnt.join(rel);
            let o = PathBuf::from(OsStr::from_bytes(
                &getxattr(&p, "user.musicfs.origin").unwrap(),
            ));
            (o, p)
        })
        .collect()
}

/// rsync copies the whole mount, and `rsync -c` then finds every file's
/// checksum equal to the copy's: each file read twice by a real client,
/// the copy checked byte for byte against the origin.
#[test]
fn rsync_copies_the_mount_byte_for_byte() {
    let lib = library();
    let mount = Mount::start(&[lib]);
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("copy");
    let mut src = mount.mnt.as_os_str().to_owned();
    src.push("/");
    run_ok(
        Command::new("rsync")
            .args(["-r", "-t"])
            .arg(&src)
            .arg(&copy),
    );
    let by_origin = mounted_by_origin(&mount.mnt);
    assert!(by_origin.len() >= TRACKS, "{} files", by_origin.len());
    for (origin, mounted) in &by_origin {
        let rel = mounted.strip_prefix(&mount.mnt).unwrap();
        assert_eq!(
            hash_file(&copy.join(rel)).unwrap(),
            hash_file(origin).unwrap(),
            "{}",
            rel.display()
        );
    }
    // Checksum pass: nothing differs, nothing is missing on either side.
    let changes = run_ok(
        Command::new("rsync")
            .args(["-r", "-c", "-n", "--delete", "--itemize-changes"])
            .arg(&src)
            .arg(&copy),
    );
    assert!(changes.trim().is_empty(), "rsync -c found:\n{changes}");
    // ... and it can fail: a changed byte in the copy is found.
    let (_, victim) = by_origin.iter().next().unwrap();
    let victim = copy.join(victim.strip_prefix(&mount.mnt).unwrap());
    let mut bytes = std::fs::read(&victim).unwrap();
    let mtime = std::fs::metadata(&victim).unwrap().modified().unwrap();
    bytes[0] ^= 0xff;
    std::fs::write(&victim, &bytes).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&victim)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    let changes = run_ok(
        Command::new("rsync")
            .args(["-r", "-c", "-n", "--itemize-changes"])
            .arg(&src)
            .arg(&copy),
    );
    assert_eq!(changes.lines().count(), 1, "rsync -c found:\n{changes}");
    assert!(mount.stop().success());
}

/// mpv plays files through the mount (null audio output, as fast as it can
/// decode): the same duration, codec and title as from the origin, to the end.
#[test]
fn mpv_plays_files_from_the_mount() {
    let lib = library();
    let manifest = read_manifest(lib);
    let mount = Mount::start(&[lib]);
    let by_origin = mounted_by_origin(&mount.mnt);
    let play = |p: &Path| {
        let out = run_ok(
            Command::new("mpv")
                .args([
                    "--no-config",
                    "--ao=null",
                    "--ao-null-untimed",
                    "--vo=null",
                    "--start=25%",
                    "--term-playing-msg=PLAYING ${=duration} ${audio-codec-name} ${metadata/by-key/title}",
                ])
                .arg(p),
        );
        assert!(out.contains("(End of file)"), "{}: {out}", p.display());
        out.lines()
            .find(|l| l.starts_with("PLAYING "))
            .unwrap_or_else(|| panic!("{}: {out}", p.display()))
            .to_string()
    };
    for e in sample_per_format(&manifest, 2) {
        let origin = lib.join(OsStr::from_bytes(&e.raw_path()));
        let mounted = &by_origin[&origin];
        let (a, b) = (play(&origin), play(mounted));
        assert_eq!(a, b, "{}", e.path);
    }
    assert!(mount.stop().success());
}

/// fio, read-only: random and sequential reads by 4 jobs over mounted files,
/// through the engine (passthrough off) and with passthrough; no errors.
#[test]
fn fio_reads_the_mount_without_errors() {
    let lib = library();
    for passthrough in ["false", "true"] {
        let mount = Mount::start_with(&[lib], None, &[("MUSICFS_PASSTHROUGH", passthrough)]);
        let mut files: Vec<PathBuf> = list_files(&mount.mnt)
            .into_iter()
            .filter(|p| !p.as_os_str().as_bytes().contains(&b':'))
            .map(|p| mount.mnt.join(p))
            .collect();
        files.sort_by_key(|p| std::cmp::Reverse(std::fs::metadata(p).unwrap().len()));
        files.truncate(8);
        let names: Vec<&str> = files.iter().map(|p| p.to_str().unwrap()).collect();
        for rw in ["randread", "read"] {
            let out = run_ok(
                Command::new("fio")
                    .args([
                        "--name=musicfs",
                        "--readonly",
                        "--ioengine=psync",
                        "--bs=4k",
                        "--numjobs=4",
                        "--io_size=16m",
                        "--group_reporting",
                        "--output-format=json",
                    ])
                    .arg(format!("--rw={rw}"))
                    .arg(format!("--filename={}", names.join(":"))),
            );
            let json_start = out.find('{').unwrap_or_else(|| panic!("{out}"));
            let report: serde_json::Value = serde_json::from_str(&out[json_start..]).unwrap();
            let job = &report["jobs"][0];
            assert_eq!(job["error"], 0, "passthrough={passthrough} {rw}: {job}");
            assert_eq!(
                job["read"]["io_bytes"].as_u64(),
                Some(4 * 16 * 1024 * 1024),
                "passthrough={passthrough} {rw}: {job}"
            );
        }
        assert!(mount.stop().success());
    }
}

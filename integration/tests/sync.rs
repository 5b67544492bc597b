//! Keeping in step with the origins: live changes through inotify and
//! polling, a queue overflow, reordered and removed origins, a directory
//! listed while it changes, and a watcher that fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use musicfs_integration::*;

const TRACKS: usize = 2000;
const SEED: u64 = 7;

/// The file of a manifest entry (its path may not be UTF-8).
fn origin_of(lib: &Path, e: &ManifestEntry) -> PathBuf {
    lib.join(std::ffi::OsStr::from_bytes(&e.raw_path()))
}

fn ffmpeg_retag(file: &Path, title: &str) {
    let tmp = file.with_file_name(".retag.tmp.mp3");
    let ok = Command::new("ffmpeg")
        .args(["-loglevel", "error", "-y", "-i"])
        .arg(file)
        .args([
            "-map_metadata",
            "0",
            "-metadata",
            &format!("title={title}"),
            "-c",
            "copy",
        ])
        .arg(&tmp)
        .status()
        .unwrap()
        .success();
    assert!(ok, "ffmpeg retag failed");
    std::fs::rename(&tmp, file).unwrap();
}

fn find_by_origin(mnt: &Path, origin: &Path) -> Option<PathBuf> {
    list_files_lenient(mnt)
        .into_iter()
        .map(|r| mnt.join(r))
        .find(|p| {
            getxattr(p, "user.musicfs.origin").as_deref()
                == Some(origin.as_os_str().as_encoded_bytes())
        })
}

/// Files added, modified, retagged, deleted and renamed in a live origin show
/// up in the mount within the debounce window (plus a margin).
#[test]
fn live_changes_show_up_in_the_mount() {
    let dir = tempfile::tempdir().unwrap();
    let src = generated_library(TRACKS, SEED);
    let manifest = read_manifest(&src);
    let mp3s: Vec<&ManifestEntry> = manifest
        .iter()
        .filter(|e| {
            e.kind == "normal" && e.format == "mp3" && e.path.is_ascii() && e.tags.title.is_some()
        })
        .take(4)
        .collect();
    assert_eq!(mp3s.len(), 4);
    let origin = dir.path().join("o");
    std::fs::create_dir(&origin).unwrap();
    for (i, e) in mp3s.iter().take(3).enumerate() {
        std::fs::copy(src.join(&e.path), origin.join(format!("t{i}.mp3"))).unwrap();
    }
    let m = Mount::start_with(&[&origin], None, &[("MUSICFS_DEBOUNCE_MS", "200")]);
    let window = Duration::from_secs(5);
    assert_eq!(list_files(&m.mnt).len(), 3);

    // Add.
    std::fs::copy(src.join(&mp3s[3].path), origin.join("added.mp3")).unwrap();
    assert!(
        eventually(window, || find_by_origin(&m.mnt, &origin.join("added.mp3"))
            .is_some()),
        "added file did not appear"
    );
    // Modify in place: the size changes.
    let t0 = origin.join("t0.mp3");
    let before = std::fs::metadata(&t0).unwrap().len();
    std::fs::OpenOptions::new()
        .append(true)
        .open(&t0)
        .and_then(|mut f| std::io::Write::write_all(&mut f, &[0u8; 1000]))
        .unwrap();
    assert!(
        eventually(window, || find_by_origin(&m.mnt, &t0).is_some_and(
            |p| std::fs::metadata(p).unwrap().len() == before + 1000
        )),
        "modified size not seen"
    );
    let p = find_by_origin(&m.mnt, &t0).unwrap();
    assert_eq!(hash_file(&p).unwrap(), hash_file(&t0).unwrap());
    // Retag: the path follows the new title.
    let t1 = origin.join("t1.mp3");
    ffmpeg_retag(&t1, "Brand New Title");
    assert!(
        eventually(window, || find_by_origin(&m.mnt, &t1)
            .is_some_and(|p| p.to_string_lossy().contains("Brand New Title"))),
        "retag not seen: {:?}",
        list_files(&m.mnt)
    );
    // Rename in the origin: the origin path follows.
    let t2 = origin.join("t2.mp3");
    let renamed = origin.join("renamed.mp3");
    std::fs::rename(&t2, &renamed).unwrap();
    assert!(
        eventually(window, || find_by_origin(&m.mnt, &renamed).is_some()
            && find_by_origin(&m.mnt, &t2).is_none()),
        "rename not seen"
    );
    // Delete.
    std::fs::remove_file(origin.join("added.mp3")).unwrap();
    assert!(
        eventually(window, || find_by_origin(&m.mnt, &origin.join("added.mp3"))
            .is_none()),
        "deleted file still there"
    );
    // A new directory with a file in it.
    std::fs::create_dir(origin.join("newdir")).unwrap();
    std::fs::copy(src.join(&mp3s[3].path), origin.join("newdir/x.mp3")).unwrap();
    assert!(
        eventually(window, || find_by_origin(
            &m.mnt,
            &origin.join("newdir/x.mp3")
        )
        .is_some()),
        "file in a new directory not seen"
    );
    assert_eq!(list_files(&m.mnt).len(), 4);
    assert!(m.stop().success());
}

/// An inotify queue overflow is never silence: the origin is rescanned and
/// every change shows up. (The queue limit is taken when the engine creates
/// its inotify instance, so the test lowers it only around the start.)
#[test]
fn inotify_overflow_triggers_a_rescan() {
    const KNOB: &str = "/proc/sys/fs/inotify/max_queued_events";
    let src = generated_library(TRACKS, SEED);
    let manifest = read_manifest(&src);
    let dir = tempfile::tempdir().unwrap();
    let origin = dir.path().join("o");
    std::fs::create_dir(&origin).unwrap();
    let old = std::fs::read_to_string(KNOB).unwrap();
    std::fs::write(KNOB, "8").unwrap();
    let m = Mount::start_with(
        &[&origin],
        None,
        &[
            ("MUSICFS_DEBOUNCE_MS", "300"),
            ("MUSICFS_HEARTBEAT_TIMEOUT_MS", "60000"),
        ],
    );
    std::fs::write(KNOB, old.trim()).unwrap();
    // Far more than 8 events while the engine cannot read them (stopped), so
    // the kernel's queue overflows for certain.
    let engine = pids_with_cmdline(&format!("engine --state-dir {}", m.state.display()))[0];
    // SAFETY: kill(2) on the engine this test started.
    unsafe { libc::kill(engine, libc::SIGSTOP) };
    // SIGSTOP is asynchronous: wait until the kernel reports it stopped.
    assert!(
        eventually(Duration::from_secs(5), || {
            std::fs::read_to_string(format!("/proc/{engine}/stat"))
                .ok()
                .and_then(|st| {
                    st.rsplit(')')
                        .next()
                        .map(|r| r.trim_start().starts_with('T'))
                })
                .unwrap_or(false)
        }),
        "the engine did not stop"
    );
    let normal: Vec<&ManifestEntry> = manifest
        .iter()
        .filter(|e| e.kind == "normal")
        .take(60)
        .collect();
    for (i, e) in normal.iter().enumerate() {
        std::fs::copy(
            origin_of(&src, e),
            origin.join(format!("f{i:03}.{}", e.ext)),
        )
        .unwrap();
    }
    // SAFETY: as above.
    unsafe { libc::kill(engine, libc::SIGCONT) };
    assert!(
        eventually(Duration::from_secs(20), || list_files_lenient(&m.mnt).len()
            == normal.len()),
        "only {} of {} files after an overflow:\n{}",
        list_files(&m.mnt).len(),
        normal.len(),
        m.log_text()
    );
    assert!(
        m.log_text().contains("overflowed"),
        "no overflow happened:\n{}",
        m.log_text()
    );
    assert!(m.stop().success());
}

/// Origins on network filesystems (or with `watch = "poll"`) are polled.
#[test]
fn polled_origin_follows_changes() {
    let src = generated_library(TRACKS, SEED);
    let e = read_manifest(&src)
        .into_iter()
        .find(|e| e.kind == "normal")
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let origin = dir.path().join("o");
    std::fs::create_dir(&origin).unwrap();
    let m = Mount::start_with(
        &[&origin],
        None,
        &[("MUSICFS_WATCH", "poll"), ("MUSICFS_POLL_INTERVAL_S", "1")],
    );
    assert!(
        m.log_text().contains("polling for changes")
            || eventually(Duration::from_secs(5), || m
                .log_text()
                .contains("polling for changes"))
    );
    std::fs::copy(origin_of(&src, &e), origin.join(format!("new.{}", e.ext))).unwrap();
    assert!(
        eventually(Duration::from_secs(10), || list_files_lenient(&m.mnt).len()
            == 1),
        "polled change not seen:\n{}",
        m.log_text()
    );
    std::fs::remove_file(origin.join(format!("new.{}", e.ext))).unwrap();
    assert!(eventually(Duration::from_secs(10), || list_files_lenient(
        &m.mnt
    )
    .is_empty()));
    assert!(m.stop().success());
}

/// Reordering or removing origins between starts never makes the catalog
/// serve a file from the wrong directory, and a removed origin's files go.
#[test]
fn reordered_and_removed_origins_are_safe() {
    let src = generated_library(TRACKS, SEED);
    let normal: Vec<ManifestEntry> = read_manifest(&src)
        .into_iter()
        .filter(|e| e.kind == "normal")
        .take(6)
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir(&a).unwrap();
    std::fs::create_dir(&b).unwrap();
    // Same relative names in both origins, different contents.
    for (i, e) in normal.iter().enumerate() {
        let root = if i % 2 == 0 { &a } else { &b };
        std::fs::copy(
            origin_of(&src, e),
            root.join(format!("t{}.{}", i / 2, e.ext)),
        )
        .unwrap();
    }
    let state = dir.path().join("state");
    let m = Mount::start_with(&[&a, &b], Some(&state), &[]);
    assert_eq!(assert_files_match(&m.mnt, &[&a, &b]), 6);
    assert!(m.stop().success());
    // Reordered.
    let m = Mount::start_with(&[&b, &a], Some(&state), &[]);
    assert_eq!(assert_files_match(&m.mnt, &[&a, &b]), 6);
    assert!(m.stop().success());
    // `a` removed: its files go (after the reconcile), b's stay right.
    let m = Mount::start_with(&[&b], Some(&state), &[]);
    assert!(
        eventually(Duration::from_secs(10), || list_files_lenient(&m.mnt).len()
            == 3),
        "files of a removed origin are still listed"
    );
    assert_eq!(assert_files_match(&m.mnt, &[&b]), 3);
    assert!(m.stop().success());
}

/// A directory being listed while the tree changes neither skips nor
/// repeats an entry that did not change (readdir reads the listing as of
/// opendir).
#[test]
fn listing_a_changing_directory_skips_nothing() {
    const N: usize = 3000;
    let dir = tempfile::tempdir().unwrap();
    let origin = dir.path().join("o");
    std::fs::create_dir(&origin).unwrap();
    for i in 0..N {
        std::fs::write(
            origin.join(format!("f{i:05}.mp3")),
            (i as u32).to_le_bytes(),
        )
        .unwrap();
    }
    let m = Mount::start_with(
        &[&origin],
        None,
        &[
            ("MUSICFS_DEBOUNCE_MS", "50"),
            (
                "MUSICFS_LOG",
                "warn,musicfs_engine::sync=error,musicfs_engine::scan=error",
            ),
        ],
    );
    let album = m.mnt.join("Unknown Artist/Unknown Album");
    let mut it = std::fs::read_dir(&album).unwrap();
    let mut seen: Vec<String> = it
        .by_ref()
        .take(100)
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    // Delete 500 entries that sort before the reader's position.
    for i in 0..500 {
        std::fs::remove_file(origin.join(format!("f{i:05}.mp3"))).unwrap();
    }
    assert!(
        eventually(Duration::from_secs(10), || !album
            .join("f00499.mp3")
            .exists()),
        "the deletions were not applied"
    );
    seen.extend(it.map(|e| e.unwrap().file_name().into_string().unwrap()));
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), seen.len(), "an entry was listed twice");
    for i in 500..N {
        let name = format!("f{i:05}.mp3");
        assert!(
            sorted.binary_search(&name).is_ok(),
            "{name} (unchanged) was skipped"
        );
    }
    drop(m);
}

/// A watcher that dies is restarted by its supervisor, and changes are
/// followed again.
#[test]
fn failed_watcher_is_restarted() {
    let src = generated_library(TRACKS, SEED);
    let e = read_manifest(&src)
        .into_iter()
        .find(|e| e.kind == "normal")
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let origin = dir.path().join("o");
    std::fs::create_dir(&origin).unwrap();
    let m = Mount::start_with(
        &[&origin],
        None,
        &[
            ("MUSICFS_FAULT", "watch-fail-once"),
            ("MUSICFS_DEBOUNCE_MS", "100"),
        ],
    );
    assert!(
        eventually(Duration::from_secs(10), || m
            .log_text()
            .contains("watching for changes")),
        "the watcher was not restarted:\n{}",
        m.log_text()
    );
    assert!(m.log_text().contains("injected fault"), "{}", m.log_text());
    assert!(m.log_text().contains("restarting in"), "{}", m.log_text());
    std::fs::copy(origin_of(&src, &e), origin.join(format!("new.{}", e.ext))).unwrap();
    assert!(
        eventually(Duration::from_secs(10), || list_files_lenient(&m.mnt).len()
            == 1),
        "no change seen after the restart"
    );
    assert!(m.stop().success());
}

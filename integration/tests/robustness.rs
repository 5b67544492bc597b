//! Smaller holes: a request that panics the engine, a restart that races
//! the previous engine's stop, and `musicfs status` without a mountpoint.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use musicfs_integration::*;

fn small_origin(dir: &Path) -> PathBuf {
    let lib = generated_library(2000, 7);
    let origin = dir.join("origin");
    copy_tracks(&lib, &read_manifest(&lib), 0, 5, &origin);
    origin
}

fn engine_pid(state: &Path) -> Option<i32> {
    pids_with_cmdline(&format!("engine --state-dir {}", state.display()))
        .into_iter()
        .next()
}

/// A request that panics the engine is answered EIO at once: the engine
/// (and its connection) live on, and the next requests are served.
#[test]
fn a_request_that_panics_the_engine_is_answered_eio() {
    let dir = tempfile::tempdir().unwrap();
    let origin = small_origin(dir.path());
    let m = Mount::start_with(&[&origin], None, &[("MUSICFS_FAULT", "panic-lookup")]);
    let pid = engine_pid(&m.state).unwrap();
    let t = Instant::now();
    match std::fs::metadata(m.mnt.join("musicfs-panic-test")) {
        Err(e) if e.raw_os_error() == Some(libc::EIO) => {}
        other => panic!(
            "a panicking lookup gave {other:?}, not EIO:\n{}",
            m.log_text()
        ),
    }
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "the answer took {:?} (replayed until the deadline?)",
        t.elapsed()
    );
    assert_eq!(engine_pid(&m.state), Some(pid), "the engine was replaced");
    assert_eq!(list_files(&m.mnt).len(), 5);
    assert!(m.log_text().contains("answered EIO"), "{}", m.log_text());
    assert!(m.stop().success());
}

/// A new engine finds the state directory locked by one that is still
/// stopping (its sockets are gone, the lock is held): it waits for it,
/// bounded, and starts. Held by one that serves (sockets there): refused
/// at once, naming the holder.
#[test]
fn a_new_engine_waits_for_one_that_is_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let origin = small_origin(dir.path());
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(state.join("engine.lock"))
        .unwrap();
    // SAFETY: flock on a file we own.
    assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
    std::fs::write(state.join("engine.lock"), b"4242\n").unwrap();
    let log = dir.path().join("engine.log");
    let mut e = EngineProc::start(&origin, &state, &log, &[]);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        e.child.try_wait().unwrap().is_none(),
        "the engine gave up instead of waiting:\n{}",
        e.log_text()
    );
    assert!(
        e.log_text()
            .contains("waiting for the engine that is stopping")
    );
    drop(lock);
    e.wait_log("engine ready", 1, Duration::from_secs(30));
    assert!(e.stop().success());

    // Held by an engine that serves: refused at once.
    let lock = std::fs::OpenOptions::new()
        .write(true)
        .open(state.join("engine.lock"))
        .unwrap();
    // SAFETY: as above.
    assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
    std::fs::write(state.join("control.sock"), b"").unwrap();
    let t = Instant::now();
    let out = Command::new(musicfs_bin())
        .args(["engine", "--state-dir"])
        .arg(&state)
        .arg("--origin")
        .arg(&origin)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already using"), "{err}");
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    let _ = std::fs::remove_file(state.join("control.sock"));
}

/// `musicfs status` with no mountpoint: none running says so; one running
/// is shown; several are listed one line each.
#[test]
fn status_without_a_mountpoint_finds_the_mounts() {
    let dir = tempfile::tempdir().unwrap();
    let origin = small_origin(dir.path());
    let xdg = dir.path().join("xdg");
    let status = || {
        let out = Command::new(musicfs_bin())
            .arg("status")
            .env("XDG_STATE_HOME", &xdg)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, _, err) = status();
    assert!(!ok && err.contains("no musicfs mount is running"), "{err}");

    let a = Mount::start_with(&[&origin], Some(&xdg.join("musicfs/mount-a")), &[]);
    let (ok, out, err) = status();
    assert!(ok, "{err}");
    assert!(out.contains("catalog     5 files"), "{out}");

    let b = Mount::start_with(&[&origin], Some(&xdg.join("musicfs/mount-b")), &[]);
    let (ok, out, err) = status();
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(
        lines[0].contains("mount-a") && lines[1].contains("mount-b"),
        "{out}"
    );
    // Metrics need one: they say which there are.
    let out = Command::new(musicfs_bin())
        .arg("metrics")
        .env("XDG_STATE_HOME", &xdg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("2 mounts are running"));
    assert!(a.stop().success());
    assert!(b.stop().success());
}

/// At the inotify watch limit an origin is followed by polling (one log
/// line), not retried for ever: a file added later still appears.
#[test]
fn at_the_watch_limit_an_origin_is_polled() {
    let dir = tempfile::tempdir().unwrap();
    let origin = small_origin(dir.path());
    let m = Mount::start_with(
        &[&origin],
        None,
        &[
            ("MUSICFS_FAULT", "watch-limit"),
            ("MUSICFS_POLL_INTERVAL_S", "1"),
        ],
    );
    assert_eq!(list_files(&m.mnt).len(), 5);
    let lib = generated_library(2000, 7);
    let e = read_manifest(&lib)
        .into_iter()
        .filter(|e| e.kind == "normal")
        .nth(40)
        .unwrap();
    let rel =
        PathBuf::from(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(&e.raw_path()));
    std::fs::copy(
        lib.join(&rel),
        origin.join("added.mp3").with_extension(&e.ext),
    )
    .unwrap();
    assert!(
        eventually(Duration::from_secs(30), || list_files_lenient(&m.mnt).len()
            == 6),
        "the added file never appeared:\n{}",
        m.log_text()
    );
    let log = m.log_text();
    assert!(
        log.contains("watch limit") && log.contains("polling"),
        "{log}"
    );
    assert!(
        !log.contains("restarting in"),
        "the watcher was retried instead: {log}"
    );
    assert!(m.stop().success());
}

/// A request that kills every engine it reaches is answered EIO by the
/// shim after two engines in a row ended with it in flight, instead of
/// being replayed until its deadline; the mount serves on.
#[test]
fn a_request_that_kills_every_engine_is_answered_eio_after_two() {
    let dir = tempfile::tempdir().unwrap();
    let origin = small_origin(dir.path());
    let m = Mount::start_with(&[&origin], None, &[("MUSICFS_FAULT", "abort-lookup")]);
    let t = Instant::now();
    match std::fs::metadata(m.mnt.join("musicfs-abort-test")) {
        Err(e) if e.raw_os_error() == Some(libc::EIO) => {}
        other => panic!(
            "a lookup that kills the engine gave {other:?}, not EIO:\n{}",
            m.log_text()
        ),
    }
    assert!(
        t.elapsed() < Duration::from_secs(25),
        "answered only after {:?} (the request deadline is 30 s)",
        t.elapsed()
    );
    let log = m.log_text();
    assert!(log.contains("engines in a row ended"), "{log}");
    assert_eq!(log.matches("aborting").count(), 2, "{log}");
    assert!(
        eventually(Duration::from_secs(20), || list_files_lenient(&m.mnt).len()
            == 5),
        "the mount does not serve after the bad request:\n{}",
        m.log_text()
    );
    assert!(m.stop().success());
}

/// `musicfs mount` on a terminal draws the first scan's progress (files
/// read of the files found so far) until the engine serves.
#[test]
fn the_first_scan_draws_its_progress_on_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let state = dir.path().join("state");
    let lib = generated_library(2000, 7);
    let typescript = dir.path().join("typescript");
    // `script` gives the mount a terminal.
    let cmd = format!(
        "{} mount --state-dir {} --origin {} {}",
        musicfs_bin().display(),
        state.display(),
        lib.display(),
        mnt.display()
    );
    let mut child = Command::new("script")
        .args(["-qfc", &cmd])
        .arg(&typescript)
        .env("MUSICFS_LOG", "error")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("script (util-linux) is installed");
    let mounted = eventually(Duration::from_secs(120), || {
        std::fs::read_to_string(&typescript).is_ok_and(|t| t.contains("mounted at"))
    });
    let text = std::fs::read_to_string(&typescript).unwrap_or_default();
    let out = Command::new(musicfs_bin())
        .args(["shutdown", "--state-dir"])
        .arg(&state)
        .output()
        .unwrap();
    let _ = child.wait();
    assert!(mounted, "{text}");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("scanning ["), "no progress drawn:\n{text}");
    assert!(text.contains("files read (found so far)"), "{text}");
}

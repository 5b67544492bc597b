//! The central promise: an engine crash, hang or restart never breaks a read.
//! Real mount of a 2,000-track library; 8 readers hash whole files, a walker
//! stats the whole tree, while the engine is killed, stopped or broken.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use musicfs_integration::*;

const TRACKS: usize = 2000;
const SEED: u64 = 7;

/// Fast failure detection for tests; the request deadline stays generous.
const ENV: &[(&str, &str)] = &[
    ("MUSICFS_HEARTBEAT_INTERVAL_MS", "200"),
    ("MUSICFS_HEARTBEAT_TIMEOUT_MS", "1000"),
];

fn engine_pid(state: &Path) -> Option<i32> {
    pids_with_cmdline(&format!("engine --state-dir {}", state.display()))
        .into_iter()
        .next()
}

/// Waits until an engine other than `old` runs for `state`.
fn wait_new_engine(state: &Path, old: i32) -> i32 {
    let mut new = None;
    assert!(
        eventually(Duration::from_secs(20), || {
            new = engine_pid(state).filter(|p| *p != old);
            new.is_some()
        }),
        "no new engine after {old} died"
    );
    new.unwrap()
}

/// Whether `musicfs events` of the engine of `state` mentions `needle`,
/// within 20 s (a new engine needs a moment before it answers).
/// What `musicfs events` prints now (for a failure's message).
fn events_text(state: &Path) -> String {
    std::process::Command::new(musicfs_bin())
        .args(["events", "--state-dir"])
        .arg(state)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

fn events_mention(state: &Path, needle: &str) -> bool {
    eventually(Duration::from_secs(20), || {
        std::process::Command::new(musicfs_bin())
            .args(["events", "--state-dir"])
            .arg(state)
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(needle))
    })
}

fn kill_engine_repeatedly(passthrough: &str, kills: usize) {
    let lib = generated_library(TRACKS, SEED);
    let mut env = ENV.to_vec();
    env.push(("MUSICFS_PASSTHROUGH", passthrough));
    let m = Mount::start_with(&[&lib], None, &env);
    let load = start_load(&m.mnt);
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..kills {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        std::thread::sleep(Duration::from_millis(150 + rng % 400));
        let pid = engine_pid(&m.state).expect("engine running");
        // SAFETY: kill(2) on the engine this test started.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        wait_new_engine(&m.state, pid);
    }
    std::thread::sleep(Duration::from_millis(300));
    let (hashed, walks) = load.finish(&format!("{kills} x kill -9"), &m.log_text());
    assert!(
        hashed > 100 && walks >= 1,
        "too little load: {hashed} files, {walks} walks"
    );
    assert_eq!(m.log_text().matches("the engine exited").count(), kills);
    // The new engine's event log says why it started.
    assert!(
        events_mention(
            &m.state,
            "previous close: unclean; reason: restart: the previous engine exited (signal: 9"
        ),
        "no restart reason in the events:\n{}",
        events_text(&m.state)
    );
    assert!(m.stop().success());
}

/// (a) kill -9 of the engine 20 times at random moments under load, with
/// kernel passthrough (opens and lookups must survive).
#[test]
fn kill_9_twenty_times_under_load() {
    kill_engine_repeatedly("true", 20);
}

/// (a') the same with every read going through the engine (reads in flight
/// are replayed to the next engine).
#[test]
fn kill_9_under_load_reads_through_the_engine() {
    kill_engine_repeatedly("false", 10);
}

/// (b) SIGSTOP: requests stall, the heartbeat finds the hang, the engine is
/// replaced and the readers finish correctly.
#[test]
fn stopped_engine_is_found_and_replaced() {
    let lib = generated_library(TRACKS, SEED);
    let mut env = ENV.to_vec();
    env.push(("MUSICFS_PASSTHROUGH", "false"));
    let m = Mount::start_with(&[&lib], None, &env);
    let load = start_load(&m.mnt);
    std::thread::sleep(Duration::from_millis(300));
    let pid = engine_pid(&m.state).unwrap();
    // SAFETY: kill(2) on the engine this test started.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let t = Instant::now();
    wait_new_engine(&m.state, pid);
    let replaced_after = t.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    load.finish("SIGSTOP", &m.log_text());
    assert!(
        m.log_text().contains("did not answer a heartbeat"),
        "{}",
        m.log_text()
    );
    assert!(
        events_mention(
            &m.state,
            "reason: restart: the previous engine did not answer a heartbeat"
        ),
        "no restart reason in the events:\n{}",
        events_text(&m.state)
    );
    assert!(
        replaced_after < Duration::from_secs(10),
        "took {replaced_after:?}"
    );
    assert!(m.stop().success());
}

/// (d) An engine binary that crashes at start: the mount stays, requests fail
/// with a clear errno after the deadline, and serving resumes by itself once
/// a good engine is back.
#[test]
fn crashing_engine_binary_keeps_the_mount() {
    let lib = generated_library(TRACKS, SEED);
    let dir = tempfile::tempdir().unwrap();
    let flag = dir.path().join("crash");
    let script = dir.path().join("engine.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n[ -e '{}' ] && {{ echo 'engine: injected crash' >&2; exit 3; }}\nexec '{}' \"$@\"\n",
            flag.display(),
            musicfs_bin().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut env = ENV.to_vec();
    let script_s = script.to_string_lossy().into_owned();
    env.push(("MUSICFS_ENGINE_BIN", &script_s));
    env.push(("MUSICFS_ENGINE_WAIT_TIMEOUT_MS", "1500"));
    let m = Mount::start_with(&[&lib], None, &env);
    let files: Vec<PathBuf> = list_files(&m.mnt)
        .into_iter()
        .map(|r| m.mnt.join(r))
        .collect();
    let want: HashMap<&PathBuf, blake3::Hash> = files
        .iter()
        .take(5)
        .map(|p| (p, hash_file(p).unwrap()))
        .collect();

    std::fs::write(&flag, b"").unwrap();
    let pid = engine_pid(&m.state).unwrap();
    // SAFETY: kill(2) on the engine this test started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    assert!(eventually(Duration::from_secs(10), || m
        .log_text()
        .matches("injected crash")
        .count()
        >= 2));
    // open() needs the engine: it fails with ETIMEDOUT after the deadline.
    let t = Instant::now();
    let err = std::fs::File::open(&files[0]).expect_err("open succeeded without an engine");
    assert_eq!(err.raw_os_error(), Some(libc::ETIMEDOUT), "{err}");
    assert!(t.elapsed() >= Duration::from_millis(1400) && t.elapsed() < Duration::from_secs(10));
    // The mount itself is alive: never "Transport endpoint is not connected".
    // (Directories open without the engine; the handle is closed at once,
    // so that the mount can be unmounted at the end.)
    let listing = std::fs::read_dir(&m.mnt).map(drop);
    assert!(
        !matches!(&listing, Err(e) if e.raw_os_error() == Some(libc::ENOTCONN)),
        "mount died: {listing:?}"
    );
    assert!(
        m.log_text().contains("no engine answered within"),
        "no clear log line"
    );

    // A good engine again: serving resumes by itself.
    std::fs::remove_file(&flag).unwrap();
    assert!(
        eventually(Duration::from_secs(20), || std::fs::File::open(&files[0])
            .is_ok()),
        "did not recover:\n{}",
        m.log_text()
    );
    for (p, h) in want {
        assert_eq!(hash_file(p).unwrap(), h);
    }
    assert!(m.stop().success());
}

/// (e) A real client (ffmpeg decoding in real time) and a slow reader hold
/// files open across an engine kill and read them to the end, right bytes.
#[test]
fn open_files_survive_an_engine_kill() {
    let lib = generated_library(TRACKS, SEED);
    let mut env = ENV.to_vec();
    env.push(("MUSICFS_PASSTHROUGH", "false"));
    let m = Mount::start_with(&[&lib], None, &env);
    let files: Vec<PathBuf> = list_files(&m.mnt)
        .into_iter()
        .map(|r| m.mnt.join(r))
        .filter(|p| p.extension().is_some_and(|e| e == "flac" || e == "mp3"))
        .collect();
    let big = files
        .iter()
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap()
        .clone();
    let origin = PathBuf::from(OsStr::from_bytes(
        &getxattr(&big, "user.musicfs.origin").unwrap(),
    ));
    let want = std::fs::read(&origin).unwrap();

    let ffmpeg = std::process::Command::new("ffmpeg")
        .args(["-v", "error", "-re", "-i"])
        .arg(&files[0])
        .args(["-f", "null", "-"])
        .spawn()
        .unwrap();
    let slow = std::thread::spawn(move || {
        use std::io::Read;
        let mut f = std::fs::File::open(&big).unwrap();
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = f.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
            std::thread::sleep(Duration::from_millis(3));
        }
        out
    });
    std::thread::sleep(Duration::from_millis(200));
    let pid = engine_pid(&m.state).unwrap();
    // SAFETY: kill(2) on the engine this test started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    wait_new_engine(&m.state, pid);
    let got = slow.join().unwrap();
    assert!(
        got == want,
        "slow reader got different bytes across the kill"
    );
    let status = ffmpeg.wait_with_output().unwrap().status;
    assert!(status.success(), "ffmpeg failed across the engine kill");
    assert!(m.stop().success());
}

fn swap(state: &Path, binary: Option<&Path>) -> (bool, String) {
    let mut cmd = std::process::Command::new(musicfs_bin());
    cmd.args(["engine", "swap", "--state-dir"]).arg(state);
    if let Some(b) = binary {
        cmd.arg("--binary").arg(b);
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// (c) 10 engine swaps under load: zero failed syscalls; a swap to a broken
/// binary fails with a reason and the mount keeps serving.
#[test]
fn ten_swaps_under_load() {
    let lib = generated_library(TRACKS, SEED);
    let mut env = ENV.to_vec();
    env.push(("MUSICFS_PASSTHROUGH", "false"));
    let m = Mount::start_with(&[&lib], None, &env);
    let load = start_load(&m.mnt);
    for i in 0..10 {
        std::thread::sleep(Duration::from_millis(200));
        let old = engine_pid(&m.state).unwrap();
        let (ok, out) = swap(&m.state, None);
        assert!(ok, "swap {i} failed: {out}");
        assert!(out.contains("engine swapped"), "{out}");
        assert_ne!(
            engine_pid(&m.state),
            Some(old),
            "swap {i} kept the old engine"
        );
    }
    // A broken binary: refused with a reason, serving goes on.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad-engine");
    std::fs::write(
        &bad,
        "#!/bin/sh\n[ \"$1\" = --version ] && exit 0\necho broken >&2; exit 7\n",
    )
    .unwrap();
    std::fs::set_permissions(&bad, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let (ok, out) = swap(&m.state, Some(&bad));
    assert!(!ok, "a broken engine was accepted: {out}");
    assert!(
        out.contains("failed") && out.contains("exit status: 7"),
        "unclear: {out}"
    );
    std::thread::sleep(Duration::from_millis(300));
    let (hashed, _) = load.finish("10 swaps", &m.log_text());
    assert!(hashed > 100);
    assert!(m.stop().success());
}

/// Version negotiation: a shim and an engine with no common protocol version
/// refuse each other with a clear message instead of misreading frames.
#[test]
fn incompatible_engine_is_refused_clearly() {
    let lib = generated_library(TRACKS, SEED);
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let out = std::process::Command::new(musicfs_bin())
        .arg("mount")
        .arg("--origin")
        .arg(&lib)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .arg(&mnt)
        .env("MUSICFS_FAKE_PROTOCOL", "99")
        .env("HOME", dir.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("no common version") && err.contains("99"),
        "unclear: {err}"
    );
    assert!(!is_mountpoint(&mnt));
}

/// A new engine whose tree differs from the old one's (the origin changed
/// while no watcher saw it) invalidates what the kernel cached, instead of
/// letting it serve stale names until their TTL ends.
#[test]
fn restart_invalidates_stale_kernel_entries() {
    let src = generated_library(TRACKS, SEED);
    let dir = tempfile::tempdir().unwrap();
    let origin = dir.path().join("o");
    std::fs::create_dir(&origin).unwrap();
    let entries: Vec<ManifestEntry> = read_manifest(&src)
        .into_iter()
        .filter(|e| e.kind == "normal")
        .take(5)
        .collect();
    for (i, e) in entries.iter().enumerate() {
        std::fs::copy(
            src.join(OsStr::from_bytes(&e.raw_path())),
            origin.join(format!("{i}.{}", e.ext)),
        )
        .unwrap();
    }
    let mut env = ENV.to_vec();
    env.push(("MUSICFS_WATCH", "off"));
    let m = Mount::start_with(&[&origin], None, &env);
    let files: Vec<PathBuf> = list_files(&m.mnt)
        .into_iter()
        .map(|r| m.mnt.join(r))
        .collect();
    assert_eq!(files.len(), 5);
    let victim = files
        .iter()
        .find(|p| {
            getxattr(p, "user.musicfs.origin").as_deref()
                == Some(
                    origin
                        .join(format!("0.{}", entries[0].ext))
                        .as_os_str()
                        .as_bytes(),
                )
        })
        .unwrap()
        .clone();
    assert!(victim.exists()); // cached by the kernel for the entry TTL (60 s)
    std::fs::remove_file(origin.join(format!("0.{}", entries[0].ext))).unwrap();
    let pid = engine_pid(&m.state).unwrap();
    // SAFETY: kill(2) on the engine this test started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    wait_new_engine(&m.state, pid);
    assert!(
        eventually(Duration::from_secs(10), || !victim.exists()),
        "the kernel still shows a file the new engine removed"
    );
    assert_eq!(list_files(&m.mnt).len(), 4);
    assert!(m.stop().success());
}

/// Sends one request on a raw engine connection.
fn raw_send(
    s: &mut std::os::unix::net::UnixStream,
    id: u64,
    fill: impl FnOnce(musicfs_schema::request::Builder<'_>),
) -> std::io::Result<()> {
    use std::io::Write;
    let mut msg = capnp::message::Builder::new_default();
    let mut r = msg.init_root::<musicfs_schema::request::Builder<'_>>();
    r.set_id(id);
    fill(r);
    s.write_all(&musicfs_schema::to_frame(&msg))
}

/// A client that stops reading its answers (a stalled shim) is dropped by
/// the engine after its write timeout: it never keeps the engine's threads,
/// and the mount serves correct bytes all along.
#[test]
fn client_that_stops_reading_is_dropped() {
    use std::io::Read;
    use std::os::unix::fs::MetadataExt;
    let lib = generated_library(TRACKS, SEED);
    let m = Mount::start_with(&[&lib], None, &[("MUSICFS_PASSTHROUGH", "false")]);
    let files = list_files(&m.mnt);
    let target = m.mnt.join(&files[0]);
    let ino = std::fs::metadata(&target).unwrap().ino();

    let mut raw = std::os::unix::net::UnixStream::connect(m.state.join("engine.sock")).unwrap();
    raw_send(&mut raw, 1, |r| {
        let mut h = r.init_hello();
        h.set_min_protocol(musicfs_schema::MIN_PROTOCOL_VERSION);
        h.set_max_protocol(musicfs_schema::PROTOCOL_VERSION);
        h.set_peer_name("stalled test client");
    })
    .unwrap();
    raw_send(&mut raw, 2, |r| {
        let mut o = r.init_open();
        o.set_ino(ino);
        o.set_flags(0);
    })
    .unwrap();
    let mut reader = std::io::BufReader::new(raw.try_clone().unwrap());
    let mut fh = None;
    while fh.is_none() {
        let msg = musicfs_schema::read_frame(&mut reader).unwrap().unwrap();
        let resp = msg
            .get_root::<musicfs_schema::response::Reader<'_>>()
            .unwrap();
        if let Ok(musicfs_schema::response::Opened(o)) = resp.which() {
            fh = Some(o.get_fh());
        }
    }
    // Ask for 128 KiB answers and never read them, until the engine stops
    // taking requests (its answers fill both socket buffers).
    raw.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut sent = 0u64;
    while sent < 100_000 {
        let ok = raw_send(&mut raw, 10 + sent, |r| {
            let mut rd = r.init_read();
            rd.set_ino(ino);
            rd.set_fh(fh.unwrap());
            rd.set_offset(0);
            rd.set_size(128 * 1024);
        });
        if ok.is_err() {
            break;
        }
        sent += 1;
    }
    assert!(sent < 100_000, "the engine never stopped reading requests");

    // Meanwhile the mount reads every byte right.
    for rel in files.iter().take(50) {
        assert_eq!(
            hash_file(&m.mnt.join(rel)).unwrap(),
            hash_file(&lib.join(rel_origin(&m.mnt.join(rel)))).unwrap(),
            "{} has wrong bytes",
            rel.display()
        );
    }
    // The engine gives up on the stalled client (bounded: its write
    // timeout), and ends the connection: draining it reaches its end.
    assert!(
        eventually(Duration::from_secs(60), || m
            .log_text()
            .contains("has not read its answers")),
        "the engine kept waiting on a client that does not read:\n{}",
        m.log_text()
    );
    raw.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let ended = loop {
        match reader.get_mut().read(&mut buf) {
            Ok(0) => break true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
            Err(_) => break false,
        }
    };
    assert!(ended, "the stalled connection was not ended");
    assert!(m.stop().success());
}

/// The origin file behind a mounted file, relative to the library.
fn rel_origin(mounted: &Path) -> PathBuf {
    let o = getxattr(mounted, "user.musicfs.origin").unwrap();
    PathBuf::from(OsStr::from_bytes(&o))
}

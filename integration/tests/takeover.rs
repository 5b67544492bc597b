//! The mount survives its shim (issue 14): the supervisor holds a copy of
//! the /dev/fuse fd, a new shim takes the live connection over without
//! INIT and has the kernel resend what the dead one had read. Real mount
//! of a 2,000-track library; 8 readers hash whole files against the
//! origin and a walker stats the tree while the shim is killed, stopped,
//! or killed together with the engine.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use musicfs_integration::*;

const TRACKS: usize = 2000;
const SEED: u64 = 7;

const ENV: &[(&str, &str)] = &[
    ("MUSICFS_HEARTBEAT_INTERVAL_MS", "200"),
    ("MUSICFS_HEARTBEAT_TIMEOUT_MS", "1000"),
];

fn shim_pid(mnt: &Path) -> Option<i32> {
    pids_with_cmdline(&format!("--mountpoint {} ", mnt.display()))
        .into_iter()
        .find(|p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains("musicfs-shim"))
        })
}

fn engine_pid(state: &Path) -> Option<i32> {
    pids_with_cmdline(&format!("engine --state-dir {}", state.display()))
        .into_iter()
        .next()
}

/// Waits until a shim other than `old` serves `mnt`.
fn wait_new_shim(mnt: &Path, old: i32) -> i32 {
    let mut new = None;
    assert!(
        eventually(Duration::from_secs(30), || {
            new = shim_pid(mnt).filter(|p| *p != old);
            new.is_some()
        }),
        "no new shim after {old}"
    );
    new.unwrap()
}

/// Whether thread `tid` of this process is inside a syscall (any but a
/// wait of its own), from /proc: a reader blocked on the mount.
fn in_syscall(tid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/self/task/{tid}/syscall"))
        .is_ok_and(|s| !s.starts_with("running") && !s.starts_with("-1"))
}

fn kill(pid: i32, sig: i32) {
    // SAFETY: kill(2) on a process this test's mount started.
    unsafe { libc::kill(pid, sig) };
}

/// A mount of the test library with passthrough on or off.
fn mount(passthrough: &str) -> Mount {
    let lib = generated_library(TRACKS, SEED);
    let mut env = ENV.to_vec();
    env.push(("MUSICFS_PASSTHROUGH", passthrough));
    Mount::start_with(&[&lib], None, &env)
}

/// Sends `sig` to the shim of `mnt` and waits until another serves it.
fn replace_shim(mnt: &Path, sig: i32) {
    let pid = shim_pid(mnt).expect("shim running");
    kill(pid, sig);
    wait_new_shim(mnt, pid);
}

fn origin_of(p: &Path) -> PathBuf {
    PathBuf::from(OsStr::from_bytes(
        &getxattr(p, "user.musicfs.origin").unwrap(),
    ))
}

fn kill_shim_repeatedly(passthrough: &str, kills: usize) {
    let m = mount(passthrough);
    let load = start_load(&m.mnt);
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..kills {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        std::thread::sleep(Duration::from_millis(150 + rng % 400));
        replace_shim(&m.mnt, libc::SIGKILL);
    }
    std::thread::sleep(Duration::from_millis(300));
    let (hashed, walks) = load.finish(&format!("{kills} x kill -9 of the shim"), &m.log_text());
    assert!(
        hashed > 100 && walks >= 1,
        "too little load: {hashed} files, {walks} walks"
    );
    let log = m.log_text();
    assert_eq!(
        log.matches("a new shim took the live FUSE connection over")
            .count(),
        kills,
        "{log}"
    );
    assert!(
        log.matches("asked the kernel to resend").count() >= kills,
        "{log}"
    );
    assert!(!log.contains("Transport endpoint"), "{log}");
    assert!(m.stop().success());
}

/// kill -9 of the shim 20 times at random moments under load, with kernel
/// passthrough: zero failed syscalls, every hash right.
#[test]
fn shim_kill_9_twenty_times_under_load() {
    kill_shim_repeatedly("true", 20);
}

/// The same with every read going through the shim (reads in flight in
/// the dead shim are resent by the kernel to the next).
#[test]
fn shim_kill_9_under_load_reads_through_the_shim() {
    kill_shim_repeatedly("false", 20);
}

/// SIGSTOP of the shim: its heartbeat stops, it is killed and replaced,
/// and the readers finish with zero failures.
#[test]
fn stopped_shim_is_found_and_replaced() {
    let m = mount("false");
    let load = start_load(&m.mnt);
    std::thread::sleep(Duration::from_millis(300));
    replace_shim(&m.mnt, libc::SIGSTOP);
    std::thread::sleep(Duration::from_millis(500));
    load.finish("SIGSTOP of the shim", &m.log_text());
    let log = m.log_text();
    assert!(log.contains("the shim did not answer a heartbeat"), "{log}");
    assert!(log.contains("a new shim took the live FUSE connection over"));
    assert!(m.stop().success());
}

/// The shim and the engine killed at once, five times: both come back, the
/// readers never see a failure.
#[test]
fn shim_and_engine_killed_together() {
    let lib = generated_library(TRACKS, SEED);
    let m = Mount::start_with(&[&lib], None, ENV);
    let load = start_load(&m.mnt);
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(400));
        let shim = shim_pid(&m.mnt).unwrap();
        let engine = engine_pid(&m.state).unwrap();
        kill(shim, libc::SIGKILL);
        kill(engine, libc::SIGKILL);
        wait_new_shim(&m.mnt, shim);
        assert!(
            eventually(Duration::from_secs(30), || engine_pid(&m.state)
                .is_some_and(|p| p != engine)),
            "no new engine"
        );
    }
    std::thread::sleep(Duration::from_millis(500));
    load.finish("shim and engine killed together", &m.log_text());
    assert!(m.stop().success());
}

/// A file held open by a slow reader across two shim kills reads to its
/// end with the origin's bytes (its handle lives in the connection).
#[test]
fn slow_reader_survives_shim_kills() {
    for passthrough in ["false", "true"] {
        let m = mount(passthrough);
        let big = list_files(&m.mnt)
            .into_iter()
            .map(|r| m.mnt.join(r))
            .max_by_key(|p| std::fs::metadata(p).unwrap().len())
            .unwrap();
        let want = std::fs::read(origin_of(&big)).unwrap();
        let slow = std::thread::spawn(move || {
            let mut f = std::fs::File::open(&big).unwrap();
            let mut out = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                let n = f.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                out.extend_from_slice(&buf[..n]);
                std::thread::sleep(Duration::from_millis(2));
            }
            out
        });
        for _ in 0..2 {
            std::thread::sleep(Duration::from_millis(300));
            replace_shim(&m.mnt, libc::SIGKILL);
        }
        let got = slow.join().unwrap();
        assert!(
            got == want,
            "passthrough={passthrough}: the slow reader got other bytes across the kills"
        );
        assert!(m.stop().success());
    }
}

/// With passthrough, the backing id of a file open across a shim kill
/// outlives that shim: the successor adopts it, so a second open of the
/// same file (which the kernel would refuse with another backing file)
/// works and reads by passthrough the origin's bytes, and after both
/// close a new open still works.
#[test]
fn backing_id_outlives_its_shim() {
    let m = mount("true");
    let file = m.mnt.join(&list_files(&m.mnt)[3]);
    let want = std::fs::read(origin_of(&file)).unwrap();
    let held = std::fs::File::open(&file).unwrap();
    replace_shim(&m.mnt, libc::SIGKILL);
    assert!(
        eventually(Duration::from_secs(20), || m
            .log_text()
            .contains("backing_ids=1")),
        "the new shim did not adopt the backing id:\n{}",
        m.log_text()
    );
    let t = Instant::now();
    let again = std::fs::read(&file).expect("second open across the takeover");
    assert!(again == want, "wrong bytes through the adopted backing id");
    let mut first = Vec::new();
    (&held).read_to_end(&mut first).unwrap();
    assert!(first == want, "wrong bytes through the old handle");
    drop(held);
    // The last handle gone, the successor closed the adopted id: a later
    // open makes a new one and reads right.
    assert!(std::fs::read(&file).unwrap() == want);
    assert!(t.elapsed() < Duration::from_secs(30));
    assert!(m.stop().success());
}

/// The open cache across a takeover (issue 16 with 14): a file closed
/// (its backing id idle) and a file held open by reopens the shim answered
/// itself, then the shim is killed. The successor closes the idle id and
/// keeps the held one: both read the origin's bytes afterwards, through
/// the old handles and through new opens.
#[test]
fn open_cache_survives_its_shim() {
    let m = mount("true");
    let files = list_files(&m.mnt);
    let (idle, held) = (m.mnt.join(&files[5]), m.mnt.join(&files[6]));
    let want_idle = std::fs::read(origin_of(&idle)).unwrap();
    let want_held = std::fs::read(origin_of(&held)).unwrap();
    assert!(std::fs::read(&idle).unwrap() == want_idle);
    assert!(std::fs::read(&held).unwrap() == want_held);
    // Reopens of a version the engine opened: answered by the shim.
    let handles: Vec<std::fs::File> = (0..2)
        .map(|_| std::fs::File::open(&held).unwrap())
        .collect();
    replace_shim(&m.mnt, libc::SIGKILL);
    assert!(
        eventually(Duration::from_secs(20), || m
            .log_text()
            .contains("took over the live FUSE connection")),
        "no takeover:\n{}",
        m.log_text()
    );
    for h in &handles {
        let mut got = Vec::new();
        (&*h).read_to_end(&mut got).unwrap();
        assert!(got == want_held, "wrong bytes through a held handle");
    }
    assert!(std::fs::read(&idle).expect("open of the idle file") == want_idle);
    drop(handles);
    assert!(std::fs::read(&held).expect("open after the held ones") == want_held);
    assert!(std::fs::read(&idle).unwrap() == want_idle);
    assert!(m.stop().success());
}

/// The resend itself: with the engine stopped, readers' requests wait in
/// the shim (it has read them from the kernel); the shim is killed. Only
/// a kernel resend to the successor can answer them: without it they
/// would wait for ever. The heartbeat replaces the stopped engine, and
/// every reader gets the origin's bytes; the new shim logs the resent ids.
#[test]
fn requests_a_dead_shim_had_read_are_resent() {
    let m = mount("false");
    let files: Vec<PathBuf> = list_files(&m.mnt)
        .into_iter()
        .take(4)
        .map(|r| m.mnt.join(r))
        .collect();
    let want: Vec<Vec<u8>> = files
        .iter()
        .map(|f| std::fs::read(origin_of(f)).unwrap())
        .collect();
    let engine = engine_pid(&m.state).unwrap();
    kill(engine, libc::SIGSTOP);
    assert!(
        eventually(Duration::from_secs(20), || all_threads_stopped(engine)),
        "the engine did not stop"
    );
    let (tx, rx) = std::sync::mpsc::channel();
    let (tids_tx, tids) = std::sync::mpsc::channel();
    for (i, f) in files.iter().enumerate() {
        let (f, tx, tids_tx) = (f.clone(), tx.clone(), tids_tx.clone());
        std::thread::spawn(move || {
            // SAFETY: gettid has no preconditions.
            let _ = tids_tx.send(unsafe { libc::gettid() });
            let _ = tx.send((i, std::fs::read(&f)));
        });
    }
    let tids: Vec<i32> = (0..files.len()).map(|_| tids.recv().unwrap()).collect();
    // The readers are blocked in their syscalls: nothing can answer them
    // while the engine is stopped (the shim holds their requests).
    assert!(
        eventually(Duration::from_secs(20), || tids
            .iter()
            .all(|t| in_syscall(*t))),
        "the readers never blocked on the mount: {:?}",
        tids.iter()
            .map(|t| std::fs::read_to_string(format!("/proc/self/task/{t}/syscall")))
            .collect::<Vec<_>>()
    );
    assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());
    let shim = shim_pid(&m.mnt).unwrap();
    kill(shim, libc::SIGKILL);
    wait_new_shim(&m.mnt, shim);
    let mut got = 0;
    while got < files.len() {
        let (i, r) = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("a read never finished:\n{}", m.log_text()));
        assert!(
            r.unwrap() == want[i],
            "wrong bytes for {}",
            files[i].display()
        );
        got += 1;
    }
    let log = m.log_text();
    assert!(
        log.contains("answering a request the kernel resent"),
        "no resent request was answered:\n{log}"
    );
    assert!(log.contains("did not answer a heartbeat"), "{log}");
    assert!(m.stop().success());
}

fn shim_swap(mnt: &Path, state: &Path, binary: Option<&Path>) -> (bool, String) {
    let mut cmd = std::process::Command::new(musicfs_bin());
    cmd.args(["shim", "swap", "--state-dir"]).arg(state);
    if let Some(b) = binary {
        cmd.arg("--binary").arg(b);
    }
    let out = cmd.arg(mnt).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// 10 `musicfs shim swap`s under load: zero failed syscalls, each one a
/// new shim. A swap to a binary that cannot take over fails with the
/// reason, and the old shim serves on.
#[test]
fn ten_shim_swaps_under_load() {
    let lib = generated_library(TRACKS, SEED);
    let m = Mount::start_with(&[&lib], None, ENV);
    let load = start_load(&m.mnt);
    for i in 0..10 {
        std::thread::sleep(Duration::from_millis(200));
        let old = shim_pid(&m.mnt).unwrap();
        let (ok, out) = shim_swap(&m.mnt, &m.state, None);
        assert!(ok, "swap {i} failed: {out}\n{}", m.log_text());
        assert!(out.contains("shim swapped to"), "{out}");
        let new = shim_pid(&m.mnt).unwrap();
        assert_ne!(new, old, "swap {i} kept the old shim");
    }
    // A binary that answers --version but exits at start.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad-shim");
    std::fs::write(
        &bad,
        "#!/bin/sh\n[ \"$1\" = --version ] && { echo musicfs-shim 0; exit 0; }\necho 'shim: injected failure' >&2; exit 3\n",
    )
    .unwrap();
    std::fs::set_permissions(&bad, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let before = shim_pid(&m.mnt).unwrap();
    let (ok, out) = shim_swap(&m.mnt, &m.state, Some(&bad));
    assert!(!ok, "a swap to a failing shim succeeded: {out}");
    assert!(out.contains("the old shim keeps serving"), "{out}");
    assert_eq!(shim_pid(&m.mnt), Some(before));
    std::thread::sleep(Duration::from_millis(300));
    let (hashed, _) = load.finish("10 shim swaps", &m.log_text());
    assert!(hashed > 50, "too little load: {hashed}");
    assert!(m.stop().success());
}

//! Persistent state: instant restart from the catalog, a scan that resumes
//! after kill -9, a corrupt catalog, one engine per state directory, stale
//! and hung mountpoints, and an origin that is away.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use musicfs_integration::*;

const TRACKS: usize = 2000;
const SEED: u64 = 7;

/// A private, writable copy of the generated library.
fn library_copy(dir: &Path) -> PathBuf {
    let lib = generated_library(TRACKS, SEED);
    let copy = dir.join("lib");
    copy_tree(&lib, &copy);
    copy
}

/// The file of a manifest entry (its path may not be UTF-8).
fn origin_of(lib: &Path, e: &ManifestEntry) -> PathBuf {
    lib.join(std::ffi::OsStr::from_bytes(&e.raw_path()))
}

fn tree(mnt: &Path) -> BTreeMap<PathBuf, u64> {
    walkdir::WalkDir::new(mnt)
        .min_depth(1)
        .into_iter()
        .map(|e| e.unwrap())
        .map(|e| {
            (
                e.path().strip_prefix(mnt).unwrap().to_path_buf(),
                e.metadata().unwrap().ino(),
            )
        })
        .collect()
}

/// A restart serves the same tree with the same inodes from the catalog,
/// without opening a single origin file (counted with inotify), and its
/// background reconcile finds nothing to probe.
#[test]
fn restart_serves_from_the_catalog_without_opening_origin_files() {
    let dir = tempfile::tempdir().unwrap();
    let lib = library_copy(dir.path());
    let state = dir.path().join("state");
    let m1 = Mount::start_with(&[&lib], Some(&state), &[]);
    let first = tree(&m1.mnt);
    assert!(first.len() > TRACKS);
    assert!(m1.stop().success());

    let opens = OpenCounter::start(&lib);
    let m2 = Mount::start_with(&[&lib], Some(&state), &[("MUSICFS_LOG", "info")]);
    let second = tree(&m2.mnt);
    assert!(
        eventually(Duration::from_secs(60), || m2
            .log_text()
            .contains("sync finished")),
        "no reconcile:\n{}",
        m2.log_text()
    );
    let log = m2.log_text();
    assert!(m2.stop().success());
    assert_eq!(first, second, "tree or inodes changed across the restart");
    assert_eq!(opens.count(), 0, "the restart opened origin files");
    assert!(
        !log.contains("no complete scan"),
        "the restart scanned:\n{log}"
    );
    assert_eq!(
        log_number(&log, "sync finished", "probed"),
        Some(0),
        "{log}"
    );
}

/// kill -9 during the first scan; the next engine resumes from the last
/// checkpoint: it probes only what was not committed.
#[test]
fn killed_scan_resumes_from_its_checkpoint() {
    let lib = generated_library(TRACKS, SEED);
    let total = read_manifest(&lib).len() as u64;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let env = [
        ("MUSICFS_CHECKPOINT_FILES", "100"),
        ("MUSICFS_SCAN_THREADS", "1"),
        ("MUSICFS_LOG", "info,musicfs_engine::sync=debug"),
    ];
    let mut e1 = EngineProc::start(&lib, &state, &dir.path().join("e1.log"), &env);
    e1.wait_log("checkpoint committed", 3, Duration::from_secs(120));
    e1.kill9();
    let committed = log_number(&e1.log_text(), "checkpoint committed", "files").unwrap();
    assert!(
        committed >= 300 && committed < total,
        "committed {committed} of {total}"
    );

    let mut e2 = EngineProc::start(&lib, &state, &dir.path().join("e2.log"), &env);
    e2.wait_log("engine ready", 1, Duration::from_secs(120));
    let log = e2.log_text();
    let probed = log_number(&log, "sync finished", "probed").unwrap();
    assert!(
        probed <= total - committed,
        "probed {probed} again, but only {} were not committed",
        total - committed
    );
    assert_eq!(
        log_number(&log, "sync finished", "files"),
        Some(total),
        "{log}"
    );
    assert!(e2.stop().success());
}

/// A catalog that cannot be opened is moved aside with one clear line and
/// rebuilt; the mount works.
#[test]
fn corrupt_catalog_still_mounts() {
    let lib = generated_library(TRACKS, SEED);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let m = Mount::start_with(&[&lib], Some(&state), &[]);
    let n = list_files(&m.mnt).len();
    assert!(m.stop().success());
    let catalog = state.join("catalog.redb");
    let len = std::fs::metadata(&catalog).unwrap().len() as usize;
    std::fs::write(&catalog, vec![0xa5u8; len.max(4096)]).unwrap();

    let m = Mount::start_with(&[&lib], Some(&state), &[]);
    assert_eq!(list_files(&m.mnt).len(), n);
    let log = m.log_text();
    assert_eq!(log.matches("moved it to").count(), 1, "{log}");
    assert!(m.stop().success());
    let aside = std::fs::read_dir(&state)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("broken"))
        .count();
    assert_eq!(aside, 1);
}

/// A second engine on the same state directory is refused, naming the holder.
#[test]
fn second_engine_on_the_same_state_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let origin = dir.path().join("o");
    std::fs::create_dir(&origin).unwrap();
    let state = dir.path().join("state");
    let mut first = EngineProc::start(&origin, &state, &dir.path().join("a.log"), &[]);
    first.wait_log("engine ready", 1, Duration::from_secs(30));
    let out = Command::new(musicfs_bin())
        .arg("engine")
        .arg("--origin")
        .arg(&origin)
        .arg("--state-dir")
        .arg(&state)
        .arg("--socket")
        .arg(dir.path().join("other.sock"))
        .env("HOME", dir.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(&format!("pid {}", first.child.id())),
        "the error does not name the holder: {err}"
    );
    assert!(
        first.child.try_wait().unwrap().is_none(),
        "the first engine died"
    );
    assert!(first.stop().success());
}

/// A mount of `lib` at `mnt` in a temporary directory of its own, with the
/// pids of its shim and of its supervisor (`musicfs mount`).
fn mount_in_own_dir(lib: &Path) -> (tempfile::TempDir, PathBuf, Mount, i32, i32) {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let m = Mount::start_at(&[lib], None, Some(&mnt), &[]);
    let shim: Vec<i32> = pids_with_cmdline(&format!("--mountpoint {}", mnt.display()));
    assert_eq!(shim.len(), 1, "shim not found");
    let supervisor = m.pid() as i32;
    (dir, mnt, m, shim[0], supervisor)
}

/// A mount whose shim and supervisor both hang (SIGSTOP: no successor
/// will come) is ended by `musicfs unmount --abort`: the request waiting
/// on it fails at once and the mountpoint is free again, without touching
/// it.
#[test]
fn a_hung_mount_is_ended_by_unmount_abort() {
    let lib = generated_library(TRACKS, SEED);
    let (_dir, mnt, mut m, shim, supervisor) = mount_in_own_dir(&lib);
    let state = m.state.clone();
    stop_process(supervisor);
    stop_process(shim);
    // A lookup nobody answers.
    let probe = mnt.join("never-looked-up.flac");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(std::fs::metadata(&probe).map(drop));
    });
    let early = rx.recv_timeout(Duration::from_secs(2));
    assert!(
        early.is_err(),
        "the lookup was answered by a stopped shim: {early:?}"
    );
    let started = std::time::Instant::now();
    let out = std::process::Command::new(musicfs_bin())
        .args(["unmount", "--abort"])
        .arg(&mnt)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer = rx.recv_timeout(Duration::from_secs(10));
    assert!(
        matches!(answer, Ok(Err(_))),
        "the waiting lookup did not fail: {answer:?}"
    );
    assert!(
        !is_mountpoint(&mnt),
        "still mounted after {:?}",
        started.elapsed()
    );
    let mut rest = pids_with_cmdline(&state.to_string_lossy());
    rest.extend([supervisor, shim]);
    for pid in rest {
        // SAFETY: as above; SIGCONT so the stopped ones die.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::kill(pid, libc::SIGCONT);
        }
    }
    m.abandon();
}

/// A mountpoint left "Transport endpoint is not connected" by a crash is
/// cleaned before mounting.
#[test]
fn stale_mountpoint_is_cleaned_before_mounting() {
    let lib = generated_library(TRACKS, SEED);
    let (_dir, mnt, mut m, shim, supervisor) = mount_in_own_dir(&lib);
    let state = m.state.clone();
    // Crash the shim (SIGKILL: no unmount) and its supervisor, which holds a
    // copy of the FUSE fd for shim takeovers and would otherwise start a
    // successor. The supervisor is stopped first: killed while the shim
    // still runs, it would send the shim its parent-death SIGTERM, and a
    // shim that wins that race unmounts cleanly, leaving nothing stale.
    stop_process(supervisor);
    // SAFETY: kill(2) on a process this test started.
    unsafe { libc::kill(shim, libc::SIGKILL) };
    // (Best effort: a shim stuck in the kernel is handled below.)
    let _ = eventually(Duration::from_secs(10), || {
        !std::path::Path::new(&format!("/proc/{}", shim)).exists()
            || std::fs::read_to_string(format!("/proc/{}/stat", shim))
                .is_ok_and(|s| s.contains(") Z "))
    });
    // SAFETY: as above.
    unsafe { libc::kill(supervisor, libc::SIGKILL) };
    // (The kernel may answer a stat, and a listing it cached, from its
    // caches; a lookup of a name never asked for must reach the server. A
    // new name each time: the dying shim may still answer one, and its
    // miss is then cached.)
    let tries = std::sync::atomic::AtomicU32::new(0);
    let stale = || {
        eventually(Duration::from_secs(10), || {
            let n = tries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            matches!(
                std::fs::metadata(mnt.join(format!("never-looked-up-{n}.flac"))),
                Err(e) if e.raw_os_error() == Some(libc::ENOTCONN)
            )
        })
    };
    // A killed shim can stay stuck in the kernel (a notice write waiting on
    // a request only a successor would answer), holding the connection:
    // then the connection is aborted, as an operator would through fusectl.
    let made = stale() || {
        abort_fuse_connections(&mnt);
        stale()
    };
    assert!(
        made,
        "could not make a stale mount: a fresh lookup gives {:?}; processes: {:?}",
        std::fs::metadata(mnt.join("never-looked-up.flac")).map(|_| ()),
        std::process::Command::new("ps")
            .args(["-eo", "pid,stat,wchan:32,args"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter(|l| l.contains("musicfs"))
                .map(str::to_owned)
                .collect::<Vec<_>>())
    );
    let mut rest = pids_with_cmdline(&state.to_string_lossy());
    rest.push(supervisor);
    for pid in rest {
        // SAFETY: as above.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    m.abandon();
    let m2 = Mount::start_at(&[&lib], None, Some(&mnt), &[]);
    assert!(!list_files(&m2.mnt).is_empty());
    assert!(m2.log_text().contains("stale mount"), "{}", m2.log_text());
    assert!(m2.stop().success());
}

/// A mountpoint whose FUSE server hangs (here: a frozen shim) does not hang
/// `musicfs mount`: it refuses within its check deadline and says how to
/// detach it; once detached, the mount goes through.
#[test]
fn hung_mountpoint_is_refused_not_waited_on() {
    let lib = generated_library(TRACKS, SEED);
    let (dir, mnt, mut m, shim, supervisor) = mount_in_own_dir(&lib);
    stop_process(supervisor);
    stop_process(shim);
    let state2 = dir.path().join("state2");
    let err_file = dir.path().join("second.err");
    let mut second = Command::new(musicfs_bin())
        .arg("mount")
        .arg("--origin")
        .arg(&lib)
        .arg("--state-dir")
        .arg(&state2)
        .arg(&mnt)
        .stderr(std::fs::File::create(&err_file).unwrap())
        .spawn()
        .unwrap();
    let mut status = None;
    eventually(Duration::from_secs(60), || {
        status = second.try_wait().unwrap();
        status.is_some()
    });
    if status.is_none() {
        let _ = second.kill();
        let _ = second.wait();
    }
    let err = std::fs::read_to_string(&err_file).unwrap_or_default();
    // Unfreeze and clean up before judging, so a failure cannot hang the test.
    abort_and_detach(&mnt);
    // SAFETY: as above.
    unsafe {
        libc::kill(shim, libc::SIGKILL);
        libc::kill(supervisor, libc::SIGCONT);
    }
    let _ = m.stop_with_signal(libc::SIGTERM);
    m.abandon();
    let status = status.expect("musicfs mount hung on the mountpoint");
    assert!(!status.success(), "mounted over a hung mount");
    assert!(
        err.contains("does not answer") && err.contains("musicfs unmount --abort"),
        "{err}"
    );
    let m2 = Mount::start_at(&[&lib], None, Some(&mnt), &[]);
    assert!(!list_files(&m2.mnt).is_empty());
    assert!(m2.stop().success());
}

/// Unmounts what the test mounted, however it ends.
struct Mounted(Vec<PathBuf>);

impl Drop for Mounted {
    fn drop(&mut self) {
        for p in self.0.iter().rev() {
            detach(p);
        }
    }
}

fn run(cmd: &mut Command) {
    let st = cmd.status().unwrap();
    assert!(st.success(), "{cmd:?}: {st}");
}

/// An origin that is away (a NAS that is down, a disk not mounted) never
/// keeps the mount from starting or an engine from restarting: its files
/// are listed from the catalog, status says it is unreachable, opens fail
/// with EIO, the empty mountpoint left in its place is not taken for
/// "everything was deleted", and once it is back it is rescanned: what
/// changed meanwhile shows up, and every file reads the origin's bytes.
/// The share is a directory of a tmpfs "disk", bind-mounted at the origin.
#[test]
fn unmounted_origin_is_served_from_the_catalog_and_caught_up_when_back() {
    let src = generated_library(TRACKS, SEED);
    let normal: Vec<ManifestEntry> = read_manifest(&src)
        .into_iter()
        .filter(|e| e.kind == "normal")
        .take(21)
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let (disk, nas) = (dir.path().join("disk"), dir.path().join("nas"));
    std::fs::create_dir(&disk).unwrap();
    std::fs::create_dir(&nas).unwrap();
    let mut mounted = Mounted(Vec::new());
    run(Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64m", "disk"])
        .arg(&disk));
    mounted.0.push(disk.clone());
    let share = disk.join("music");
    std::fs::create_dir(&share).unwrap();
    for (i, e) in normal[..20].iter().enumerate() {
        std::fs::copy(origin_of(&src, e), share.join(format!("t{i:02}.{}", e.ext))).unwrap();
    }
    let bind = |on: bool| {
        if on {
            run(Command::new("mount").arg("--bind").arg(&share).arg(&nas));
        } else {
            run(Command::new("umount").arg(&nas));
        }
    };
    bind(true);
    mounted.0.push(nas.clone());
    let state = dir.path().join("state");
    let env = [("MUSICFS_LOG", "info"), ("MUSICFS_DEBOUNCE_MS", "100")];
    let m1 = Mount::start_with(&[&nas], Some(&state), &env);
    let before = list_files(&m1.mnt);
    assert_eq!(before.len(), 20);
    assert!(m1.stop().success());

    // The share is not mounted: the mount starts anyway and lists what it
    // knew from the catalog.
    bind(false);
    let m = Mount::start_with(&[&nas], Some(&state), &env);
    assert_eq!(
        list_files(&m.mnt),
        before,
        "listing changed while the origin is away"
    );
    assert!(
        eventually(Duration::from_secs(30), || m
            .log_text()
            .contains("on another filesystem than at the last scan")),
        "the empty mountpoint was not recognised:\n{}",
        m.log_text()
    );
    let st = status_json(&m.state);
    // (An empty mountpoint answers stat; status knows better.)
    assert_eq!(st["origins"][0]["reachable"], false, "{st}");
    let err = std::fs::read(m.mnt.join(&before[0])).expect_err("read a file of an absent origin");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");

    // The engine dies meanwhile: the next one starts all the same.
    let old = st["pid"].as_i64().unwrap() as i32;
    // SAFETY: kill(2) on the engine this test's mount started.
    unsafe { libc::kill(old, libc::SIGKILL) };
    assert!(
        eventually(Duration::from_secs(30), || {
            let out = Command::new(musicfs_bin())
                .args(["status", "--json", "--state-dir"])
                .arg(&m.state)
                .output()
                .unwrap();
            out.status.success()
                && serde_json::from_slice::<serde_json::Value>(&out.stdout)
                    .is_ok_and(|v| v["pid"].as_i64() != Some(i64::from(old)))
        }),
        "no engine came back while the origin is away:\n{}",
        m.log_text()
    );
    assert_eq!(list_files(&m.mnt), before);

    // The mountpoint itself goes too: the origin cannot even be stat'ed.
    std::fs::remove_dir(&nas).unwrap();
    assert!(
        eventually(Duration::from_secs(30), || status_json(&m.state)["origins"]
            [0]["reachable"]
            == false),
        "status never said the origin is unreachable"
    );
    assert_eq!(list_files(&m.mnt), before);
    std::fs::create_dir(&nas).unwrap();

    // While away, one file was added and one removed; then it comes back.
    let e = &normal[20];
    std::fs::copy(origin_of(&src, e), share.join(format!("late.{}", e.ext))).unwrap();
    std::fs::remove_file(share.join(format!("t00.{}", normal[0].ext))).unwrap();
    bind(true);
    assert!(
        eventually(Duration::from_secs(90), || {
            // (Names come from the tags: look the new file up by origin.)
            let now = list_files_lenient(&m.mnt);
            now.len() == 20
                && now.iter().any(|p| {
                    getxattr(&m.mnt.join(p), "user.musicfs.origin")
                        .is_some_and(|o| o.ends_with(format!("late.{}", e.ext).as_bytes()))
                })
        }),
        "the origin was not caught up after it came back: {:?}\n{}",
        list_files_lenient(&m.mnt),
        m.log_text()
    );
    assert_eq!(assert_files_match(&m.mnt, &[&nas]), 20);
    assert!(
        m.log_text()
            .contains("origin is reachable again; rescanning it")
    );
    assert!(m.stop().success());
}

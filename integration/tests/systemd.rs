//! The systemd protocol, against a fake NOTIFY_SOCKET listener: both
//! processes report READY=1, WATCHDOG=1 and STOPPING=1 in that order, and the
//! shim stores the FUSE fd with FDSTORE=1.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use musicfs_integration::notify::{Datagram, collect, position};
use musicfs_integration::*;

fn sigterm_and_wait(child: &mut Child) {
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn assert_order(msgs: &[Datagram], who: &str) {
    let all: Vec<&str> = msgs.iter().map(|m| m.text.as_str()).collect();
    let ready = position(msgs, "READY=1").unwrap_or_else(|| panic!("{who}: no READY=1 in {all:?}"));
    let watchdog =
        position(msgs, "WATCHDOG=1").unwrap_or_else(|| panic!("{who}: no WATCHDOG=1 in {all:?}"));
    let stopping =
        position(msgs, "STOPPING=1").unwrap_or_else(|| panic!("{who}: no STOPPING=1 in {all:?}"));
    assert!(
        ready < watchdog && watchdog < stopping,
        "{who}: wrong order {all:?}"
    );
}

#[test]
fn engine_and_shim_speak_the_notify_protocol() {
    let lib = generated_library(2000, 7);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let engine_sock = UnixDatagram::bind(dir.path().join("engine.notify")).unwrap();
    let shim_sock = UnixDatagram::bind(dir.path().join("shim.notify")).unwrap();

    let mut engine = Command::new(musicfs_bin())
        .arg("engine")
        .arg("--origin")
        .arg(&lib)
        .arg("--state-dir")
        .arg(&state)
        .env("NOTIFY_SOCKET", dir.path().join("engine.notify"))
        .env("WATCHDOG_USEC", "300000")
        .env("HOME", dir.path())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let shim_bin = musicfs_bin().with_file_name("musicfs-shim");
    let mut shim = Command::new(&shim_bin)
        .arg("--socket")
        .arg(state.join("engine.sock"))
        .arg("--mountpoint")
        .arg(&mnt)
        .env("NOTIFY_SOCKET", dir.path().join("shim.notify"))
        .env("WATCHDOG_USEC", "300000")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    let shim_msgs_1 = collect(&shim_sock, Duration::from_secs(60), |m| {
        position(m, "WATCHDOG=1").is_some()
    });
    assert!(is_mountpoint(&mnt), "the shim did not mount");
    let mut engine_msgs = collect(&engine_sock, Duration::from_secs(60), |m| {
        position(m, "WATCHDOG=1").is_some()
    });

    // The fd store message carries the FUSE fd.
    let store = shim_msgs_1
        .iter()
        .find(|m| m.text.lines().any(|l| l == "FDSTORE=1"))
        .expect("no FDSTORE=1 from the shim");
    assert!(store.text.contains("FDNAME=fuse"), "{}", store.text);
    assert_eq!(store.fds.len(), 1, "FDSTORE=1 without exactly one fd");
    let target = std::fs::read_link(format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(&store.fds[0])
    ))
    .unwrap();
    assert_eq!(
        target,
        Path::new("/dev/fuse"),
        "the stored fd is not the FUSE device"
    );

    sigterm_and_wait(&mut shim);
    let mut shim_msgs = shim_msgs_1;
    shim_msgs.extend(collect(&shim_sock, Duration::from_secs(5), |m| {
        position(m, "STOPPING=1").is_some()
    }));
    assert_order(&shim_msgs, "shim");
    // The stored fd kept the connection, but the shim unmounted on SIGTERM.
    assert!(!is_mountpoint(&mnt), "still mounted after SIGTERM");

    sigterm_and_wait(&mut engine);
    engine_msgs.extend(collect(&engine_sock, Duration::from_secs(5), |m| {
        position(m, "STOPPING=1").is_some()
    }));
    assert_order(&engine_msgs, "engine");
}

/// The packaged units pass `systemd-analyze verify` (with the binaries of
/// this build in place of /usr/bin), warnings included.
#[test]
fn packaged_units_verify() {
    let dir = tempfile::tempdir().unwrap();
    let bin = musicfs_bin();
    let bin_dir = bin.parent().unwrap();
    let mut units = Vec::new();
    for name in ["musicfs-engine@", "musicfs-shim@"] {
        let text = std::fs::read_to_string(
            workspace_root().join(format!("packaging/systemd/{name}.service")),
        )
        .unwrap();
        let text = text.replace("/usr/bin/", &format!("{}/", bin_dir.display()));
        let unit = dir.path().join(format!("{name}mnt-music.service"));
        std::fs::write(&unit, text).unwrap();
        units.push(unit);
    }
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(&units)
        .output()
        .expect("systemd-analyze (package systemd) is installed");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let ours: Vec<&str> = stderr.lines().filter(|l| l.contains("musicfs")).collect();
    assert!(
        out.status.success() && ours.is_empty(),
        "systemd-analyze verify:\n{stderr}"
    );
    // The shim's FUSE mount must reach the host: no option that puts the
    // shim in a mount namespace of its own (systemd makes it a slave).
    let shim_unit =
        std::fs::read_to_string(workspace_root().join("packaging/systemd/musicfs-shim@.service"))
            .unwrap();
    for key in [
        "ProtectSystem",
        "ProtectHome",
        "PrivateTmp",
        "PrivateDevices",
        "PrivateMounts",
        "ProtectKernelTunables",
        "ProtectKernelModules",
        "ProtectKernelLogs",
        "ProtectControlGroups",
        "ProtectHostname",
        "ProtectClock",
        "ProtectProc",
        "ReadOnlyPaths",
        "ReadWritePaths",
        "InaccessiblePaths",
        "TemporaryFileSystem",
        "BindPaths",
        "BindReadOnlyPaths",
        "MountFlags",
        "PrivateUsers",
        "RootDirectory",
    ] {
        assert!(
            !shim_unit
                .lines()
                .any(|l| l.trim_start().starts_with(&format!("{key}="))),
            "the shim unit sets {key}=, which hides its mount from the host"
        );
    }
    // The mount helper is a valid shell script.
    let helper = workspace_root().join("packaging/systemd/mount.fuse.musicfs");
    assert!(
        Command::new("sh")
            .arg("-n")
            .arg(&helper)
            .status()
            .unwrap()
            .success()
    );
}

/// Removes the installed helper when the test ends, however it ends.
struct Installed(std::path::PathBuf);

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// An /etc/fstab line of type `fuse.musicfs` mounts through the packaged
/// helper (here without systemd as PID 1: the helper starts `musicfs mount`
/// detached and returns once the mount is live); `umount` ends it, and the
/// supervisor goes away.
#[test]
fn fstab_line_mounts_through_the_helper() {
    let helper = workspace_root().join("packaging/systemd/mount.fuse.musicfs");
    let target = Path::new("/sbin/mount.fuse.musicfs");
    if let Ok(existing) = std::fs::read(target) {
        assert_eq!(
            existing,
            std::fs::read(&helper).unwrap(),
            "another mount.fuse.musicfs is installed at {}; not overwriting it",
            target.display()
        );
    }
    std::fs::copy(&helper, target).unwrap();
    let _installed = Installed(target.to_path_buf());

    let lib = generated_library(2000, 7);
    let dir = tempfile::Builder::new()
        .prefix("mfs-fstab")
        .tempdir_in("/tmp")
        .unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let fstab = dir.path().join("fstab");
    std::fs::write(
        &fstab,
        format!(
            "# a test fstab\n{} {} fuse.musicfs defaults,noauto,allow_other 0 0\n",
            lib.display(),
            mnt.display()
        ),
    )
    .unwrap();
    let out = Command::new("mount")
        .arg("-T")
        .arg(&fstab)
        .arg(&mnt)
        .env("MUSICFS_BIN", musicfs_bin())
        .env("MUSICFS_NO_SYSTEMD", "1")
        .env("MUSICFS_CONFIG_DIR", dir.path().join("etc"))
        .env("MUSICFS_LOG_DIR", dir.path().join("log"))
        .env("XDG_STATE_HOME", dir.path().join("state"))
        .output()
        .unwrap();
    let logs = || {
        let mut all = String::new();
        for e in std::fs::read_dir(dir.path().join("log"))
            .into_iter()
            .flatten()
        {
            all += &std::fs::read_to_string(e.unwrap().path()).unwrap_or_default();
        }
        all
    };
    assert!(
        out.status.success(),
        "mount -T failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        logs()
    );
    assert!(is_mountpoint(&mnt), "not mounted:\n{}", logs());
    // The helper wrote the per-mount configuration with the origin.
    let conf = std::fs::read_dir(dir.path().join("etc"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    assert!(
        std::fs::read_to_string(&conf)
            .unwrap()
            .contains(&lib.display().to_string())
    );
    assert_eq!(list_files(&mnt).len(), read_manifest(&lib).len());
    let supervisor = conf.to_string_lossy().into_owned();
    assert_eq!(
        pids_with_cmdline(&supervisor).len(),
        1,
        "one `musicfs mount`"
    );

    let out = Command::new("umount").arg(&mnt).output().unwrap();
    assert!(
        out.status.success(),
        "umount: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        eventually(Duration::from_secs(20), || pids_with_cmdline(&supervisor)
            .is_empty()),
        "musicfs mount still runs after umount:\n{}",
        logs()
    );
    assert!(!is_mountpoint(&mnt));
}

/// A shim still waiting for its first engine (systemd starts both at once)
/// stops at once on SIGTERM, without mounting.
#[test]
fn shim_waiting_for_an_engine_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let log = dir.path().join("shim.log");
    let mut shim = Command::new(musicfs_bin().with_file_name("musicfs-shim"))
        .arg("--socket")
        .arg(dir.path().join("no-engine.sock"))
        .arg("--mountpoint")
        .arg(&mnt)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    // It says so once its transport runs (signals are blocked by then).
    assert!(
        eventually(Duration::from_secs(30), || std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("waiting for an engine")),
        "the shim never started waiting"
    );
    assert!(shim.try_wait().unwrap().is_none(), "the shim gave up early");
    let t = Instant::now();
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(shim.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = shim.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "SIGTERM ignored while waiting for an engine"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(status.success(), "{status}");
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t.elapsed()
    );
    assert!(!is_mountpoint(&mnt));
}

/// `fuse.musicfs` mounts at `mnt`, from mountinfo (never touching the mount:
/// an unserved one would hang a stat).
fn musicfs_mounts_at(mnt: &Path) -> usize {
    let target = format!(" {} ", mnt.display());
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| {
            l.contains(&target)
                && (l.contains(" - fuse.musicfs ") || l.contains(" - fuse musicfs "))
        })
        .count()
}

/// Lazily unmounts a path when the test ends, however it ends (a mount that
/// nobody serves would hang the removal of the temporary directory).
struct Detach(std::path::PathBuf);

impl Drop for Detach {
    fn drop(&mut self) {
        // A connection this test holds but nobody serves would keep its
        // waiters in the kernel for ever: abort it first (fusectl).
        musicfs_integration::abort_fuse_connections(&self.0);
        detach(&self.0);
    }
}

/// A bare `musicfs engine` of `lib` on `state`, not under (fake) systemd.
fn engine_outside_systemd(lib: &Path, state: &Path, home: &Path) -> std::process::Child {
    Command::new(musicfs_bin())
        .arg("engine")
        .arg("--origin")
        .arg(lib)
        .arg("--state-dir")
        .arg(state)
        .env_remove("NOTIFY_SOCKET")
        .env("HOME", home)
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// After a shim dies, systemd hands the FUSE fd it stored to the next shim
/// (`LISTEN_FDS`, name `fuse`). Nobody can serve that connection again, so
/// the new shim ends it: asks systemd to drop its copy (`FDSTOREREMOVE=1`),
/// detaches the old mount instead of hanging on it, and mounts afresh.
#[test]
fn restarted_shim_ends_the_connection_left_in_the_fd_store() {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let lib = generated_library(2000, 7);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let _detach = Detach(mnt.clone());
    let mut engine = engine_outside_systemd(&lib, &state, dir.path());
    let shim_bin = musicfs_bin().with_file_name("musicfs-shim");
    let shim_log = dir.path().join("shims.log");
    let shim_args = |cmd: &mut Command| {
        cmd.arg("--socket")
            .arg(state.join("engine.sock"))
            .arg("--mountpoint")
            .arg(&mnt)
            .env("MUSICFS_LOG", "debug")
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::options()
                    .create(true)
                    .append(true)
                    .open(&shim_log)
                    .unwrap(),
            );
    };
    let log = || std::fs::read_to_string(&shim_log).unwrap_or_default();
    let first_sock = UnixDatagram::bind(dir.path().join("shim1.notify")).unwrap();
    let mut first = Command::new(&shim_bin);
    shim_args(&mut first);
    let mut first = first
        .env("NOTIFY_SOCKET", dir.path().join("shim1.notify"))
        .spawn()
        .unwrap();
    let mut msgs = collect(&first_sock, Duration::from_secs(60), |m| {
        position(m, "READY=1").is_some()
    });
    let stored = msgs
        .iter_mut()
        .find(|m| m.text.lines().any(|l| l == "FDSTORE=1"))
        .expect("no FDSTORE=1")
        .fds
        .pop()
        .expect("no fd with FDSTORE=1");
    // The shim dies; our copy of its fd (as systemd's) keeps the connection.
    first.kill().unwrap();
    first.wait().unwrap();
    assert_eq!(
        musicfs_mounts_at(&mnt),
        1,
        "the old mount should still be there"
    );

    let second_sock = UnixDatagram::bind(dir.path().join("shim2.notify")).unwrap();
    let mut second = Command::new("sh");
    second
        .arg("-c")
        .arg("LISTEN_PID=$$ exec \"$0\" \"$@\"")
        .arg(&shim_bin);
    shim_args(&mut second);
    let raw = stored.as_raw_fd();
    // SAFETY: dup2/fcntl only, between fork and exec.
    unsafe {
        second.pre_exec(move || {
            let r = if raw == 3 {
                libc::fcntl(3, libc::F_SETFD, 0)
            } else {
                libc::dup2(raw, 3)
            };
            if r < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut second = second
        .env("NOTIFY_SOCKET", dir.path().join("shim2.notify"))
        .env("LISTEN_FDS", "1")
        .env("LISTEN_FDNAMES", "fuse")
        .spawn()
        .unwrap();
    drop(stored);
    let msgs = collect(&second_sock, Duration::from_secs(60), |m| {
        position(m, "READY=1").is_some()
    });
    let all: Vec<&str> = msgs.iter().map(|m| m.text.as_str()).collect();
    let remove = msgs
        .iter()
        .position(|m| m.text.contains("FDSTOREREMOVE=1") && m.text.contains("FDNAME=fuse"))
        .unwrap_or_else(|| panic!("no FDSTOREREMOVE=1 for the old fd: {all:?}"));
    let ready =
        position(&msgs, "READY=1").unwrap_or_else(|| panic!("no READY=1: {all:?}\n{}", log()));
    assert!(remove < ready, "{all:?}");
    assert!(
        msgs.iter()
            .any(|m| m.text.lines().any(|l| l == "FDSTORE=1") && m.fds.len() == 1),
        "the new shim did not store its own fd: {all:?}"
    );
    assert_eq!(musicfs_mounts_at(&mnt), 1, "the old mount was not detached");
    assert!(
        list_files(&mnt).len() > 1000,
        "the new mount does not serve the library"
    );

    sigterm_and_wait(&mut second);
    assert_eq!(musicfs_mounts_at(&mnt), 0, "a mount was left behind");
    sigterm_and_wait(&mut engine);
}

/// Under systemd a restarted shim takes the stored connection over instead
/// of remounting: the first shim stores its FUSE fd and its takeover state
/// (`fuse`, `fuse-state`); it is killed under load (8 readers, a walker)
/// with a file held open; the next one gets both back (`LISTEN_FDS=2`),
/// adopts the live connection (no new mount, nothing dropped from the
/// store), and every read, the held file's included, gets the right bytes.
#[test]
fn restarted_shim_takes_the_stored_connection_over() {
    use std::io::Read;
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let lib = generated_library(2000, 7);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let _detach = Detach(mnt.clone());
    let mut engine = engine_outside_systemd(&lib, &state, dir.path());
    let shim_bin = musicfs_bin().with_file_name("musicfs-shim");
    let shim_log = dir.path().join("shims.log");
    let log = || std::fs::read_to_string(&shim_log).unwrap_or_default();
    let shim = |notify: &str| {
        let mut cmd = Command::new("sh");
        // With stdin piped (the successor), wait for its "go" line first.
        cmd.arg("-c")
            .arg("[ -p /dev/stdin ] && read go; LISTEN_PID=$$ exec \"$0\" \"$@\"")
            .arg(&shim_bin)
            .arg("--socket")
            .arg(state.join("engine.sock"))
            .arg("--mountpoint")
            .arg(&mnt)
            .env("MUSICFS_LOG", "info")
            .env("NOTIFY_SOCKET", dir.path().join(notify))
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::options()
                    .create(true)
                    .append(true)
                    .open(&shim_log)
                    .unwrap(),
            );
        cmd
    };
    let first_sock = UnixDatagram::bind(dir.path().join("a.notify")).unwrap();
    let mut first = shim("a.notify").stdin(Stdio::null()).spawn().unwrap();
    let mut msgs = collect(&first_sock, Duration::from_secs(60), |m| {
        position(m, "READY=1").is_some()
    });
    let mut stored = |name: &str| {
        msgs.iter_mut()
            .find(|m| m.text.lines().any(|l| l == format!("FDNAME={name}")))
            .unwrap_or_else(|| panic!("no FDSTORE=1 for {name}\n{}", log()))
            .fds
            .pop()
            .unwrap()
    };
    let (fuse, fuse_state) = (stored("fuse"), stored("fuse-state"));
    let mounts_before = std::fs::read_to_string("/proc/self/mountinfo").unwrap();

    let held_path = mnt.join(&list_files(&mnt)[5]);
    let want = std::fs::read(PathBufFrom::origin(&held_path)).unwrap();
    let mut held = std::fs::File::open(&held_path).unwrap();
    let mut head = vec![0u8; 1000.min(want.len())];
    held.read_exact(&mut head).unwrap();
    let load = start_load(&mnt);
    std::thread::sleep(Duration::from_millis(300));
    // The successor is forked now, while the mount is served: a process
    // forked from this one (whose threads hold files of the mount) later
    // would close those inherited files at exec, and each close waits for
    // an answer that only the successor can give. It waits for a line on
    // its stdin before it execs the shim.
    let second_sock = UnixDatagram::bind(dir.path().join("b.notify")).unwrap();
    let mut second = shim("b.notify");
    let (a, b) = (fuse.as_raw_fd(), fuse_state.as_raw_fd());
    // SAFETY: fcntl/dup2 only, between fork and exec.
    unsafe {
        second.pre_exec(move || {
            let (a, b) = (
                libc::fcntl(a, libc::F_DUPFD, 100),
                libc::fcntl(b, libc::F_DUPFD, 100),
            );
            if a < 0 || b < 0 || libc::dup2(a, 3) < 0 || libc::dup2(b, 4) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut second = second
        .env("LISTEN_FDS", "2")
        .env("LISTEN_FDNAMES", "fuse:fuse-state")
        .stdin(Stdio::piped())
        .spawn()
        .expect("cannot start the second shim");
    std::thread::sleep(Duration::from_millis(300));
    // Killed, it may not exit at once: a thread of it can wait in the
    // kernel (an invalidation behind a lookup it had read) until the
    // successor has that lookup resent and answers it. systemd starts the
    // successor after its stop timeout; here it starts at once.
    first.kill().unwrap();
    {
        use std::io::Write;
        let mut go = second.stdin.take().unwrap();
        go.write_all(b"go\n").unwrap();
    }
    let msgs = collect(&second_sock, Duration::from_secs(60), |m| {
        position(m, "READY=1").is_some()
    });
    let all: Vec<&str> = msgs.iter().map(|m| m.text.as_str()).collect();
    assert!(position(&msgs, "READY=1").is_some(), "{all:?}\n{}", log());
    assert!(
        !msgs.iter().any(|m| m.text.contains("FDSTORE")),
        "the new shim touched the fd store: {all:?}"
    );
    assert!(
        log().contains("took over the live FUSE connection"),
        "{}",
        log()
    );
    assert!(
        eventually(Duration::from_secs(30), || first
            .try_wait()
            .unwrap()
            .is_some()),
        "the killed shim never exited"
    );
    std::thread::sleep(Duration::from_millis(500));
    load.finish("kill -9 of a shim under systemd", &log());
    let mut rest = Vec::new();
    held.read_to_end(&mut rest).unwrap();
    head.extend_from_slice(&rest);
    assert!(
        head == want,
        "the held file read other bytes across the takeover"
    );
    // The same mount, not a new one.
    let mounts_after = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let ours = |info: &str| {
        info.lines()
            .find(|l| l.contains(&format!(" {} ", mnt.display())))
            .map(str::to_string)
    };
    assert_eq!(ours(&mounts_before), ours(&mounts_after));
    assert_eq!(musicfs_mounts_at(&mnt), 1);
    drop((fuse, fuse_state));
    sigterm_and_wait(&mut second);
    assert_eq!(musicfs_mounts_at(&mnt), 0, "a mount was left behind");
    sigterm_and_wait(&mut engine);
}

/// The origin of a file of the mount.
struct PathBufFrom;

impl PathBufFrom {
    fn origin(p: &Path) -> std::path::PathBuf {
        use std::os::unix::ffi::OsStrExt;
        std::path::PathBuf::from(std::ffi::OsStr::from_bytes(
            &getxattr(p, "user.musicfs.origin").unwrap(),
        ))
    }
}

//! The Debian package, as an admin uses it: `cargo xtask deb --dev` builds
//! it (of the dev-profile binaries the suite built; the packaging is the
//! same as the release package's),
//! `dpkg -i` installs both binaries, the units, the mount helper, the man
//! pages and the completions; an /etc/fstab line of type `fuse.musicfs`
//! mounts a library with `mount MNT` (through the installed helper and the
//! installed binaries only); `umount`, `dpkg -r` and `dpkg -P` leave nothing
//! behind: no file of the package, no mount, no process.
//!
//! Needs root and dpkg; without them it says loudly that it skipped.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::ffi::OsStr;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use musicfs_integration::*;

const PACKAGE: &str = "musicfs";
const SEED: u64 = 4711;
const FSTAB: &str = "/etc/fstab";
const HELPER: &str = "/sbin/mount.fuse.musicfs";
/// What `dpkg -L musicfs` must list (and what must be gone after removal).
const EXPECTED: &[&str] = &[
    "/usr/bin/musicfs",
    "/usr/bin/musicfs-shim",
    HELPER,
    "/usr/lib/systemd/system/musicfs-engine@.service",
    "/usr/lib/systemd/system/musicfs-shim@.service",
    "/usr/lib/tmpfiles.d/musicfs.conf",
    "/usr/share/doc/musicfs/config.example.toml",
    "/usr/share/man/man1/musicfs.1.gz",
    "/usr/share/man/man1/musicfs-mount.1.gz",
    "/usr/share/bash-completion/completions/musicfs",
    "/usr/share/zsh/vendor-completions/_musicfs",
    "/usr/share/fish/vendor_completions.d/musicfs.fish",
];

/// Says so on the terminal itself, past the test harness's capture.
fn loud(msg: &str) {
    let _ = writeln!(std::io::stderr(), "\n*** {msg} ***\n");
}

fn skip_reason() -> Option<&'static str> {
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root: dpkg -i and /etc/fstab need root");
    }
    let dpkg = Command::new("dpkg")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !dpkg.is_ok_and(|s| s.success()) {
        return Some("no dpkg on this machine (not Debian/Ubuntu)");
    }
    None
}

/// Runs `cmd` to completion with captured output, killing it after `timeout`.
fn run_bounded(cmd: &mut Command, timeout: Duration) -> Output {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let err = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish within {} s", timeout.as_secs());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// dpkg's status of the package ("installed", "config-files", ...), or None
/// when dpkg knows nothing of it.
fn package_status() -> Option<String> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${db:Status-Status}", PACKAGE])
        .stderr(Stdio::null())
        .output()
        .unwrap();
    let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !s.is_empty() && s != "not-installed").then_some(s)
}

/// Purges the package when the test ends, however it ends.
struct Package;

impl Drop for Package {
    fn drop(&mut self) {
        if package_status().is_some() {
            let _ = Command::new("dpkg")
                .args(["-P", PACKAGE])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Puts /etc/fstab back as it was when the test ends, however it ends.
struct FstabBackup {
    original: Option<Vec<u8>>,
}

impl FstabBackup {
    fn add_line(line: &str) -> FstabBackup {
        let original = std::fs::read(FSTAB).ok();
        let mut text = original.clone().unwrap_or_default();
        if !text.is_empty() && !text.ends_with(b"\n") {
            text.push(b'\n');
        }
        text.extend_from_slice(
            format!(
                "# musicfs package test (pid {}): removed when it ends\n{line}\n",
                std::process::id()
            )
            .as_bytes(),
        );
        let guard = FstabBackup { original };
        std::fs::write(FSTAB, text).unwrap();
        guard
    }
}

impl Drop for FstabBackup {
    fn drop(&mut self) {
        match &self.original {
            Some(bytes) => {
                let _ = std::fs::write(FSTAB, bytes);
            }
            None => {
                let _ = std::fs::remove_file(FSTAB);
            }
        }
    }
}

/// Detaches the mount and ends its `musicfs mount` when the test ends,
/// however it ends (a mount nobody serves would hang the temp dir removal).
struct Unmount {
    mnt: PathBuf,
    /// The test's directory, in the command line of every process of the
    /// mount (its configuration, state dir and engine socket are there).
    needle: String,
}

impl Drop for Unmount {
    fn drop(&mut self) {
        if musicfs_mounts_at(&self.mnt) > 0 {
            detach(&self.mnt);
        }
        for pid in pids_with_cmdline(&self.needle) {
            // SAFETY: kill(2) of a process of this test's mount.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
    }
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

/// fstab(5) escapes blanks in its fields as octal.
fn fstab_field(p: &Path) -> String {
    p.to_str()
        .expect("a UTF-8 path")
        .replace('\\', "\\134")
        .replace(' ', "\\040")
        .replace('\t', "\\011")
}

/// `cargo xtask deb --dev` (the binaries the suite already built, not a
/// second, release build of the whole tree); the path of the .deb it built
/// (its last stdout line).
fn build_package() -> PathBuf {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let t = Instant::now();
    let out = run_bounded(
        Command::new(cargo)
            .args(["xtask", "deb", "--dev"])
            .current_dir(workspace_root()),
        Duration::from_secs(45 * 60),
    );
    assert!(
        out.status.success(),
        "cargo xtask deb failed:\n{}",
        text(&out)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let deb = PathBuf::from(stdout.lines().last().unwrap_or_default().trim());
    assert!(
        deb.extension() == Some(OsStr::new("deb")) && deb.is_file(),
        "cargo xtask deb printed no .deb path:\n{}",
        text(&out)
    );
    eprintln!(
        "built {} in {:.0} s",
        deb.display(),
        t.elapsed().as_secs_f64()
    );
    deb
}

#[test]
fn package_installs_mounts_an_fstab_line_and_removes_cleanly() {
    if let Some(why) = skip_reason() {
        loud(&format!("SKIPPED the package test: {why}"));
        return;
    }
    assert!(
        package_status().is_none(),
        "the {PACKAGE} package is already on this machine ({:?}); not touching it \
         (`dpkg -P {PACKAGE}` lets this test run)",
        package_status()
    );
    let deb = build_package();

    // The fstab test of systemd.rs copies the helper to /sbin for its own
    // run and removes it afterwards: let such a run end first.
    assert!(
        eventually(Duration::from_secs(120), || !Path::new(HELPER).exists()),
        "{HELPER} exists and belongs to no package; not overwriting it"
    );

    let lib = generated_library(20, SEED);
    let manifest = read_manifest(&lib);
    assert_eq!(manifest.len(), 20);
    let dir = tempfile::Builder::new()
        .prefix("mfs-pkg")
        .tempdir_in("/tmp")
        .unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();

    let state_root = Path::new("/var/lib/musicfs");
    let state_root_was_there = state_root.exists();
    let _package = Package;
    let t = Instant::now();
    let out = run_bounded(
        Command::new("dpkg").arg("-i").arg(&deb),
        Duration::from_secs(300),
    );
    assert!(out.status.success(), "dpkg -i failed:\n{}", text(&out));
    assert_eq!(package_status().as_deref(), Some("installed"));

    let out = run_bounded(
        Command::new("dpkg").args(["-L", PACKAGE]),
        Duration::from_secs(60),
    );
    assert!(out.status.success(), "dpkg -L: {}", text(&out));
    let listed: HashSet<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    for path in EXPECTED {
        assert!(listed.contains(*path), "dpkg -L {PACKAGE} lacks {path}");
        assert!(Path::new(path).is_file(), "{path} is not installed");
    }
    let files: Vec<&String> = listed
        .iter()
        .filter(|p| Path::new(p).is_file() && !Path::new(p).is_symlink())
        .collect();
    assert_eq!(
        std::fs::read(HELPER).unwrap(),
        std::fs::read(workspace_root().join("packaging/systemd/mount.fuse.musicfs")).unwrap(),
        "the installed mount helper is not packaging/systemd/mount.fuse.musicfs"
    );
    let out = run_bounded(
        Command::new("/usr/bin/musicfs").arg("--help"),
        Duration::from_secs(30),
    );
    assert!(out.status.success(), "musicfs --help: {}", text(&out));
    eprintln!(
        "installed {} files in {:.1} s",
        files.len(),
        t.elapsed().as_secs_f64()
    );

    // The admin's fstab line; `noauto` keeps anyone's `mount -a` off it.
    // Everything the mount writes goes below the test's own directory, and
    // only the installed binaries and helper are on PATH.
    let _fstab = FstabBackup::add_line(&format!(
        "{} {} fuse.musicfs defaults,noauto,_netdev,allow_other 0 0",
        fstab_field(&lib),
        fstab_field(&mnt)
    ));
    let conf_dir = dir.path().join("etc");
    let log_dir = dir.path().join("log");
    let logs = || {
        let mut all = String::new();
        for e in std::fs::read_dir(&log_dir).into_iter().flatten().flatten() {
            all += &std::fs::read_to_string(e.path()).unwrap_or_default();
        }
        all
    };
    let mount_env = |cmd: &mut Command| {
        cmd.env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("HOME", dir.path())
            .env("XDG_CONFIG_HOME", dir.path().join("config"))
            .env("XDG_STATE_HOME", dir.path().join("state"))
            .env("XDG_CACHE_HOME", dir.path().join("cache"))
            .env("MUSICFS_CONFIG_DIR", &conf_dir)
            .env("MUSICFS_LOG_DIR", &log_dir)
            .env("MUSICFS_MOUNT_TIMEOUT", "90")
            // The detached `musicfs mount` even where systemd is PID 1: this
            // test's state stays in its own directory, not /var/lib/musicfs.
            .env("MUSICFS_NO_SYSTEMD", "1");
    };
    let needle = dir.path().to_string_lossy().into_owned();
    let _unmount = Unmount {
        mnt: mnt.clone(),
        needle: needle.clone(),
    };
    let t = Instant::now();
    let mut mount = Command::new("mount");
    mount.arg(&mnt);
    mount_env(&mut mount);
    let out = run_bounded(&mut mount, Duration::from_secs(150));
    assert!(
        out.status.success(),
        "mount {} failed:\n{}\n{}",
        mnt.display(),
        text(&out),
        logs()
    );
    assert_eq!(musicfs_mounts_at(&mnt), 1, "not mounted:\n{}", logs());
    assert!(
        eventually(Duration::from_secs(60), || list_files(&mnt).len()
            == manifest.len()),
        "the mount does not show the library's {} files:\n{}",
        manifest.len(),
        logs()
    );
    eprintln!("mounted in {:.1} s", t.elapsed().as_secs_f64());
    let supervisors = pids_with_cmdline(&conf_dir.to_string_lossy());
    assert_eq!(supervisors.len(), 1, "one `musicfs mount`:\n{}", logs());
    let exe = std::fs::read_link(format!("/proc/{}/exe", supervisors[0])).unwrap();
    assert_eq!(
        exe,
        Path::new("/usr/bin/musicfs"),
        "not the installed binary"
    );

    // Each file reads back the bytes of its origin file, and every origin
    // file of the library is there.
    let origins: HashSet<PathBuf> = manifest
        .iter()
        .map(|e| lib.join(OsStr::from_bytes(&e.raw_path())))
        .collect();
    let mut seen = HashSet::new();
    for rel in list_files(&mnt) {
        let path = mnt.join(&rel);
        let origin = PathBuf::from(OsStr::from_bytes(
            &getxattr(&path, "user.musicfs.origin")
                .unwrap_or_else(|| panic!("{} has no user.musicfs.origin", rel.display())),
        ));
        assert!(
            origins.contains(&origin),
            "{} comes from {}",
            rel.display(),
            origin.display()
        );
        assert!(
            std::fs::read(&path).unwrap() == std::fs::read(&origin).unwrap(),
            "{} does not read the bytes of {}",
            rel.display(),
            origin.display()
        );
        seen.insert(origin);
    }
    assert_eq!(seen, origins, "not every origin file is in the mount");

    let out = run_bounded(Command::new("umount").arg(&mnt), Duration::from_secs(60));
    assert!(out.status.success(), "umount: {}", text(&out));
    assert!(
        eventually(Duration::from_secs(30), || pids_with_cmdline(&needle)
            .is_empty()),
        "a process of the mount still runs after umount: {:?}\n{}",
        pids_with_cmdline(&needle),
        logs()
    );
    assert_eq!(musicfs_mounts_at(&mnt), 0, "still mounted after umount");

    let out = run_bounded(
        Command::new("dpkg").args(["-r", PACKAGE]),
        Duration::from_secs(300),
    );
    assert!(out.status.success(), "dpkg -r failed:\n{}", text(&out));
    for path in EXPECTED {
        assert!(!Path::new(path).exists(), "{path} is left after dpkg -r");
    }
    let out = run_bounded(
        Command::new("dpkg").args(["-P", PACKAGE]),
        Duration::from_secs(300),
    );
    assert!(out.status.success(), "dpkg -P failed:\n{}", text(&out));
    assert_eq!(package_status(), None, "dpkg still knows {PACKAGE}");
    let left: Vec<&&String> = files.iter().filter(|p| Path::new(p).exists()).collect();
    assert!(left.is_empty(), "left after dpkg -P: {left:?}");
    if !state_root_was_there {
        assert!(
            !state_root.exists(),
            "dpkg -P left the empty {} that postinst made",
            state_root.display()
        );
    }
    assert_eq!(musicfs_mounts_at(&mnt), 0, "a mount is left");
    assert!(
        pids_with_cmdline(&needle).is_empty(),
        "a process of the mount is left"
    );
}

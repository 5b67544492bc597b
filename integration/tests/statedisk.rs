//! A state disk that fills up, and a catalog the engine may not open: the
//! engine recovers without a restart once there is room again, keeps every
//! inode, says what is wrong in the status, and never throws a catalog away
//! for anything but corruption.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use musicfs_integration::*;

/// A tmpfs of `size_mb` mounted on `dir`, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size_mb: u32) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mb}m"), "tmpfs"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(
            ok.success(),
            "cannot mount a tmpfs (the suite runs as root)"
        );
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        detach(&self.0);
    }
}

/// Fills the filesystem of `dir` to the last byte; returns the filler.
fn fill(dir: &Path) -> PathBuf {
    let filler = dir.join("filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    let chunk = vec![0xeeu8; 1024 * 1024];
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => panic!("filling the state disk: {e}"),
        }
    }
    // The last partial pages too.
    while f.write(&[0u8; 512]).is_ok_and(|n| n > 0) {}
    filler
}

fn inodes(mnt: &Path) -> BTreeMap<PathBuf, u64> {
    list_files(mnt)
        .into_iter()
        .map(|p| {
            let ino = std::fs::metadata(mnt.join(&p)).unwrap().ino();
            (p, ino)
        })
        .collect()
}

/// The state directory's disk fills up while tracks are added: the commits
/// fail, the status says so, and once space is freed the tracks appear
/// without a restart, with every old inode kept.
#[test]
fn full_state_disk_recovers_without_a_restart() {
    let lib = generated_library(2000, 7);
    let manifest = read_manifest(&lib);
    let root = tempfile::tempdir().unwrap();
    let origin = root.path().join("origin");
    copy_tracks(&lib, &manifest, 0, 30, &origin);
    let state = root.path().join("state");
    let _disk = Tmpfs::mount(&state, 24);
    let m = Mount::start_with(
        &[&origin],
        Some(&state),
        &[
            ("MUSICFS_DEBOUNCE_MS", "50"),
            ("MUSICFS_STATE_PROBE_MS", "200"),
        ],
    );
    let before = inodes(&m.mnt);
    assert_eq!(before.len(), 30);

    let filler = fill(&state);
    copy_tracks(&lib, &manifest, 30, 120, &origin);
    let deadline = Instant::now() + Duration::from_secs(60);
    let failing = loop {
        let s = status_json(&state);
        let why = s["catalog_write_error"].as_str().unwrap_or("").to_string();
        if !why.is_empty() {
            break why;
        }
        assert!(
            Instant::now() < deadline,
            "no failed catalog write on a full disk:\n{}",
            m.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(failing.contains("No space left"), "{failing}");
    // The write probe of the state directory says so too.
    assert!(
        eventually(Duration::from_secs(20), || {
            status_json(&state)["state_dir_error"]
                .as_str()
                .is_some_and(|e| e.contains("No space left"))
        }),
        "the state directory probe did not report the full disk"
    );
    // Reads keep serving what is committed.
    assert_eq!(inodes(&m.mnt).len(), 30);

    std::fs::remove_file(&filler).unwrap();
    assert!(
        eventually(Duration::from_secs(90), || list_files_lenient(&m.mnt).len()
            == 150),
        "the new tracks never appeared after the disk had room again ({} listed):\n{}",
        list_files_lenient(&m.mnt).len(),
        m.log_text()
    );
    let after = inodes(&m.mnt);
    if std::env::var_os("MUSICFS_TEST_SHOW_LOG").is_some() {
        eprintln!("{}", m.log_text());
    }
    for (path, ino) in &before {
        assert_eq!(
            after.get(path),
            Some(ino),
            "{} changed its inode",
            path.display()
        );
    }
    let s = status_json(&state);
    assert_eq!(s["catalog_write_error"], "", "{s}");
    assert!(
        eventually(
            Duration::from_secs(20),
            || status_json(&state)["state_dir_error"] == ""
        ),
        "the state directory probe still reports an error after the disk had room"
    );
    // A new track reads back byte for byte.
    let (path, _) = after
        .iter()
        .find(|(p, _)| !before.contains_key(*p))
        .unwrap();
    let origin_file = getxattr(&m.mnt.join(path), "user.musicfs.origin").unwrap();
    assert_eq!(
        hash_file(&m.mnt.join(path)).unwrap(),
        hash_file(Path::new(std::ffi::OsStr::from_bytes(&origin_file))).unwrap()
    );
    assert!(m.stop().success());
}

/// As a user who may not read the catalog (chmod 000), the engine refuses
/// to start with one line naming the file and the fix, and the catalog is
/// neither moved aside nor rebuilt (its inode numbers stay the paths').
#[test]
fn unreadable_catalog_is_refused_not_rebuilt() {
    let root = tempfile::tempdir().unwrap();
    let origin = root.path().join("origin");
    let lib = generated_library(2000, 7);
    copy_tracks(&lib, &read_manifest(&lib), 0, 5, &origin);
    let state = root.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    for p in [root.path(), origin.as_path(), state.as_path()] {
        std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    let chown = Command::new("chown")
        .args(["-R", "65534:65534"])
        .arg(&state)
        .arg(&origin)
        .status()
        .unwrap();
    assert!(chown.success());
    let engine = |log: &Path| {
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(musicfs_bin())
            .args(["engine", "--state-dir"])
            .arg(&state)
            .arg("--origin")
            .arg(&origin)
            .env("HOME", "/tmp")
            .env("MUSICFS_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .expect("setpriv (util-linux) is installed")
    };
    // A first engine makes the catalog, then stops.
    let log = root.path().join("first.log");
    let mut first = engine(&log);
    assert!(
        eventually(Duration::from_secs(60), || std::fs::read_to_string(&log)
            .is_ok_and(|l| l.contains("engine ready"))),
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    // SAFETY: signalling our own child.
    unsafe { libc::kill(first.id() as i32, libc::SIGTERM) };
    assert!(first.wait().unwrap().success());
    let catalog = state.join("catalog.redb");
    std::fs::set_permissions(
        &catalog,
        std::os::unix::fs::PermissionsExt::from_mode(0o000),
    )
    .unwrap();

    let log = root.path().join("second.log");
    let mut second = engine(&log);
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = second.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the engine did not exit within 30 s on a catalog it cannot read"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        !status.success(),
        "the engine started on a catalog it cannot read:\n{text}"
    );
    assert!(
        text.contains("permission denied") && text.contains(&catalog.display().to_string()),
        "unclear: {text}"
    );
    let names: Vec<String> = std::fs::read_dir(&state)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !names.iter().any(|n| n.contains("broken")),
        "the catalog was moved aside: {names:?}"
    );
    assert_eq!(std::fs::metadata(&catalog).unwrap().mode() & 0o777, 0);
}

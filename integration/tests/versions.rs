//! A handle reads the content version it opened: a tagger that rewrites a
//! file (copy, change, rename over the original; same tags, same path) never
//! makes an open handle switch files, a new open reads the new file, and a
//! handle whose version is gone after an engine restart fails with ESTALE.
//! With and without kernel passthrough.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use musicfs_integration::*;

const ENV_FAST_HEARTBEAT: [(&str, &str); 2] = [
    ("MUSICFS_HEARTBEAT_INTERVAL_MS", "200"),
    ("MUSICFS_HEARTBEAT_TIMEOUT_MS", "1000"),
];

/// A tagged mp3 of `seconds` seconds (a few hundred KB: more than the
/// kernel reads ahead), made by ffmpeg.
fn tagged_mp3(path: &Path, title: &str, seconds: u32) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let ok = Command::new("ffmpeg")
        .args(["-loglevel", "error", "-y", "-f", "lavfi", "-i"])
        .arg(format!("sine=frequency=440:duration={seconds}"))
        .args(["-b:a", "128k", "-metadata", "artist=Version Artist"])
        .args(["-metadata", "album=Version Album", "-metadata"])
        .arg(format!("title={title}"))
        .args(["-metadata", "track=1"])
        .arg(path)
        .status()
        .expect("ffmpeg is installed (apt-get install ffmpeg)");
    assert!(ok.success(), "ffmpeg failed for {}", path.display());
}

/// New content with the same tags: 4 KiB inserted in the middle of the
/// audio (the ID3v2 tag at the head is untouched), so the size changes too.
fn changed(old: &[u8]) -> Vec<u8> {
    let half = old.len() / 2;
    let mut new = old[..half].to_vec();
    new.extend(std::iter::repeat_n(0x5a, 4096));
    new.extend_from_slice(&old[half..]);
    new
}

/// What a tagger does: write a copy beside the file, rename it over.
fn replace(path: &Path, bytes: &[u8]) {
    let tmp = path.with_file_name(".tagger.tmp");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Drops the kernel's cached pages of `f`, so the next read asks the shim.
fn drop_page_cache(f: &File) {
    // SAFETY: a plain advice call on an open fd.
    let rc = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(rc, 0, "posix_fadvise failed");
}

/// The whole content through `f`, read from offset 0 with `pread`.
fn read_all_at(f: &File) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f.read_at(&mut buf, out.len() as u64)?;
        if n == 0 {
            return Ok(out);
        }
        out.extend_from_slice(&buf[..n]);
    }
}

fn engine_pid(state: &Path) -> Option<i32> {
    pids_with_cmdline(&format!("engine --state-dir {}", state.display()))
        .into_iter()
        .next()
}

/// One track in its own origin, mounted; returns the mount, the origin
/// file and its path in the mount.
fn one_track(passthrough: bool) -> (Mount, tempfile::TempDir, PathBuf, PathBuf) {
    let origin = tempfile::tempdir().unwrap();
    let file = origin.path().join("incoming/track.mp3");
    tagged_mp3(&file, "Same Title", 30);
    let mut env = ENV_FAST_HEARTBEAT.to_vec();
    env.push((
        "MUSICFS_PASSTHROUGH",
        if passthrough { "true" } else { "false" },
    ));
    let m = Mount::start_with(&[origin.path()], None, &env);
    let files = list_files(&m.mnt);
    assert_eq!(files.len(), 1, "{files:?}");
    let mounted = m.mnt.join(&files[0]);
    assert!(
        mounted.ends_with("Version Artist/Version Album/01 - Same Title.mp3"),
        "{}",
        mounted.display()
    );
    (m, origin, file, mounted)
}

fn wait_size(path: &Path, len: usize) {
    assert!(
        eventually(Duration::from_secs(20), || std::fs::metadata(path)
            .is_ok_and(|m| m.len() == len as u64)),
        "{} never showed the new size {len}",
        path.display()
    );
}

/// One track mounted, a handle `a` that has read its first 1,000 bytes,
/// then the file replaced as a tagger does and the new size visible.
struct Replaced {
    m: Mount,
    _origin: tempfile::TempDir,
    mounted: PathBuf,
    old: Vec<u8>,
    new: Vec<u8>,
    a: File,
}

fn open_then_replace(passthrough: bool) -> Replaced {
    let (m, _origin, file, mounted) = one_track(passthrough);
    let old = std::fs::read(&file).unwrap();
    let new = changed(&old);
    let a = File::open(&mounted).unwrap();
    let mut head = vec![0u8; 1000];
    a.read_exact_at(&mut head, 0).unwrap();
    assert_eq!(head, old[..1000]);
    replace(&file, &new);
    wait_size(&mounted, new.len());
    Replaced {
        m,
        _origin,
        mounted,
        old,
        new,
        a,
    }
}

fn handle_keeps_its_version(passthrough: bool) {
    let Replaced {
        m,
        _origin,
        mounted,
        old,
        new,
        a,
    } = open_then_replace(passthrough);
    // A new open reads the new version, to the last byte. With passthrough
    // the kernel (6.18) takes one backing file per inode while a handle on
    // it is open, so while the old handle is open a new open fails (EIO
    // from the kernel): never the old bytes.
    let b = if passthrough {
        match File::open(&mounted) {
            Err(e) if e.raw_os_error() == Some(libc::EIO) => None,
            Ok(b) => {
                assert!(
                    read_all_at(&b).unwrap() == new,
                    "a new open read the old file"
                );
                Some(b)
            }
            Err(e) => panic!(
                "an open of the new version beside an open passthrough handle of the old one failed with {e}, not EIO"
            ),
        }
    } else {
        let b = File::open(&mounted).unwrap();
        let through_b = read_all_at(&b)
            .unwrap_or_else(|e| panic!("read of a new open failed: {e}\n{}", m.log_text()));
        assert!(
            through_b == new,
            "a new open after the change did not read the new file"
        );
        Some(b)
    };
    // The old handle still reads the file it opened, every byte of it,
    // also past what the kernel had cached.
    drop_page_cache(&a);
    let through_a = read_all_at(&a).unwrap();
    assert!(
        through_a == old,
        "the handle opened before the change read {} bytes that are not the old file (passthrough {passthrough}; old {}, new {})",
        through_a.len(),
        old.len(),
        new.len()
    );
    drop((a, b));
    let c = File::open(&mounted).unwrap();
    let through_c = read_all_at(&c).unwrap();
    assert!(
        through_c == new,
        "an open after both handles closed read {} bytes that are not the new file ({}; old {}, new {})",
        through_c.len(),
        if through_c == old {
            "the old file"
        } else {
            "a mix"
        },
        old.len(),
        new.len()
    );
    drop(c);
    assert!(m.stop().success());
}

#[test]
fn open_handle_keeps_its_version_with_passthrough() {
    handle_keeps_its_version(true);
}

#[test]
fn open_handle_keeps_its_version_without_passthrough() {
    handle_keeps_its_version(false);
}

/// The file is replaced, then the engine is killed before the old handle
/// reads on: the new engine has no copy of the old version, so the handle
/// fails with ESTALE (never the new file's bytes); with passthrough the
/// kernel still holds the old file and the handle reads it whole. A new
/// open reads the new file either way.
fn version_gone_after_a_kill(passthrough: bool) {
    let Replaced {
        m,
        _origin,
        mounted,
        old,
        new,
        a,
    } = open_then_replace(passthrough);
    let engine = engine_pid(&m.state).expect("an engine runs");
    // SAFETY: signalling a process we started.
    unsafe { libc::kill(engine, libc::SIGKILL) };
    assert!(
        eventually(Duration::from_secs(20), || engine_pid(&m.state)
            .is_some_and(|p| p != engine)),
        "no new engine after the kill"
    );
    drop_page_cache(&a);
    let mut buf = vec![0u8; 4096];
    let got = a.read_at(&mut buf, old.len() as u64 / 2);
    if passthrough {
        got.unwrap();
        assert!(
            read_all_at(&a).unwrap() == old,
            "passthrough handle lost its file"
        );
    } else {
        match got {
            Err(e) if e.raw_os_error() == Some(libc::ESTALE) => {}
            other => panic!(
                "a read of a version that is gone gave {other:?}, not ESTALE:\n{}",
                m.log_text()
            ),
        }
    }
    drop(a);
    let b = File::open(&mounted).unwrap();
    let through_b = read_all_at(&b)
        .unwrap_or_else(|e| panic!("read of a new open failed: {e}\n{}", m.log_text()));
    assert!(through_b == new, "a new open did not read the new file");
    drop(b);
    assert!(m.stop().success());
}

#[test]
fn replaced_version_is_estale_after_an_engine_kill() {
    version_gone_after_a_kill(false);
}

#[test]
fn replaced_version_survives_an_engine_kill_with_passthrough() {
    version_gone_after_a_kill(true);
}

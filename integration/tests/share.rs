//! The harness's network share: an sshd on 127.0.0.1 and sshfs mounting an
//! export through it. Reads through the mount give the export's bytes; a
//! hung share blocks reads until it is resumed; the drop unmounts it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use musicfs_integration::share::{is_mounted, within};
use musicfs_integration::*;

/// `len` bytes of xorshift noise from `seed`.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The bytes of `path`, read in a thread that must finish within `timeout`.
fn read_within(path: &Path, timeout: Duration) -> Vec<u8> {
    let p = path.to_path_buf();
    within(timeout, move || std::fs::read(p))
        .unwrap_or_else(|| panic!("reading {} took over {timeout:?}", path.display()))
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

#[test]
fn an_ssh_share_reads_right_hangs_when_stopped_and_unmounts_on_drop() {
    let t0 = Instant::now();
    let root = tempfile::tempdir().unwrap();
    let export = root.path().join("export");
    std::fs::create_dir(&export).unwrap();
    let files: Vec<(PathBuf, Vec<u8>)> = [(1usize, 11u64), (2, 22), (3, 33)]
        .into_iter()
        .map(|(mb, seed)| {
            let name = PathBuf::from(format!("track-{mb}.bin"));
            let bytes = noise(mb * 1024 * 1024 + 12_345, seed);
            std::fs::write(export.join(&name), &bytes).unwrap();
            (name, bytes)
        })
        .collect();

    let share = SshShare::start(&export);
    let mnt = share.mountpoint().to_path_buf();
    assert!(is_mounted(&mnt));
    for (name, bytes) in &files {
        let got = read_within(&mnt.join(name), Duration::from_secs(10));
        assert!(
            got == *bytes,
            "{} read through sshfs differs from the export ({} vs {} bytes)",
            name.display(),
            got.len(),
            bytes.len()
        );
    }

    // A file the mount has never seen, so nothing of it is cached.
    let late = noise(1024 * 1024, 44);
    std::fs::write(export.join("late.bin"), &late).unwrap();
    let hung = share.hang();
    assert!(!hung.pids().is_empty());
    let (tx, rx) = mpsc::channel();
    let late_path = mnt.join("late.bin");
    // Never joined: while the share is hung, this thread is stuck in the read.
    std::thread::spawn(move || {
        let _ = tx.send(std::fs::read(late_path));
    });
    assert!(
        matches!(
            rx.recv_timeout(Duration::from_secs(1)),
            Err(mpsc::RecvTimeoutError::Timeout)
        ),
        "a read of the hung share finished within 1 s:\n{}",
        share.logs()
    );

    let resumed = Instant::now();
    hung.resume();
    let got = rx
        .recv_timeout(Duration::from_secs(10))
        .unwrap_or_else(|_| panic!("the read did not finish within 10 s of the resume"))
        .unwrap();
    assert!(
        got == late,
        "late.bin read after the resume has the wrong bytes"
    );
    eprintln!(
        "the waiting read finished {:?} after the resume",
        resumed.elapsed()
    );

    drop(share);
    assert!(
        !is_mounted(&mnt),
        "{} is still mounted after the drop",
        mnt.display()
    );
    assert!(!mnt.exists(), "the share's temp dir was left behind");
    eprintln!("share test took {:?}", t0.elapsed());
}

/// With `allow_other`, another user (as an engine run through setpriv) reads
/// the mount; the keepalive option is accepted.
#[test]
fn allow_other_lets_another_user_read_the_share() {
    let root = tempfile::tempdir().unwrap();
    let export = root.path().join("export");
    std::fs::create_dir(&export).unwrap();
    let bytes = noise(256 * 1024, 55);
    std::fs::write(export.join("a.bin"), &bytes).unwrap();
    let share = SshShare::start_with(
        &export,
        ShareOptions {
            allow_other: true,
            server_alive: Some(5),
        },
    );
    let file = share.mountpoint().join("a.bin");
    let out = within(Duration::from_secs(10), move || {
        std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "cat"])
            .arg(file)
            .output()
            .expect("setpriv (util-linux) is installed")
    })
    .expect("cat through the share as uid 65534 took over 10 s");
    assert!(
        out.status.success(),
        "cat as uid 65534 failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        share.logs()
    );
    assert!(out.stdout == bytes, "uid 65534 read the wrong bytes");
}

/// Dropping a share while it is hung (a read stuck in it, the guard still
/// held) neither blocks nor leaves the mount behind, and frees the read.
#[test]
fn dropping_a_hung_share_does_not_block() {
    let root = tempfile::tempdir().unwrap();
    let export = root.path().join("export");
    std::fs::create_dir(&export).unwrap();
    std::fs::write(export.join("seen.bin"), b"seen").unwrap();
    let share = SshShare::start(&export);
    let mnt = share.mountpoint().to_path_buf();
    std::fs::write(export.join("late.bin"), noise(64 * 1024, 66)).unwrap();
    let hung = share.hang();
    let (tx, rx) = mpsc::channel();
    let late = mnt.join("late.bin");
    std::thread::spawn(move || {
        let _ = tx.send(std::fs::read(late));
    });
    assert!(rx.recv_timeout(Duration::from_millis(500)).is_err());
    let t = Instant::now();
    drop(share);
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "the drop took {:?}",
        t.elapsed()
    );
    assert!(!is_mounted(&mnt), "{} is still mounted", mnt.display());
    // The stuck read fails (or, at worst, finishes) once sshfs is gone.
    let res = rx.recv_timeout(Duration::from_secs(10));
    assert!(res.is_ok(), "the stuck read is still stuck after the drop");
    drop(hung);
}

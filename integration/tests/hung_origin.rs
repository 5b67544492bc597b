//! One origin never stalls another. The "network share" here is a second
//! musicfs mount (a FUSE filesystem, so a network origin to the first)
//! whose shim is SIGSTOPped: every access to it hangs, as with a NAS that
//! stops answering. Meanwhile the local origin's files read back right
//! and fast, listings answer, `musicfs status` answers; once the share
//! answers again, the reads that waited complete with the right bytes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use musicfs_integration::*;

/// The mounted files whose origin file is under `under`, with that file.
fn files_from(mnt: &Path, under: &Path) -> Vec<(PathBuf, PathBuf)> {
    list_files(mnt)
        .into_iter()
        .filter_map(|p| {
            let o = getxattr(&mnt.join(&p), "user.musicfs.origin")?;
            let o = PathBuf::from(std::ffi::OsStr::from_bytes(&o));
            o.starts_with(under).then(|| (mnt.join(p), o))
        })
        .collect()
}

/// Evicts an origin file from the page cache, so a read of it through the
/// mount needs the engine's I/O threads.
fn evict(path: &Path) {
    let f = std::fs::File::open(path).unwrap();
    // SAFETY: an advice call on an open fd.
    unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
}

struct Continue(Vec<i32>);

impl Drop for Continue {
    fn drop(&mut self) {
        for pid in &self.0 {
            // SAFETY: resuming processes we stopped.
            unsafe { libc::kill(*pid, libc::SIGCONT) };
        }
    }
}

#[test]
fn a_hung_network_origin_never_stalls_the_local_one() {
    let lib = generated_library(2000, 7);
    let manifest = read_manifest(&lib);
    let root = tempfile::tempdir().unwrap();
    let share_src = root.path().join("share-src");
    let local = root.path().join("local");
    copy_tracks(&lib, &manifest, 0, 12, &share_src);
    copy_tracks(&lib, &manifest, 12, 12, &local);
    let share = Mount::start(&[&share_src]);
    let m = Mount::start(&[&local, &share.mnt]);
    let from_share = files_from(&m.mnt, &share.mnt);
    let from_local = files_from(&m.mnt, &local);
    assert_eq!(
        (from_share.len(), from_local.len()),
        (12, 12),
        "{}",
        m.log_text()
    );

    // The share stops answering.
    let shim = pids_with_cmdline(&format!("--mountpoint {}", share.mnt.display()));
    assert!(!shim.is_empty(), "the share's shim was not found");
    for pid in &shim {
        // SAFETY: stopping a process the test started.
        unsafe { libc::kill(*pid, libc::SIGSTOP) };
    }
    let resume = Continue(shim);
    // Readers pile up on it (more than any pool's threads).
    let (tx, waiting) = mpsc::channel();
    for round in 0..2 {
        for (mounted, origin) in &from_share {
            let (tx, mounted, origin) = (tx.clone(), mounted.clone(), origin.clone());
            std::thread::spawn(move || {
                let got = hash_file(&mounted).map_err(|e| e.to_string());
                let _ = tx.send((round, mounted, origin, got));
            });
        }
    }
    drop(tx);
    std::thread::sleep(Duration::from_millis(500));

    // The local origin answers meanwhile: cold reads, listings, status.
    let mut slowest = Duration::ZERO;
    let deadline = Instant::now() + Duration::from_secs(20);
    for (mounted, origin) in &from_local {
        evict(origin);
        let t = Instant::now();
        let (done_tx, done) = mpsc::channel();
        let (mounted2, origin2) = (mounted.clone(), origin.clone());
        std::thread::spawn(move || {
            let same = hash_file(&mounted2).ok() == hash_file(&origin2).ok();
            let _ = done_tx.send(same);
        });
        let left = deadline.saturating_duration_since(Instant::now());
        match done.recv_timeout(left) {
            Ok(same) => assert!(same, "{} read wrong bytes", mounted.display()),
            Err(_) => panic!(
                "a read of a local file waited behind the hung share ({})",
                mounted.display()
            ),
        }
        slowest = slowest.max(t.elapsed());
    }
    let t = Instant::now();
    let (list_tx, listed) = mpsc::channel();
    let mnt = m.mnt.clone();
    std::thread::spawn(move || {
        let _ = list_tx.send(
            walkdir::WalkDir::new(&mnt)
                .into_iter()
                .filter_map(|e| e.ok())
                .count(),
        );
    });
    let entries = listed
        .recv_timeout(Duration::from_secs(10))
        .expect("a listing of the mount waited behind the hung share");
    assert!(entries > 24, "{entries}");
    let list_time = t.elapsed();
    let t = Instant::now();
    let status = Command::new(musicfs_bin())
        .args(["status", "--json", "--state-dir"])
        .arg(&m.state)
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let status_time = t.elapsed();
    assert!(
        status_time < Duration::from_secs(10),
        "status took {status_time:?}"
    );
    let s: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let share_state = s["origins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["path"].as_str() == Some(&share.mnt.display().to_string()))
        .cloned()
        .unwrap();
    assert_eq!(share_state["reachable"], false, "{share_state}");
    eprintln!(
        "while the share hung: slowest local read {slowest:?}, listing {list_time:?}, status {status_time:?}"
    );

    // The share answers again: every read that waited completes, right.
    drop(resume);
    let mut finished = 0;
    while let Ok((_, mounted, origin, got)) = waiting.recv_timeout(Duration::from_secs(60)) {
        let want = hash_file(&origin).unwrap();
        match got {
            Ok(h) => assert_eq!(h, want, "{} read wrong bytes", mounted.display()),
            // Refused while the share hung (its queue full, or stuck): an
            // error, never wrong bytes.
            Err(e) => assert!(
                e.contains("Input/output error"),
                "{}: {e}",
                mounted.display()
            ),
        }
        finished += 1;
    }
    assert_eq!(finished, 24, "readers of the share never finished");
    for (mounted, origin) in &from_share {
        assert_eq!(hash_file(mounted).unwrap(), hash_file(origin).unwrap());
    }
    assert!(m.stop().success());
    assert!(share.stop().success());
}

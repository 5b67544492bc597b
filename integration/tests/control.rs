//! The control plane (capnp-rpc): a thousand followers at once, long jobs
//! with progress and cancellation, and peers of other protocol versions.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use musicfs_integration::*;

fn copy_some(lib: &Path, to: &Path, n: usize, tag: &str) {
    let manifest = read_manifest(lib);
    std::fs::create_dir_all(to).unwrap();
    for (i, e) in manifest
        .iter()
        .filter(|e| e.kind == "normal")
        .take(n)
        .enumerate()
    {
        let from =
            lib.join(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(&e.raw_path()));
        std::fs::copy(&from, to.join(format!("{tag}-{i}.{}", e.ext))).unwrap();
    }
}

fn control_connections(state: &Path) -> u64 {
    status_json(state)["cache"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f[0] == "control_connections")
        .map_or(0, |f| f[1].as_u64().unwrap())
}

/// 1,000 `musicfs events --follow` at once: every one of them gets the
/// next change, and `musicfs status` answers meanwhile.
#[test]
fn a_thousand_followers_all_get_the_next_change() {
    const FOLLOWERS: usize = 1000;
    let dir = tempfile::tempdir().unwrap();
    let origin = dir.path().join("origin");
    copy_some(&generated_library(2000, 7), &origin, 3, "first");
    let m = Mount::start(&[&origin]);
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let mut followers: Vec<(PathBuf, std::process::Child)> = (0..FOLLOWERS)
        .map(|i| {
            let file = out.join(format!("{i}.jsonl"));
            let child = Command::new(musicfs_bin())
                .args(["events", "--follow", "--json", "--state-dir"])
                .arg(&m.state)
                .stdout(std::fs::File::create(&file).unwrap())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            (file, child)
        })
        .collect();
    assert!(
        eventually(Duration::from_secs(180), || control_connections(&m.state)
            > FOLLOWERS as u64),
        "the followers did not all connect: {} of {FOLLOWERS}",
        control_connections(&m.state)
    );
    let t = Instant::now();
    let status = status_json(&m.state);
    let status_time = t.elapsed();
    assert_eq!(status["files"], 3);
    copy_some(&generated_library(2000, 7), &origin, 2, "late");
    let got_it = |f: &Path| {
        std::fs::read_to_string(f).is_ok_and(|t| {
            t.lines()
                .any(|l| l.contains("\"change\"") && l.contains("added or changed"))
        })
    };
    let all = eventually(Duration::from_secs(120), || {
        followers.iter().all(|(f, _)| got_it(f))
    });
    let missing = followers.iter().filter(|(f, _)| !got_it(f)).count();
    for (_, c) in &mut followers {
        let _ = c.kill();
    }
    for (_, c) in &mut followers {
        let _ = c.wait();
    }
    assert!(
        all,
        "{missing} of {FOLLOWERS} followers never saw the change"
    );
    assert!(
        status_time < Duration::from_secs(1),
        "status took {status_time:?} with {FOLLOWERS} followers"
    );
    assert!(
        eventually(Duration::from_secs(30), || control_connections(&m.state)
            <= 2),
        "the followers' connections stayed: {}",
        control_connections(&m.state)
    );
    assert!(m.stop().success());
}

/// A local origin read through the chunk cache, wholly cached, with a
/// verify slowed down (fault injection) so that it runs for seconds.
fn slow_verify_mount(dir: &Path) -> Mount {
    let origin = dir.join("origin");
    copy_some(
        &generated_library_with(
            16,
            41,
            &["--seconds", "12", "--formats", "wav=2,flac=1,mp3=1"],
        ),
        &origin,
        12,
        "t",
    );
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "origins = [{origin:?}]\ncache_dir = {:?}\n{}[origin.{origin:?}]\ncache = true\n",
            dir.join("cache"),
            musicfs_integration::CACHE_ON_ANY_DISK
        ),
    )
    .unwrap();
    let m = Mount::start_with_config(&config, &[("MUSICFS_FAULT", "slow-verify")]);
    for f in list_files(&m.mnt) {
        hash_file(&m.mnt.join(f)).unwrap();
    }
    m
}

fn chunks(m: &Mount) -> u64 {
    status_json(&m.state)["chunk_cache"]["chunks"]
        .as_u64()
        .unwrap_or(0)
}

/// Progress arrives in order and ends with the result; a verify whose
/// client goes away is cancelled within a second.
#[test]
fn verify_jobs_report_progress_in_order_and_stop_when_cancelled() {
    let dir = tempfile::tempdir().unwrap();
    let m = slow_verify_mount(dir.path());
    assert!(
        eventually(Duration::from_secs(20), || chunks(&m) >= 20),
        "{}",
        chunks(&m)
    );
    let out = Command::new(musicfs_bin())
        .args(["cache", "verify", "--json", "--state-dir"])
        .arg(&m.state)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let (result, progress) = lines.split_last().unwrap();
    assert!(progress.len() >= 3, "too few progress reports: {lines:?}");
    let done: Vec<u64> = progress
        .iter()
        .map(|p| p["progress"]["done"].as_u64().unwrap())
        .collect();
    assert!(
        done.windows(2).all(|w| w[0] <= w[1]),
        "out of order: {done:?}"
    );
    let total = progress[0]["progress"]["total"].as_u64().unwrap();
    assert_eq!(*done.last().unwrap(), total, "{lines:?}");
    assert_eq!(result["checked"].as_u64(), Some(total), "{result}");
    assert_eq!(result["cancelled"].as_u64(), Some(0), "{result}");

    // Cancelled: the client is killed mid-way.
    let mut client = Command::new(musicfs_bin())
        .args(["cache", "verify", "--state-dir"])
        .arg(&m.state)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let _ = client.kill();
    let _ = client.wait();
    let killed = Instant::now();
    assert!(
        eventually(Duration::from_secs(5), || m
            .log_text()
            .contains("(cancelled)")
            || m.log_text().contains("cancelled: true")),
        "the verify was not cancelled: {}",
        m.log_text()
    );
    // The check of chunks stopped early (each takes 50 ms here).
    let stopped = killed.elapsed();
    assert!(
        stopped < Duration::from_secs(1),
        "cancelled only after {stopped:?}"
    );
    assert!(m.stop().success());
}

/// Peers of other control protocol versions refuse each other in one clear
/// line, both ways.
#[test]
fn other_protocol_versions_are_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let origin = dir.path().join("origin");
    copy_some(&generated_library(2000, 7), &origin, 2, "v");
    let m = Mount::start_with(&[&origin], None, &[]);
    // A newer client against this engine.
    let out = Command::new(musicfs_bin())
        .args(["status", "--state-dir"])
        .arg(&m.state)
        .env("MUSICFS_FAKE_CONTROL_PROTOCOL", "99")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("control protocol 99..=99") && err.contains("no common version"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(m.stop().success());
    // An older engine (it claims version 0) against this client.
    let m = Mount::start_with(&[&origin], None, &[("MUSICFS_FAKE_CONTROL_PROTOCOL", "0")]);
    let out = Command::new(musicfs_bin())
        .args(["status", "--state-dir"])
        .arg(&m.state)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("0..=0") && err.contains("no common version"),
        "{err}"
    );
    drop(m);
}

//! Operating a mount: status, metrics and shutdown over the control plane.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use musicfs_integration::*;

fn musicfs(args: &[&str], state: &Path) -> (bool, String, String) {
    let out = Command::new(musicfs_bin())
        .args(args)
        .arg("--state-dir")
        .arg(state)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Status (table and JSON) and metrics report an origin that went away.
#[test]
fn status_and_metrics_show_an_origin_that_went_away() {
    let src = generated_library(2000, 7);
    let e = read_manifest(&src)
        .into_iter()
        .find(|e| e.kind == "normal")
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    for o in [&a, &b] {
        std::fs::create_dir(o).unwrap();
        std::fs::copy(
            src.join(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(&e.raw_path())),
            o.join(format!("x.{}", e.ext)),
        )
        .unwrap();
    }
    let m = Mount::start_with(&[&a, &b], None, &[]);
    let (ok, out, err) = musicfs(&["status", "--json"], &m.state);
    assert!(ok, "{err}");
    let st: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(st["files"], 2, "{out}");
    assert_eq!(st["connected_shims"], 1, "{out}");
    assert!(
        st["origins"]
            .as_array()
            .unwrap()
            .iter()
            .all(|o| o["reachable"] == true),
        "{out}"
    );
    assert!(
        st["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["running"] == true),
        "{out}"
    );

    std::fs::rename(&b, dir.path().join("b-gone")).unwrap();
    let (ok, out, _) = musicfs(&["status", "--json"], &m.state);
    assert!(ok);
    let st: serde_json::Value = serde_json::from_str(&out).unwrap();
    let gone = st["origins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["path"] == b.to_str().unwrap())
        .expect("origin b listed");
    assert_eq!(gone["reachable"], false, "{out}");
    let (ok, table, _) = musicfs(&["status"], &m.state);
    assert!(ok && table.contains("UNREACHABLE"), "{table}");
    let (ok, metrics, _) = musicfs(&["metrics"], &m.state);
    assert!(ok);
    assert!(
        metrics.contains(&format!(
            "musicfs_origin_reachable{{origin=\"{}\"}} 0",
            b.display()
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "musicfs_origin_reachable{{origin=\"{}\"}} 1",
            a.display()
        )),
        "{metrics}"
    );
    assert!(metrics.contains("musicfs_files 2"), "{metrics}");
    assert!(m.stop().success());
}

/// `musicfs shutdown` stops a mount in order; afterwards status says clearly
/// that nothing runs.
#[test]
fn shutdown_stops_the_mount_and_status_says_nothing_runs() {
    let lib = generated_library(2000, 7);
    let mut m = Mount::start_with(&[&lib], None, &[]);
    let (ok, out, err) = musicfs(&["shutdown"], &m.state);
    assert!(ok, "shutdown failed: {out}{err}");
    assert!(
        eventually(Duration::from_secs(20), || !is_mountpoint(&m.mnt)),
        "still mounted after shutdown"
    );
    let status = m.stop_with_signal(0);
    assert!(status.success(), "musicfs mount exited with {status}");
    let (ok, _, err) = musicfs(&["status"], &m.state);
    assert!(!ok);
    assert!(err.contains("no engine is running"), "unclear: {err}");
}

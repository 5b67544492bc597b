//! The control plane from another language: `packaging/examples/
//! musicfs_status.py` reads a running engine's status and events with
//! pycapnp (PyPI), from the schema alone, and agrees with `musicfs status`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use musicfs_integration::*;

#[test]
fn a_pycapnp_client_reads_the_status_over_the_schema() {
    let dir = tempfile::tempdir().unwrap();
    let origin = dir.path().join("origin");
    let lib = generated_library(2000, 7);
    copy_tracks(&lib, &read_manifest(&lib), 0, 4, &origin);
    let m = Mount::start(&[&origin]);
    let script = workspace_root().join("packaging/examples/musicfs_status.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg(&m.state)
        .arg("--events")
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "the pycapnp client failed (is pycapnp installed? packaging/install-deps.sh installs it): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let want = status_json(&m.state);
    assert_eq!(got["files"], want["files"], "{got}");
    assert_eq!(got["files"], 4, "{got}");
    assert_eq!(got["pid"], want["pid"], "{got}");
    assert_eq!(got["connected_shims"], 1, "{got}");
    assert!(
        got["server"]
            .as_str()
            .unwrap()
            .starts_with("musicfs engine"),
        "{got}"
    );
    let events = got["events"].as_array().unwrap();
    assert!(events.iter().any(|e| e["kind"] == "started"), "{got}");
    assert!(m.stop().success());
}

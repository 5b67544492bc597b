//! Metrics by the Prometheus conventions: `promtool check metrics` (Debian's
//! prometheus package, see packaging/install-deps.sh) passes on the text the
//! engine renders, and on what `musicfs metrics` prints for a live mount.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use musicfs_engine::metrics::{self, ChunkCacheFigures, Op, OriginFigures, Snapshot, TaskFigures};
use musicfs_integration::*;

/// `promtool check metrics` on `text`: whether it passed, and what it said.
fn promtool_check(text: &str) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect(
            "promtool is missing: install Debian's prometheus package (packaging/install-deps.sh)",
        );
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The figures of a running engine with a chunk cache, as the control
/// plane gives them.
fn realistic_snapshot() -> Snapshot {
    let figures = [
        ("used_bytes", 734_003_200),
        ("max_bytes", 10_737_418_240),
        ("chunks", 812),
        ("pinned_files", 3),
        ("free_percent", 61),
        ("min_free_percent", 10),
        ("hits", 90_211),
        ("misses", 1_204),
        ("corrupt", 1),
        ("missing", 0),
        ("written", 1_180),
        ("skipped", 24),
        ("evicted", 77),
        ("disk_errors", 0),
        ("bypassed_reads", 0),
        ("read_ahead", 640),
    ];
    let named = |v: &[(&str, u64)]| v.iter().map(|(n, v)| (n.to_string(), *v)).collect();
    Snapshot {
        uptime_seconds: 86_461.25,
        files: 48_112,
        nodes: 61_730,
        audio_bytes: 612_345_678_901,
        scan_complete: true,
        connected_shims: 1,
        in_flight_requests: 2,
        catalog_writes_failing: false,
        state_dir_writable: true,
        origins: vec![
            OriginFigures {
                path: "/srv/music".into(),
                reachable: true,
            },
            OriginFigures {
                path: "/mnt/nas/Music \"lossless\"".into(),
                reachable: false,
            },
        ],
        tasks: ["syncer", "reconcile", "scrubber"]
            .iter()
            .enumerate()
            .map(|(i, n)| TaskFigures {
                name: n.to_string(),
                running: i != 1,
                restarts: i as u64,
            })
            .collect(),
        gauges: named(&[
            ("listing_cache_dirs", 1_200),
            ("listing_cache_entries", 48_000),
            ("listing_cache_limit", 4_096),
            ("open_origin_files", 17),
            ("open_files_max", 1_024),
            ("catalog_cache_bytes", 67_108_864),
        ]),
        counters: named(&[
            ("requests", 1_000_000),
            ("opens", 5_000),
            ("reads", 400_000),
            ("read_bytes", 52_428_800_000),
            ("probed", 48_200),
            ("unchanged", 1_900_000),
            ("removed", 88),
            ("commits", 412),
            ("full_scans", 2),
            ("reloads", 1),
        ]),
        chunk_cache: Some(ChunkCacheFigures {
            bypassed: false,
            figures: named(&figures),
        }),
    }
}

/// The engine's own text, after observations of every kind, passes promtool
/// (types, `_total` counters, units in names, histogram buckets).
#[test]
fn the_engine_rendered_text_passes_promtool() {
    for (i, op) in Op::ALL.iter().enumerate() {
        metrics::observe_request(*op, Duration::from_micros(10 << i));
        metrics::record_request();
    }
    metrics::record_open();
    metrics::record_read();
    metrics::record_read_bytes(131_072);
    metrics::observe_origin_fetch(0, || Some("/srv/music".into()), Duration::from_millis(4));
    metrics::observe_origin_fetch(
        1,
        || Some("/mnt/nas/Music \"lossless\"".into()),
        Duration::from_secs(3),
    );
    let text = metrics::render(&realistic_snapshot());
    let (ok, said) = promtool_check(&text);
    assert!(
        ok,
        "promtool check metrics failed:\n{said}\n--- text:\n{text}"
    );
    assert!(
        text.contains("# TYPE musicfs_requests_total counter"),
        "{text}"
    );
    assert!(
        text.contains(
            "musicfs_origin_fetch_duration_seconds_bucket{origin=\"/srv/music\",le=\"0.005\"} 1"
        ),
        "{text}"
    );
}

/// The value of the sample `name` (with its labels) in `text`.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.rsplit_once(' ').filter(|(n, _)| *n == name))
        .map(|(_, v)| v.parse().unwrap())
}

/// A small mount, read through (so the histograms have data): what
/// `musicfs metrics` prints passes promtool, with a latency histogram per
/// request kind.
#[test]
fn musicfs_metrics_of_a_mount_passes_promtool() {
    let src = generated_library(2000, 7);
    let origin = tempfile::tempdir().unwrap();
    let picked: Vec<_> = read_manifest(&src)
        .into_iter()
        .filter(|e| e.kind == "normal")
        .take(3)
        .collect();
    assert_eq!(picked.len(), 3);
    for (i, e) in picked.iter().enumerate() {
        std::fs::copy(
            src.join(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(&e.raw_path())),
            origin.path().join(format!("t{i}.{}", e.ext)),
        )
        .unwrap();
    }
    let m = Mount::start(&[origin.path()]);
    assert_eq!(assert_files_match(&m.mnt, &[origin.path()]), 3);
    let out = Command::new(musicfs_bin())
        .args(["metrics", "--state-dir"])
        .arg(&m.state)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "musicfs metrics failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (ok, said) = promtool_check(&text);
    assert!(
        ok,
        "promtool check metrics failed:\n{said}\n--- text:\n{text}"
    );
    let count = |op: &str| {
        sample(
            &text,
            &format!("musicfs_request_duration_seconds_count{{op=\"{op}\"}}"),
        )
        .unwrap_or_else(|| panic!("no {op} histogram in:\n{text}"))
    };
    // The walk lists with readdirplus (entries come with it: no lookups).
    assert!(count("readdirplus") >= 1.0, "{text}");
    assert!(count("open") >= 3.0, "{text}");
    assert!(
        text.contains("musicfs_request_duration_seconds_bucket{op=\"open\",le=\"+Inf\"}"),
        "{text}"
    );
    assert_eq!(sample(&text, "musicfs_files"), Some(3.0), "{text}");
    assert!(m.stop().success());
}

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::metrics::*;

/// A snapshot with a figure of every kind.
fn snapshot() -> Snapshot {
    Snapshot {
        uptime_seconds: 12.5,
        files: 2,
        nodes: 9,
        audio_bytes: 12_345_678,
        scan_complete: true,
        connected_shims: 1,
        in_flight_requests: 0,
        catalog_writes_failing: false,
        state_dir_writable: true,
        origins: vec![
            OriginFigures {
                path: "/music/a".into(),
                reachable: true,
            },
            OriginFigures {
                path: "/music/odd \"name\"\\".into(),
                reachable: false,
            },
        ],
        tasks: vec![TaskFigures {
            name: "sync".into(),
            running: true,
            restarts: 3,
        }],
        gauges: vec![
            ("listing_cache_dirs".into(), 4),
            ("catalog_cache_bytes".into(), 1024),
        ],
        counters: vec![
            ("requests".into(), 999_999),
            ("probed".into(), 7),
            ("reloads_total".into(), 1),
        ],
        chunk_cache: Some(ChunkCacheFigures {
            bypassed: false,
            figures: vec![
                ("used_bytes".into(), 100),
                ("free_percent".into(), 42),
                ("hits".into(), 5),
                ("read_ahead".into(), 2),
            ],
        }),
    }
}

/// The sample lines of `text` (no comments), as (name with labels, value).
fn samples(text: &str) -> Vec<(&str, &str)> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.rsplit_once(' ').unwrap())
        .collect()
}

#[test]
fn ops_are_indexed_in_declaration_order() {
    for (i, op) in Op::ALL.iter().enumerate() {
        assert_eq!(*op as usize, i, "{op:?}");
    }
    let names: std::collections::BTreeSet<_> = Op::ALL.iter().map(|o| o.name()).collect();
    assert_eq!(names.len(), Op::ALL.len());
}

#[test]
fn counters_are_counters_named_total_and_gauges_stay_gauges() {
    record_request();
    record_read();
    record_read_bytes(4096);
    let text = render(&snapshot());
    for line in [
        "# TYPE musicfs_requests_total counter",
        "# TYPE musicfs_read_bytes_total counter",
        "# TYPE musicfs_opens_total counter",
        "# TYPE musicfs_probed_total counter",
        "# TYPE musicfs_reloads_total counter",
        "# TYPE musicfs_task_restarts_total counter",
        "# TYPE musicfs_chunk_cache_hits_total counter",
        "# TYPE musicfs_chunk_cache_read_ahead_total counter",
        "# TYPE musicfs_files gauge",
        "# TYPE musicfs_audio_bytes gauge",
        "# TYPE musicfs_uptime_seconds gauge",
        "# TYPE musicfs_chunk_cache_used_bytes gauge",
        "# TYPE musicfs_chunk_cache_free_ratio gauge",
        "# TYPE musicfs_listing_cache_dirs gauge",
        "# TYPE musicfs_catalog_cache_bytes gauge",
        "# TYPE musicfs_origin_reachable gauge",
        "# TYPE musicfs_request_duration_seconds histogram",
        "musicfs_files 2",
        "musicfs_probed_total 7",
        "musicfs_reloads_total 1",
        "musicfs_chunk_cache_hits_total 5",
        "musicfs_chunk_cache_free_ratio 0.42",
        "musicfs_uptime_seconds 12.5",
        "musicfs_task_restarts_total{task=\"sync\"} 3",
        "musicfs_origin_reachable{origin=\"/music/a\"} 1",
        "musicfs_origin_reachable{origin=\"/music/odd \\\"name\\\"\\\\\"} 0",
    ] {
        assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
    }
    // The data plane's own count wins over the snapshot's; one family each.
    assert!(
        !text.lines().any(|l| l == "musicfs_requests_total 999999"),
        "{text}"
    );
    for name in ["musicfs_requests_total", "musicfs_files"] {
        let types = text
            .lines()
            .filter(|l| {
                *l == format!("# TYPE {name} counter") || *l == format!("# TYPE {name} gauge")
            })
            .count();
        assert_eq!(types, 1, "{name}:\n{text}");
    }
    // Every counter's name ends in _total; no name without the prefix.
    for line in text.lines().filter(|l| l.starts_with("# TYPE")) {
        let parts: Vec<&str> = line.split(' ').collect();
        assert!(parts[2].starts_with("musicfs_"), "{line}");
        if parts[3] == "counter" {
            assert!(parts[2].ends_with("_total"), "{line}");
        }
    }
}

#[test]
fn histograms_have_buckets_with_le_labels_per_op_and_per_origin() {
    observe_request(Op::Lookup, Duration::from_micros(30));
    observe_request(Op::Read, Duration::from_millis(3));
    observe_origin_fetch(
        7,
        || Some(PathBuf::from("/srv/share")),
        Duration::from_millis(20),
    );
    // Later fetches do not ask for the path again.
    observe_origin_fetch(
        7,
        || panic!("asked for the root twice"),
        Duration::from_millis(2),
    );
    let text = render(&Snapshot::default());
    assert!(
        text.contains("# TYPE musicfs_origin_fetch_duration_seconds histogram"),
        "{text}"
    );
    let s = samples(&text);
    let bucket = |op: &str, le: &str| {
        let name = format!("musicfs_request_duration_seconds_bucket{{op=\"{op}\",le=\"{le}\"}}");
        s.iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.parse::<u64>().unwrap())
            .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
    };
    // Cumulative: a 30 µs lookup is in le=0.00005 and above, not below.
    assert!(bucket("lookup", "+Inf") >= 1);
    assert!(bucket("lookup", "5e-05") >= 1);
    assert!(bucket("read", "0.005") >= 1);
    for op in Op::ALL {
        let count = format!(
            "musicfs_request_duration_seconds_count{{op=\"{}\"}}",
            op.name()
        );
        assert!(s.iter().any(|(n, _)| *n == count), "no {count}:\n{text}");
    }
    let fetches = "musicfs_origin_fetch_duration_seconds_count{origin=\"/srv/share\"}";
    let n: u64 = s
        .iter()
        .find(|(n, _)| *n == fetches)
        .map(|(_, v)| v.parse().unwrap())
        .unwrap_or_else(|| panic!("no {fetches}:\n{text}"));
    assert!(n >= 2, "{text}");
    // Every bucket bound of BUCKETS is there, then +Inf.
    let lookup_buckets = s
        .iter()
        .filter(|(n, _)| n.starts_with("musicfs_request_duration_seconds_bucket{op=\"lookup\","))
        .count();
    assert_eq!(lookup_buckets, BUCKETS.len() + 1, "{text}");
}

#[test]
fn snapshot_names_are_cleaned_and_taken_once() {
    let s = Snapshot {
        gauges: vec![("odd name-1".into(), 1), ("odd_name_1".into(), 2)],
        counters: vec![("x.y".into(), 3)],
        ..Snapshot::default()
    };
    let text = render(&s);
    assert!(text.contains("musicfs_odd_name_1 1\n"), "{text}");
    assert!(!text.contains("musicfs_odd_name_1 2\n"), "{text}");
    assert!(text.contains("musicfs_x_y_total 3\n"), "{text}");
}

/// Not asserted: what a request costs the data plane (an Instant::now,
/// its elapsed time and one observe).
#[test]
fn per_request_overhead() {
    const N: u32 = 200_000;
    observe_request(Op::Getattr, Duration::ZERO);
    let start = Instant::now();
    for _ in 0..N {
        let t = Instant::now();
        observe_request(Op::Getattr, t.elapsed());
    }
    let per = start.elapsed().as_nanos() / u128::from(N);
    let start = Instant::now();
    for _ in 0..N {
        record_request();
    }
    let count = start.elapsed().as_nanos() / u128::from(N);
    println!("per request: {per} ns (Instant::now + elapsed + observe), counter add {count} ns");
}

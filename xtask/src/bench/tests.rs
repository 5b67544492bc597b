use super::cachelib::{Kind, track_plan};
use super::cachetable::{
    CacheFigures, ProbeSample, fmt_percent, hit_ratio, percentile, probe_row, toml_string,
};
use super::logs::log_field;
use super::record::{HEADER, record, section_start, sections};
use super::table::{Row, Stats, fmt_thousands, render_grid, render_table};
use super::treerows::{Root, Samples, Shown, time_row};
use super::trees::Pass;
use crate::harness::unescape_mountinfo;

#[test]
fn stats() {
    let s = Stats::of(&[3.0, 1.0, 2.0]).unwrap();
    assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
    let s = Stats::of(&[4.0, 1.0, 2.0, 3.0]).unwrap();
    assert_eq!(s.median, 2.5);
    assert!(Stats::of(&[]).is_none());
}

#[test]
fn mountinfo_escapes() {
    assert_eq!(unescape_mountinfo(r"/a\040b"), b"/a b");
    assert_eq!(unescape_mountinfo(r"/plain"), b"/plain");
}

#[test]
fn sections_are_replaced_per_size() {
    let a = "<!-- bench tracks=10 -->\n## a\n<!-- /bench -->\n";
    let b = "<!-- bench tracks=20 -->\n## b\n<!-- /bench -->\n";
    let text = format!("{HEADER}\n{a}\n{b}");
    let found = sections(&text);
    assert_eq!(found.len(), 2);
    assert_eq!(found[0], ("<!-- bench tracks=10 -->", a));
    assert_eq!(found[1], ("<!-- bench tracks=20 -->", b));
}

/// A run of one size with other rows keeps the other run's section; a run
/// of the same kind replaces it; sections written by hand stay.
#[test]
fn a_run_replaces_only_a_run_of_its_kind() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("B.md");
    let section = |marker: &str, what: &str| format!("{marker}\n## {what}\n<!-- /bench -->\n");
    let remote = section_start(200, 0, true, false, None);
    let scale = section_start(200, 1_000_000, false, false, None);
    assert_ne!(remote, scale);
    let by_hand = section("<!-- bench tracks=200000 by-hand -->", "by hand");
    std::fs::write(&path, format!("{HEADER}\n{by_hand}")).unwrap();
    record(&path, &section(&remote, "remote 1")).unwrap();
    record(&path, &section(&scale, "scale 1")).unwrap();
    record(&path, &section(&scale, "scale 2")).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let found: Vec<&str> = sections(&text).iter().map(|(m, _)| *m).collect();
    assert_eq!(
        found,
        [
            scale.as_str(),
            remote.as_str(),
            "<!-- bench tracks=200000 by-hand -->"
        ]
    );
    assert!(text.contains("scale 2") && !text.contains("scale 1") && text.contains("remote 1"));
}

#[test]
fn log_fields() {
    let line = "2026-11-26T14:08:20.999438Z DEBUG musicfs_engine::sync: checkpoint committed \
                upserts=1 removals=0 files=2000 elapsed_us=1134";
    assert_eq!(log_field(line, "elapsed_us"), Some(1134));
    assert_eq!(log_field(line, "upserts"), Some(1));
    assert_eq!(log_field(line, "files"), Some(2000));
    assert_eq!(log_field(line, "us"), None);
    assert_eq!(log_field(line, "missing"), None);
}

#[test]
fn thousands() {
    assert_eq!(fmt_thousands(1234567.4), "1,234,567");
    assert_eq!(fmt_thousands(999.0), "999");
}

#[test]
fn percentiles() {
    let v: Vec<f64> = (1..=100).rev().map(f64::from).collect();
    assert_eq!(percentile(&v, 50.0), Some(50.0));
    assert_eq!(percentile(&v, 99.0), Some(99.0));
    assert_eq!(percentile(&v, 100.0), Some(100.0));
    assert_eq!(percentile(&[3.0, 1.0, 2.0], 99.0), Some(3.0));
    assert_eq!(percentile(&[3.0, 1.0, 2.0], 50.0), Some(2.0));
    assert_eq!(percentile(&[7.0], 50.0), Some(7.0));
    assert_eq!(percentile(&[], 50.0), None);
}

#[test]
fn hit_ratios() {
    assert_eq!(hit_ratio(0, 0), None);
    assert_eq!(hit_ratio(1, 3), Some(0.25));
    assert_eq!(fmt_percent(0.125), "12.5%");
    assert_eq!(fmt_percent(1.0), "100.0%");
    let s = ProbeSample {
        hits: 3,
        misses: 1,
        grew_bytes: 2_000_000,
        read_bytes: 1_000_000,
        files: 4,
        secs: 0.02,
        ..ProbeSample::default()
    };
    let row = probe_row("probe", &[s]);
    assert_eq!(row.what, "probe: hit ratio");
    assert_eq!(
        row.musicfs,
        "75.0% hits; last run: 3 hits, 1 misses, 2.0 MB into the cache for 1.0 MB read, 5.00 \
         ms/file"
    );
    assert_eq!(
        probe_row("none", &[ProbeSample::default()])
            .musicfs
            .split(';')
            .next(),
        Some("no lookups")
    );
}

#[test]
fn cache_status_json() {
    let flat = r#"{"dir":"/c","state":"normal","bypassed":false,"reason":"","since_ms":0,
        "writes_stopped":"","hits":10,"misses":4,"read_ahead":2,"chunks":6,"used_bytes":1000}"#;
    let f = CacheFigures::parse(flat).unwrap();
    assert_eq!((f.hits, f.misses, f.read_ahead, f.chunks), (10, 4, 2, 6));
    assert_eq!(
        (f.used_bytes, f.written, f.state.as_str()),
        (1000, 0, "normal")
    );
    let nested = r#"{"catalog":{},"chunk_cache":{"state":"down","bypassed":true,"hits":1}}"#;
    let g = CacheFigures::parse(nested).unwrap();
    assert_eq!((g.state.as_str(), g.bypassed, g.hits), ("down", true, 1));
    let before = CacheFigures {
        hits: 5,
        misses: 1,
        used_bytes: 10,
        ..f.clone()
    };
    let d = ProbeSample::between(&before, &f);
    assert_eq!((d.hits, d.misses, d.grew_bytes), (5, 3, 990));
    assert!(CacheFigures::parse("not json").is_err());
}

#[test]
fn cache_library_plan() {
    let plan = track_plan(5);
    assert_eq!(plan.len(), 5);
    assert_eq!(plan.iter().filter(|t| t.kind == Kind::Flac).count(), 3);
    assert_eq!((plan[0].number, plan[0].of), (1, 3));
    assert_eq!(
        (plan[3].kind, plan[3].number, plan[3].of),
        (Kind::Mp3, 1, 2)
    );
    assert!(plan[4].rel.to_string_lossy().ends_with("02 Noise 2.mp3"));
    assert_eq!(track_plan(1).len(), 1);
    assert!(track_plan(0).is_empty());
}

#[test]
fn toml_strings() {
    assert_eq!(toml_string("/a b/c"), r#""/a b/c""#);
    assert_eq!(toml_string(r#"a"b\c"#), r#""a\"b\\c""#);
}

#[test]
fn grids_pad_cells() {
    let out = render_grid(&["a", "bb"], &[vec!["xyz"], vec!["1", "2"]]);
    assert_eq!(
        out,
        "| a   | bb |\n|-----|----|\n| xyz |    |\n| 1   | 2  |\n"
    );
}

fn pass(secs: f64) -> Pass {
    Pass {
        secs,
        files: 1,
        ..Pass::default()
    }
}

#[test]
fn peer_columns_show_missing_peers_and_ratios() {
    let mut t = Samples::default();
    for (root, secs) in [
        (Root::Musicfs, 2.0),
        (Root::Bindfs, 4.0),
        (Root::Native, 1.0),
        (Root::NativeTree, 1.0),
        (Root::Rclone, 8.0),
    ] {
        t.push(root, pass(secs));
    }
    let shown = Shown {
        peers: true,
        missing: vec![Root::Musefs],
    };
    let row = time_row("walk", &t, "-", None, &shown);
    assert_eq!(row.musefs, "missing");
    assert_eq!(row.vs_musefs, "n/a");
    assert_eq!(row.vs_native_tree, "2.00x");
    assert_eq!(row.rclone, "8.000");
    let table = render_table(&[row]);
    assert!(table.contains("| musicfs/native tree |"), "{table}");
    assert!(table.contains("| musicfs/musefs |"), "{table}");
}

#[test]
fn no_peers_keeps_the_old_columns() {
    let mut t = Samples::default();
    t.push(Root::Musicfs, pass(1.0));
    let shown = Shown {
        peers: false,
        missing: Vec::new(),
    };
    let rows = [time_row("walk", &t, "-", None, &shown), Row::default()];
    let table = render_table(&rows);
    assert!(!table.contains("musefs"), "{table}");
    assert!(table.starts_with("| what "), "{table}");
}

#[test]
fn remote_spread_picks_evenly() {
    use super::remote::spread;
    use std::path::PathBuf;
    let files: Vec<PathBuf> = (0..10).map(|i| PathBuf::from(i.to_string())).collect();
    assert_eq!(spread(&files, 20).len(), 10);
    let picked = spread(&files, 5);
    assert_eq!(picked, ["0", "2", "4", "6", "8"].map(PathBuf::from));
}

#[test]
fn remote_failover_rows_count_failed_reads() {
    use super::remotetable::{Phase, failover_rows};
    let phase = |ms: &[f64], failed| Phase {
        reads_ms: ms.to_vec(),
        files: 1,
        failed,
        first_errors: Vec::new(),
        fetches: Some([1, 2]),
    };
    let ok = [
        phase(&[1.0, 2.0], 0),
        phase(&[1.0, 900.0], 0),
        phase(&[], 0),
    ];
    let rows = failover_rows(&ok, std::time::Duration::from_secs(12));
    assert!(
        rows[0].musicfs.starts_with("900.0 / "),
        "{}",
        rows[0].musicfs
    );
    assert_eq!(
        rows[0].ratio,
        "450.00x (longest)".replace("450.00x", &super::table::fmt_ratio(450.0))
    );
    assert_eq!(rows[1].target, "0: met");
    let bad = [phase(&[1.0], 0), phase(&[1.0], 2), phase(&[1.0], 0)];
    let rows = failover_rows(&bad, std::time::Duration::from_secs(12));
    assert!(rows[1].musicfs.starts_with("2 (0 / 2 / 0)"));
    assert_eq!(rows[1].target, "0: MISSED");
}

#[test]
fn remote_scan_row_needs_the_file_count() {
    use super::remotetable::scan_row;
    let row = scan_row(Some(2000), Some(9000), std::time::Duration::from_secs(10));
    assert!(row.musicfs.starts_with("200"), "{}", row.musicfs);
    assert!(row.musicfs.contains("9000 ms"));
    assert!(
        scan_row(None, None, std::time::Duration::from_secs(1))
            .musicfs
            .starts_with("missing")
    );
}

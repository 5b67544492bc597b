//! The rows of the remote-origin table (each beside its own baseline), their table and what they
//! measure (`REMOTE_NOTE`).

use std::time::Duration;

use super::cachetable::{CacheRow, percentile};
use super::table::{fmt_rate, fmt_ratio};
use super::trees::Pass;

/// The samples of the WebDAV read rows (one pass each).
#[derive(Default)]
pub(super) struct DavReads {
    pub(super) cold: Option<Pass>,
    pub(super) warm: Option<Pass>,
    pub(super) rclone_cold: Option<Pass>,
    pub(super) rclone_warm: Option<Pass>,
    pub(super) native: Option<Pass>,
    /// Why the rclone mount rows are missing.
    pub(super) rclone_missing: Option<String>,
}

/// First-byte latencies (ms) of one pass.
#[derive(Default)]
pub(super) struct FirstBytes {
    pub(super) ms: Vec<f64>,
    pub(super) errors: Vec<String>,
}

impl FirstBytes {
    pub(super) fn cell(&self) -> String {
        match (percentile(&self.ms, 50.0), percentile(&self.ms, 99.0)) {
            (Some(a), Some(b)) => format!("{a:.2} / {b:.2}"),
            _ => "n/a".into(),
        }
    }
}

/// What the readers saw in one phase (0 before, 1 while S3 is stopped, 2 after).
#[derive(Default, Clone)]
pub(super) struct Phase {
    /// Every read() call, ms.
    pub(super) reads_ms: Vec<f64>,
    pub(super) files: u64,
    pub(super) failed: u64,
    pub(super) first_errors: Vec<String>,
    /// Chunk fetches from S3 and from WebDAV meanwhile (the engine's metrics), if known.
    pub(super) fetches: Option<[u64; 2]>,
}

/// What the remote rows measure (printed under their table).
pub(super) const REMOTE_NOTE: &str = "\
What the remote-origin rows measure (issue 13): servers on 127.0.0.1 started by the bench,
`moto_server` (S3) and `rclone serve webdav`, holding the UTF-8-named files of generated
libraries of 20-second tracks (uploaded to moto with `rclone copy`); every musicfs mount has a
fresh state dir and cache dir. One pass per figure (no repeats); the page cache is dropped before
every pass when the bench runs as root.

- S3 scan: `musicfs mount` of the scan library's bucket, from the spawn to the engine's first
  `sync finished` log line as the bench saw it (it polls the log every 10 ms); the engine's own
  `elapsed_ms` of that sync is given beside it. Tags are read by range through the chunk cache.
- first byte: open(2) + one read(2) of 4 KiB, each file once, of distinct files spread over the
  tree; cold right after `musicfs cache clear` (nothing cached: every open and first read goes to
  moto), cached = the same files again 2 s later (untimed, for the cache's writer); baseline:
  the same probe on as many files of the export directory (native disk).
- WebDAV reads: every file of the read library, whole, one thread, 1 MiB buffer, MB/s over the
  bytes read. musicfs with the WebDAV origin: cold right after `musicfs cache clear`, warm = the
  next pass 2 s later (from the chunk cache); rclone = `rclone mount --read-only
  --vfs-cache-mode full` of `:webdav,url=...:` (the same server) with a fresh `--cache-dir`:
  cold = its first pass, warm = its second; native = the export directory.
- failover: the read library on S3 (first origin) and WebDAV (second), one node per file,
  `cache_max_bytes = 3000000` so that reads keep reaching the origins; 4 readers hash whole files
  (128 KiB read() calls; each file's page cache dropped with `posix_fadvise(DONTNEED)` before and
  after it is read, so that reads reach the engine) for 4 s, then moto is SIGSTOPped for 12 s,
  then SIGCONTed (3 s more). Every read() call is timed and counted in the phase it started in;
  the chunk fetches per origin are the engine's `musicfs_origin_fetch_duration_seconds_count`
  between the phases.
";

fn missing_row(what: &str, why: &str) -> CacheRow {
    CacheRow {
        what: what.into(),
        musicfs: format!("missing: {why}"),
        baseline: "-".into(),
        base_value: "-".into(),
        ratio: "-".into(),
        target: "-".into(),
    }
}

/// The scan-rate row.
pub(super) fn scan_row(files: Option<u64>, engine_ms: Option<u64>, took: Duration) -> CacheRow {
    let Some(files) = files else {
        return missing_row(
            "S3 scan, mount start to first `sync finished` (tracks/s)",
            "the log line has no files= field",
        );
    };
    let secs = took.as_secs_f64();
    CacheRow {
        what: "S3 scan, mount start to first `sync finished` (tracks/s)".into(),
        musicfs: format!(
            "{} tracks/s ({files} files in {secs:.2} s; engine's sync: {})",
            fmt_rate(files as f64 / secs.max(1e-9)),
            engine_ms.map_or("n/a".into(), |ms| format!("{ms} ms")),
        ),
        baseline: "-".into(),
        base_value: "-".into(),
        ratio: "-".into(),
        target: "-".into(),
    }
}

fn p50(fb: &FirstBytes) -> Option<f64> {
    percentile(&fb.ms, 50.0)
}

/// The first-byte rows, cold and cached, each beside native.
pub(super) fn first_byte_rows(
    cold: &FirstBytes,
    cached: &FirstBytes,
    native: &FirstBytes,
    dropped: bool,
) -> Vec<CacheRow> {
    let pc = if dropped {
        "page cache dropped"
    } else {
        "page cache NOT dropped (not root)"
    };
    [
        ("cold, after cache clear", cold),
        ("cached, second pass", cached),
    ]
    .into_iter()
    .map(|(what, fb)| CacheRow {
        what: format!(
            "S3 first byte {what}: open + 4 KiB read, p50 / p99 (ms; {} files, {pc})",
            fb.ms.len()
        ),
        musicfs: fb.cell(),
        baseline: "native disk (export dir)".into(),
        base_value: native.cell(),
        ratio: match (p50(fb), p50(native)) {
            (Some(a), Some(b)) if b > 0.0 => format!("{} (p50)", fmt_ratio(a / b)),
            _ => "n/a".into(),
        },
        target: "-".into(),
    })
    .collect()
}

fn rate(p: &Option<Pass>) -> Option<f64> {
    p.as_ref()
        .filter(|p| p.files > 0)
        .map(|p| p.bytes as f64 / 1e6 / p.secs.max(1e-9))
}

fn cell(p: &Option<Pass>) -> String {
    match (p, rate(p)) {
        (Some(p), Some(r)) => format!("{} ({} files, {} errors)", fmt_rate(r), p.files, p.errors),
        _ => "n/a".into(),
    }
}

/// The WebDAV read rows: musicfs cold and warm, each beside rclone mount and native.
pub(super) fn read_rows(r: &DavReads) -> Vec<CacheRow> {
    let mut rows = Vec::new();
    let rclone_missing = r.rclone_missing.as_deref();
    for (what, mine, rclone) in [
        ("cold", &r.cold, &r.rclone_cold),
        ("warm", &r.warm, &r.rclone_warm),
    ] {
        let base = [
            (
                format!("rclone mount --vfs-cache-mode full, {what}"),
                rclone,
                rclone_missing,
            ),
            ("native disk (export dir)".to_string(), &r.native, None),
        ];
        for (baseline, other, missing) in base {
            rows.push(CacheRow {
                what: format!("WebDAV whole-file read, {what} (MB/s)"),
                musicfs: cell(mine),
                base_value: match missing {
                    Some(why) => format!("missing: {why}"),
                    None => cell(other),
                },
                baseline,
                ratio: match (rate(mine), rate(other)) {
                    (Some(a), Some(b)) if b > 0.0 => fmt_ratio(a / b),
                    _ => "n/a".into(),
                },
                target: "-".into(),
            });
        }
    }
    rows
}

fn stall_cell(p: &Phase) -> String {
    let max = p.reads_ms.iter().copied().fold(f64::NAN, f64::max);
    match percentile(&p.reads_ms, 99.0) {
        Some(p99) => format!(
            "{max:.1} / {p99:.2} ({} reads, {} files)",
            p.reads_ms.len(),
            p.files
        ),
        None => "n/a (no read)".into(),
    }
}

fn fetch_cell(p: &Phase) -> String {
    match p.fetches {
        Some([s3, dav]) => format!("; chunk fetches S3 {s3}, WebDAV {dav}"),
        None => "; chunk fetches unknown".into(),
    }
}

/// The failover rows: the stall while S3 is stopped beside before the stop, and failed reads.
pub(super) fn failover_rows(phases: &[Phase; 3], stopped: Duration) -> Vec<CacheRow> {
    let [before, during, after] = phases;
    let failed = before.failed + during.failed + after.failed;
    let max_of = |p: &Phase| p.reads_ms.iter().copied().fold(f64::NAN, f64::max);
    vec![
        CacheRow {
            what: format!(
                "read() while S3 is SIGSTOPped ({} s) and WebDAV serves: longest / p99 (ms)",
                stopped.as_secs()
            ),
            musicfs: format!("{}{}", stall_cell(during), fetch_cell(during)),
            baseline: "the same readers before the stop (S3 up)".into(),
            base_value: format!("{}{}", stall_cell(before), fetch_cell(before)),
            ratio: match (max_of(during), max_of(before)) {
                (a, b) if b > 0.0 && a.is_finite() => format!("{} (longest)", fmt_ratio(a / b)),
                _ => "n/a".into(),
            },
            target: "-".into(),
        },
        CacheRow {
            what: "failed reads during the failover run (before, stopped, after)".into(),
            musicfs: format!(
                "{failed} ({} / {} / {}); after SIGCONT: {}",
                before.failed,
                during.failed,
                after.failed,
                stall_cell(after)
            ) + &fetch_cell(after),
            baseline: "-".into(),
            base_value: "-".into(),
            ratio: "-".into(),
            target: if failed == 0 {
                "0: met".into()
            } else {
                "0: MISSED".into()
            },
        },
    ]
}

//! The chunk cache rows: their table (each beside its own baseline), what they measure, the
//! figures of `musicfs cache status --json` and the formats of hit ratios and percentiles.

use anyhow::{Context, Result};

use super::table::{Stats, fmt_bytes, fmt_ms, render_grid};

/// One row of the cache table: musicfs beside the baseline of that row.
#[derive(Clone, Debug, Default)]
pub(super) struct CacheRow {
    pub(super) what: String,
    pub(super) musicfs: String,
    /// What the baseline is (the sshfs share, the native disk), or "-".
    pub(super) baseline: String,
    pub(super) base_value: String,
    pub(super) ratio: String,
    pub(super) target: String,
}

/// A table of rows measured against a baseline, its first column headed `title`.
pub(super) fn render_ratio_table(title: &str, rows: &[CacheRow]) -> String {
    let headers = [
        title,
        "musicfs",
        "baseline",
        "baseline value",
        "musicfs/baseline",
        "target",
    ];
    let cells: Vec<Vec<&str>> = rows
        .iter()
        .map(|r| {
            vec![
                r.what.as_str(),
                &r.musicfs,
                &r.baseline,
                &r.base_value,
                &r.ratio,
                &r.target,
            ]
        })
        .collect();
    render_grid(&headers, &cells)
}

/// What the cache rows measure (printed under their table).
pub(super) const CACHE_NOTE: &str = "\
What the chunk cache rows measure: a second musicfs mount whose origin is an sshfs mount of the
cache library (sshd on 127.0.0.1 with generated keys, the library on the same disk as the cache
dir), so the engine reads it through its chunk cache (256 KiB head, 1 MiB body and 128 KiB tail
chunks in `<work-dir>/cache-<K>`, verified on every read from the disk). The page cache is dropped
before every pass. Reads are whole files in one thread with a 1 MiB buffer, MB/s over all the bytes
read.

- realistic tracks, local origin: the cache library mounted with its directory as a local origin
  (no cache; as root the kernel reads the origin files by passthrough), every file read whole,
  cold (page cache dropped before each pass) and warm (origin pages cached), musicfs and native
  passes alternating in the same run.

- cold read through the cache: right after `musicfs cache clear`, every file read through the
  mount (every chunk fetched from the share, with read-ahead; written to the cache behind the
  reader); baseline: the same read on the sshfs mount itself.
- warm cached read: every chunk of every file cached (`user.musicfs.cached` = size), so the bytes
  come from the cache disk and are hashed (the engine also keeps 16 MiB of chunks in memory);
  baseline: the same read of the library directory itself (native).
- open of a cached file: every chunk cached, page cache dropped, every file stat'ed again (so that
  only the open is timed), then open(2)+close of every file; p50 / p99 of each pass; baseline: the
  same on the sshfs mount.
- probe scan: every file opened, its first and last 64 KiB read, closed (like a media server's
  probe); hit ratio = hits / (hits + misses) of `musicfs cache status` before and after the scan
  (the engine counts a hit per read request, or part of one, served from the cache, and a miss
  per chunk a read had to fetch from the origin; chunks fetched ahead of a reader are counted
  apart, as `read_ahead`); \"into the cache\" is how much the cache grew meanwhile. On a fresh engine: fresh state dir and empty cache dir, after the engine's
  own scan (whatever its tag scan cached stays); after cache clear: on the running engine right
  after `musicfs cache clear`; again: the same scan once more.
";

/// The figures of `musicfs cache status --json` the rows use.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct CacheFigures {
    pub(super) state: String,
    pub(super) bypassed: bool,
    pub(super) hits: u64,
    pub(super) misses: u64,
    pub(super) read_ahead: u64,
    pub(super) chunks: u64,
    pub(super) used_bytes: u64,
    pub(super) written: u64,
    pub(super) skipped: u64,
    pub(super) corrupt: u64,
    pub(super) evicted: u64,
    pub(super) bypassed_reads: u64,
}

impl CacheFigures {
    /// From the JSON of `musicfs cache status --json` (missing figures are 0).
    pub(super) fn parse(json: &str) -> Result<CacheFigures> {
        let v: serde_json::Value =
            serde_json::from_str(json).context("`musicfs cache status --json` is not JSON")?;
        // `musicfs status --json` nests the same object under `chunk_cache`.
        let v = v.get("chunk_cache").unwrap_or(&v);
        let n = |k: &str| v.get(k).and_then(serde_json::Value::as_u64).unwrap_or(0);
        Ok(CacheFigures {
            state: v
                .get("state")
                .and_then(serde_json::Value::as_str)
                .unwrap_or("")
                .to_string(),
            bypassed: v
                .get("bypassed")
                .and_then(serde_json::Value::as_bool)
                .unwrap_or(false),
            hits: n("hits"),
            misses: n("misses"),
            read_ahead: n("read_ahead"),
            chunks: n("chunks"),
            used_bytes: n("used_bytes"),
            written: n("written"),
            skipped: n("skipped"),
            corrupt: n("corrupt"),
            evicted: n("evicted"),
            bypassed_reads: n("bypassed_reads"),
        })
    }

    /// The figures that move while the cache is busy (a settled cache keeps them).
    pub(super) fn activity(&self) -> [u64; 6] {
        [
            self.misses,
            self.read_ahead,
            self.chunks,
            self.used_bytes,
            self.written,
            self.skipped,
        ]
    }
}

/// What one probe scan did to the cache.
#[derive(Clone, Debug, Default)]
pub(super) struct ProbeSample {
    pub(super) hits: u64,
    pub(super) misses: u64,
    pub(super) read_ahead: u64,
    /// How much the cache grew (used_bytes after, settled, minus before).
    pub(super) grew_bytes: u64,
    /// What the scan read.
    pub(super) read_bytes: u64,
    pub(super) files: u64,
    pub(super) secs: f64,
}

impl ProbeSample {
    pub(super) fn between(before: &CacheFigures, after: &CacheFigures) -> ProbeSample {
        ProbeSample {
            hits: after.hits.saturating_sub(before.hits),
            misses: after.misses.saturating_sub(before.misses),
            read_ahead: after.read_ahead.saturating_sub(before.read_ahead),
            grew_bytes: after.used_bytes.saturating_sub(before.used_bytes),
            ..ProbeSample::default()
        }
    }

    pub(super) fn ratio(&self) -> Option<f64> {
        hit_ratio(self.hits, self.misses)
    }
}

/// The hit-ratio row of one kind of probe scan.
pub(super) fn probe_row(what: &str, samples: &[ProbeSample]) -> CacheRow {
    let ratios: Vec<f64> = samples.iter().filter_map(ProbeSample::ratio).collect();
    let musicfs = match (Stats::of(&ratios), samples.last()) {
        (ratio, Some(last)) => format!(
            "{}; last run: {} hits, {} misses, {} into the cache for {} read, {} ms/file",
            ratio.map_or("no lookups".into(), |r| format!(
                "{} hits",
                r.show(fmt_percent, "")
            )),
            last.hits,
            last.misses,
            fmt_bytes(last.grew_bytes),
            fmt_bytes(last.read_bytes),
            fmt_ms(last.secs * 1e3 / last.files.max(1) as f64)
        ),
        (_, None) => "n/a".into(),
    };
    CacheRow {
        what: format!("{what}: hit ratio"),
        musicfs,
        baseline: "-".into(),
        base_value: "-".into(),
        ratio: "-".into(),
        target: "-".into(),
    }
}

/// hits / (hits + misses); None when there was no lookup at all.
pub(super) fn hit_ratio(hits: u64, misses: u64) -> Option<f64> {
    let all = hits + misses;
    (all > 0).then(|| hits as f64 / all as f64)
}

/// A fraction as a percentage: `0.125` is `12.5%`.
pub(super) fn fmt_percent(f: f64) -> String {
    format!("{:.1}%", f * 100.0)
}

/// The nearest-rank `p`-th percentile (0 < p <= 100) of some samples.
pub(super) fn percentile(samples: &[f64], p: f64) -> Option<f64> {
    if samples.is_empty() {
        return None;
    }
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = (p / 100.0 * v.len() as f64).ceil() as usize;
    Some(v[rank.clamp(1, v.len()) - 1])
}

/// A TOML basic string holding `s`.
pub(super) fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

//! The results table: rows, statistics of the samples and the cell formats.

use std::fmt::Write as _;

/// One table row. Later measurements (stall times under engine kill, idle RSS, ...) add rows.
#[derive(Clone, Debug, Default)]
pub struct Row {
    pub what: String,
    pub musicfs: String,
    pub bindfs: String,
    pub native: String,
    pub vs_bindfs: String,
    pub vs_native: String,
    pub target: String,
    /// The peer cells (empty on rows without peers; the peer columns are shown only when some
    /// row has one).
    pub native_tree: String,
    pub musefs: String,
    pub rclone: String,
    pub vs_native_tree: String,
    pub vs_musefs: String,
}

/// The headers when some row has peer cells.
const PEER_HEADERS: [&str; 12] = [
    "what",
    "musicfs",
    "bindfs",
    "native",
    "native tree",
    "musefs",
    "rclone",
    "musicfs/bindfs",
    "musicfs/native",
    "musicfs/native tree",
    "musicfs/musefs",
    "target",
];

const HEADERS: [&str; 7] = [
    "what",
    "musicfs",
    "bindfs",
    "native",
    "musicfs/bindfs",
    "musicfs/native",
    "target",
];

impl Row {
    fn cells(&self) -> [&str; 7] {
        [
            &self.what,
            &self.musicfs,
            &self.bindfs,
            &self.native,
            &self.vs_bindfs,
            &self.vs_native,
            &self.target,
        ]
    }

    fn has_peers(&self) -> bool {
        [&self.native_tree, &self.musefs, &self.rclone]
            .iter()
            .any(|c| !c.is_empty())
    }

    fn peer_cells(&self) -> Vec<&str> {
        vec![
            &self.what,
            &self.musicfs,
            &self.bindfs,
            &self.native,
            dash(&self.native_tree),
            dash(&self.musefs),
            dash(&self.rclone),
            &self.vs_bindfs,
            &self.vs_native,
            dash(&self.vs_native_tree),
            dash(&self.vs_musefs),
            &self.target,
        ]
    }
}

/// `-` for an empty cell.
fn dash(s: &str) -> &str {
    if s.is_empty() { "-" } else { s }
}

/// A markdown table, padded so it also reads well in a terminal.
pub(super) fn render_table(rows: &[Row]) -> String {
    if rows.iter().any(Row::has_peers) {
        let cells: Vec<Vec<&str>> = rows.iter().map(Row::peer_cells).collect();
        return render_grid(&PEER_HEADERS, &cells);
    }
    let cells: Vec<Vec<&str>> = rows.iter().map(|r| r.cells().to_vec()).collect();
    render_grid(&HEADERS, &cells)
}

/// A markdown table of any width (short rows are padded with empty cells).
pub(super) fn render_grid(headers: &[&str], rows: &[Vec<&str>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &[&str]| {
        let mut s = String::from("|");
        for (i, w) in widths.iter().enumerate() {
            let c = cells.get(i).copied().unwrap_or("");
            let pad = w - c.chars().count().min(*w);
            let _ = write!(s, " {c}{} |", " ".repeat(pad));
        }
        s.push('\n');
        s
    };
    let mut out = line(headers);
    out.push('|');
    for w in &widths {
        let _ = write!(out, "{}|", "-".repeat(w + 2));
    }
    out.push('\n');
    for row in rows {
        out.push_str(&line(row));
    }
    out
}

/// Median, min and max of some samples.
#[derive(Clone, Copy, Debug)]
pub(super) struct Stats {
    pub(super) median: f64,
    pub(super) min: f64,
    pub(super) max: f64,
    n: usize,
}

impl Stats {
    pub(super) fn of(samples: &[f64]) -> Option<Stats> {
        if samples.is_empty() {
            return None;
        }
        let mut v = samples.to_vec();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Stats {
            median,
            min: v[0],
            max: v[n - 1],
            n,
        })
    }

    /// `median unit (min..max)`.
    pub(super) fn show(&self, fmt: fn(f64) -> String, unit: &str) -> String {
        let unit = if unit.is_empty() {
            String::new()
        } else {
            format!(" {unit}")
        };
        if self.n > 1 {
            format!(
                "{}{unit} ({}..{})",
                fmt(self.median),
                fmt(self.min),
                fmt(self.max)
            )
        } else {
            format!("{}{unit}", fmt(self.median))
        }
    }
}

pub(super) fn show_opt(
    s: Option<Stats>,
    fmt: fn(f64) -> String,
    unit: &str,
    missing: &str,
) -> String {
    s.map_or_else(|| missing.to_string(), |s| s.show(fmt, unit))
}

pub(super) fn fmt_secs(s: f64) -> String {
    if s < 10.0 {
        format!("{s:.3}")
    } else {
        format!("{s:.1}")
    }
}

pub(super) fn fmt_rate(r: f64) -> String {
    if r < 100.0 {
        format!("{r:.1}")
    } else {
        format!("{r:.0}")
    }
}

pub(super) fn fmt_thousands(x: f64) -> String {
    let n = x.round().max(0.0) as u64;
    let digits = n.to_string();
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

pub(super) fn fmt_ratio(r: f64) -> String {
    format!("{r:.2}x")
}

pub(super) fn fmt_bytes(b: u64) -> String {
    let b = b as f64;
    if b >= 1e9 {
        format!("{:.2} GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.1} MB", b / 1e6)
    } else {
        format!("{:.0} kB", b / 1e3)
    }
}

/// Met, goal met or missed, for a value where `higher` is better (or lower).
pub(super) fn verdict(value: f64, target: f64, goal: f64, higher: bool) -> &'static str {
    let ok = |t: f64| if higher { value >= t } else { value <= t };
    if ok(goal) {
        "goal met"
    } else if ok(target) {
        "met"
    } else {
        "MISSED"
    }
}

pub(super) fn fmt_ms(ms: f64) -> String {
    if ms < 10.0 {
        format!("{ms:.2}")
    } else if ms < 100.0 {
        format!("{ms:.1}")
    } else {
        format!("{ms:.0}")
    }
}

/// Whole milliseconds as logged (a median of two may end in .5).
pub(super) fn fmt_whole_ms(ms: f64) -> String {
    if ms.fract() == 0.0 {
        format!("{ms:.0}")
    } else {
        format!("{ms:.1}")
    }
}

pub(super) fn fmt_mb(mb: f64) -> String {
    format!("{mb:.1}")
}

/// A musicfs-only row.
pub(super) fn solo_row(what: String, musicfs: String, target: String) -> Row {
    Row {
        what,
        musicfs,
        bindfs: "-".into(),
        native: "-".into(),
        vs_bindfs: "-".into(),
        vs_native: "-".into(),
        target,
        ..Row::default()
    }
}

/// `target: met/MISSED` for a value where lower is better and there is no separate goal.
pub(super) fn below(value: Option<f64>, limit: f64, target: &str) -> String {
    match value {
        Some(v) if v < limit => format!("{target}: met"),
        Some(_) => format!("{target}: MISSED"),
        None => target.to_string(),
    }
}

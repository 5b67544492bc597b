//! The roots of the walks and reads, their samples, and the rows made of them.

use super::table::{Row, Stats, fmt_bytes, fmt_rate, fmt_ratio, fmt_secs, show_opt, verdict};
use super::trees::Pass;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Root {
    Musicfs,
    Bindfs,
    Native,
    /// A native copy of the tree the musicfs mount shows.
    NativeTree,
    Musefs,
    Rclone,
}

pub(super) const ALL_ROOTS: [Root; 6] = [
    Root::Musicfs,
    Root::Bindfs,
    Root::Native,
    Root::NativeTree,
    Root::Musefs,
    Root::Rclone,
];

impl Root {
    pub(super) fn name(self) -> &'static str {
        match self {
            Root::Musicfs => "musicfs",
            Root::Bindfs => "bindfs",
            Root::Native => "native",
            Root::NativeTree => "native tree",
            Root::Musefs => "musefs",
            Root::Rclone => "rclone",
        }
    }

    pub(super) fn is_peer(self) -> bool {
        matches!(self, Root::NativeTree | Root::Musefs | Root::Rclone)
    }
}

/// Per-root samples of one measurement.
#[derive(Default)]
pub(super) struct Samples {
    by_root: [Vec<Pass>; 6],
}

impl Samples {
    pub(super) fn push(&mut self, root: Root, pass: Pass) {
        self.by_root[root as usize].push(pass);
    }

    pub(super) fn get(&self, root: Root) -> &[Pass] {
        &self.by_root[root as usize]
    }
}

/// Which peers the table shows, and which of them are missing.
pub(super) struct Shown {
    /// False with `--no-peers`: the peer columns stay empty (and so are not shown).
    pub(super) peers: bool,
    pub(super) missing: Vec<Root>,
}

impl Shown {
    fn cell(&self, root: Root, s: Option<Stats>, fmt: fn(f64) -> String) -> String {
        if root.is_peer() && !self.peers {
            String::new()
        } else if self.missing.contains(&root) {
            "missing".into()
        } else {
            show_opt(s, fmt, "", "n/a")
        }
    }

    fn ratio(&self, root: Root, r: Option<f64>) -> String {
        if root.is_peer() && !self.peers {
            String::new()
        } else {
            r.map_or("n/a".into(), fmt_ratio)
        }
    }
}

fn medians(passes: &[Pass], f: fn(&Pass) -> f64) -> Option<Stats> {
    Stats::of(&passes.iter().map(f).collect::<Vec<_>>())
}

/// The median of each root.
fn all_medians(t: &Samples, f: fn(&Pass) -> f64) -> [Option<Stats>; 6] {
    ALL_ROOTS.map(|r| medians(t.get(r), f))
}

/// A row of per-root values: musicfs value / other value as the ratios.
fn row(what: &str, m: &[Option<Stats>; 6], fmt: fn(f64) -> String, shown: &Shown) -> Row {
    let ratio = |x: Root| match (m[Root::Musicfs as usize], m[x as usize]) {
        (Some(a), Some(b)) if b.median > 0.0 => Some(a.median / b.median),
        _ => None,
    };
    let cell = |r: Root| shown.cell(r, m[r as usize], fmt);
    Row {
        what: what.to_string(),
        musicfs: cell(Root::Musicfs),
        bindfs: cell(Root::Bindfs),
        native: cell(Root::Native),
        native_tree: cell(Root::NativeTree),
        musefs: cell(Root::Musefs),
        rclone: cell(Root::Rclone),
        vs_bindfs: shown.ratio(Root::Bindfs, ratio(Root::Bindfs)),
        vs_native: shown.ratio(Root::Native, ratio(Root::Native)),
        vs_native_tree: shown.ratio(Root::NativeTree, ratio(Root::NativeTree)),
        vs_musefs: shown.ratio(Root::Musefs, ratio(Root::Musefs)),
        target: String::new(),
    }
}

/// A row of times (lower is better); the ratios are musicfs time / other time.
pub(super) fn time_row(
    what: &str,
    t: &Samples,
    target: &str,
    limits: Option<(f64, f64)>,
    shown: &Shown,
) -> Row {
    let m = all_medians(t, |p| p.secs);
    let mut r = row(what, &m, fmt_secs, shown);
    let rb = match (m[Root::Musicfs as usize], m[Root::Bindfs as usize]) {
        (Some(a), Some(b)) if b.median > 0.0 => Some(a.median / b.median),
        _ => None,
    };
    r.target = match (rb, limits) {
        (Some(rb), Some((limit, goal))) => {
            format!("{target}: {}", verdict(rb, limit, goal, false))
        }
        _ => target.to_string(),
    };
    r
}

/// A row of microseconds per file (lower is better); the ratios are musicfs / other.
pub(super) fn per_file_row(what: &str, t: &Samples, shown: &Shown) -> Row {
    let m = all_medians(t, |p| p.secs * 1e6 / (p.files.max(1) as f64));
    let mut r = row(what, &m, |us| format!("{us:.1}"), shown);
    r.target = "-".into();
    r
}

/// A row of read throughputs; the ratios are musicfs MB/s / other MB/s. The target is musicfs
/// throughput >= 0.8x bindfs, the design goal musicfs time <= 1.1x bindfs.
pub(super) fn read_row(what: &str, t: &Samples, shown: &Shown) -> Row {
    let m = all_medians(t, |p| p.bytes as f64 / 1e6 / p.secs.max(1e-9));
    let mut r = row(what, &m, fmt_rate, shown);
    let secs = all_medians(t, |p| p.secs);
    let ratio = |v: &[Option<Stats>; 6]| match (v[Root::Musicfs as usize], v[Root::Bindfs as usize])
    {
        (Some(a), Some(b)) if b.median > 0.0 => Some(a.median / b.median),
        _ => None,
    };
    let target = ">= 0.8x bindfs (goal: time <= 1.1x)";
    r.target = match (ratio(&m), ratio(&secs)) {
        (Some(rb), Some(tr)) => {
            let v = if tr <= 1.1 {
                "goal met"
            } else if rb >= 0.8 {
                "met"
            } else {
                "MISSED"
            };
            format!("{target}: {v}")
        }
        _ => target.to_string(),
    };
    r
}

/// A row that says why it has no numbers.
pub(super) fn na_row(what: &str, why: &str, target: &str, shown: &Shown) -> Row {
    let cell = |r: Root| {
        if r.is_peer() && !shown.peers {
            String::new()
        } else {
            "n/a".into()
        }
    };
    Row {
        what: what.into(),
        musicfs: format!("n/a ({why})"),
        bindfs: "n/a".into(),
        native: "n/a".into(),
        native_tree: cell(Root::NativeTree),
        musefs: cell(Root::Musefs),
        rclone: cell(Root::Rclone),
        vs_bindfs: "-".into(),
        vs_native: "-".into(),
        vs_native_tree: "-".into(),
        vs_musefs: "-".into(),
        target: target.into(),
    }
}

/// What each root shows: files and bytes read.
pub(super) fn seen_row(t: &Samples, shown: &Shown) -> Row {
    let cell = |r: Root| {
        if r.is_peer() && !shown.peers {
            String::new()
        } else if shown.missing.contains(&r) {
            "missing".into()
        } else {
            t.get(r).first().map_or("n/a".to_string(), |p| {
                format!("{} files, {}", p.files, fmt_bytes(p.bytes))
            })
        }
    };
    Row {
        what: "files and bytes read per pass".into(),
        musicfs: cell(Root::Musicfs),
        bindfs: cell(Root::Bindfs),
        native: cell(Root::Native),
        native_tree: cell(Root::NativeTree),
        musefs: cell(Root::Musefs),
        rclone: cell(Root::Rclone),
        vs_bindfs: "-".into(),
        vs_native: "-".into(),
        vs_native_tree: "-".into(),
        vs_musefs: "-".into(),
        target: "-".into(),
    }
}

//! One run's section of BENCHMARKS.md: header lines, the table and the notes.

use std::fmt::Write as _;
use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use super::cachetable::{CACHE_NOTE, CacheRow, render_ratio_table};
use super::consts::SECTION_END;
use super::procfs::meminfo_kb;
use super::remotetable::REMOTE_NOTE;
use super::table::{Row, render_table};
use crate::harness::{run_captured, workspace_root};

pub(super) struct Report {
    /// The section's marker line (`record::section_start`).
    pub(super) marker: String,
    pub(super) tracks: usize,
    pub(super) command: String,
    pub(super) date: String,
    pub(super) machine: String,
    pub(super) commit: String,
    pub(super) library: String,
    /// The library of the scale rows (`--big-tracks`), if they ran.
    pub(super) big_library: Option<String>,
    /// The library of the chunk cache rows (`--cache-tracks`), if they ran.
    pub(super) cache_library: Option<String>,
    /// The libraries of the remote-origin rows (`--remote-tracks`), if they ran.
    pub(super) remote_library: Option<String>,
    pub(super) rows: Vec<Row>,
    pub(super) cache_rows: Vec<CacheRow>,
    pub(super) remote_rows: Vec<CacheRow>,
    pub(super) notes: Vec<String>,
}

impl Report {
    pub(super) fn section(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "{}", self.marker);
        let _ = writeln!(s, "## {} tracks, {}", self.tracks, self.date);
        let _ = writeln!(s);
        let _ = writeln!(s, "- command: `{}`", self.command);
        let _ = writeln!(s, "- machine: {}", self.machine);
        let _ = writeln!(s, "- commit: {}", self.commit);
        let _ = writeln!(s, "- library: {}", self.library);
        if let Some(big) = &self.big_library {
            let _ = writeln!(s, "- scale library: {big}");
        }
        if let Some(cache) = &self.cache_library {
            let _ = writeln!(s, "- cache library: {cache}");
        }
        if let Some(remote) = &self.remote_library {
            let _ = writeln!(s, "- remote libraries: {remote}");
        }
        let _ = writeln!(s);
        s.push_str(&render_table(&self.rows));
        if !self.cache_rows.is_empty() {
            let _ = writeln!(s);
            s.push_str(&render_ratio_table("chunk cache", &self.cache_rows));
            let _ = writeln!(s);
            s.push_str(CACHE_NOTE);
        }
        if !self.remote_rows.is_empty() {
            let _ = writeln!(s);
            s.push_str(&render_ratio_table("remote origins", &self.remote_rows));
            let _ = writeln!(s);
            s.push_str(REMOTE_NOTE);
        }
        if !self.notes.is_empty() {
            let _ = writeln!(s);
            let _ = writeln!(s, "Notes:");
            let _ = writeln!(s);
            for n in &self.notes {
                let _ = writeln!(s, "- {n}");
            }
        }
        let _ = writeln!(s, "{SECTION_END}");
        s
    }
}

/// The command line of this run, with `--big-tracks`, `--cache-tracks` and (unless
/// `--no-remote`) `--remote-tracks` spelled out even when they were defaulted.
pub(super) fn command_line(
    big_tracks: usize,
    cache_tracks: usize,
    remote_tracks: Option<usize>,
) -> String {
    let mut args: Vec<String> = std::env::args().skip(1).map(|a| shell_quote(&a)).collect();
    let mut spelled = vec![
        ("--big-tracks", big_tracks),
        ("--cache-tracks", cache_tracks),
    ];
    spelled.extend(remote_tracks.map(|n| ("--remote-tracks", n)));
    for (flag, value) in spelled {
        if !args
            .iter()
            .any(|a| a == flag || a.starts_with(&format!("{flag}=")))
        {
            args.push(format!("{flag} {value}"));
        }
    }
    format!("cargo xtask {}", args.join(" "))
}

fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-./=:,+@%".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

fn command_output(program: &str, args: &[&str]) -> Option<String> {
    let mut cmd = Command::new(program);
    cmd.args(args).current_dir(workspace_root());
    let out = run_captured(&mut cmd, program, Duration::from_secs(60)).ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

pub(super) fn git_commit() -> String {
    let Some(head) = command_output("git", &["rev-parse", "--short", "HEAD"]) else {
        return "unknown (not a git checkout?)".to_string();
    };
    match command_output("git", &["--no-optional-locks", "status", "--porcelain"]) {
        Some(s) if s.is_empty() => head,
        Some(_) => format!("{head}-dirty"),
        None => format!("{head} (status unknown)"),
    }
}

pub(super) fn machine_info(work: &Path) -> String {
    let kernel = command_output("uname", &["-r"]).unwrap_or_else(|| "unknown".into());
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .filter(|l| l.starts_with("model name") || l.starts_with("Model"))
                .find_map(|l| l.split_once(':').map(|(_, v)| v.trim().to_string()))
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let ram = meminfo_kb("MemTotal").map_or("unknown".into(), |kb| {
        format!("{:.1} GiB", kb as f64 / 1048576.0)
    });
    let fs_type = work
        .to_str()
        .and_then(|w| command_output("df", &["-PT", w]))
        .and_then(|out| {
            out.lines()
                .nth(1)
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_string))
        })
        .unwrap_or_else(|| "unknown".into());
    format!(
        "Linux {kernel}, {cpu}, {nproc} CPUs, {ram} RAM, work dir on {fs_type} (`{}`); {}",
        work.display(),
        super::wakeup::describe()
    )
}

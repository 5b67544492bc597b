//! `musicfs cache ...`: the chunk cache's status, verify (a progress bar on
//! a terminal), clear, pin and unpin.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::cli::CacheAction;
use crate::control::{CacheAnswer, ChunkCacheView, cache_request};

/// The musicfs mount that holds `path`, and `path` relative to it (from
/// /proc/self/mountinfo: no access to the mount itself).
pub fn mount_of(path: &Path) -> Option<(PathBuf, PathBuf)> {
    let abs = std::path::absolute(path).ok()?;
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mut best: Option<PathBuf> = None;
    for line in info.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(sep) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        // Type fuse or fuse.musicfs, source (fsname) musicfs.
        let fuse = fields
            .get(sep + 1)
            .is_some_and(|t| *t == "fuse" || *t == "fuse.musicfs");
        if !fuse || fields.get(sep + 2) != Some(&"musicfs") {
            continue;
        }
        let Some(point) = fields.get(4) else { continue };
        let point = PathBuf::from(point.replace("\\040", " "));
        if abs.starts_with(&point)
            && best
                .as_ref()
                .is_none_or(|b| point.as_os_str().len() > b.as_os_str().len())
        {
            best = Some(point);
        }
    }
    let mount = best?;
    let rel = abs.strip_prefix(&mount).ok()?.to_path_buf();
    Some((mount, rel))
}

/// Draws a progress bar over the current terminal line.
pub fn progress_bar(done: u64, total: u64, unit: &str) {
    print!("{}", bar(done, total, unit));
    let _ = std::io::stdout().flush();
}

fn bar(done: u64, total: u64, unit: &str) -> String {
    const WIDTH: u64 = 30;
    let filled = (done * WIDTH)
        .checked_div(total)
        .unwrap_or(WIDTH)
        .min(WIDTH);
    format!(
        "\r[{}{}] {done}/{total} {unit}",
        "#".repeat(filled as usize),
        " ".repeat((WIDTH - filled) as usize)
    )
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

pub fn render_view(v: &ChunkCacheView) -> String {
    let mut out = String::new();
    let state = if v.bypassed {
        let when = crate::cli::events::chrono_like(
            i64::try_from(v.since_ms / 1000).unwrap_or(0),
            v.since_ms % 1000,
        );
        format!("{} (bypassed since {when} UTC: {})", v.state, v.reason)
    } else {
        v.state.clone()
    };
    out.push_str(&format!("cache      {}\nstate      {state}\n", v.dir));
    if !v.writes_stopped.is_empty() {
        out.push_str(&format!("writes     stopped: {}\n", v.writes_stopped));
    }
    out.push_str(&format!(
        "size       {} of {} in {} chunks ({} files pinned); disk {}% free (watermark {}%)\n",
        human(v.figure("used_bytes")),
        human(v.figure("max_bytes")),
        v.figure("chunks"),
        v.figure("pinned_files"),
        v.figure("free_percent"),
        v.figure("min_free_percent"),
    ));
    let (hits, misses) = (v.figure("hits"), v.figure("misses"));
    let ratio = if hits + misses == 0 {
        0.0
    } else {
        hits as f64 * 100.0 / (hits + misses) as f64
    };
    out.push_str(&format!(
        "chunks     {hits} hits, {misses} misses ({ratio:.1}% hits), {} read ahead, {} written, {} not written, {} evicted\n",
        v.figure("read_ahead"),
        v.figure("written"),
        v.figure("skipped"),
        v.figure("evicted"),
    ));
    out.push_str(&format!(
        "faults     {} corrupt, {} missing (fetched again), {} disk errors, {} reads bypassed\n",
        v.figure("corrupt"),
        v.figure("missing"),
        v.figure("disk_errors"),
        v.figure("bypassed_reads"),
    ));
    out
}

pub fn run(action: &CacheAction, state_dir: &Path) -> Result<()> {
    match action {
        CacheAction::Status { json, .. } => {
            let CacheAnswer::Status(v) =
                cache_request(state_dir, ("status", b"", false), |_, _| {})?
            else {
                bail!("the engine answered something else than a cache status");
            };
            if *json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print!("{}", render_view(&v));
            }
        }
        CacheAction::Verify { repair, json, .. } => {
            let tty = std::io::stdout().is_terminal() && !json;
            let mut last_line = std::time::Instant::now();
            let answer = cache_request(state_dir, ("verify", b"", *repair), |done, total| {
                if *json {
                    // One object per line: the progress, then the result.
                    println!(
                        "{}",
                        serde_json::json!({"progress": {"done": done, "total": total}})
                    );
                } else if tty {
                    progress_bar(done, total, "chunks");
                } else if !json && (done == total || last_line.elapsed().as_secs() >= 2) {
                    last_line = std::time::Instant::now();
                    println!("verified {done}/{total} chunks");
                }
            })?;
            if tty {
                println!();
            }
            let CacheAnswer::Report(report) = answer else {
                bail!("the engine answered something else than a verify report");
            };
            print_report(&report, *json)?;
        }
        CacheAction::Clear { .. } => {
            let CacheAnswer::Report(report) =
                cache_request(state_dir, ("clear", b"", false), |_, _| {})?
            else {
                bail!("the engine answered something else than a report");
            };
            print_report(&report, false)?;
        }
        CacheAction::Pin { path, .. } | CacheAction::Unpin { path, .. } => {
            let pin = matches!(action, CacheAction::Pin { .. });
            let (_, rel) = mount_of(path)
                .with_context(|| format!("{} is not in a musicfs mount", path.display()))?;
            use std::os::unix::ffi::OsStrExt;
            let CacheAnswer::Report(report) = cache_request(
                state_dir,
                (
                    if pin { "pin" } else { "unpin" },
                    rel.as_os_str().as_bytes(),
                    false,
                ),
                |_, _| {},
            )?
            else {
                bail!("the engine answered something else than a report");
            };
            let files = report
                .iter()
                .find(|(n, _)| n == "files")
                .map_or(0, |(_, v)| *v);
            println!("{} {files} files", if pin { "pinned" } else { "unpinned" });
        }
    }
    Ok(())
}

fn print_report(report: &[(String, u64)], json: bool) -> Result<()> {
    if json {
        let map: serde_json::Map<String, serde_json::Value> = report
            .iter()
            .map(|(k, v)| (k.clone(), (*v).into()))
            .collect();
        println!("{}", serde_json::Value::Object(map));
    } else {
        let parts: Vec<String> = report.iter().map(|(k, v)| format!("{k} {v}")).collect();
        println!("{}", parts.join(", "));
    }
    Ok(())
}

/// `musicfs search QUERY` and `musicfs search rebuild`.
pub fn search(rebuild: bool, query: Option<&str>, json: bool, state_dir: &Path) -> Result<()> {
    if rebuild {
        let tracks = crate::control::search_rebuild(state_dir, |done, total| {
            progress_bar(done, total, "tracks");
        })?;
        println!("\nsearch index rebuilt: {tracks} tracks");
        return Ok(());
    }
    let Some(query) = query else {
        anyhow::bail!("give a query (or `rebuild`); see `musicfs search --help`");
    };
    let paths = crate::control::search_request(state_dir, query)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&paths)?);
    } else {
        for p in paths {
            println!("{p}");
        }
    }
    Ok(())
}

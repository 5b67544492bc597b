//! The checks of directories: the origins, inotify limits against their
//! directories, the state and cache directories.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Result;

use crate::cli::doctor::{
    Check, DIR_DEADLINE, MIN_FREE_BYTES, Status, WALK_DEADLINE, WALK_MAX_ENTRIES, bounded, check,
    uid,
};
use crate::config::Config;
use crate::origins::Probe;

pub fn origins(config: &Config, probes: &[Option<Probe>]) -> Check {
    const NAME: &str = "origins";
    if config.origins.is_empty() {
        return check(
            NAME,
            Status::Fail,
            "no origin directory given: --origin DIR, or origins = [...] in the config file",
        );
    }
    let mut good = Vec::new();
    let mut bad = Vec::new();
    let settings = config.origin_settings();
    for (o, p) in config.origins.iter().zip(probes) {
        if crate::origins::remote::is_remote(o) {
            let s = settings.get(o).cloned().unwrap_or_default();
            match crate::origins::remote::check_once(o, &s) {
                Ok(what) => good.push(format!("{} ({what})", o.display())),
                Err(e) => bad.push(format!("{}: {e}", o.display())),
            }
            continue;
        }
        match p {
            None => bad.push(format!(
                "{}: no answer within {} ms (hung network filesystem?)",
                o.display(),
                crate::origins::PROBE_TIMEOUT.as_millis()
            )),
            Some(Probe { dir: Err(e), .. }) => bad.push(format!("{}: {e}", o.display())),
            Some(p) => good.push(format!(
                "{} ({})",
                o.display(),
                if p.local {
                    "local disk"
                } else {
                    "network filesystem"
                }
            )),
        }
    }
    if bad.is_empty() {
        check(NAME, Status::Ok, good.join(", "))
    } else {
        check(
            NAME,
            Status::Fail,
            format!("{}: check the path or the share", bad.join("; ")),
        )
    }
}

/// Directories under `roots` (the roots included), counting until
/// `deadline` or `max_entries` entries; `false` if cut short.
pub fn count_dirs(roots: &[PathBuf], deadline: Duration, max_entries: u64) -> (u64, bool) {
    let dirs = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (d, s, roots) = (dirs.clone(), stop.clone(), roots.to_vec());
    let done = bounded(deadline, move || {
        let mut entries = 0u64;
        for root in roots {
            for entry in walkdir::WalkDir::new(root).follow_links(false) {
                entries += 1;
                if entries > max_entries || s.load(Ordering::Relaxed) {
                    return false;
                }
                if entry.is_ok_and(|e| e.file_type().is_dir()) {
                    d.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        true
    });
    stop.store(true, Ordering::Relaxed);
    (dirs.load(Ordering::Relaxed), done == Some(true))
}

pub fn read_number(path: &str) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// A sysctl value to suggest for `need`: twice as much, a power of two.
pub fn suggest(need: u64) -> u64 {
    need.saturating_mul(2).next_power_of_two().max(524_288)
}

pub fn inotify(config: &Config, probes: &[Option<Probe>]) -> Check {
    const NAME: &str = "inotify";
    if config.watch == "off" || config.watch == "poll" {
        return check(
            NAME,
            Status::Ok,
            format!("not used (watch = {})", config.watch),
        );
    }
    let watched: Vec<PathBuf> = config
        .origins
        .iter()
        .zip(probes)
        .filter(|(_, p)| {
            p.as_ref()
                .is_some_and(|p| p.dir.is_ok() && (p.local || config.watch == "inotify"))
        })
        .map(|(o, _)| o.clone())
        .collect();
    if watched.is_empty() {
        return check(
            NAME,
            Status::Ok,
            "not used: no reachable origin on a local disk (network origins are polled)",
        );
    }
    let (watches, instances) = (
        read_number("/proc/sys/fs/inotify/max_user_watches"),
        read_number("/proc/sys/fs/inotify/max_user_instances"),
    );
    let (Some(watches), Some(instances)) = (watches, instances) else {
        return check(
            NAME,
            Status::Warn,
            "cannot read /proc/sys/fs/inotify/max_user_watches or max_user_instances",
        );
    };
    let (dirs, complete) = count_dirs(&watched, WALK_DEADLINE, WALK_MAX_ENTRIES);
    let counted = if complete {
        format!("{dirs} directories")
    } else {
        format!("at least {dirs} directories (counting stopped)")
    };
    let n = watched.len();
    let origins = if n == 1 { "origin" } else { "origins" };
    let summary = format!(
        "{counted} to watch in {n} {origins}; max_user_watches {watches}, max_user_instances {instances}"
    );
    let keep = "(and in /etc/sysctl.d/ to keep it)";
    if dirs > watches {
        return check(
            NAME,
            Status::Warn,
            format!(
                "{summary}: past the limit origins are polled instead; raise it: sysctl fs.inotify.max_user_watches={} {keep}",
                suggest(dirs)
            ),
        );
    }
    if dirs > watches / 4 * 3 {
        return check(
            NAME,
            Status::Warn,
            format!(
                "{summary}: close to the limit, which this user's other programs share; raise it: sysctl fs.inotify.max_user_watches={} {keep}",
                suggest(dirs)
            ),
        );
    }
    if n as u64 > instances / 2 {
        return check(
            NAME,
            Status::Warn,
            format!(
                "{summary}: one inotify instance per origin; raise it: sysctl fs.inotify.max_user_instances={} {keep}",
                (instances * 2).max(n as u64 * 4)
            ),
        );
    }
    check(NAME, Status::Ok, summary)
}

pub fn dir_check(name: &'static str, path: Result<PathBuf>, needed: bool) -> Check {
    let path = match path {
        Ok(p) => p,
        Err(e) => return check(name, Status::Fail, format!("{e:#}")),
    };
    let shown = path.display().to_string();
    let (status, detail) =
        bounded(DIR_DEADLINE, move || inspect_dir(name, &path)).unwrap_or_else(|| {
            (
                Status::Fail,
                format!(
                    "{shown}: no answer within {} s (a hung filesystem?)",
                    DIR_DEADLINE.as_secs()
                ),
            )
        });
    if status == Status::Fail && !needed {
        return check(
            name,
            Status::Warn,
            format!("{detail} (not needed now: no origin is cached)"),
        );
    }
    check(name, status, detail)
}

/// Where `path` is or would be created, writable and with room.
pub fn inspect_dir(key: &str, path: &Path) -> (Status, String) {
    use nix::unistd::{AccessFlags, access};
    let shown = path.display();
    let (existing, exists) = match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => (path.to_path_buf(), true),
        Ok(_) => {
            return (
                Status::Fail,
                format!("{shown} is not a directory: set {key}"),
            );
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {
            let parent = path
                .ancestors()
                .skip(1)
                .find(|a| std::fs::metadata(a).is_ok());
            match parent {
                Some(p) if p.is_dir() => (p.to_path_buf(), false),
                _ => {
                    return (
                        Status::Fail,
                        format!("{shown}: no existing parent directory"),
                    );
                }
            }
        }
        Err(e) => return (Status::Fail, format!("{shown}: {e}")),
    };
    let uid = uid();
    if access(&existing, AccessFlags::W_OK | AccessFlags::X_OK).is_err() {
        let detail = if exists {
            format!("{shown} is not writable by this user (uid {uid}): chown it, or set {key}")
        } else {
            format!(
                "{shown} does not exist and cannot be created: {} is not writable by this user (uid {uid}): mkdir -p {shown} && chown {uid} {shown} (as root), or set {key}",
                existing.display()
            )
        };
        return (Status::Fail, detail);
    }
    if exists {
        // access(2) says yes; a probe file shows that a file can really be
        // made there (a read-only mount, a full disk, quotas).
        let probe = existing.join(format!(".musicfs-doctor-{}", std::process::id()));
        let made = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&probe);
        if let Err(e) = made {
            return (
                Status::Fail,
                format!("cannot create a file in {shown}: {e}"),
            );
        }
        let _ = std::fs::remove_file(&probe);
    }
    let place = if exists {
        format!("{shown} is writable")
    } else {
        format!("{shown} will be created in {}", existing.display())
    };
    match nix::sys::statvfs::statvfs(&existing) {
        Ok(s) => {
            let frsize = s.fragment_size();
            let free = s.blocks_available().saturating_mul(frsize);
            let total = s.blocks().saturating_mul(frsize);
            let percent = free.saturating_mul(100).checked_div(total).unwrap_or(100);
            let room = format!("{} free ({percent} %)", human(free));
            if free < MIN_FREE_BYTES || percent < 10 {
                (
                    Status::Warn,
                    format!("{place}, but only {room} on its disk: free some space, or set {key}"),
                )
            } else {
                (Status::Ok, format!("{place}, {room}"))
            }
        }
        Err(e) => (
            Status::Warn,
            format!("{place}; cannot read its free space: {e}"),
        ),
    }
}

/// `12.3 GiB`.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

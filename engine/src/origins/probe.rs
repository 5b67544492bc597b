//! Bounded looks at origin directories: a hung network filesystem costs one
//! stuck thread per path, never a hung caller.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Result, bail};

use crate::config::Config;
use crate::config::reload::ConfigSource;
use crate::origins::local::is_local_fs;

/// How long an origin directory may take to answer a probe.
pub const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// What one look at an origin directory found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probe {
    /// A usable directory, or why not.
    pub dir: Result<(), String>,
    /// On a local filesystem (statfs type).
    pub local: bool,
    /// The path with symlinks resolved.
    pub canonical: Option<PathBuf>,
}

fn look(path: &Path) -> Probe {
    let dir = match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err("not a directory".into()),
        Err(e) => Err(e.to_string()),
    };
    Probe {
        local: dir.is_ok() && is_local_fs(path),
        canonical: path.canonicalize().ok(),
        dir,
    }
}

/// One probe in flight and its answer, shared by every caller that asks
/// about the same path meanwhile.
#[derive(Default)]
struct Slot {
    answer: parking_lot::Mutex<Option<Probe>>,
    done: parking_lot::Condvar,
}

/// Probes in flight by path: a path whose filesystem hangs gets one stuck
/// thread, never one per caller.
static PROBING: parking_lot::Mutex<std::collections::BTreeMap<PathBuf, Arc<Slot>>> =
    parking_lot::Mutex::new(std::collections::BTreeMap::new());

/// Looks at each path (stat, statfs, canonical path) in parallel, under one
/// common deadline (`PROBE_TIMEOUT`); `None` for a path that did not answer
/// in time (a hung network filesystem). A caller that finds a probe of the
/// same path in flight waits for that one's answer.
pub fn probe_all(paths: &[PathBuf]) -> Vec<Option<Probe>> {
    probe_with(paths, look)
}

fn probe_with(paths: &[PathBuf], probe: fn(&Path) -> Probe) -> Vec<Option<Probe>> {
    use std::time::Instant;
    let deadline = Instant::now() + PROBE_TIMEOUT;
    let slots: Vec<Option<Arc<Slot>>> = paths
        .iter()
        .map(|p| {
            let slot = {
                let mut probing = PROBING.lock();
                if let Some(slot) = probing.get(p) {
                    return Some(slot.clone());
                }
                let slot = Arc::new(Slot::default());
                probing.insert(p.clone(), slot.clone());
                slot
            };
            let (path, mine) = (p.clone(), slot.clone());
            let spawned = std::thread::Builder::new()
                .name("musicfs-probe".into())
                .spawn(move || {
                    let answer = probe(&path);
                    *mine.answer.lock() = Some(answer);
                    mine.done.notify_all();
                    PROBING.lock().remove(&path);
                });
            if spawned.is_err() {
                PROBING.lock().remove(p);
                return None;
            }
            Some(slot)
        })
        .collect();
    slots
        .into_iter()
        .map(|slot| {
            let slot = slot?;
            let mut answer = slot.answer.lock();
            while answer.is_none() {
                if slot.done.wait_until(&mut answer, deadline).timed_out() {
                    break;
                }
            }
            answer.clone()
        })
        .collect()
}

/// Whether each path is a usable origin directory (`Ok`), or why not,
/// within `PROBE_TIMEOUT` (see `probe_all`).
pub fn probe_dirs(paths: &[PathBuf]) -> Vec<Result<(), String>> {
    probe_all(paths)
        .into_iter()
        .map(|p| match p {
            Some(p) => p.dir,
            None => Err(format!(
                "no answer within {} ms (hung network filesystem?)",
                PROBE_TIMEOUT.as_millis()
            )),
        })
        .collect()
}

/// Absolute origin paths: they name origins in the catalog and the status.
/// Bounded: an origin on a hung filesystem keeps its absolute form.
pub fn absolutize(origins: &mut [PathBuf]) {
    // Remote origins (URLs) stay as written.
    let mut local: Vec<&mut PathBuf> = origins
        .iter_mut()
        .filter(|o| !crate::origins::remote::is_remote(o))
        .collect();
    let dirs: Vec<PathBuf> = local.iter().map(|o| o.to_path_buf()).collect();
    let probes = probe_all(&dirs);
    for (o, probe) in local.iter_mut().zip(probes) {
        match probe.and_then(|p| p.canonical) {
            Some(canonical) => **o = canonical,
            None => {
                if let Ok(abs) = std::path::absolute(&**o) {
                    **o = abs;
                }
            }
        }
    }
}

/// The configuration from its layers, with absolute origin paths.
pub fn load_config(source: &ConfigSource) -> Result<Config> {
    let mut c = source.load_layers()?;
    absolutize(&mut c.origins);
    // Per-origin settings are keyed by the origin as written: made
    // absolute the same way, so that they find their origin.
    let (mut dirs, settings): (Vec<PathBuf>, Vec<_>) =
        std::mem::take(&mut c.origin).into_iter().unzip();
    absolutize(&mut dirs);
    c.origin = dirs.into_iter().zip(settings).collect();
    Ok(c)
}

/// Every origin must be an existing directory (each checked within a
/// deadline: a hung network filesystem does not hang the check).
pub fn check_origins(config: &Config) -> Result<()> {
    check_origins_except(config, |_| false).map(drop)
}

/// Like `check_origins`, except that origins for which `known` is true
/// (the catalog already holds their files) may be unreachable: they are
/// returned with the reason, and served from the catalog meanwhile. A
/// NAS that is down must not keep a mount from (re)starting.
pub fn check_origins_except(
    config: &Config,
    known: impl Fn(&Path) -> bool,
) -> Result<Vec<(PathBuf, String)>> {
    if config.origins.is_empty() {
        bail!("no origin directory given (use --origin DIR or `origins` in the config file)");
    }
    let mut offline = Vec::new();
    // Remote origins: their URL is checked here, their server by the
    // syncer (a server that is down must not keep the mount from coming up).
    let (remote, local): (Vec<PathBuf>, Vec<PathBuf>) = config
        .origins
        .iter()
        .cloned()
        .partition(|o| crate::origins::remote::is_remote(o));
    for o in &remote {
        crate::origins::remote::RemoteSpec::parse(o)?;
    }
    for (o, answer) in local.iter().zip(probe_dirs(&local)) {
        match answer {
            Ok(()) => {}
            Err(why) if known(o) => offline.push((o.clone(), why)),
            Err(why) => bail!("origin directory {} cannot be used: {why}", o.display()),
        }
    }
    Ok(offline)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    static PROBES: AtomicUsize = AtomicUsize::new(0);

    fn slow_probe(p: &Path) -> Probe {
        PROBES.fetch_add(1, Ordering::SeqCst);
        if p.ends_with("hung") {
            std::thread::sleep(Duration::from_secs(3));
        }
        if p.ends_with("slow") {
            std::thread::sleep(Duration::from_millis(300));
        }
        Probe {
            dir: Ok(()),
            local: true,
            canonical: None,
        }
    }

    /// A hung origin is reported at the deadline; a second check while it
    /// still hangs starts no second probe; two callers asking about the same
    /// slow path at once share one probe and both get its answer.
    #[test]
    fn probes_are_shared_and_hung_ones_do_not_pile_up() {
        let paths: Vec<PathBuf> = ["/probe-test/a", "/probe-test/hung", "/probe-test/b"]
            .iter()
            .map(PathBuf::from)
            .collect();
        let answered = |v: Vec<Option<Probe>>| v.iter().map(Option::is_some).collect::<Vec<_>>();
        assert_eq!(
            answered(probe_with(&paths, slow_probe)),
            [true, false, true]
        );
        assert_eq!(PROBES.load(Ordering::SeqCst), 3);
        assert_eq!(
            answered(probe_with(&paths, slow_probe)),
            [true, false, true]
        );
        assert_eq!(
            PROBES.load(Ordering::SeqCst),
            5,
            "the hung origin was probed again"
        );

        let slow = vec![PathBuf::from("/probe-test/slow")];
        let other = {
            let slow = slow.clone();
            std::thread::spawn(move || probe_with(&slow, slow_probe))
        };
        let mine = probe_with(&slow, slow_probe);
        let theirs = other.join().unwrap();
        assert!(mine[0].is_some() && theirs[0].is_some());
        let probes = PROBES.load(Ordering::SeqCst);
        assert!(probes == 6 || probes == 7, "{probes} probes");
    }

    #[test]
    fn probes_say_why() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        let r = probe_dirs(&[dir.path().to_path_buf(), file, dir.path().join("missing")]);
        assert_eq!(r[0], Ok(()));
        assert_eq!(r[1], Err("not a directory".to_string()));
        assert!(r[2].as_ref().unwrap_err().contains("No such file"), "{r:?}");
    }
}

//! Read stalls while the engine or the shim is killed and restarted, or
//! swapped, under load: 4 readers open and read whole files in a loop; every operation's
//! latency is recorded, and for every fault the time until the first read
//! that started after it completes.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    Kill9,
    Swap,
    /// kill -9 of the shim (a new one takes the live connection over).
    ShimKill9,
    /// `musicfs shim swap`.
    ShimSwap,
}

impl Fault {
    pub const ALL: [Fault; 4] = [Fault::Kill9, Fault::Swap, Fault::ShimKill9, Fault::ShimSwap];
}

#[derive(Debug, Default)]
pub struct StallReport {
    pub faults: usize,
    pub ops: usize,
    pub failed: usize,
    /// Latency of every read operation (open + read whole file), ms.
    pub op_p50_ms: f64,
    pub op_p99_ms: f64,
    pub op_max_ms: f64,
    /// Per fault: from the fault to the end of the first read started after it, ms.
    pub recovery_p50_ms: f64,
    pub recovery_p99_ms: f64,
    pub recovery_max_ms: f64,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn engine_pid(state: &Path) -> Option<i32> {
    let needle = format!("engine --state-dir {}", state.display());
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        if String::from_utf8_lossy(&cmd)
            .replace('\0', " ")
            .contains(&needle)
        {
            return Some(pid);
        }
    }
    None
}

fn shim_pid(mnt: &Path) -> Option<i32> {
    let needle = format!("--mountpoint {} ", mnt.display());
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains("musicfs-shim") && cmd.contains(&needle) {
            return Some(pid);
        }
    }
    None
}

struct MountGuard {
    child: Child,
    mnt: PathBuf,
    musicfs: PathBuf,
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        let _ = Command::new(&self.musicfs)
            .arg("unmount")
            .arg(&self.mnt)
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
    }
}

/// Mounts `lib`, runs the load and injects `faults` faults of `kind`.
pub fn measure(
    musicfs: &Path,
    lib: &Path,
    work: &Path,
    kind: Fault,
    faults: usize,
) -> Result<StallReport> {
    let root = work.join(match kind {
        Fault::Kill9 => "stall-kill",
        Fault::Swap => "stall-swap",
        Fault::ShimKill9 => "stall-shim-kill",
        Fault::ShimSwap => "stall-shim-swap",
    });
    let _ = std::fs::remove_dir_all(&root);
    let mnt = root.join("mnt");
    let state = root.join("state");
    std::fs::create_dir_all(&mnt)?;
    // First start scans; the measured mount starts from the catalog.
    let log = std::fs::File::create(root.join("mount.log"))?;
    let child = Command::new(musicfs)
        .arg("mount")
        .arg("--origin")
        .arg(lib)
        .arg("--state-dir")
        .arg(&state)
        .arg(&mnt)
        .env("MUSICFS_HEARTBEAT_INTERVAL_MS", "200")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .context("cannot start musicfs mount")?;
    let guard = MountGuard {
        child,
        mnt: mnt.clone(),
        musicfs: musicfs.to_path_buf(),
    };
    let deadline = Instant::now() + Duration::from_secs(600);
    while std::fs::read_dir(&mnt)
        .map(|mut d| d.next().is_none())
        .unwrap_or(true)
    {
        if Instant::now() > deadline {
            bail!("mount not ready after 10 minutes");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let files: Vec<PathBuf> = walkdir::WalkDir::new(&mnt)
        .into_iter()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_file())
        .map(|e| e.into_path())
        .collect();
    if files.is_empty() {
        bail!("no files in the mount");
    }
    let files = Arc::new(files);
    let stop = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    let mut readers = Vec::new();
    for r in 0..4usize {
        let (files, stop) = (files.clone(), stop.clone());
        readers.push(std::thread::spawn(move || {
            use std::io::Read;
            // (start offset from t0, latency, ok)
            let mut ops: Vec<(Duration, Duration, bool)> = Vec::new();
            let mut i = r * 7919;
            let mut buf = vec![0u8; 128 * 1024];
            while !stop.load(Ordering::Relaxed) {
                let p = &files[i % files.len()];
                i += 13;
                let start = Instant::now();
                let ok = std::fs::File::open(p)
                    .and_then(|mut f| {
                        while f.read(&mut buf)? > 0 {}
                        Ok(())
                    })
                    .is_ok();
                ops.push((start.duration_since(t0), start.elapsed(), ok));
            }
            ops
        }));
    }
    let mut fault_times = Vec::new();
    std::thread::sleep(Duration::from_millis(1000));
    for _ in 0..faults {
        let shim = matches!(kind, Fault::ShimKill9 | Fault::ShimSwap);
        let who = |_: ()| {
            if shim {
                shim_pid(&mnt)
            } else {
                engine_pid(&state)
            }
        };
        let pid = who(()).context("no engine or shim running")?;
        fault_times.push(t0.elapsed());
        match kind {
            Fault::Kill9 | Fault::ShimKill9 => {
                // SAFETY: kill(2) on the process this benchmark started.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            Fault::Swap | Fault::ShimSwap => {
                let ok = Command::new(musicfs)
                    .args([if shim { "shim" } else { "engine" }, "swap", "--state-dir"])
                    .arg(&state)
                    .stdout(Stdio::null())
                    .status()?
                    .success();
                if !ok {
                    bail!("{kind:?} failed");
                }
            }
        }
        let wait = Instant::now() + Duration::from_secs(30);
        while who(()).is_none_or(|p| p == pid) {
            if Instant::now() > wait {
                bail!("no new engine or shim after a fault");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(1500));
    }
    stop.store(true, Ordering::Relaxed);
    let mut ops = Vec::new();
    for r in readers {
        ops.extend(r.join().map_err(|_| anyhow::anyhow!("a reader panicked"))?);
    }
    drop(guard);
    let mut lat: Vec<f64> = ops.iter().map(|o| o.1.as_secs_f64() * 1e3).collect();
    lat.sort_by(f64::total_cmp);
    let mut recovery: Vec<f64> = fault_times
        .iter()
        .filter_map(|f| {
            ops.iter()
                .filter(|o| o.0 >= *f && o.2)
                .map(|o| (o.0 + o.1 - *f).as_secs_f64() * 1e3)
                .reduce(f64::min)
        })
        .collect();
    recovery.sort_by(f64::total_cmp);
    Ok(StallReport {
        faults,
        ops: ops.len(),
        failed: ops.iter().filter(|o| !o.2).count(),
        op_p50_ms: percentile(&lat, 0.5),
        op_p99_ms: percentile(&lat, 0.99),
        op_max_ms: lat.last().copied().unwrap_or(f64::NAN),
        recovery_p50_ms: percentile(&recovery, 0.5),
        recovery_p99_ms: percentile(&recovery, 0.99),
        recovery_max_ms: recovery.last().copied().unwrap_or(f64::NAN),
    })
}

#[derive(clap::Args)]
pub struct Args {
    /// Library to mount (default: a generated one with --tracks).
    #[arg(long)]
    library: Option<PathBuf>,
    /// Tracks of the generated library.
    #[arg(long, default_value_t = 2000)]
    tracks: usize,
    /// Faults of each kind (engine kill -9, engine swap, shim kill -9, shim swap).
    #[arg(long, default_value_t = 10)]
    faults: usize,
}

/// `cargo xtask stall`: the stall measurement alone (release binaries).
pub fn run(args: &Args) -> Result<()> {
    crate::harness::build_release()?;
    let work = crate::harness::target_dir().join("stall");
    std::fs::create_dir_all(&work)?;
    let lib = match &args.library {
        Some(l) => l.clone(),
        None => crate::harness::ensure_library(&work, args.tracks)?,
    };
    let musicfs = crate::harness::target_dir().join("release/musicfs");
    for kind in Fault::ALL {
        let r = measure(&musicfs, &lib, &work, kind, args.faults)?;
        println!(
            "{kind:?}: {} faults, {} reads, {} failed; read latency p50 {:.1} ms p99 {:.1} ms max {:.1} ms; \
             stall per fault p50 {:.1} ms p99 {:.1} ms max {:.1} ms",
            r.faults,
            r.ops,
            r.failed,
            r.op_p50_ms,
            r.op_p99_ms,
            r.op_max_ms,
            r.recovery_p50_ms,
            r.recovery_p99_ms,
            r.recovery_max_ms
        );
    }
    Ok(())
}

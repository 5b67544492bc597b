//! `cargo xtask bench`: measures musicfs beside baselines in the same run.
//!
//! Steps:
//!
//! 1. `cargo build --release -p musicfs-engine -p musicfs-shim`, then the two binaries are copied
//!    to `<work-dir>/bin/` so a concurrent rebuild cannot swap them mid-run.
//! 2. A synthetic library of `--tracks` tracks is generated once into `<work-dir>/lib-<N>` with
//!    `cargo xtask gen-library` (this binary, as a subprocess); `<work-dir>/lib-<N>.complete`
//!    marks a finished generation and the library is reused while it exists.
//! 3. Measurements, each the median of `--runs` (with min..max):
//!    scan rate (`musicfs scan`, warm and cold page cache), engine start to the first answered
//!    readdir (fresh and reused state dir), a `find` walk that stats every file and a read of
//!    every file (cold, and with the origin warm in the page cache), on the musicfs mount, a
//!    `bindfs -r` mount of the origin and the origin itself; unless `--no-peers`, also on the
//!    peers: musefs 1.3.0 (installed from crates.io into `<target>/bench/peers`, mounted with
//!    `--mode structure-only` and a template close to musicfs's), `rclone mount --read-only
//!    --vfs-cache-mode off` of the origin, and a native copy of the musicfs tree. A peer that
//!    cannot be installed or mounted is shown as missing, with the reason in the notes.
//! 4. Scale rows, on a second library of `--big-tracks` tracks (default 100000, `0` skips them;
//!    generated once into `<work-dir>/lib-<N>` like the first): the initial scan (first mount
//!    with a fresh state dir), engine start to the first answered readdir with that persistent
//!    state dir, the time to apply one changed track (an mp3 retagged with lofty into a temporary
//!    file renamed over the original, as a tagger does; the engine's apply time comes from its
//!    `checkpoint committed` log line) and the idle RSS of the engine and the shim.
//! 5. Chunk cache rows, on a third library of `--cache-tracks` noise-encoded 4-minute tracks
//!    (default 8, half flac and half 320k mp3; `0` skips them; encoded once with ffmpeg into
//!    `<work-dir>/cache-lib-<N>`): the library is shared by an sshd on 127.0.0.1 and mounted with
//!    sshfs, and a musicfs mount with that mount as its origin reads it through its chunk cache
//!    (in `<work-dir>/cache-<N>`). Cold reads through the cache beside reads of the share, warm
//!    cached reads beside native reads, opens of cached files beside opens on the share, and the
//!    hit ratio of a media-server-like probe scan; they get their own table, each row beside its
//!    own baseline.
//! 6. Remote-origin rows (issue 13; `--no-remote` skips them), on two generated libraries of
//!    20-second tracks (`<work-dir>/remote-lib-<R>`, `--remote-tracks`, default 2000, and
//!    `<work-dir>/remote-read-lib-<N>`, `--remote-read-tracks`, default 24), served on 127.0.0.1
//!    by `moto_server` (S3, filled with `rclone copy`) and `rclone serve webdav`: the S3 scan rate
//!    (mount start to the first `sync finished`), first-byte latency cold and cached, whole-file
//!    reads over WebDAV beside `rclone mount --vfs-cache-mode full` of the same remote and native
//!    reads, and the stall of reads while S3 (first origin) is SIGSTOPped and WebDAV (second)
//!    takes over. A missing server is shown as missing. Their own table, like the cache rows.
//! 7. Search rows (issue 15), on the big library with a fresh state dir: the index build rate
//!    (the first start's background build, from the engine's log), query latency (the stat of a
//!    new `/.search/<query>` name runs the query), `ls` of a search directory and `ls -l` of the
//!    bounded `All tracks` collection, and `musicfs search rebuild`; `--search-only` runs only
//!    these.
//! 8. The table is printed and, unless `--no-record`, written to `BENCHMARKS.md` (one section per
//!    `--tracks` value, newest first).
//!
//! Nothing here asserts on a time: targets are shown as met or missed, never enforced.
//! Dropping the page cache needs root; without it the cold measurements are skipped.
//!
//! Every wait has a deadline, and every mount is taken down on drop (also on error).

mod cache;
mod cachelib;
mod cachetable;
mod consts;
mod logs;
mod mounts;
mod passthrough;
mod peers;
mod procfs;
mod record;
mod remote;
mod remotefail;
mod remotetable;
mod report;
mod retag;
mod runner;
mod scale;
mod scalewalk;
mod scan;
mod search;
mod servers;
mod setup;
mod share;
mod stalls;
mod table;
#[cfg(test)]
mod tests;
mod treerows;
mod trees;
mod wakeup;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, ensure};

use crate::harness::{ensure_library, ensure_library_with, on_path, utc_now, workspace_root};
use cachelib::{TRACK_SECS, ensure_cache_library};
use consts::RECORD_FILE;
use mounts::clear_stale_mount;
use peers::{PeerPaths, PeerPlan};
use record::{record, section_start};
use report::{Report, command_line, git_commit, machine_info};
use runner::Bench;
use setup::{build, drop_caches, target_dir};
use share::SSHD;
use table::{fmt_bytes, fmt_thousands};
use trees::tree_size;

/// `cargo xtask bench` arguments.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Number of tracks in the generated library.
    #[arg(long, default_value_t = 20_000)]
    pub tracks: usize,
    /// Where the library, state dirs and mountpoints live (default: `<target>/bench`).
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Tracks in the second library of the scale rows (initial scan, start with a persistent
    /// state dir, one changed track, idle RSS); 0 skips them.
    #[arg(long, default_value_t = 100_000)]
    pub big_tracks: usize,
    /// Seconds of audio per track of the scale library (default: the generator's). The scale
    /// rows measure tags and trees, not audio: short tracks make a 1M-track library fit a
    /// small disk (0.1 s: about 4 KiB a file).
    #[arg(long)]
    pub big_seconds: Option<f64>,
    /// Tracks in the library of the chunk cache rows (noise-encoded 4-minute tracks, half flac,
    /// half 320k mp3, read through an sshfs share on 127.0.0.1); 0 skips them.
    #[arg(long, default_value_t = 8)]
    pub cache_tracks: usize,
    /// Timed runs per measurement (the table shows the median and min..max).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub runs: u32,
    /// Print the table but do not update BENCHMARKS.md.
    #[arg(long)]
    pub no_record: bool,
    /// Skip the peers of the walk and read rows (musefs 1.3.0 from crates.io, rclone mount, a
    /// native copy of the musicfs tree).
    #[arg(long)]
    pub no_peers: bool,
    /// Skip the remote-origin rows (S3 on moto_server, WebDAV on `rclone serve webdav`).
    #[arg(long)]
    pub no_remote: bool,
    /// Tracks (20-second, the standard format mix) of the S3 library of the remote scan-rate and
    /// first-byte rows.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..))]
    pub remote_tracks: u64,
    /// Tracks (20-second wav and flac) of the library of the remote read and failover rows.
    #[arg(long, default_value_t = 24, value_parser = clap::value_parser!(u64).range(1..))]
    pub remote_read_tracks: u64,
    /// Only the search rows (index build rate, query latency, `ls` of a search directory,
    /// rebuild) on the `--big-tracks` library; the table is printed, not recorded.
    #[arg(long)]
    pub search_only: bool,
    /// Set the guest's halt polling (`/sys/module/haltpoll/parameters/guest_halt_poll_ns`, a KVM
    /// guest's cpuidle driver) to N ns for the run, and put it back after: an idle vCPU then
    /// polls before it halts, so a wakeup costs what it costs on hardware (see `wakeup`). The
    /// run is recorded as a kind of its own.
    #[arg(long)]
    pub guest_halt_poll_ns: Option<u64>,
}

pub fn run(args: &Args) -> Result<()> {
    ensure!(args.tracks > 0, "--tracks must be > 0");
    for tool in ["bindfs", "fusermount3", "find"] {
        ensure!(
            on_path(tool),
            "`{tool}` is not installed (the bench needs bindfs, fuse3 and findutils)"
        );
    }
    ensure!(
        Path::new("/dev/fuse").exists(),
        "/dev/fuse does not exist; the bench needs FUSE"
    );
    if args.cache_tracks > 0 {
        for tool in ["ffmpeg", "sshfs", "ssh-keygen"] {
            ensure!(
                on_path(tool),
                "`{tool}` is not installed (the chunk cache rows need ffmpeg, sshfs and \
                 openssh; --cache-tracks 0 skips them)"
            );
        }
        ensure!(
            Path::new(SSHD).is_file(),
            "{SSHD} is missing (the chunk cache rows need openssh-server; --cache-tracks 0 \
             skips them)"
        );
    }

    let target = target_dir();
    let work = args
        .work_dir
        .clone()
        .unwrap_or_else(|| target.join("bench"));
    fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let work = work
        .canonicalize()
        .with_context(|| format!("resolving {}", work.display()))?;

    let bin = build(&target, &work)?;
    let big_lib = match (args.big_tracks, args.big_seconds) {
        (0, _) => None,
        (n, None) => Some(ensure_library(&work, n)?),
        (n, Some(secs)) => {
            let secs = secs.to_string();
            Some(ensure_library_with(
                &work,
                &format!("lib-{secs}s"),
                n,
                &["--seconds", &secs],
            )?)
        }
    };
    let lib = match &big_lib {
        Some(big) if args.search_only => big.clone(),
        _ => {
            ensure!(!args.search_only, "--search-only needs --big-tracks > 0");
            ensure_library(&work, args.tracks)?
        }
    };
    let cache_lib = if args.cache_tracks > 0 && !args.search_only {
        Some(ensure_cache_library(&work, args.cache_tracks)?)
    } else {
        None
    };

    let _halt_poll = args
        .guest_halt_poll_ns
        .map(wakeup::HaltPoll::set)
        .transpose()?;
    let can_drop = match drop_caches() {
        Ok(()) => true,
        Err(e) => {
            eprintln!("bench: warning: cannot drop the page cache ({e:#}); cold runs are skipped");
            false
        }
    };

    let mnt_dir = work.join("mnt");
    let mfs_mnt = mnt_dir.join("musicfs");
    let bind_mnt = mnt_dir.join("bindfs");
    for m in [&mfs_mnt, &bind_mnt] {
        clear_stale_mount(m)?;
        fs::create_dir_all(m).with_context(|| format!("creating {}", m.display()))?;
    }
    let peer_paths = PeerPaths::new(&work, &mnt_dir, args.tracks);
    let peers = (!args.no_peers).then(|| PeerPlan::new(&target));
    let log = work.join("musicfs-mount.log");
    fs::write(&log, b"").with_context(|| format!("creating {}", log.display()))?;

    let mut bench = Bench {
        bin,
        lib,
        work,
        mfs_mnt,
        bind_mnt,
        log,
        can_drop,
        runs: args.runs as usize,
        tracks: args.tracks,
        io_timeout: Duration::from_secs(600 + args.tracks as u64 / 50),
        notes: Vec::new(),
        rows: Vec::new(),
        cache_rows: Vec::new(),
        remote_rows: Vec::new(),
        peers,
        peer_paths,
    };
    let lib_size = tree_size(&bench.lib)?;
    bench.check_memory(lib_size.bytes);

    if args.search_only {
        bench.measure_search(&bench.lib.clone(), args.big_tracks)?;
        println!("{}", table::render_table(&bench.rows));
        for n in &bench.notes {
            println!("- {n}");
        }
        return Ok(());
    }
    let scan_tracks = bench.measure_scan()?;
    bench.measure_start()?;
    bench.measure_trees(scan_tracks)?;
    bench.measure_stalls()?;

    // The cache rows and the scale rows come last; if they fail, the table so far is still
    // recorded (with a note) and the bench then fails.
    let mut failure = None;
    let mut cache_library = None;
    if let Some(cache_lib) = &cache_lib {
        let size = tree_size(cache_lib)?;
        cache_library = Some(format!(
            "{} noise-encoded tracks of {} s ({} flac, {} mp3 at 320k); {} files, {} ({} bytes) \
             in `{}`",
            args.cache_tracks,
            TRACK_SECS,
            args.cache_tracks.div_ceil(2),
            args.cache_tracks / 2,
            size.files,
            fmt_bytes(size.bytes),
            size.bytes,
            cache_lib.display()
        ));
        if let Err(e) = bench.measure_cache(cache_lib, args.cache_tracks) {
            bench.note(format!("the chunk cache rows stopped early: {e:#}"));
            failure = Some(e.context("the chunk cache rows failed (the rows so far were kept)"));
        }
    }
    let mut remote_library = None;
    if !args.no_remote {
        let (tracks, read_tracks) = (
            args.remote_tracks as usize,
            args.remote_read_tracks as usize,
        );
        match remote_libraries(&bench.work, tracks, read_tracks) {
            Ok((scan_lib, read_lib, described)) => {
                remote_library = Some(described);
                if let Err(e) = bench.measure_remote(&scan_lib, &read_lib) {
                    bench.note(format!("the remote-origin rows stopped early: {e:#}"));
                    failure.get_or_insert(
                        e.context("the remote-origin rows failed (the rows so far were kept)"),
                    );
                }
            }
            Err(e) => {
                bench.note(format!(
                    "the remote-origin libraries could not be made: {e:#}"
                ));
                failure.get_or_insert(e);
            }
        }
    }
    let mut big_library = None;
    if let Some(big_lib) = &big_lib {
        let size = tree_size(big_lib)?;
        big_library = Some(format!(
            "{} tracks requested; {} files, {} ({} bytes) in `{}`",
            args.big_tracks,
            size.files,
            fmt_bytes(size.bytes),
            size.bytes,
            big_lib.display()
        ));
        if let Err(e) = bench
            .measure_big(big_lib, args.big_tracks)
            .and_then(|()| bench.measure_search(big_lib, args.big_tracks))
        {
            bench.note(format!(
                "{} tracks: the scale measurements stopped early: {e:#}",
                fmt_thousands(args.big_tracks as f64)
            ));
            failure.get_or_insert(
                e.context("the scale measurements failed (the rows so far were kept)"),
            );
        }
    }

    let report = Report {
        marker: section_start(
            args.tracks,
            args.big_tracks,
            !args.no_remote && !bench.remote_rows.is_empty(),
            args.search_only,
            args.guest_halt_poll_ns,
        ),
        tracks: args.tracks,
        command: command_line(
            args.big_tracks,
            args.cache_tracks,
            (!args.no_remote).then_some(args.remote_tracks as usize),
        ),
        date: utc_now(),
        machine: machine_info(&bench.work),
        commit: git_commit(),
        library: format!(
            "{} tracks requested, {} found by `musicfs scan`; {} files, {} ({} bytes) in `{}`",
            args.tracks,
            scan_tracks,
            lib_size.files,
            fmt_bytes(lib_size.bytes),
            lib_size.bytes,
            bench.lib.display()
        ),
        big_library,
        cache_library,
        remote_library,
        rows: std::mem::take(&mut bench.rows),
        cache_rows: std::mem::take(&mut bench.cache_rows),
        remote_rows: std::mem::take(&mut bench.remote_rows),
        notes: std::mem::take(&mut bench.notes),
    };
    let section = report.section();
    println!();
    println!("{section}");
    if args.no_record {
        println!("bench: --no-record given; {RECORD_FILE} left alone");
    } else {
        let path = workspace_root().join(RECORD_FILE);
        record(&path, &section)?;
        println!("bench: recorded in {}", path.display());
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// The two libraries of the remote rows (made once) and their description for the report.
fn remote_libraries(
    work: &Path,
    tracks: usize,
    read_tracks: usize,
) -> Result<(PathBuf, PathBuf, String)> {
    let scan_lib = remote::ensure_remote_library(work, "remote-lib", tracks, &[])?;
    let read_lib = remote::ensure_remote_library(
        work,
        "remote-read-lib",
        read_tracks,
        &["--formats", "wav=2,flac=1"],
    )?;
    let (scan, read) = (tree_size(&scan_lib)?, tree_size(&read_lib)?);
    let described = format!(
        "scan/first byte: {tracks} tracks of {s} s (standard mix), {} files, {} in `{}`; \
         reads/failover: {read_tracks} tracks of {s} s (wav 2 : flac 1), {} files, {} in `{}`",
        scan.files,
        fmt_bytes(scan.bytes),
        scan_lib.display(),
        read.files,
        fmt_bytes(read.bytes),
        read_lib.display(),
        s = remote::REMOTE_SECONDS,
    );
    Ok((scan_lib, read_lib, described))
}

//! The remote-origin rows (issue 13, `--remote-tracks`; `--no-remote` skips them): the scan rate
//! of an S3 library on moto_server, first-byte latency cold and cached, whole-file reads of a
//! WebDAV origin beside `rclone mount --vfs-cache-mode full` of the same remote and native reads,
//! and the stall of a read while S3 fails over to WebDAV (`remotefail`). See `REMOTE_NOTE`.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};

use super::cachetable::{CacheRow, toml_string};
use super::consts::{CACHE_CMD_TIMEOUT, CACHE_READ_BUF, MOUNT_READY_TIMEOUT};
use super::logs::{log_field, log_len};
use super::mounts::{MusicfsMount, clear_stale_mount};
use super::peers::PeerMount;
use super::remotetable::{DavReads, FirstBytes, first_byte_rows, read_rows, scan_row};
use super::runner::Bench;
use super::servers::{
    S3_KEY, S3_SECRET, Server, dav_url, rclone, rclone_dav, remote_tools, s3_url, start_dav,
    start_moto, upload, utf8_export,
};
use super::setup::drop_caches;
use super::trees::{Pass, read_tree_within};
use crate::harness::with_deadline;

/// Length of every track of the remote libraries (several chunks each).
pub(super) const REMOTE_SECONDS: &str = "20";
/// Distinct files of one first-byte pass (at most).
const FIRST_BYTE_FILES: usize = 300;
/// Untimed pause between a cold pass and the cached one (the chunk cache writes behind readers).
const WRITER_GRACE: Duration = Duration::from_secs(2);
/// What a first-byte probe reads.
const FIRST_BYTE_LEN: usize = 4096;

/// The paths of the remote rows.
pub(super) struct RemoteRig {
    /// `<work>/remote`: exports, server logs, state and cache dirs, configs.
    pub(super) dir: PathBuf,
    pub(super) mnt_dir: PathBuf,
    /// The UTF-8-named files of the read library (WebDAV's export, S3's `read` bucket).
    pub(super) read_export: PathBuf,
    pub(super) moto: Server,
}

/// The generated library `<work>/<name>-<tracks>` (`--seconds 20`, extra gen-library arguments
/// `extra`), made once.
pub(super) fn ensure_remote_library(
    work: &Path,
    name: &str,
    tracks: usize,
    extra: &[&str],
) -> Result<PathBuf> {
    let mut args = vec!["--seconds", REMOTE_SECONDS];
    args.extend_from_slice(extra);
    crate::harness::ensure_library_with(work, name, tracks, &args)
}

impl Bench {
    /// The remote rows: `scan_lib` on S3 for the scan rate and first bytes, `read_lib` on WebDAV
    /// (and S3, for the failover) for the reads.
    pub(super) fn measure_remote(&mut self, scan_lib: &Path, read_lib: &Path) -> Result<()> {
        if let Err(missing) = remote_tools() {
            self.note(format!("the remote-origin rows are missing: {missing}"));
            self.remote_rows.push(CacheRow {
                what: "remote origins".into(),
                musicfs: format!("missing: {missing}"),
                ..CacheRow::default()
            });
            return Ok(());
        }
        let started = Instant::now();
        let dir = self.work.join("remote");
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mnt_dir = self.work.join("mnt");
        let scan_export = dir.join("export-scan");
        let read_export = dir.join("export-read");
        let mut skipped = 0;
        for (lib, export) in [(scan_lib, &scan_export), (read_lib, &read_export)] {
            let (files, skip) = utf8_export(lib, export)?;
            ensure!(files > 0, "{} has no file with a UTF-8 name", lib.display());
            skipped += skip;
        }
        if skipped > 0 {
            self.note(format!(
                "remote rows: {skipped} files with non-UTF-8 names were left out (S3 keys are \
                 UTF-8; WebDAV serves the same files)"
            ));
        }
        eprintln!("bench: remote rows: starting moto_server and uploading with rclone copy");
        let moto = start_moto(&dir)?;
        let mut rig = RemoteRig {
            dir,
            mnt_dir,
            read_export,
            moto,
        };
        for (bucket, export) in [("scan", &scan_export), ("read", &rig.read_export)] {
            let took = upload(&rig.dir, rig.moto.port(), bucket, export)?;
            self.note(format!(
                "remote rows: `rclone copy` of {} to moto bucket `{bucket}` took {:.1} s",
                export.display(),
                took.as_secs_f64()
            ));
        }
        self.s3_scan_and_first_bytes(&mut rig)?;
        let reads = self.dav_reads(&mut rig)?;
        self.remote_rows.extend(read_rows(&reads));
        self.measure_failover(&mut rig)?;
        let took = started.elapsed().as_secs_f64();
        self.note(format!(
            "the remote-origin rows took {took:.1} s (library generation not counted)"
        ));
        Ok(())
    }

    /// Writes the config of one remote mount and returns (state dir, config path), both fresh.
    pub(super) fn remote_config(
        &self,
        rig: &RemoteRig,
        name: &str,
        extra: &str,
    ) -> Result<(PathBuf, PathBuf)> {
        let state = rig.dir.join(format!("state-{name}"));
        let cache = rig.dir.join(format!("cache-{name}"));
        for d in [&state, &cache] {
            if d.exists() {
                fs::remove_dir_all(d).with_context(|| format!("removing {}", d.display()))?;
            }
        }
        let config = rig.dir.join(format!("{name}.toml"));
        fs::write(
            &config,
            format!(
                "# Written by `cargo xtask bench` for the remote-origin rows.\n\
                 cache_dir = {}\ncache_min_free_percent = 0\n{extra}",
                toml_string(&cache.to_string_lossy())
            ),
        )
        .with_context(|| format!("writing {}", config.display()))?;
        Ok((state, config))
    }

    /// Mounts `origins` with `config` at `<mnt>/<name>` and waits for the first `sync finished`;
    /// returns the mount, the log line and the time from the spawn to the line seen.
    pub(super) fn mount_remote(
        &self,
        rig: &RemoteRig,
        name: &str,
        origins: &[&str],
        state: &Path,
        config: &Path,
    ) -> Result<(MusicfsMount, PathBuf, String, Duration)> {
        let mnt = rig.mnt_dir.join(format!("remote-{name}"));
        clear_stale_mount(&mnt)?;
        fs::create_dir_all(&mnt).with_context(|| format!("creating {}", mnt.display()))?;
        let offset = log_len(&self.log);
        let config = config.to_string_lossy().into_owned();
        let env = [
            ("MUSICFS_CONFIG", config.as_str()),
            ("AWS_ACCESS_KEY_ID", S3_KEY),
            ("AWS_SECRET_ACCESS_KEY", S3_SECRET),
        ];
        let origins: Vec<&Path> = origins.iter().map(Path::new).collect();
        let t0 = Instant::now();
        let (mut m, _) = self.mount_origins(
            &origins,
            state,
            &mnt,
            &format!("remote {name}"),
            &env,
            MOUNT_READY_TIMEOUT,
        )?;
        let line = m.wait_log(offset, "sync finished", MOUNT_READY_TIMEOUT)?;
        Ok((m, mnt, line, t0.elapsed()))
    }

    fn remote_cache_clear(&self, state: &Path) -> Result<()> {
        let mut cmd = Command::new(&self.bin);
        cmd.args(["cache", "clear", "--state-dir"]).arg(state);
        let out = crate::harness::run_captured(&mut cmd, "musicfs cache clear", CACHE_CMD_TIMEOUT)?;
        ensure!(
            out.status.success(),
            "`musicfs cache clear` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(())
    }

    /// The S3 scan rate (fresh state), then first bytes of distinct files right after `cache
    /// clear` (cold) and again (cached), beside the same on the export (native).
    fn s3_scan_and_first_bytes(&mut self, rig: &mut RemoteRig) -> Result<()> {
        let url = s3_url(rig.moto.port(), "scan");
        let (state, config) = self.remote_config(
            rig,
            "s3-scan",
            &format!("[origin.{}]\npoll_interval_s = 3600\n", toml_string(&url)),
        )?;
        eprintln!("bench: remote rows: S3 scan of {url}");
        let (mut m, mnt, line, took) = self.mount_remote(rig, "s3", &[&url], &state, &config)?;
        let files = log_field(&line, "files");
        let engine_ms = log_field(&line, "elapsed_ms");
        eprintln!(
            "bench: remote rows: S3 scan: {files:?} files, sync finished seen {:.2} s after the \
             spawn (engine: {engine_ms:?} ms)",
            took.as_secs_f64()
        );
        self.remote_rows.push(scan_row(files, engine_ms, took));

        let picked = spread(&list_files(&mnt)?, FIRST_BYTE_FILES);
        self.remote_cache_clear(&state)?;
        let cold = self.first_bytes(&picked, "cold")?;
        // The cache's writer commits behind the reader: give it a moment (untimed).
        std::thread::sleep(WRITER_GRACE);
        let cached = self.first_bytes(&picked, "cached")?;
        let native_files = spread(&list_files(&rig.dir.join("export-scan"))?, picked.len());
        let native = self.first_bytes(&native_files, "native")?;
        m.check_alive()?;
        rig.moto.check_alive()?;
        self.unmount_musicfs(m, "remote s3")?;
        for (what, fb) in [("cold", &cold), ("cached", &cached), ("native", &native)] {
            if let Some(e) = fb.errors.first() {
                self.note(format!(
                    "first byte ({what}): {} errors, first: {e}",
                    fb.errors.len()
                ));
            }
        }
        self.remote_rows
            .extend(first_byte_rows(&cold, &cached, &native, self.can_drop));
        Ok(())
    }

    /// open + first `FIRST_BYTE_LEN` bytes of every file of `files` (page cache dropped first).
    fn first_bytes(&self, files: &[PathBuf], what: &str) -> Result<FirstBytes> {
        if self.can_drop {
            drop_caches()?;
        }
        let files = files.to_vec();
        let fb = with_deadline("first-byte pass", self.io_timeout, move || {
            let mut fb = FirstBytes::default();
            let mut buf = vec![0u8; FIRST_BYTE_LEN];
            for f in &files {
                let t = Instant::now();
                match fs::File::open(f).and_then(|mut h| h.read(&mut buf)) {
                    Ok(_) => fb.ms.push(t.elapsed().as_secs_f64() * 1e3),
                    Err(e) => fb.errors.push(format!("{}: {e}", f.display())),
                }
            }
            fb
        })?;
        eprintln!(
            "bench: remote rows: first byte {what}: {} files, p50 / p99 {} ms",
            fb.ms.len(),
            fb.cell()
        );
        Ok(fb)
    }

    /// Whole-file reads of the read library on WebDAV: musicfs cold (after cache clear) and
    /// warm, `rclone mount --vfs-cache-mode full` cold (empty cache dir) and warm, native.
    fn dav_reads(&mut self, rig: &mut RemoteRig) -> Result<DavReads> {
        let mut dav = start_dav(&rig.read_export, &rig.dir)?;
        let url = dav_url(dav.port());
        let (state, config) = self.remote_config(
            rig,
            "dav-read",
            &format!("[origin.{}]\npoll_interval_s = 3600\n", toml_string(&url)),
        )?;
        eprintln!("bench: remote rows: WebDAV reads of {url}");
        let (mut m, mnt, _, _) = self.mount_remote(rig, "dav", &[&url], &state, &config)?;
        let mut r = DavReads::default();
        self.remote_cache_clear(&state)?;
        r.cold = Some(self.remote_read(&mnt, "musicfs cold")?);
        std::thread::sleep(WRITER_GRACE);
        r.warm = Some(self.remote_read(&mnt, "musicfs warm")?);
        m.check_alive()?;
        self.unmount_musicfs(m, "remote dav")?;

        match self.rclone_reads(rig, dav.port()) {
            Ok((cold, warm)) => {
                r.rclone_cold = Some(cold);
                r.rclone_warm = Some(warm);
            }
            Err(e) => {
                self.note(format!(
                    "remote rows: rclone mount of the WebDAV remote: {e:#}"
                ));
                r.rclone_missing = Some(format!("{e:#}").lines().next().unwrap_or("").into());
            }
        }
        dav.check_alive()?;
        r.native = Some(self.remote_read(&rig.read_export, "native")?);
        for (what, p) in [
            ("musicfs cold", &r.cold),
            ("musicfs warm", &r.warm),
            ("rclone cold", &r.rclone_cold),
            ("rclone warm", &r.rclone_warm),
            ("native", &r.native),
        ] {
            if let Some(p) = p
                && p.errors > 0
            {
                self.note(format!(
                    "WebDAV read {what}: {} errors, first: {}",
                    p.errors,
                    p.first_errors.first().map_or("", String::as_str)
                ));
            }
        }
        Ok(r)
    }

    fn rclone_reads(&mut self, rig: &RemoteRig, port: u16) -> Result<(Pass, Pass)> {
        let mnt = rig.mnt_dir.join("remote-rclone");
        let cache = rig.dir.join("rclone-vfs-cache");
        if cache.exists() {
            fs::remove_dir_all(&cache).with_context(|| format!("removing {}", cache.display()))?;
        }
        let mut cmd = rclone(&rig.dir);
        cmd.arg("mount")
            .args(["--read-only", "--vfs-cache-mode", "full", "--cache-dir"])
            .arg(&cache)
            .arg(rclone_dav(port))
            .arg(&mnt);
        let log = rig.dir.join("rclone-mount.log");
        let mut peer = PeerMount::start("rclone mount (webdav)", cmd, &mnt, &log)?;
        let cold = self.remote_read(&mnt, "rclone cold")?;
        let warm = self.remote_read(&mnt, "rclone warm")?;
        peer.check_alive()?;
        for p in peer.stop()? {
            self.note(format!("rclone mount (webdav): {p}"));
        }
        Ok((cold, warm))
    }

    /// One whole-file read of every file under `root` (page cache dropped first when allowed).
    fn remote_read(&self, root: &Path, what: &str) -> Result<Pass> {
        if self.can_drop {
            drop_caches()?;
        }
        let pass = read_tree_within(root, CACHE_READ_BUF, self.io_timeout)?;
        eprintln!(
            "bench: remote rows: read {what}: {} files, {} bytes in {:.3} s ({:.1} MB/s)",
            pass.files,
            pass.bytes,
            pass.secs,
            pass.bytes as f64 / 1e6 / pass.secs.max(1e-9)
        );
        Ok(pass)
    }
}

/// Regular files under `root`, sorted.
pub(super) fn list_files(root: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in walkdir::WalkDir::new(root).sort_by_file_name() {
        let entry = entry.with_context(|| format!("walking {}", root.display()))?;
        if entry.file_type().is_file() {
            out.push(entry.into_path());
        }
    }
    Ok(out)
}

/// At most `n` of `files`, spread evenly over them.
pub(super) fn spread(files: &[PathBuf], n: usize) -> Vec<PathBuf> {
    if files.len() <= n {
        return files.to_vec();
    }
    (0..n).map(|i| files[i * files.len() / n].clone()).collect()
}

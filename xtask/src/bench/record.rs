//! BENCHMARKS.md: its fixed header and one section per kind of run, newest first.

use std::fs;
use std::path::Path;

use anyhow::{Context, Result};

use super::consts::SECTION_END;

/// The marker line that starts a section: the library size and what else
/// the run measured (`scale=M` for the big library, `remote`, `search`), so
/// that a run replaces only an earlier run of the same kind.
pub(super) fn section_start(
    tracks: usize,
    scale: usize,
    remote: bool,
    search: bool,
    halt_poll_ns: Option<u64>,
) -> String {
    let mut key = format!("tracks={tracks}");
    if scale > 0 {
        key.push_str(&format!(" scale={scale}"));
    }
    if remote {
        key.push_str(" remote");
    }
    if search {
        key.push_str(" search");
    }
    if let Some(ns) = halt_poll_ns {
        key.push_str(&format!(" halt-poll={ns}"));
    }
    format!("<!-- bench {key} -->")
}

pub(super) const HEADER: &str = "\
# MusicFS benchmarks

Written by `cargo xtask bench [--tracks N] [--big-tracks M] [--cache-tracks K]` (also `--runs R`,
default 3; `--work-dir DIR`, default `target/bench`; `--no-record` to only print). It needs root (to
drop the page cache), `/dev/fuse`, `bindfs` and `fuse3`; the chunk cache rows also need `ffmpeg`,
`sshfs` and `openssh-server`. It builds the release binaries, generates a
synthetic library once (`cargo xtask gen-library`, default 20000 tracks) and measures musicfs
beside a `bindfs -r` mount of the same origin and the origin itself (native), in the same run.

Cells are the median of the runs, with (min..max). Times are in seconds, throughputs in MB/s
(10^6 bytes). Scan rates are from `musicfs scan`; start times run from spawning `musicfs mount`
until a readdir of the mountpoint lists an entry; the tree walk is
`find ROOT -type f -printf '%s\\n'` with the page cache dropped first; \"read every file\" reads
each file with a 128 KiB buffer in one thread, cold (page cache dropped before each pass) or with
the origin warm (the native tree is read first, then bindfs and musicfs each on their first pass
through FUSE, then native again); \"open+close of every file\" opens and closes every file in
walkdir order right after the warm reads (microseconds per file; the walk that lists them is not
timed). Targets are reported, never asserted.

The rows that start with \"M tracks:\" ran on a second generated library of `--big-tracks` tracks
(default 100000; `0` skips them). The initial scan is one mount with a fresh state dir, page
cache dropped first, spawn to first answered readdir. The start with the persistent state dir runs
from spawning `musicfs mount` until a readdir of the mountpoint (polled every 1 ms) lists an entry,
page cache warm; the engine's own `startup_ms` is in the notes. Every start with a reused or
persistent state dir (also in the first table rows) is stopped only after its background
reconcile finished, so that no run pays for the previous one being stopped in the middle of it.
One changed track: with the mount up and its background reconcile finished, an mp3 of the library
is retagged with lofty (new album artist, album and title) into a temporary file beside it that is
renamed over the original, as a tagger does; the engine apply time is the `elapsed_us` of the
engine's `checkpoint committed` log line for that change, the end-to-end time runs from the rename
until the new path answers a lookup in the mount and includes the watcher's debounce
(`debounce_ms`). Idle RSS is `VmRSS` of the engine and the shim from 2 s after the reconcile
finished, once the engine's holds still (two readings 1 s apart within 256 kB, at most 30 s);
memory in MB (10^6 bytes).

The second table, the chunk cache rows, ran on a third library of `--cache-tracks` noise-encoded
4-minute tracks (default 8, half flac, half 320k mp3; `0` skips them) shared over sshfs (sshd on
127.0.0.1); each row is beside its own baseline, and the note under it says what each row measures.
Its first two rows read that library as a local origin (kernel passthrough as root) beside native.

The machine line gives what a wakeup costs there: a blocking pipe ping-pong between two threads
on two CPUs and on one. Every FUSE request is a chain of such wakeups (caller, shim, engine, shim,
caller), so the walk, open and small-file rows of musicfs and of every FUSE peer are bounded by it:
a KVM guest whose idle vCPUs halt without polling pays tens of microseconds per wakeup across
vCPUs. `--guest-halt-poll-ns N` sets the guest's halt polling for the run (and puts it back); such
a run is recorded as a kind of its own (`halt-poll=N` in its marker).

The third table, the remote-origin rows (issue 13; `--no-remote` skips them, `--remote-tracks`,
default 2000, sizes the S3 scan library, `--remote-read-tracks`, default 24, the read library),
needs `moto_server` (PyPI `moto[server]`) and `rclone`: S3 on moto and WebDAV on `rclone serve
webdav`, both on 127.0.0.1; the note under it says what each row measures.

This file keeps the latest run of each kind, newest first: the marker line over a section names\nthe library sizes and which optional rows ran; sections written by hand carry markers of their own.
";

/// Writes `section` into the record file, replacing an older section with
/// the same marker line (its first line).
pub(super) fn record(path: &Path, section: &str) -> Result<()> {
    let old = match fs::read_to_string(path) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let mine = section.lines().next().unwrap_or_default().trim_end();
    let mut out = String::from(HEADER);
    out.push('\n');
    out.push_str(section);
    for (start, body) in sections(&old) {
        if start != mine {
            out.push('\n');
            out.push_str(body);
        }
    }
    let tmp = path.with_extension("md.tmp");
    fs::write(&tmp, &out).with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// The recorded sections of a BENCHMARKS.md: (start marker line, whole section text).
pub(super) fn sections(text: &str) -> Vec<(&str, &str)> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(pos) = rest.find("<!-- bench tracks=") {
        let from = &rest[pos..];
        let marker_end = from.find('\n').unwrap_or(from.len());
        let end = from
            .find(SECTION_END)
            .map_or(from.len(), |e| e + SECTION_END.len());
        let end = if from[end..].starts_with('\n') {
            end + 1
        } else {
            end
        };
        out.push((from[..marker_end].trim_end(), &from[..end]));
        rest = &from[end..];
    }
    out
}

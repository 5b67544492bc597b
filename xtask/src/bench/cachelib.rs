//! The library of the cache rows: `--cache-tracks` noise-encoded 4-minute tracks, about half
//! flac (pink noise, 44.1 kHz stereo 16 bit: 25-40 MB each) and half mp3 at 320 kbit/s (about
//! 9.6 MB each), made once with ffmpeg into `<work>/cache-lib-<N>` and tagged so that they land in
//! a normal artist/album tree; `<work>/cache-lib-<N>.complete` marks a finished generation and the
//! library is reused while it exists.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, ensure};

use super::consts::FFMPEG_TIMEOUT;
use crate::harness::{reuse_generated, run_captured, utc_now};

/// Length of every track.
pub(super) const TRACK_SECS: u32 = 240;
/// Album artist and artist of every track.
const ARTIST: &str = "Bench Cache";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    Flac,
    Mp3,
}

/// One track to make.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Track {
    pub(super) kind: Kind,
    pub(super) album: &'static str,
    /// Its number in its album, from 1.
    pub(super) number: usize,
    /// Of its album.
    pub(super) of: usize,
    /// Relative to the library root.
    pub(super) rel: PathBuf,
}

/// The tracks of a library of `n`: the first half (rounded up) flac, the rest mp3, each kind its
/// own album.
pub(super) fn track_plan(n: usize) -> Vec<Track> {
    let flacs = n.div_ceil(2);
    let mp3s = n - flacs;
    let mut out = Vec::with_capacity(n);
    for (kind, album, ext, count) in [
        (Kind::Flac, "Pink Noise (FLAC)", "flac", flacs),
        (Kind::Mp3, "Pink Noise (MP3 320k)", "mp3", mp3s),
    ] {
        for number in 1..=count {
            out.push(Track {
                kind,
                album,
                number,
                of: count,
                rel: Path::new(ARTIST)
                    .join(album)
                    .join(format!("{number:02} Noise {number}.{ext}")),
            });
        }
    }
    out
}

/// The ffmpeg arguments that make `track` (the `seed`-th of the library) at `out`: two pink
/// noise sources of their own seeds joined into stereo (one source on both channels would
/// compress to half in flac's mid/side coding).
fn ffmpeg_args(track: &Track, seed: usize, out: &Path) -> Vec<String> {
    let src = |s: usize| format!("anoisesrc=d={TRACK_SECS}:c=pink:a=0.3:r=44100:s={s}");
    let graph = format!(
        "{}[l];{}[r];[l][r]join=inputs=2:channel_layout=stereo[out]",
        src(2 * seed + 1),
        src(2 * seed + 2)
    );
    let mut args: Vec<String> = [
        "-hide_banner",
        "-nostdin",
        "-loglevel",
        "error",
        "-y",
        "-filter_complex",
        &graph,
        "-map",
        "[out]",
    ]
    .map(String::from)
    .to_vec();
    let codec: &[&str] = match track.kind {
        Kind::Flac => &["-sample_fmt", "s16", "-c:a", "flac"],
        Kind::Mp3 => &["-c:a", "libmp3lame", "-b:a", "320k", "-id3v2_version", "3"],
    };
    args.extend(codec.iter().map(|s| s.to_string()));
    for (key, value) in [
        ("artist", ARTIST.to_string()),
        ("album_artist", ARTIST.to_string()),
        ("album", track.album.to_string()),
        ("title", format!("Noise {}", track.number)),
        ("track", format!("{}/{}", track.number, track.of)),
        ("date", "2026".to_string()),
        ("genre", "Noise".to_string()),
    ] {
        args.push("-metadata".into());
        args.push(format!("{key}={value}"));
    }
    args.push(out.display().to_string());
    args
}

/// The cache library of `tracks` tracks in `work`, made unless a finished generation is there.
pub(super) fn ensure_cache_library(work: &Path, tracks: usize) -> Result<PathBuf> {
    let lib = work.join(format!("cache-lib-{tracks}"));
    let marker = work.join(format!("cache-lib-{tracks}.complete"));
    if reuse_generated(&lib, &marker, "cache library")? {
        return Ok(lib);
    }
    eprintln!(
        "bench: encoding {tracks} noise tracks of {TRACK_SECS} s with ffmpeg into {}",
        lib.display()
    );
    for (seed, track) in track_plan(tracks).iter().enumerate() {
        let out = lib.join(&track.rel);
        if let Some(dir) = out.parent() {
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let mut cmd = Command::new("ffmpeg");
        cmd.args(ffmpeg_args(track, seed, &out));
        let done = run_captured(&mut cmd, "ffmpeg", FFMPEG_TIMEOUT)?;
        ensure!(
            done.status.success(),
            "ffmpeg failed ({}) making {}: {}",
            done.status,
            out.display(),
            String::from_utf8_lossy(&done.stderr).trim()
        );
        let size = fs::metadata(&out)
            .with_context(|| format!("ffmpeg made no {}", out.display()))?
            .len();
        eprintln!(
            "bench: cache library {}/{tracks}: {} ({:.1} MB, {:.1} s)",
            seed + 1,
            track.rel.display(),
            size as f64 / 1e6,
            done.elapsed.as_secs_f64()
        );
    }
    fs::write(
        &marker,
        format!("{tracks} cache tracks generated {}\n", utc_now()),
    )
    .with_context(|| format!("writing {}", marker.display()))?;
    Ok(lib)
}

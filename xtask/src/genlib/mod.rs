//! `cargo xtask gen-library`: a fast, deterministic generator of synthetic music libraries.
//!
//! How it works:
//!
//! 1. One small template per audio format is encoded with `ffmpeg` (a sine tone of `--seconds`)
//!    and cached, with all tags stripped, under `<target>/xtask-templates/<seconds>/`
//!    (`<target>` is `$CARGO_TARGET_DIR` or the workspace `target/`).
//! 2. The whole library (artists, albums, tracks, tricky tags, bad files, on-disk paths) is planned
//!    up front from `--seed`; every random choice comes from a seeded [`StdRng`] (the album layer
//!    from one master rng, each track from its own rng derived from seed + track index), so the
//!    output is byte-for-byte reproducible whatever the thread scheduling.
//! 3. Worker threads (one per core) copy a template in memory, write the tags with lofty into a
//!    `Cursor<Vec<u8>>` and write each file exactly once.
//! 4. `DIR/.musicfs-manifest.jsonl` records, for every audio file, its path, real format, kind and
//!    exactly the tag values that were written (the ground truth for tests).
//!
//! Usage: `cargo xtask gen-library --tracks N --out DIR [--seed S] [--seconds F]
//! [--formats mp3,flac=30,...] [--jobs J] [--verify]` (DIR must be empty or absent).
//!
//! Layout (messy on purpose): `DIR/<album artist or artist>/<[year - ]album>/<NN - Title>.<ext>`
//! with per-album variations (`NN. Title`, `NN Artist - Title`, `CD1/`, `1-NN`, `(Disc 1)`),
//! loose tracks without album in the artist directory, about 5% of tracks flat in
//! `DIR/Incoming/`, a couple of names that are not UTF-8. Components are sanitised (no `/`, no
//! NUL, no leading `.`, at most 200 bytes cut on a UTF-8 boundary) and a ` (2)` suffix keeps
//! every path unique. The manifest is the only dotfile.
//!
//! Manifest, one JSON object per line (see [`ManifestEntry`]): `path` (relative, lossy UTF-8),
//! `path_hex` (raw bytes), `format` (real content: mp3, flac, m4a, ogg, opus, wv, wav, aiff),
//! `ext`, `kind` (normal, corrupt, truncated, empty, untagged, misnamed; see [`Kind`]), `size`,
//! `tags` (exactly the values written, absent keys were not written: artist, album_artist,
//! album, title, year, track, track_total, disc, disc_total, genre, compilation). Read back
//! with lofty's primary tag and [`TagValues::from_tag`] they match exactly (`--verify` checks).
//!
//! Formats: mp3 (ID3v2.4), flac / ogg (Vorbis) / opus (Vorbis comments), m4a (AAC, MP4 ilst),
//! wv (WavPack, APEv2), wav and aiff (an ID3v2 chunk, lofty's primary tag for both; RIFF INFO
//! and AIFF text chunks cannot hold most fields).
//!
//! APE (Monkey's Audio) is not generated: ffmpeg can decode it but has no APE encoder.
//!
//! Format-specific limitations (the manifest never lists a value a format cannot round-trip):
//! lofty does not write empty strings to Vorbis comments (flac, ogg, opus) or MP4 ilst (m4a), and
//! reads an empty ID3v2 genre as no genre, so empty values only go where they survive (see
//! [`Format::keeps_empty`]). lofty's generic-tag-to-ID3v2 conversion orders frames through a
//! `HashSet`, so ID3v2 frames are re-sorted before writing to keep the output deterministic.
//! Ogg files always keep their vendor string (lofty shows it as `EncoderSoftware`).

mod cli;
mod formats;
mod generate;
mod layout;
mod manifest;
mod model;
mod plan;
mod quirks;
mod render;
mod templates;
#[cfg(test)]
mod tests;
mod words;

use anyhow::Result;

pub use cli::Args;
use generate::generate;
pub use manifest::{Kind, MANIFEST_NAME, ManifestEntry};

pub fn run(args: &Args) -> Result<()> {
    let summary = generate(args)?;
    println!(
        "gen-library: {} tracks, {} bytes ({:.1} MiB) in {:.2}s ({:.0} tracks/s; templates \
         {:.2}s, plan {:.2}s, write {:.2}s) -> {}",
        summary.tracks,
        summary.bytes,
        summary.bytes as f64 / (1024.0 * 1024.0),
        summary.seconds,
        summary.tracks as f64 / summary.seconds.max(1e-9),
        summary.phases[0],
        summary.phases[1],
        summary.phases[2],
        args.out.display()
    );
    Ok(())
}

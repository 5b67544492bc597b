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

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fmt::Write as _;
use std::io::{BufWriter, Cursor, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use lofty::config::WriteOptions;
use lofty::file::{FileType, TaggedFileExt};
use lofty::id3::v2::{Frame, Id3v2Tag};
use lofty::probe::Probe;
use lofty::tag::items::Timestamp;
use lofty::tag::{Accessor, ItemKey, Tag, TagExt, TagType};
use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// Name of the manifest written at the root of the generated library.
pub const MANIFEST_NAME: &str = ".musicfs-manifest.jsonl";

/// Maximum length, in bytes, of one generated path component.
const MAX_COMPONENT: usize = 200;

/// `cargo xtask gen-library` arguments.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Number of audio files to generate.
    #[arg(long)]
    pub tracks: usize,
    /// Output directory (created if missing; must be empty).
    #[arg(long)]
    pub out: PathBuf,
    /// Seed: the same seed (and templates) always gives byte-identical output.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Length of the audio in every file, in seconds.
    #[arg(long, default_value_t = 1.0)]
    pub seconds: f64,
    /// Comma-separated formats, optionally weighted (`mp3=3,flac=1`); default is the standard
    /// mix mp3 35, flac 30, m4a 10, ogg 8, opus 7, wv 5, wav 3, aiff 2.
    #[arg(long, value_delimiter = ',')]
    pub formats: Vec<String>,
    /// Worker threads (default: all cores).
    #[arg(long)]
    pub jobs: Option<usize>,
    /// After generating, read every tagged file back with lofty and compare with the manifest.
    #[arg(long)]
    pub verify: bool,
}

// ---------------------------------------------------------------------------------------------
// Formats and templates
// ---------------------------------------------------------------------------------------------

/// An audio format the generator can produce.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Format {
    Mp3,
    Flac,
    M4a,
    Ogg,
    Opus,
    Wv,
    Wav,
    Aiff,
}

impl Format {
    pub const ALL: [Format; 8] = [
        Format::Mp3,
        Format::Flac,
        Format::M4a,
        Format::Ogg,
        Format::Opus,
        Format::Wv,
        Format::Wav,
        Format::Aiff,
    ];

    /// Manifest name, also the file extension.
    pub fn name(self) -> &'static str {
        match self {
            Format::Mp3 => "mp3",
            Format::Flac => "flac",
            Format::M4a => "m4a",
            Format::Ogg => "ogg",
            Format::Opus => "opus",
            Format::Wv => "wv",
            Format::Wav => "wav",
            Format::Aiff => "aiff",
        }
    }

    pub fn ext(self) -> &'static str {
        self.name()
    }

    fn from_name(name: &str) -> Option<Format> {
        Format::ALL
            .into_iter()
            .find(|f| f.name().eq_ignore_ascii_case(name))
    }

    fn default_weight(self) -> u32 {
        match self {
            Format::Mp3 => 35,
            Format::Flac => 30,
            Format::M4a => 10,
            Format::Ogg => 8,
            Format::Opus => 7,
            Format::Wv => 5,
            Format::Wav => 3,
            Format::Aiff => 2,
        }
    }

    /// The lofty file type of the content.
    pub fn file_type(self) -> FileType {
        match self {
            Format::Mp3 => FileType::Mpeg,
            Format::Flac => FileType::Flac,
            Format::M4a => FileType::Mp4,
            Format::Ogg => FileType::Vorbis,
            Format::Opus => FileType::Opus,
            Format::Wv => FileType::WavPack,
            Format::Wav => FileType::Wav,
            Format::Aiff => FileType::Aiff,
        }
    }

    /// The wrong extension used for "misnamed" files.
    fn misnamed_ext(self) -> &'static str {
        match self {
            Format::Mp3 => "flac",
            Format::Flac => "mp3",
            Format::M4a => "mp3",
            Format::Ogg => "flac",
            Format::Opus => "m4a",
            Format::Wv => "flac",
            Format::Wav => "mp3",
            Format::Aiff => "wav",
        }
    }

    /// ffmpeg encoder candidates (first available wins) with their extra arguments.
    fn encoders(self) -> &'static [(&'static str, &'static [&'static str])] {
        match self {
            Format::Mp3 => &[
                ("libmp3lame", &["-b:a", "128k"]),
                ("libshine", &["-b:a", "128k"]),
            ],
            Format::Flac => &[("flac", &[])],
            Format::M4a => &[
                ("aac", &["-b:a", "128k"]),
                ("libfdk_aac", &["-b:a", "128k"]),
            ],
            Format::Ogg => &[
                ("libvorbis", &["-q:a", "3"]),
                ("vorbis", &["-strict", "experimental"]),
            ],
            Format::Opus => &[
                ("libopus", &["-b:a", "64k"]),
                ("opus", &["-strict", "experimental"]),
            ],
            Format::Wv => &[("wavpack", &[])],
            Format::Wav => &[("pcm_s16le", &[])],
            Format::Aiff => &[("pcm_s16be", &[])],
        }
    }

    /// ffmpeg muxer name and muxer options.
    fn muxer(self) -> (&'static str, &'static [&'static str]) {
        match self {
            Format::Mp3 => ("mp3", &["-id3v2_version", "0", "-write_id3v1", "0"]),
            Format::Flac => ("flac", &[]),
            Format::M4a => ("ipod", &["-movflags", "+faststart"]),
            Format::Ogg => ("ogg", &[]),
            Format::Opus => ("opus", &[]),
            Format::Wv => ("wv", &[]),
            Format::Wav => ("wav", &[]),
            Format::Aiff => ("aiff", &[]),
        }
    }

    fn sample_rate(self) -> u32 {
        match self {
            Format::Opus => 48_000,
            _ => 44_100,
        }
    }

    /// Whether an empty string in `field` survives a lofty write + read: lofty skips empty
    /// values when writing Vorbis comments (flac, ogg, opus) and MP4 ilst atoms (m4a), and reads
    /// an empty ID3v2 `TCON` as no genre; other ID3v2 frames and APE items keep them.
    fn keeps_empty(self, field: Field) -> bool {
        match self {
            Format::Flac | Format::Ogg | Format::Opus | Format::M4a => false,
            Format::Mp3 | Format::Wav | Format::Aiff => field != Field::Genre,
            Format::Wv => true,
        }
    }

    /// Whether a tag value produced by `quirk` survives a lofty write + read in this format.
    fn supports(self, quirk: Quirk) -> bool {
        match quirk {
            Quirk::EmptyValue => Field::ALL.into_iter().any(|f| self.keeps_empty(f)),
            _ => true,
        }
    }
}

/// Parse `--formats` into (format, weight) pairs.
fn parse_formats(specs: &[String]) -> Result<Vec<(Format, u32)>> {
    if specs.is_empty() {
        return Ok(Format::ALL
            .into_iter()
            .map(|f| (f, f.default_weight()))
            .collect());
    }
    let mut out: Vec<(Format, u32)> = Vec::new();
    for spec in specs {
        let spec = spec.trim();
        if spec.is_empty() {
            continue;
        }
        let (name, weight) = match spec.split_once(['=', ':']) {
            Some((n, w)) => (
                n.trim(),
                Some(
                    w.trim()
                        .parse::<u32>()
                        .with_context(|| format!("bad weight in --formats entry `{spec}`"))?,
                ),
            ),
            None => (spec, None),
        };
        if name.eq_ignore_ascii_case("ape") {
            bail!("APE cannot be generated: ffmpeg has no Monkey's Audio encoder");
        }
        let Some(format) = Format::from_name(name) else {
            bail!(
                "unknown format `{name}` in --formats (known: {})",
                Format::ALL.map(Format::name).join(", ")
            );
        };
        let weight = weight.unwrap_or_else(|| format.default_weight());
        match out.iter_mut().find(|(f, _)| *f == format) {
            Some(entry) => entry.1 = weight,
            None => out.push((format, weight)),
        }
    }
    out.retain(|(_, w)| *w > 0);
    ensure!(!out.is_empty(), "--formats selects no format");
    Ok(out)
}

/// The cargo target directory (`$CARGO_TARGET_DIR` or `<workspace>/target`).
fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                std::env::current_dir()
                    .map(|cwd| cwd.join(&dir))
                    .unwrap_or(dir)
            }
        }
        _ => crate::workspace_root().join("target"),
    }
}

fn seconds_label(seconds: f64) -> String {
    format!("{seconds}")
}

/// Names of the encoders of the installed ffmpeg.
fn ffmpeg_encoders() -> Result<HashSet<String>> {
    let output = Command::new("ffmpeg")
        .args(["-hide_banner", "-encoders"])
        .stdin(Stdio::null())
        .output()
        .context("cannot run `ffmpeg` (is it installed and on PATH?)")?;
    ensure!(
        output.status.success(),
        "`ffmpeg -encoders` failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8_lossy(&output.stdout);
    let mut names = HashSet::new();
    let mut in_list = false;
    for line in text.lines() {
        if line.trim_start().starts_with("------") {
            in_list = true;
            continue;
        }
        if !in_list {
            continue;
        }
        let mut words = line.split_whitespace();
        if let (Some(_flags), Some(name)) = (words.next(), words.next()) {
            names.insert(name.to_owned());
        }
    }
    Ok(names)
}

/// Remove every tag lofty can see, so templates are truly untagged.
fn strip_tags(bytes: Vec<u8>, file_type: FileType) -> Result<Vec<u8>> {
    let mut cursor = Cursor::new(bytes);
    for tag_type in [
        TagType::Id3v2,
        TagType::Id3v1,
        TagType::Ape,
        TagType::VorbisComments,
        TagType::Mp4Ilst,
        TagType::RiffInfo,
        TagType::AiffText,
    ] {
        if file_type.tag_support(tag_type).is_readable() {
            cursor.set_position(0);
            tag_type
                .remove_from(&mut cursor, WriteOptions::default())
                .with_context(|| format!("removing {tag_type:?} from a {file_type:?} template"))?;
        }
    }
    Ok(cursor.into_inner())
}

/// Check that lofty reads `bytes` as `format` with no tag items.
fn check_template(bytes: &[u8], format: Format) -> Result<()> {
    let tagged = Probe::new(Cursor::new(bytes))
        .guess_file_type()?
        .read()
        .with_context(|| format!("lofty cannot read the {} template", format.name()))?;
    ensure!(
        tagged.file_type() == format.file_type(),
        "the {} template is detected as {:?}",
        format.name(),
        tagged.file_type()
    );
    ensure!(
        !tagged.tags().iter().any(has_user_items),
        "the {} template still has tags",
        format.name()
    );
    Ok(())
}

/// Whether a tag holds anything but the Ogg vendor string (which Ogg files always keep; lofty
/// shows it as `EncoderSoftware`).
fn has_user_items(tag: &Tag) -> bool {
    tag.picture_count() > 0 || tag.items().any(|i| i.key() != ItemKey::EncoderSoftware)
}

fn unique_suffix() -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Encode (or load from the cache) one stripped template per format, indexed like `Format::ALL`.
fn load_templates(formats: &[Format], seconds: f64) -> Result<Vec<Option<Vec<u8>>>> {
    let dir = target_dir()
        .join("xtask-templates")
        .join(seconds_label(seconds));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut encoders: Option<HashSet<String>> = None;
    let mut out = vec![None; Format::ALL.len()];
    for &format in formats {
        let path = dir.join(format!("template.{}", format.ext()));
        if let Ok(bytes) = std::fs::read(&path)
            && check_template(&bytes, format).is_ok()
        {
            out[format as usize] = Some(bytes);
            continue;
        }
        if encoders.is_none() {
            encoders = Some(ffmpeg_encoders()?);
        }
        let available = encoders.as_ref().expect("just set");
        let Some((codec, codec_args)) = format
            .encoders()
            .iter()
            .find(|(name, _)| available.contains(*name))
        else {
            bail!(
                "ffmpeg has no encoder for {} (needs one of: {}); install an ffmpeg build with it \
                 or leave {} out of --formats",
                format.name(),
                format
                    .encoders()
                    .iter()
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
                    .join(", "),
                format.name()
            );
        };
        let raw = dir.join(format!(".raw-{}.{}", unique_suffix(), format.ext()));
        let (muxer, muxer_args) = format.muxer();
        let rate = format.sample_rate().to_string();
        let status = Command::new("ffmpeg")
            .args(["-hide_banner", "-nostdin", "-loglevel", "error", "-y"])
            .args(["-f", "lavfi", "-i"])
            .arg(format!(
                "sine=frequency=440:sample_rate={rate}:duration={}",
                seconds_label(seconds)
            ))
            .args(["-ac", "2", "-ar", &rate, "-map_metadata", "-1"])
            .args(["-fflags", "+bitexact", "-flags:a", "+bitexact"])
            .args(["-c:a", codec])
            .args(*codec_args)
            .args(muxer_args.iter())
            .args(["-f", muxer])
            .arg(&raw)
            .stdin(Stdio::null())
            .status()
            .context("cannot run `ffmpeg` (is it installed and on PATH?)")?;
        if !status.success() {
            let _ = std::fs::remove_file(&raw);
            bail!(
                "ffmpeg failed to encode the {} template with encoder `{codec}`",
                format.name()
            );
        }
        let bytes = std::fs::read(&raw).with_context(|| format!("reading {}", raw.display()))?;
        let _ = std::fs::remove_file(&raw);
        let bytes = strip_tags(bytes, format.file_type())?;
        check_template(&bytes, format)?;
        let tmp = dir.join(format!(".tmp-{}.{}", unique_suffix(), format.ext()));
        std::fs::write(&tmp, &bytes).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("renaming to {}", path.display()))?;
        out[format as usize] = Some(bytes);
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Manifest
// ---------------------------------------------------------------------------------------------

/// What kind of file was generated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A valid, tagged file.
    Normal,
    /// A valid header followed by random garbage (no tags).
    Corrupt,
    /// A tagged file cut in half (`tags` are the values written before cutting).
    Truncated,
    /// A 0-byte file (`format` is the format its extension claims).
    Empty,
    /// A valid file without any tag (Ogg files still carry the mandatory vendor string).
    Untagged,
    /// A valid, tagged file with the extension of another format (e.g. FLAC bytes in `.mp3`):
    /// readable only by sniffing the content (lofty `Probe::guess_file_type`), not by extension.
    Misnamed,
}

/// The tag values written to a file; a missing key means the field was not written.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagValues {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artist: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub album_artist: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub album: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub year: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub track: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub track_total: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disc: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disc_total: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub genre: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compilation: Option<bool>,
}

impl TagValues {
    fn is_empty(&self) -> bool {
        *self == TagValues::default()
    }

    fn get(&self, field: Field) -> Option<&String> {
        match field {
            Field::Artist => self.artist.as_ref(),
            Field::AlbumArtist => self.album_artist.as_ref(),
            Field::Album => self.album.as_ref(),
            Field::Title => self.title.as_ref(),
            Field::Genre => self.genre.as_ref(),
        }
    }

    fn slot(&mut self, field: Field) -> &mut Option<String> {
        match field {
            Field::Artist => &mut self.artist,
            Field::AlbumArtist => &mut self.album_artist,
            Field::Album => &mut self.album,
            Field::Title => &mut self.title,
            Field::Genre => &mut self.genre,
        }
    }

    /// Build the lofty tag for `format` (its primary tag type).
    fn to_tag(&self, format: Format) -> Tag {
        let mut tag = Tag::new(format.file_type().primary_tag_type());
        if let Some(v) = &self.artist {
            tag.set_artist(v.clone());
        }
        if let Some(v) = &self.album_artist {
            tag.insert_text(ItemKey::AlbumArtist, v.clone());
        }
        if let Some(v) = &self.album {
            tag.set_album(v.clone());
        }
        if let Some(v) = &self.title {
            tag.set_title(v.clone());
        }
        if let Some(year) = self.year {
            tag.set_date(Timestamp {
                year: u16::try_from(year).unwrap_or(u16::MAX),
                ..Timestamp::default()
            });
        }
        if let Some(v) = self.track {
            tag.set_track(v);
        }
        if let Some(v) = self.track_total {
            tag.set_track_total(v);
        }
        if let Some(v) = self.disc {
            tag.set_disk(v);
        }
        if let Some(v) = self.disc_total {
            tag.set_disk_total(v);
        }
        if let Some(v) = &self.genre {
            tag.set_genre(v.clone());
        }
        if self.compilation == Some(true) {
            tag.insert_text(ItemKey::FlagCompilation, "1".to_owned());
        }
        tag
    }

    /// Read the values back from a lofty tag (the same mapping a reader would use).
    pub fn from_tag(tag: &Tag) -> TagValues {
        TagValues {
            artist: tag.artist().map(|v| v.into_owned()),
            album_artist: tag.get_string(ItemKey::AlbumArtist).map(str::to_owned),
            album: tag.album().map(|v| v.into_owned()),
            title: tag.title().map(|v| v.into_owned()),
            year: tag.date().map(|d| u32::from(d.year)),
            track: tag.track(),
            track_total: tag.track_total(),
            disc: tag.disk(),
            disc_total: tag.disk_total(),
            genre: tag.genre().map(|v| v.into_owned()),
            compilation: tag
                .get_string(ItemKey::FlagCompilation)
                .map(|v| v == "1" || v.eq_ignore_ascii_case("true")),
        }
    }
}

/// One line of the manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestEntry {
    /// Path relative to the library root (lossy UTF-8).
    pub path: String,
    /// Raw bytes of the relative path, hex.
    pub path_hex: String,
    /// Real content format (for `empty` files: the format the name claims).
    pub format: String,
    /// Extension used in the file name.
    pub ext: String,
    pub kind: Kind,
    pub size: u64,
    pub tags: TagValues,
}

impl ManifestEntry {
    /// The raw relative path.
    pub fn raw_path(&self) -> Vec<u8> {
        from_hex(&self.path_hex).expect("manifest path_hex is valid hex")
    }
}

fn to_hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn from_hex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Read `DIR/.musicfs-manifest.jsonl`.
pub fn read_manifest(dir: &Path) -> Result<Vec<ManifestEntry>> {
    let text = std::fs::read_to_string(dir.join(MANIFEST_NAME))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).with_context(|| format!("bad manifest line: {l}")))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Deterministic randomness and word lists
// ---------------------------------------------------------------------------------------------

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

const SALT_MASTER: u64 = 1;
const SALT_TRACK: u64 = 2;
const SALT_QUIRK: u64 = 3;
const SALT_GARBAGE: u64 = 4;
const SALT_PATH: u64 = 5;
const SALT_PLACE: u64 = 6;

/// An rng derived from (seed, salt, index) only.
fn rng_for(seed: u64, salt: u64, index: u64) -> StdRng {
    StdRng::seed_from_u64(splitmix64(
        seed ^ splitmix64(salt.wrapping_mul(0xD6E8_FEB8_6659_FD93) ^ splitmix64(index)),
    ))
}

const ADJECTIVES: &[&str] = &[
    "Silver", "Golden", "Broken", "Electric", "Midnight", "Crimson", "Hollow", "Quiet", "Velvet",
    "Neon", "Lonely", "Burning", "Frozen", "Wild", "Gentle", "Distant", "Lost", "Hidden", "Bright",
    "Dark", "Restless", "Sacred", "Savage", "Blue", "Purple", "Paper", "Iron", "Glass", "Secret",
    "Last", "First", "Endless", "Fading", "Rising", "Sleepy", "Crooked", "Static", "Cosmic",
    "Northern", "Southern", "Little", "Heavy", "Sweet", "Bitter", "Empty", "Early", "Late",
];
const NOUNS: &[&str] = &[
    "Heart",
    "River",
    "Dream",
    "Shadow",
    "Fire",
    "Ocean",
    "Mirror",
    "Garden",
    "Highway",
    "Machine",
    "Summer",
    "Winter",
    "Storm",
    "Light",
    "Echo",
    "Horizon",
    "Forest",
    "City",
    "Desert",
    "Moon",
    "Star",
    "Rain",
    "Signal",
    "Ghost",
    "Kingdom",
    "Island",
    "Thunder",
    "Satellite",
    "Diamond",
    "Wolf",
    "Tiger",
    "Rose",
    "Stone",
    "Wave",
    "Mountain",
    "Valley",
    "Engine",
    "Radio",
    "Window",
    "Letter",
    "Morning",
    "Evening",
    "Harbor",
    "Lantern",
    "Feather",
    "Circus",
    "Carousel",
    "Anchor",
];
const PLURALS: &[&str] = &[
    "Foxes",
    "Wolves",
    "Kings",
    "Saints",
    "Lovers",
    "Strangers",
    "Machines",
    "Ghosts",
    "Rebels",
    "Pilots",
    "Sisters",
    "Brothers",
    "Tigers",
    "Ravens",
    "Shadows",
    "Hearts",
    "Satellites",
    "Drifters",
    "Comets",
    "Horses",
];
const FIRST_NAMES: &[&str] = &[
    "John", "Mary", "Alex", "Sam", "Lena", "Marcus", "Nina", "Oscar", "Ruby", "Leo", "Ivy", "Hank",
    "Della", "Otis", "June", "Felix", "Iris", "Jack", "Nora", "Ray", "Etta", "Miles", "Cleo",
    "Bobby",
];
const LAST_NAMES: &[&str] = &[
    "Harper", "Stone", "Rivers", "Black", "Wilde", "Carter", "Monroe", "Hayes", "Brooks", "Reed",
    "Flynn", "Moss", "Lane", "Keller", "Vance", "Price", "Shaw", "Dalton", "Quinn", "Marsh",
    "O'Brien", "McKay",
];
const VERBS_ING: &[&str] = &[
    "Running", "Falling", "Dancing", "Waiting", "Burning", "Chasing", "Dreaming", "Driving",
    "Flying", "Hiding", "Breaking", "Holding", "Calling", "Drifting", "Shining", "Walking",
];
const PLACES: &[&str] = &[
    "Berlin",
    "Tokyo",
    "Memphis",
    "Brooklyn",
    "Paris",
    "Detroit",
    "Lisbon",
    "Reykjavik",
    "Nashville",
    "Montreal",
    "the Fillmore",
    "Budokan",
];
const GENRES: &[&str] = &[
    "Rock",
    "Pop",
    "Jazz",
    "Electronic",
    "Hip-Hop",
    "Classical",
    "Folk",
    "Blues",
    "Metal",
    "Ambient",
    "Soul",
    "R&B",
    "Country",
    "Reggae",
    "Punk",
    "Indie",
    "Drum & Bass",
    "Synthwave",
    "Bossa Nova",
    "K-Pop",
    "Singer-Songwriter",
    "Soundtrack",
];
const CJK_WORDS: &[&str] = &[
    "東京",
    "夜明け",
    "桜",
    "雨の日",
    "月光",
    "夢",
    "星空",
    "さくら",
    "カラオケ",
    "ありがとう",
    "사랑해",
    "서울의 밤",
    "北京",
    "春天",
    "龍",
    "海辺",
    "花火",
    "青い空",
    "静かな夜",
    "風",
];
const CYRILLIC_WORDS: &[&str] = &[
    "Кино",
    "Звезда",
    "Город",
    "Ночь",
    "Белые ночи",
    "Песня",
    "Летний дождь",
    "Москва",
    "Весна",
    "Мечта",
    "Ветер",
    "Сердце",
    "Последний герой",
    "Ёлка",
];
const ACCENT_WORDS: &[&str] = &[
    "Café",
    "Crème Brûlée",
    "Déjà Vu",
    "Naïve",
    "Über",
    "Señorita",
    "Mañana",
    "Ça Va",
    "Fiancée",
    "Résumé",
    "Ångström",
    "Smörgåsbord",
    "Noël",
    "Garçon",
    "Élan Vital",
    "Sólo",
    "Música",
    "Corazón",
    "Jalapeño",
    "São Paulo",
    "Zürich",
    "Köln",
    "Fête",
];
const EMOJI: &[&str] = &[
    "🎸",
    "🔥",
    "🌙",
    "💿",
    "🎹",
    "❤️",
    "👩‍🎤",
    "🇯🇵",
    "✨",
    "🎧",
    "🦊",
    "🌊",
];
const LONG_PIECES: &[&str] = &[
    "Ünïcödé",
    "長い題名",
    "Длинное",
    "naïve",
    "—",
    "🎶",
    "Symphony",
    "No.",
    "in",
    "E♭",
    "Major",
    "Op.",
    "Allegro",
    "ma non troppo",
    "Été",
    "夜想曲",
];

/// NFD (decomposed) form of the accented letters used in [`ACCENT_WORDS`].
fn to_nfd(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        let (base, mark) = match c {
            'é' => ('e', '\u{301}'),
            'è' => ('e', '\u{300}'),
            'ê' => ('e', '\u{302}'),
            'ë' => ('e', '\u{308}'),
            'á' => ('a', '\u{301}'),
            'à' => ('a', '\u{300}'),
            'â' => ('a', '\u{302}'),
            'ä' => ('a', '\u{308}'),
            'å' => ('a', '\u{30A}'),
            'ã' => ('a', '\u{303}'),
            'í' => ('i', '\u{301}'),
            'ï' => ('i', '\u{308}'),
            'î' => ('i', '\u{302}'),
            'ó' => ('o', '\u{301}'),
            'ô' => ('o', '\u{302}'),
            'ö' => ('o', '\u{308}'),
            'õ' => ('o', '\u{303}'),
            'ú' => ('u', '\u{301}'),
            'ü' => ('u', '\u{308}'),
            'û' => ('u', '\u{302}'),
            'ñ' => ('n', '\u{303}'),
            'ç' => ('c', '\u{327}'),
            'É' => ('E', '\u{301}'),
            'Ö' => ('O', '\u{308}'),
            'Ü' => ('U', '\u{308}'),
            'Å' => ('A', '\u{30A}'),
            'Ç' => ('C', '\u{327}'),
            _ => {
                out.push(c);
                continue;
            }
        };
        out.push(base);
        out.push(mark);
    }
    out
}

fn pick<'a>(rng: &mut StdRng, list: &[&'a str]) -> &'a str {
    list.choose(rng).copied().unwrap_or("")
}

fn cjk_name(rng: &mut StdRng) -> String {
    let n = rng.random_range(1..=2);
    (0..n)
        .map(|_| pick(rng, CJK_WORDS))
        .collect::<Vec<_>>()
        .join(if rng.random_bool(0.5) { "" } else { " " })
}

fn cyrillic_name(rng: &mut StdRng) -> String {
    let n = rng.random_range(1..=2);
    (0..n)
        .map(|_| pick(rng, CYRILLIC_WORDS))
        .collect::<Vec<_>>()
        .join(" ")
}

fn accent_name(rng: &mut StdRng) -> String {
    match rng.random_range(0..3) {
        0 => pick(rng, ACCENT_WORDS).to_owned(),
        1 => format!("{} {}", pick(rng, ACCENT_WORDS), pick(rng, NOUNS)),
        _ => format!("{} {}", pick(rng, ADJECTIVES), pick(rng, ACCENT_WORDS)),
    }
}

/// Occasionally (a few percent) a non-Latin or accented name, as in real libraries.
fn natural_unicode(rng: &mut StdRng) -> Option<String> {
    match rng.random_range(0..100) {
        0 => Some(cjk_name(rng)),
        1 => Some(cyrillic_name(rng)),
        2 => Some(accent_name(rng)),
        3 => Some(to_nfd(&accent_name(rng))),
        _ => None,
    }
}

fn artist_name(rng: &mut StdRng) -> String {
    if let Some(name) = natural_unicode(rng) {
        return name;
    }
    match rng.random_range(0..8) {
        0 | 1 => format!("The {} {}", pick(rng, ADJECTIVES), pick(rng, PLURALS)),
        2 | 3 => format!("{} {}", pick(rng, FIRST_NAMES), pick(rng, LAST_NAMES)),
        4 => format!("{} {}", pick(rng, ADJECTIVES), pick(rng, NOUNS)),
        5 => format!(
            "{} {} & the {}",
            pick(rng, FIRST_NAMES),
            pick(rng, LAST_NAMES),
            pick(rng, PLURALS)
        ),
        6 => format!("DJ {}", pick(rng, NOUNS)),
        _ => format!("{} of {}", pick(rng, PLURALS), pick(rng, PLACES)),
    }
}

fn album_name(rng: &mut StdRng) -> String {
    if let Some(name) = natural_unicode(rng) {
        return name;
    }
    match rng.random_range(0..10) {
        0..=2 => format!("{} {}", pick(rng, ADJECTIVES), pick(rng, NOUNS)),
        3 => format!("{} of the {}", pick(rng, NOUNS), pick(rng, NOUNS)),
        4 => format!("Songs from the {}", pick(rng, NOUNS)),
        5 => format!("Live in {}", pick(rng, PLACES)),
        6 => format!(
            "{} {} (Deluxe Edition)",
            pick(rng, ADJECTIVES),
            pick(rng, NOUNS)
        ),
        7 => format!("The {} Sessions", pick(rng, NOUNS)),
        8 => format!("Vol. {}", rng.random_range(1..=4)),
        _ => pick(rng, NOUNS).to_owned(),
    }
}

fn track_title(rng: &mut StdRng) -> String {
    if let Some(name) = natural_unicode(rng) {
        return name;
    }
    match rng.random_range(0..12) {
        0..=2 => format!("{} {}", pick(rng, ADJECTIVES), pick(rng, NOUNS)),
        3 => format!("{} in the {}", pick(rng, VERBS_ING), pick(rng, NOUNS)),
        4 => pick(rng, NOUNS).to_owned(),
        5 => pick(rng, VERBS_ING).to_owned(),
        6 => format!("{} (Interlude)", pick(rng, NOUNS)),
        7 => format!(
            "{} {} (Remastered {})",
            pick(rng, ADJECTIVES),
            pick(rng, NOUNS),
            rng.random_range(1995..=2023)
        ),
        8 => format!("Don't Stop the {}", pick(rng, NOUNS)),
        9 => format!("{} & {}", pick(rng, NOUNS), pick(rng, NOUNS)),
        10 => format!("{}, Pt. {}", pick(rng, NOUNS), rng.random_range(1..=3)),
        _ => format!("{} {} [Live]", pick(rng, ADJECTIVES), pick(rng, NOUNS)),
    }
}

/// A 300..=600-byte value made mostly of multi-byte characters.
fn long_value(rng: &mut StdRng) -> String {
    let target = rng.random_range(300..=600);
    let mut s = String::new();
    while s.len() < target {
        if !s.is_empty() {
            s.push(' ');
        }
        s.push_str(pick(rng, LONG_PIECES));
    }
    while s.len() > 599 {
        s.pop();
    }
    while s.ends_with(' ') {
        s.pop();
    }
    while s.len() < 300 {
        s.push('x');
    }
    s.push('!');
    s
}

// ---------------------------------------------------------------------------------------------
// Planning
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Field {
    Artist,
    AlbumArtist,
    Album,
    Title,
    Genre,
}

impl Field {
    const ALL: [Field; 5] = [
        Field::Artist,
        Field::AlbumArtist,
        Field::Album,
        Field::Title,
        Field::Genre,
    ];
}

/// Per-track tricky tag cases.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Quirk {
    Cjk,
    Cyrillic,
    AccentNfc,
    AccentNfd,
    Emoji,
    Slash,
    Backslash,
    Colon,
    EmptyValue,
    LongValue,
    Spaces,
    Dot,
    DotDot,
    NoAlbum,
    NoArtist,
    NoTrack,
    NoYear,
    NoTitle,
}

impl Quirk {
    const ALL: [Quirk; 18] = [
        Quirk::Cjk,
        Quirk::Cyrillic,
        Quirk::AccentNfc,
        Quirk::AccentNfd,
        Quirk::Emoji,
        Quirk::Slash,
        Quirk::Backslash,
        Quirk::Colon,
        Quirk::EmptyValue,
        Quirk::LongValue,
        Quirk::Spaces,
        Quirk::Dot,
        Quirk::DotDot,
        Quirk::NoAlbum,
        Quirk::NoArtist,
        Quirk::NoTrack,
        Quirk::NoYear,
        Quirk::NoTitle,
    ];
}

#[derive(Clone, Copy, Debug, Default)]
struct AlbumLayout {
    /// `<year> - <album>` directory names.
    year_prefix: bool,
    /// 0: `NN - Title`, 1: `NN. Title`, 2: `NN Artist - Title`.
    file_style: u8,
    /// Multi-disc layout. 0: `CD1/` subdirectory, 1: `1-NN` prefix, 2: `<album> (Disc 1)`.
    disc_style: u8,
}

#[derive(Clone, Debug)]
struct AlbumPlan {
    compilation: bool,
    layout: AlbumLayout,
    /// Tracks of this album: `first_track..first_track + n_tracks`.
    first_track: usize,
    n_tracks: usize,
}

#[derive(Clone, Debug)]
struct TrackPlan {
    format: Format,
    kind: Kind,
    album: usize,
    /// Tags that are written (and go into the manifest).
    tags: TagValues,
    incoming: bool,
    non_utf8: bool,
    /// Part of an in-album collision: never given a quirk or a bad kind, so the duplicate survives.
    protected: bool,
    /// Relative path, raw bytes.
    rel: Vec<u8>,
    ext: &'static str,
}

/// Split `n` into per-format counts by weight (largest remainder), every format at least once
/// when there are enough tracks.
fn format_quotas(weights: &[(Format, u32)], n: usize) -> Vec<(Format, usize)> {
    let total: u64 = weights.iter().map(|(_, w)| u64::from(*w)).sum();
    let mut quotas: Vec<(Format, usize, u64)> = weights
        .iter()
        .map(|&(f, w)| {
            let exact = u64::from(w) * n as u64;
            (f, (exact / total) as usize, exact % total)
        })
        .collect();
    let assigned: usize = quotas.iter().map(|q| q.1).sum();
    let mut order: Vec<usize> = (0..quotas.len()).collect();
    order.sort_by(|&a, &b| quotas[b].2.cmp(&quotas[a].2).then(a.cmp(&b)));
    for &i in order.iter().take(n - assigned) {
        quotas[i].1 += 1;
    }
    if n >= quotas.len() {
        for i in 0..quotas.len() {
            if quotas[i].1 == 0 {
                let richest = (0..quotas.len())
                    .max_by_key(|&j| (quotas[j].1, std::cmp::Reverse(j)))
                    .expect("non-empty");
                quotas[richest].1 -= 1;
                quotas[i].1 += 1;
            }
        }
    }
    quotas.into_iter().map(|(f, c, _)| (f, c)).collect()
}

/// Hands out distinct track indices in a seeded random order.
struct Picker {
    order: Vec<usize>,
    /// Position of each index in `order`.
    pos_of: Vec<usize>,
    /// `next[p]`: a position >= p that may be unused (path-compressed skip over used positions).
    next: Vec<usize>,
}

impl Picker {
    fn new(n: usize, rng: &mut StdRng) -> Picker {
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(rng);
        let mut pos_of = vec![0; n];
        for (pos, &i) in order.iter().enumerate() {
            pos_of[i] = pos;
        }
        Picker {
            order,
            pos_of,
            next: (0..=n).collect(),
        }
    }

    /// The first position >= `pos` whose index is unused (`n` if none).
    fn find(&mut self, pos: usize) -> usize {
        let mut root = pos;
        while self.next[root] != root {
            root = self.next[root];
        }
        let mut p = pos;
        while self.next[p] != root {
            let up = self.next[p];
            self.next[p] = root;
            p = up;
        }
        root
    }

    /// Never hand out `index` (as if it had been picked).
    fn exclude(&mut self, index: usize) {
        let pos = self.pos_of[index];
        self.next[pos] = pos + 1;
    }

    /// An unused index satisfying `pred`, else (small libraries) an already used one.
    fn pick(&mut self, pred: impl Fn(usize) -> bool) -> Option<usize> {
        let n = self.order.len();
        let mut pos = self.find(0);
        while pos < n {
            let i = self.order[pos];
            if pred(i) {
                self.next[pos] = pos + 1;
                return Some(i);
            }
            pos = self.find(pos + 1);
        }
        self.order.iter().copied().find(|&i| pred(i))
    }
}

fn count_for(n: usize, per_mille: usize, min: usize) -> usize {
    ((n * per_mille + 500) / 1000).max(min)
}

fn plan_library(n: usize, seed: u64, weights: &[(Format, u32)]) -> Vec<TrackPlan> {
    let mut rng = rng_for(seed, SALT_MASTER, 0);

    // Album sizes (about 10 tracks each).
    let mut sizes = Vec::new();
    let mut total = 0;
    while total < n {
        let size = rng.random_range(6..=14).min(n - total);
        sizes.push(size);
        total += size;
    }
    let n_albums = sizes.len();

    // Album-level features, each forced at least once (on distinct albums when possible).
    let mut multi_disc: Vec<bool> = sizes
        .iter()
        .map(|&s| s >= 4 && rng.random_bool(0.06))
        .collect();
    let mut compilation: Vec<bool> = sizes.iter().map(|_| rng.random_bool(0.06)).collect();
    let mut collision: Vec<bool> = sizes
        .iter()
        .map(|&s| s >= 3 && rng.random_bool(0.05))
        .collect();
    let mut forced = vec![false; n_albums];
    let mut album_order: Vec<usize> = (0..n_albums).collect();
    album_order.shuffle(&mut rng);
    for (flags, min_size) in [
        (&mut multi_disc, 4),
        (&mut compilation, 2),
        (&mut collision, 3),
    ] {
        if flags.iter().any(|&f| f) {
            continue;
        }
        let choice = album_order
            .iter()
            .copied()
            .find(|&a| sizes[a] >= min_size && !forced[a])
            .or_else(|| album_order.iter().copied().find(|&a| sizes[a] >= min_size));
        if let Some(a) = choice {
            flags[a] = true;
            forced[a] = true;
        }
    }

    // Albums and their tracks.
    let mut albums = Vec::with_capacity(n_albums);
    let mut tracks: Vec<TrackPlan> = Vec::with_capacity(n);
    let mut artist = String::new();
    let mut artist_albums_left = 0;
    for a in 0..n_albums {
        let size = sizes[a];
        let is_comp = compilation[a];
        let (album_main_artist, album_artist) = if is_comp {
            (
                "Various Artists".to_owned(),
                Some("Various Artists".to_owned()),
            )
        } else {
            if artist_albums_left == 0 {
                artist = artist_name(&mut rng);
                artist_albums_left = rng.random_range(1..=3);
            }
            artist_albums_left -= 1;
            let album_artist = rng.random_bool(0.4).then(|| artist.clone());
            (artist.clone(), album_artist)
        };
        let album_title = album_name(&mut rng);
        let year = rng.random_bool(0.95).then(|| rng.random_range(1955..=2024));
        let genre = rng
            .random_bool(0.9)
            .then(|| pick(&mut rng, GENRES).to_owned());
        let write_total = rng.random_bool(0.7);
        let write_disc = rng.random_bool(0.5);
        let layout = AlbumLayout {
            year_prefix: rng.random_bool(0.25),
            file_style: rng.random_range(0..3),
            disc_style: rng.random_range(0..3),
        };
        let discs: Vec<usize> = if multi_disc[a] {
            vec![size / 2, size - size / 2]
        } else {
            vec![size]
        };
        let first_track = tracks.len();
        for (d, &count) in discs.iter().enumerate() {
            for k in 1..=count {
                let index = tracks.len();
                let mut trng = rng_for(seed, SALT_TRACK, index as u64);
                let title = track_title(&mut trng);
                let track_artist = if is_comp {
                    artist_name(&mut trng)
                } else {
                    album_main_artist.clone()
                };
                let with_disc = multi_disc[a] || write_disc;
                let tags = TagValues {
                    artist: Some(track_artist),
                    album_artist: album_artist.clone(),
                    album: Some(album_title.clone()),
                    title: Some(title),
                    year,
                    track: Some(k as u32),
                    track_total: write_total.then_some(count as u32),
                    disc: with_disc.then_some(d as u32 + 1),
                    disc_total: with_disc.then_some(discs.len() as u32),
                    genre: genre.clone(),
                    compilation: is_comp.then_some(true),
                };
                tracks.push(TrackPlan {
                    format: Format::Mp3,
                    kind: Kind::Normal,
                    album: a,
                    tags,
                    incoming: false,
                    non_utf8: false,
                    protected: false,
                    rel: Vec::new(),
                    ext: "",
                });
            }
        }
        if collision[a] {
            // The last track repeats disc, number and title of the one before it.
            let last = tracks.len() - 1;
            let prev = tracks[last - 1].tags.clone();
            let t = &mut tracks[last].tags;
            t.disc = prev.disc;
            t.track = prev.track;
            t.title = prev.title;
            tracks[last].protected = true;
            tracks[last - 1].protected = true;
        }
        albums.push(AlbumPlan {
            compilation: is_comp,
            layout,
            first_track,
            n_tracks: size,
        });
    }

    // Formats: exact proportions, mostly one format per album (albums take consecutive runs of
    // a format-sorted list, in random album order).
    let mut format_list = Vec::with_capacity(n);
    for (f, count) in format_quotas(weights, n) {
        format_list.extend(std::iter::repeat_n(f, count));
    }
    let mut next_format = format_list.into_iter();
    for &a in &album_order {
        let album = &albums[a];
        for t in &mut tracks[album.first_track..album.first_track + album.n_tracks] {
            t.format = next_format.next().expect("one format per track");
        }
    }

    // Bad files, non-UTF-8 names and tag quirks on distinct, randomly chosen tracks.
    let mut picker = Picker::new(n, &mut rng);
    for (i, t) in tracks.iter().enumerate() {
        if t.protected {
            picker.exclude(i);
        }
    }
    let mut path_tags: Vec<Option<TagValues>> = vec![None; n];
    for (kind, per_mille) in [
        (Kind::Empty, 5),
        (Kind::Corrupt, 10),
        (Kind::Truncated, 10),
        (Kind::Untagged, 15),
        (Kind::Misnamed, 10),
    ] {
        for _ in 0..count_for(n, per_mille, 1) {
            if let Some(i) = picker.pick(|i| tracks[i].kind == Kind::Normal && !tracks[i].protected)
            {
                tracks[i].kind = kind;
            }
        }
    }
    for j in 0..count_for(n, 3, 2) {
        if let Some(i) = picker
            .pick(|i| tracks[i].kind == Kind::Normal && !tracks[i].non_utf8 && !tracks[i].protected)
        {
            tracks[i].non_utf8 = true;
            tracks[i].incoming = j % 2 == 1;
        }
    }
    for quirk in Quirk::ALL {
        for j in 0..count_for(n, 15, 1) {
            let Some(i) = picker.pick(|i| {
                tracks[i].kind == Kind::Normal
                    && !tracks[i].protected
                    && tracks[i].format.supports(quirk)
            }) else {
                continue;
            };
            let mut qrng = rng_for(seed, SALT_QUIRK, i as u64);
            let format = tracks[i].format;
            apply_quirk(&mut tracks[i].tags, format, quirk, j, &mut qrng);
        }
    }

    // Placement, then the written tags for bad kinds.
    for (i, t) in tracks.iter_mut().enumerate() {
        let mut prng = rng_for(seed, SALT_PLACE, i as u64);
        let r = prng.random_range(0..100);
        if r < 5 || (t.kind == Kind::Untagged && r < 50) {
            t.incoming = true;
        }
        t.ext = if t.kind == Kind::Misnamed {
            t.format.misnamed_ext()
        } else {
            t.format.ext()
        };
        if matches!(t.kind, Kind::Corrupt | Kind::Empty | Kind::Untagged) {
            path_tags[i] = Some(std::mem::take(&mut t.tags));
        }
    }

    // On-disk paths, unique.
    let mut taken: HashSet<Vec<u8>> = HashSet::with_capacity(n);
    for i in 0..n {
        let tags = path_tags[i].as_ref().unwrap_or(&tracks[i].tags).clone();
        let album = &albums[tracks[i].album];
        let mut prng = rng_for(seed, SALT_PATH, i as u64);
        let (dirs, base) = path_parts(&tracks[i], &tags, album, i, &mut prng);
        let rel = unique_path(&dirs, &base, tracks[i].ext, &mut taken);
        tracks[i].rel = rel;
    }
    tracks
}

/// Apply a tricky case to a track's tags; `j` (the occurrence number) rotates the field.
fn apply_quirk(tags: &mut TagValues, format: Format, quirk: Quirk, j: usize, rng: &mut StdRng) {
    const ROTATION: [Field; 3] = [Field::Title, Field::Artist, Field::Album];
    let field = ROTATION[j % ROTATION.len()];
    let current = tags
        .get(field)
        .cloned()
        .unwrap_or_else(|| pick(rng, NOUNS).to_owned());
    let new_value = match quirk {
        Quirk::Cjk => cjk_name(rng),
        Quirk::Cyrillic => cyrillic_name(rng),
        Quirk::AccentNfc => accent_name(rng),
        Quirk::AccentNfd => to_nfd(&accent_name(rng)),
        Quirk::Emoji => match rng.random_range(0..3) {
            0 => format!("{current} {}", pick(rng, EMOJI)),
            1 => format!("{} {current}", pick(rng, EMOJI)),
            _ => format!("{}{}", pick(rng, EMOJI), pick(rng, EMOJI)),
        },
        Quirk::Slash => match rng.random_range(0..3) {
            0 => format!("{}/{}", pick(rng, NOUNS), pick(rng, NOUNS)),
            1 => format!("{current} (Part 1/2)"),
            _ => format!("{} / {}", current, pick(rng, NOUNS)),
        },
        Quirk::Backslash => match rng.random_range(0..2) {
            0 => format!("{}\\{}", pick(rng, NOUNS), pick(rng, NOUNS)),
            _ => format!("{current} \\ Remix"),
        },
        Quirk::Colon => match rng.random_range(0..3) {
            0 => format!("{current}: Reprise"),
            1 => format!("Vol. {}: {current}", rng.random_range(1..=9)),
            _ => format!(
                "{:02}:{:02}",
                rng.random_range(0..24),
                rng.random_range(0..60)
            ),
        },
        Quirk::EmptyValue => {
            // Rotate over more fields so genre and album artist get empty values too.
            let fields: Vec<Field> = [
                Field::Title,
                Field::Artist,
                Field::Album,
                Field::Genre,
                Field::AlbumArtist,
            ]
            .into_iter()
            .filter(|&f| format.keeps_empty(f))
            .collect();
            if let Some(&field) = fields.get(j % fields.len().max(1)) {
                *tags.slot(field) = Some(String::new());
            }
            return;
        }
        Quirk::LongValue => long_value(rng),
        Quirk::Spaces => match rng.random_range(0..3) {
            0 => format!(" {current}"),
            1 => format!("{current}  "),
            _ => format!("  {current} "),
        },
        Quirk::Dot => ".".to_owned(),
        Quirk::DotDot => "..".to_owned(),
        Quirk::NoAlbum => {
            tags.album = None;
            return;
        }
        Quirk::NoArtist => {
            tags.artist = None;
            if j.is_multiple_of(2) {
                tags.album_artist = None;
            }
            return;
        }
        Quirk::NoTrack => {
            tags.track = None;
            tags.track_total = None;
            return;
        }
        Quirk::NoYear => {
            tags.year = None;
            return;
        }
        Quirk::NoTitle => {
            tags.title = None;
            return;
        }
    };
    *tags.slot(field) = Some(new_value);
}

fn non_empty(v: Option<&String>) -> Option<&str> {
    v.map(String::as_str).filter(|s| !s.trim().is_empty())
}

/// Directory components and file base name (without extension) for a track.
fn path_parts(
    track: &TrackPlan,
    tags: &TagValues,
    album: &AlbumPlan,
    index: usize,
    rng: &mut StdRng,
) -> (Vec<Vec<u8>>, Vec<u8>) {
    let artist = non_empty(tags.artist.as_ref()).unwrap_or("Unknown Artist");
    let title = non_empty(tags.title.as_ref());
    let nn = tags.track.map(|t| format!("{t:02}"));
    let mut dirs: Vec<String> = Vec::new();
    let mut base = if track.incoming {
        dirs.push("Incoming".to_owned());
        match (rng.random_range(0..5), title, &nn) {
            (0, Some(title), _) => format!("{artist} - {title}"),
            (1, Some(title), Some(nn)) => format!("{nn} {title}"),
            (2, _, _) => format!(
                "AUD-{}{:02}{:02}-WA{:04}",
                rng.random_range(2015..=2024),
                rng.random_range(1..=12),
                rng.random_range(1..=28),
                index % 10_000
            ),
            (3, Some(title), _) => format!("{title} (1)"),
            _ => format!("track{index:05}"),
        }
    } else {
        let artist_dir =
            non_empty(tags.album_artist.as_ref()).map_or(artist.to_owned(), str::to_owned);
        dirs.push(artist_dir);
        let title = title.map_or_else(
            || {
                nn.as_ref()
                    .map_or("Untitled".to_owned(), |nn| format!("Track {nn}"))
            },
            str::to_owned,
        );
        match non_empty(tags.album.as_ref()) {
            None => format!("{artist} - {title}"),
            Some(album_name) => {
                let mut album_dir = match tags.year {
                    Some(y) if album.layout.year_prefix => format!("{y} - {album_name}"),
                    _ => album_name.to_owned(),
                };
                let mut prefix = nn.as_ref().map(|nn| format!("{nn} "));
                if let (Some(d), Some(2..)) = (tags.disc, tags.disc_total) {
                    match album.layout.disc_style {
                        0 => {
                            dirs.push(album_dir.clone());
                            album_dir = format!("CD{d}");
                        }
                        1 => prefix = nn.as_ref().map(|nn| format!("{d}-{nn} ")),
                        _ => album_dir = format!("{album_dir} (Disc {d})"),
                    }
                }
                dirs.push(album_dir);
                let prefix = prefix.unwrap_or_default();
                if album.compilation {
                    format!("{prefix}- {artist} - {title}")
                } else {
                    match album.layout.file_style {
                        0 if !prefix.is_empty() => format!("{prefix}- {title}"),
                        1 if !prefix.is_empty() => format!("{}. {title}", prefix.trim_end()),
                        2 => format!("{prefix}{artist} - {title}"),
                        _ => format!("{prefix}{title}"),
                    }
                }
            }
        }
    };
    if base.trim().is_empty() {
        base = format!("track{index:05}");
    }
    let dirs = dirs.iter().map(|d| sanitize_dir(d)).collect();
    let base = if track.non_utf8 {
        non_utf8_name(&base, index)
    } else {
        sanitize_component(&base, usize::MAX).into_bytes()
    };
    (dirs, base)
}

/// A file name that is not valid UTF-8: Latin-1 encoded, plus raw 0xff 0xfe bytes.
fn non_utf8_name(base: &str, index: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(base.len() + 8);
    if index.is_multiple_of(2) {
        out.extend_from_slice(&[0xff, 0xfe]);
        out.extend_from_slice(b" ");
    } else {
        out.extend_from_slice(b"Caf\xe9 ");
    }
    for c in base.chars() {
        match u8::try_from(u32::from(c)) {
            Ok(b) if b != b'/' && b != 0 => out.push(b),
            _ => out.push(b'?'),
        }
    }
    out
}

/// Make `s` a safe path component: no `/`, no NUL, not empty, not starting with `.` (so never
/// `.`/`..`, never hidden), at most `max` bytes (cut on a UTF-8 boundary).
pub fn sanitize_component(s: &str, max: usize) -> String {
    let mut out: String = s
        .chars()
        .map(|c| if c == '/' || c == '\0' { '_' } else { c })
        .collect();
    // Also covers "." and ".."; no component starts with a dot, so no audio file is hidden.
    if out.is_empty() || out.starts_with('.') {
        out.insert(0, '_');
    }
    truncate_utf8(&mut out, max);
    out
}

/// Cut `s` to at most `max` bytes on a char boundary.
pub fn truncate_utf8(s: &mut String, max: usize) {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
}

/// Directory component: sanitised and never ending like an audio file name, so a file and a
/// directory can never get the same path.
fn sanitize_dir(s: &str) -> Vec<u8> {
    let mut out = sanitize_component(s, MAX_COMPONENT - 1);
    let lower = out.to_ascii_lowercase();
    if Format::ALL
        .iter()
        .any(|f| lower.ends_with(&format!(".{}", f.ext())))
    {
        out.push('_');
    }
    out.into_bytes()
}

/// Join dirs and `<base><suffix>.<ext>` into a path not in `taken` (adding ` (2)`, ` (3)`...).
fn unique_path(dirs: &[Vec<u8>], base: &[u8], ext: &str, taken: &mut HashSet<Vec<u8>>) -> Vec<u8> {
    let mut prefix = Vec::new();
    for d in dirs {
        prefix.extend_from_slice(d);
        prefix.push(b'/');
    }
    for attempt in 1usize.. {
        let suffix = if attempt == 1 {
            String::new()
        } else {
            format!(" ({attempt})")
        };
        let room = MAX_COMPONENT - ext.len() - 1 - suffix.len();
        let base = cut_bytes(base, room);
        let mut rel = prefix.clone();
        rel.extend_from_slice(base);
        rel.extend_from_slice(suffix.as_bytes());
        rel.push(b'.');
        rel.extend_from_slice(ext.as_bytes());
        if taken.insert(rel.clone()) {
            return rel;
        }
    }
    unreachable!("an unused suffix always exists")
}

/// Cut a (possibly non-UTF-8) name to at most `max` bytes, on a UTF-8 boundary when it is UTF-8.
fn cut_bytes(name: &[u8], max: usize) -> &[u8] {
    if name.len() <= max {
        return name;
    }
    match std::str::from_utf8(name) {
        Ok(s) => {
            let mut cut = max;
            while !s.is_char_boundary(cut) {
                cut -= 1;
            }
            &name[..cut]
        }
        Err(_) => &name[..max],
    }
}

// ---------------------------------------------------------------------------------------------
// Rendering
// ---------------------------------------------------------------------------------------------

/// lofty's generic `Tag` -> ID3v2 conversion goes through a `HashSet`, so the frame order (and the
/// file bytes) would change from run to run; sort the frames by ID instead.
fn deterministic_id3v2(tag: Tag) -> Id3v2Tag {
    let mut frames: Vec<Frame<'static>> = Id3v2Tag::from(tag).into_iter().collect();
    frames.sort_by(|a, b| a.id_str().cmp(b.id_str()));
    let mut out = Id3v2Tag::new();
    for frame in frames {
        out.insert(frame);
    }
    out
}

/// The template with `tags` written by lofty.
fn tagged_bytes(template: &[u8], format: Format, tags: &TagValues) -> Result<Vec<u8>> {
    let mut cursor = Cursor::new(template.to_vec());
    if !tags.is_empty() {
        let tag = tags.to_tag(format);
        let written = if tag.tag_type() == TagType::Id3v2 {
            deterministic_id3v2(tag).save_to(&mut cursor, WriteOptions::default())
        } else {
            tag.save_to(&mut cursor, WriteOptions::default())
        };
        written.with_context(|| format!("lofty failed to write a {} tag", format.name()))?;
    }
    Ok(cursor.into_inner())
}

fn render(track: &TrackPlan, index: usize, template: &[u8], seed: u64) -> Result<Vec<u8>> {
    Ok(match track.kind {
        Kind::Normal | Kind::Misnamed => tagged_bytes(template, track.format, &track.tags)?,
        Kind::Truncated => {
            let mut bytes = tagged_bytes(template, track.format, &track.tags)?;
            bytes.truncate(bytes.len() / 2);
            bytes
        }
        Kind::Corrupt => {
            let mut bytes = template.to_vec();
            let keep = (bytes.len() / 16).clamp(64, 1024).min(bytes.len());
            let mut rng = rng_for(seed, SALT_GARBAGE, index as u64);
            rng.fill(&mut bytes[keep..]);
            bytes
        }
        Kind::Empty => Vec::new(),
        Kind::Untagged => template.to_vec(),
    })
}

// ---------------------------------------------------------------------------------------------
// Driver
// ---------------------------------------------------------------------------------------------

/// Write a file, creating its directory on first use (directories are created by the workers,
/// in parallel; `create_dir_all` tolerates races).
fn write_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    match std::fs::write(path, bytes) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(path, bytes)
        }
        other => other,
    }
}

/// Summary of a generation run.
#[derive(Debug, Clone)]
pub struct Summary {
    pub tracks: usize,
    pub bytes: u64,
    /// Total wall time.
    pub seconds: f64,
    /// Wall time of the phases: templates, planning, writing files.
    pub phases: [f64; 3],
}

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

/// Generate the library described by `args`.
pub fn generate(args: &Args) -> Result<Summary> {
    let start = Instant::now();
    ensure!(
        args.seconds.is_finite() && args.seconds > 0.0 && args.seconds <= 3600.0,
        "--seconds must be in (0, 3600]"
    );
    let weights = parse_formats(&args.formats)?;
    let out = &args.out;
    if out.exists() {
        let mut entries =
            std::fs::read_dir(out).with_context(|| format!("reading {}", out.display()))?;
        ensure!(
            entries.next().is_none(),
            "{} is not empty; refusing to generate into it",
            out.display()
        );
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;

    let formats: Vec<Format> = weights.iter().map(|(f, _)| *f).collect();
    let templates = load_templates(&formats, args.seconds)?;
    let t_templates = start.elapsed().as_secs_f64();
    let plan = plan_library(args.tracks, args.seed, &weights);
    let t_plan = start.elapsed().as_secs_f64();
    let jobs = args
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let sizes: Vec<u64> = std::thread::scope(|scope| -> Result<Vec<u64>> {
        let workers: Vec<_> = (0..jobs)
            .map(|_| {
                scope.spawn(|| -> Result<Vec<(usize, u64)>> {
                    let mut done = Vec::new();
                    const CHUNK: usize = 16;
                    while !failed.load(Ordering::Relaxed) {
                        let start = next.fetch_add(CHUNK, Ordering::Relaxed);
                        if start >= plan.len() {
                            break;
                        }
                        for (i, track) in plan.iter().enumerate().skip(start).take(CHUNK) {
                            let template = templates[track.format as usize]
                                .as_deref()
                                .expect("templates cover every planned format");
                            let path = out.join(OsStr::from_bytes(&track.rel));
                            let result = render(track, i, template, args.seed).and_then(|bytes| {
                                write_file(&path, &bytes)?;
                                Ok(bytes.len() as u64)
                            });
                            match result {
                                Ok(size) => done.push((i, size)),
                                Err(e) => {
                                    failed.store(true, Ordering::Relaxed);
                                    return Err(e.context(format!("writing {}", path.display())));
                                }
                            }
                        }
                    }
                    Ok(done)
                })
            })
            .collect();
        let mut sizes = vec![0u64; plan.len()];
        for worker in workers {
            let done = worker
                .join()
                .map_err(|_| anyhow::anyhow!("a worker thread panicked"))??;
            for (i, size) in done {
                sizes[i] = size;
            }
        }
        Ok(sizes)
    })?;

    let t_write = start.elapsed().as_secs_f64();
    let manifest_path = out.join(MANIFEST_NAME);
    let mut manifest = BufWriter::new(
        std::fs::File::create(&manifest_path)
            .with_context(|| format!("creating {}", manifest_path.display()))?,
    );
    let mut bytes = 0;
    for (track, &size) in plan.iter().zip(&sizes) {
        bytes += size;
        let entry = ManifestEntry {
            path: String::from_utf8_lossy(&track.rel).into_owned(),
            path_hex: to_hex(&track.rel),
            format: track.format.name().to_owned(),
            ext: track.ext.to_owned(),
            kind: track.kind,
            size,
            tags: track.tags.clone(),
        };
        serde_json::to_writer(&mut manifest, &entry)?;
        manifest.write_all(b"\n")?;
    }
    manifest.flush()?;
    drop(manifest);

    let summary = Summary {
        tracks: plan.len(),
        bytes,
        seconds: start.elapsed().as_secs_f64(),
        phases: [t_templates, t_plan - t_templates, t_write - t_plan],
    };
    if args.verify {
        let problems = verify(out)?;
        if !problems.is_empty() {
            for p in problems.iter().take(50) {
                eprintln!("verify: {p}");
            }
            bail!(
                "{} files do not read back as the manifest says",
                problems.len()
            );
        }
        println!("gen-library: verified {} files with lofty", plan.len());
    }
    Ok(summary)
}

/// Read every file of a generated library back with lofty and compare it with the manifest.
/// Returns one message per mismatch.
pub fn verify(dir: &Path) -> Result<Vec<String>> {
    let mut problems = Vec::new();
    for entry in read_manifest(dir)? {
        let path = dir.join(OsStr::from_bytes(&entry.raw_path()));
        let size = std::fs::metadata(&path)
            .with_context(|| format!("{} is missing", path.display()))?
            .len();
        if size != entry.size {
            problems.push(format!("{}: size {size} != {}", entry.path, entry.size));
        }
        if !matches!(entry.kind, Kind::Normal | Kind::Misnamed | Kind::Untagged) {
            continue;
        }
        let format = Format::from_name(&entry.format).context("unknown format in manifest")?;
        let read = Probe::open(&path)
            .and_then(|p| Ok(p.guess_file_type()?))
            .and_then(|p| p.read());
        let tagged = match read {
            Ok(t) => t,
            Err(e) => {
                problems.push(format!("{}: lofty cannot read it: {e}", entry.path));
                continue;
            }
        };
        if tagged.file_type() != format.file_type() {
            problems.push(format!(
                "{}: read as {:?}, manifest says {}",
                entry.path,
                tagged.file_type(),
                entry.format
            ));
        }
        if entry.kind == Kind::Untagged {
            if tagged.tags().iter().any(has_user_items) {
                problems.push(format!("{}: untagged file has tags", entry.path));
            }
            continue;
        }
        let got = tagged
            .primary_tag()
            .map(TagValues::from_tag)
            .unwrap_or_default();
        if got != entry.tags {
            problems.push(format!(
                "{} ({}): read back {got:?}, manifest {:?}",
                entry.path, entry.format, entry.tags
            ));
        }
    }
    Ok(problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            let dir =
                std::env::temp_dir().join(format!("musicfs-genlib-{name}-{}", unique_suffix()));
            let _ = std::fs::remove_dir_all(&dir);
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn args(out: &Path, seed: u64, tracks: usize) -> Args {
        Args {
            tracks,
            out: out.to_path_buf(),
            seed,
            seconds: 1.0,
            formats: Vec::new(),
            jobs: None,
            verify: false,
        }
    }

    /// (raw relative path, blake3) of every file under `dir`, sorted.
    fn hashes(dir: &Path) -> Vec<(Vec<u8>, String)> {
        let mut out: Vec<(Vec<u8>, String)> = walkdir::WalkDir::new(dir)
            .into_iter()
            .map(|e| e.unwrap())
            .filter(|e| e.file_type().is_file())
            .map(|e| {
                let rel = e.path().strip_prefix(dir).unwrap();
                let rel = rel.as_os_str().as_bytes().to_vec();
                let hash = blake3::hash(&std::fs::read(e.path()).unwrap());
                (rel, hash.to_hex().to_string())
            })
            .collect();
        out.sort();
        out
    }

    fn has_char_in(s: &str, lo: u32, hi: u32) -> bool {
        s.chars().any(|c| (lo..=hi).contains(&u32::from(c)))
    }

    /// Generate `tracks` tracks with `seed` into `dir` and check every promise of the generator.
    fn generate_and_check(dir: &Path, seed: u64, tracks: usize) {
        let summary = generate(&args(dir, seed, tracks)).unwrap();
        assert_eq!(summary.tracks, tracks);

        // Every normal/misnamed file reads back with exactly the manifest's tags (and the
        // detected format), untagged files have no tags, sizes match.
        let problems = verify(dir).unwrap();
        assert!(problems.is_empty(), "seed {seed}:\n{}", problems.join("\n"));

        let manifest = read_manifest(dir).unwrap();
        assert_eq!(manifest.len(), tracks);
        for kind in [
            Kind::Normal,
            Kind::Corrupt,
            Kind::Truncated,
            Kind::Empty,
            Kind::Untagged,
            Kind::Misnamed,
        ] {
            assert!(
                manifest.iter().any(|e| e.kind == kind),
                "seed {seed}: no {kind:?} file"
            );
        }
        for e in &manifest {
            if matches!(e.kind, Kind::Corrupt | Kind::Empty | Kind::Untagged) {
                assert!(e.tags.is_empty(), "{e:?}");
            }
            if e.kind == Kind::Empty {
                assert_eq!(e.size, 0);
            }
            assert_eq!(e.kind == Kind::Misnamed, e.ext != e.format, "{e:?}");
        }
        for format in Format::ALL {
            assert!(
                manifest.iter().any(|e| e.format == format.name()),
                "seed {seed}: no {} file",
                format.name()
            );
        }

        // Paths: unique, sane components, some non-UTF-8, some in Incoming/.
        let raw: Vec<Vec<u8>> = manifest.iter().map(ManifestEntry::raw_path).collect();
        assert!(
            raw.iter()
                .filter(|p| std::str::from_utf8(p).is_err())
                .count()
                >= 2,
            "seed {seed}: fewer than 2 non-UTF-8 names"
        );
        let unique: HashSet<&Vec<u8>> = raw.iter().collect();
        assert_eq!(unique.len(), raw.len(), "seed {seed}: duplicate paths");
        for (p, e) in raw.iter().zip(&manifest) {
            let components: Vec<&[u8]> = p.split(|&b| b == b'/').collect();
            assert!((2..=4).contains(&components.len()), "{}", e.path);
            for c in &components {
                assert!(c.len() <= MAX_COMPONENT, "{}", e.path);
                assert!(!c.is_empty() && !c.starts_with(b"."), "{}", e.path);
            }
            let name = components.last().unwrap();
            assert!(
                name.ends_with(format!(".{}", e.ext).as_bytes()),
                "{}",
                e.path
            );
            assert_eq!(e.path, String::from_utf8_lossy(p));
        }
        assert!(raw.iter().any(|p| p.starts_with(b"Incoming/")));
        assert!(
            raw.iter()
                .any(|p| p.ends_with(b" (2).mp3") || p.contains(&b'('))
        );

        // Tricky tag values (only on files whose tags were written).
        let tagged: Vec<&TagValues> = manifest
            .iter()
            .filter(|e| matches!(e.kind, Kind::Normal | Kind::Misnamed))
            .map(|e| &e.tags)
            .collect();
        let any_string = |what: &str, pred: &dyn Fn(&str) -> bool| {
            let found = tagged.iter().any(|t| {
                [&t.artist, &t.album_artist, &t.album, &t.title, &t.genre]
                    .into_iter()
                    .flatten()
                    .any(|s| pred(s))
            });
            assert!(found, "seed {seed}: no {what}");
        };
        any_string("CJK", &|s| has_char_in(s, 0x3040, 0x9FFF));
        any_string("Cyrillic", &|s| has_char_in(s, 0x0400, 0x04FF));
        any_string("NFC accent", &|s| has_char_in(s, 0xC0, 0xFF));
        any_string("NFD accent", &|s| has_char_in(s, 0x0300, 0x036F));
        any_string("emoji", &|s| has_char_in(s, 0x1F300, 0x1FAFF));
        any_string("slash", &|s| s.contains('/'));
        any_string("backslash", &|s| s.contains('\\'));
        any_string("colon", &|s| s.contains(':'));
        any_string("empty value", &|s| s.is_empty());
        any_string("long value", &|s| {
            (300..=600).contains(&s.len()) && !s.is_ascii()
        });
        any_string("spaces", &|s| s != s.trim() && !s.trim().is_empty());
        any_string("`.`", &|s| s == ".");
        any_string("`..`", &|s| s == "..");
        let any = |what: &str, pred: &dyn Fn(&TagValues) -> bool| {
            assert!(tagged.iter().any(|t| pred(t)), "seed {seed}: no {what}");
        };
        any("missing album", &|t| t.album.is_none());
        any("missing artist", &|t| t.artist.is_none());
        any("missing track", &|t| t.track.is_none());
        any("missing year", &|t| t.year.is_none());
        any("missing title", &|t| t.title.is_none());
        any("disc 1/2", &|t| {
            t.disc == Some(1) && t.disc_total == Some(2)
        });
        any("disc 2/2", &|t| {
            t.disc == Some(2) && t.disc_total == Some(2)
        });
        any("compilation", &|t| {
            t.compilation == Some(true) && t.album_artist.as_deref() == Some("Various Artists")
        });
        let mut seen = HashSet::new();
        let collision = tagged.iter().any(|t| {
            t.title.is_some()
                && t.track.is_some()
                && !seen.insert((&t.album, t.disc, t.track, &t.title))
        });
        assert!(collision, "seed {seed}: no in-album collision");
    }

    #[test]
    fn generates_tricky_library_deterministically() {
        let a = TempDir::new("a");
        let b = TempDir::new("b");
        generate_and_check(&a.0, 7, 200);

        // Same seed, same bytes (the manifest included).
        generate(&args(&b.0, 7, 200)).unwrap();
        let (ha, hb) = (hashes(&a.0), hashes(&b.0));
        assert_eq!(ha.len(), 201);
        let differ: Vec<String> = ha
            .iter()
            .zip(&hb)
            .filter(|(x, y)| x != y)
            .map(|(x, _)| String::from_utf8_lossy(&x.0).into_owned())
            .collect();
        assert!(
            ha.len() == hb.len() && differ.is_empty(),
            "runs differ: {differ:?}"
        );
    }

    #[test]
    fn every_seed_has_every_tricky_case() {
        for seed in [1, 2, 3, 42, 1234] {
            let dir = TempDir::new(&format!("seed{seed}"));
            generate_and_check(&dir.0, seed, 200);
        }
    }

    #[test]
    fn refuses_non_empty_output_dir() {
        let dir = TempDir::new("nonempty");
        std::fs::create_dir_all(&dir.0).unwrap();
        std::fs::write(dir.0.join("x"), b"x").unwrap();
        assert!(generate(&args(&dir.0, 1, 10)).is_err());
    }

    #[test]
    fn sanitizer_cuts_on_char_boundaries() {
        let long = "é".repeat(150);
        let s = sanitize_component(&long, 201);
        assert_eq!(s.len(), 200);
        assert_eq!(sanitize_component("a/b\0c", 200), "a_b_c");
        assert_eq!(sanitize_component("..", 200), "_..");
        assert_eq!(sanitize_component(".", 200), "_.");
        assert_eq!(sanitize_component(".hidden", 200), "_.hidden");
        assert_eq!(sanitize_component("", 200), "_");
        assert_eq!(cut_bytes("日本語".as_bytes(), 4), "日".as_bytes());
        assert_eq!(cut_bytes(b"\xff\xfe abc", 3), b"\xff\xfe ");
    }

    #[test]
    fn file_names_never_split_on_slashes() {
        let mut rng = rng_for(0, 0, 0);
        let album = AlbumPlan {
            compilation: false,
            layout: AlbumLayout::default(),
            first_track: 0,
            n_tracks: 1,
        };
        let tags = TagValues {
            artist: Some("AC/DC".to_owned()),
            album: Some("Back/In/Black".to_owned()),
            title: Some("Either/Or: ..".to_owned()),
            track: Some(3),
            ..TagValues::default()
        };
        let track = TrackPlan {
            format: Format::Mp3,
            kind: Kind::Normal,
            album: 0,
            tags: tags.clone(),
            incoming: false,
            non_utf8: false,
            protected: false,
            rel: Vec::new(),
            ext: "mp3",
        };
        let (dirs, base) = path_parts(&track, &tags, &album, 0, &mut rng);
        assert_eq!(dirs, vec![b"AC_DC".to_vec(), b"Back_In_Black".to_vec()]);
        assert_eq!(base, b"03 - Either_Or: ..".to_vec());
    }

    #[test]
    fn quotas_are_exact_and_cover_every_format() {
        let weights = parse_formats(&[]).unwrap();
        for n in [8, 10, 200, 1001] {
            let q = format_quotas(&weights, n);
            assert_eq!(q.iter().map(|(_, c)| c).sum::<usize>(), n);
            assert!(q.iter().all(|(_, c)| *c > 0));
        }
        assert!(parse_formats(&["ape".to_owned()]).is_err());
        assert!(parse_formats(&["mp4".to_owned()]).is_err());
        assert_eq!(
            parse_formats(&["mp3=3".to_owned(), "flac".to_owned()]).unwrap(),
            vec![(Format::Mp3, 3), (Format::Flac, 30)]
        );
    }
}

//! The audio formats: names, extensions, lofty file types, ffmpeg encoders and muxers, and the
//! `--formats` option.

use anyhow::{Context, Result, bail, ensure};
use lofty::file::FileType;

use super::quirks::{Field, Quirk};

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

    pub(super) fn from_name(name: &str) -> Option<Format> {
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
    pub(super) fn misnamed_ext(self) -> &'static str {
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
    pub(super) fn encoders(self) -> &'static [(&'static str, &'static [&'static str])] {
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
    pub(super) fn muxer(self) -> (&'static str, &'static [&'static str]) {
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

    pub(super) fn sample_rate(self) -> u32 {
        match self {
            Format::Opus => 48_000,
            _ => 44_100,
        }
    }

    /// Whether an empty string in `field` survives a lofty write + read: lofty skips empty
    /// values when writing Vorbis comments (flac, ogg, opus) and MP4 ilst atoms (m4a), and reads
    /// an empty ID3v2 `TCON` as no genre; other ID3v2 frames and APE items keep them.
    pub(super) fn keeps_empty(self, field: Field) -> bool {
        match self {
            Format::Flac | Format::Ogg | Format::Opus | Format::M4a => false,
            Format::Mp3 | Format::Wav | Format::Aiff => field != Field::Genre,
            Format::Wv => true,
        }
    }

    /// Whether a tag value produced by `quirk` survives a lofty write + read in this format.
    pub(super) fn supports(self, quirk: Quirk) -> bool {
        match quirk {
            Quirk::EmptyValue => Field::ALL.into_iter().any(|f| self.keeps_empty(f)),
            _ => true,
        }
    }
}

/// Parse `--formats` into (format, weight) pairs.
pub(super) fn parse_formats(specs: &[String]) -> Result<Vec<(Format, u32)>> {
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

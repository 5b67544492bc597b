//! The on-disk layout: directory and file names of every track, sanitised and unique.

use std::collections::HashSet;

use rand::Rng;
use rand::rngs::StdRng;

use super::formats::Format;
use super::manifest::TagValues;
use super::model::{AlbumPlan, TrackPlan};

/// Maximum length, in bytes, of one generated path component.
pub(super) const MAX_COMPONENT: usize = 200;

fn non_empty(v: Option<&String>) -> Option<&str> {
    v.map(String::as_str).filter(|s| !s.trim().is_empty())
}

/// Directory components and file base name (without extension) for a track.
pub(super) fn path_parts(
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
pub(super) fn unique_path(
    dirs: &[Vec<u8>],
    base: &[u8],
    ext: &str,
    taken: &mut HashSet<Vec<u8>>,
) -> Vec<u8> {
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
pub(super) fn cut_bytes(name: &[u8], max: usize) -> &[u8] {
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

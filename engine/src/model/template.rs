//! Path templates: how tags become a virtual path.
//!
//! Syntax: literal text, and groups in braces. A group holds alternatives
//! separated by `|`; the first alternative that yields a non-empty value wins,
//! and a group with no value yields nothing. An alternative is either a quoted
//! literal (`"Unknown Artist"`) or a field with optional literal text around it
//! and an optional zero-pad width: `{ (year)}` yields ` (1997)` or nothing,
//! `{track:02 - }` yields `01 - ` or nothing. `/` in the template (outside
//! values) separates path components; a `/` inside a tag value never does.
//!
//! Fields: `artist`, `albumartist`, `album`, `title`, `year`, `track`,
//! `tracktotal`, `disc`, `disctotal`, `genre`, `filename` (origin file name
//! without extension), `ext` (origin extension, lower case), `format`.
//! `disc` is empty for single-disc albums (disc 1 of 1, or disc 1 with no total),
//! so `{disc-}` only marks real multi-disc sets.

use std::fmt::Write as _;

use crate::model::FileRecord;

pub const DEFAULT_TEMPLATE: &str = r#"{albumartist|artist|"Unknown Artist"}/{album|"Unknown Album"}{ (year)}/{disc-}{track:02 - }{title|filename}.{ext}"#;

/// Longest name a path component may have, in bytes (Linux NAME_MAX).
pub const NAME_MAX_BYTES: usize = 255;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Field {
    Artist,
    AlbumArtist,
    Album,
    Title,
    Year,
    Track,
    TrackTotal,
    Disc,
    DiscTotal,
    Genre,
    Filename,
    Ext,
    Format,
}

impl Field {
    fn parse(name: &str) -> Option<Field> {
        Some(match name {
            "artist" => Field::Artist,
            "albumartist" => Field::AlbumArtist,
            "album" => Field::Album,
            "title" => Field::Title,
            "year" => Field::Year,
            "track" => Field::Track,
            "tracktotal" => Field::TrackTotal,
            "disc" => Field::Disc,
            "disctotal" => Field::DiscTotal,
            "genre" => Field::Genre,
            "filename" => Field::Filename,
            "ext" => Field::Ext,
            "format" => Field::Format,
            _ => return None,
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Alt {
    Literal(String),
    Field {
        prefix: String,
        field: Field,
        pad: usize,
        suffix: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Literal(String),
    Group(Vec<Alt>),
}

/// A parsed path template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    source: String,
    /// One entry per path component.
    components: Vec<Vec<Part>>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("bad path template {template:?}: {reason}")]
pub struct TemplateError {
    template: String,
    reason: String,
}

impl Template {
    pub fn parse(source: &str) -> Result<Template, TemplateError> {
        let err = |reason: String| TemplateError {
            template: source.to_string(),
            reason,
        };
        let mut components = vec![Vec::new()];
        let mut literal = String::new();
        let mut chars = source.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '/' => {
                    flush_literal(&mut literal, components.last_mut());
                    components.push(Vec::new());
                }
                '{' => {
                    flush_literal(&mut literal, components.last_mut());
                    let mut body = String::new();
                    let mut in_quote = false;
                    let mut closed = false;
                    for c in chars.by_ref() {
                        match c {
                            '"' => {
                                in_quote = !in_quote;
                                body.push(c);
                            }
                            '}' if !in_quote => {
                                closed = true;
                                break;
                            }
                            _ => body.push(c),
                        }
                    }
                    if !closed {
                        return Err(err("unclosed '{'".into()));
                    }
                    let group = parse_group(&body).map_err(err)?;
                    if let Some(parts) = components.last_mut() {
                        parts.push(Part::Group(group));
                    }
                }
                '}' => return Err(err("'}' without '{'".into())),
                _ => literal.push(c),
            }
        }
        flush_literal(&mut literal, components.last_mut());
        if components.iter().any(Vec::is_empty) {
            return Err(err(
                "empty path component (leading, trailing or double '/')".into(),
            ));
        }
        Ok(Template {
            source: source.to_string(),
            components,
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Renders the virtual path of a file: one sanitised name per component.
    pub fn render(&self, rec: &FileRecord) -> Vec<String> {
        let last = self.components.len() - 1;
        self.components
            .iter()
            .enumerate()
            .map(|(i, parts)| {
                let mut out = String::new();
                for part in parts {
                    match part {
                        Part::Literal(s) => out.push_str(s),
                        Part::Group(alts) => {
                            for alt in alts {
                                if let Some(v) = render_alt(alt, rec) {
                                    out.push_str(&v);
                                    break;
                                }
                            }
                        }
                    }
                }
                sanitize_name(&out, i == last)
            })
            .collect()
    }
}

fn flush_literal(literal: &mut String, parts: Option<&mut Vec<Part>>) {
    if !literal.is_empty()
        && let Some(parts) = parts
    {
        parts.push(Part::Literal(std::mem::take(literal)));
    }
}

fn parse_group(body: &str) -> Result<Vec<Alt>, String> {
    let mut alts = Vec::new();
    let mut current = String::new();
    let mut in_quote = false;
    let mut raw = Vec::new();
    for c in body.chars() {
        match c {
            '"' => {
                in_quote = !in_quote;
                current.push(c);
            }
            '|' if !in_quote => raw.push(std::mem::take(&mut current)),
            _ => current.push(c),
        }
    }
    raw.push(current);
    for alt in raw {
        alts.push(parse_alt(&alt)?);
    }
    Ok(alts)
}

fn parse_alt(alt: &str) -> Result<Alt, String> {
    if alt.len() >= 2 && alt.starts_with('"') && alt.ends_with('"') {
        return Ok(Alt::Literal(alt[1..alt.len() - 1].to_string()));
    }
    if alt.contains('"') {
        return Err(format!("misplaced quote in {alt:?}"));
    }
    let start = alt
        .find(|c: char| c.is_ascii_alphabetic())
        .ok_or_else(|| format!("no field name in {{{alt}}}"))?;
    let rest = &alt[start..];
    let name_len = rest
        .find(|c: char| !c.is_ascii_alphabetic())
        .unwrap_or(rest.len());
    let name = &rest[..name_len];
    let field = Field::parse(name).ok_or_else(|| format!("unknown field {name:?}"))?;
    let mut tail = &rest[name_len..];
    let mut pad = 0;
    if let Some(after) = tail.strip_prefix(':') {
        let digits = after
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(after.len());
        if digits == 0 {
            return Err(format!(
                "':' after {name:?} needs a pad width, e.g. {name}:02"
            ));
        }
        pad = after[..digits]
            .parse()
            .map_err(|_| format!("bad pad width in {alt:?}"))?;
        tail = &after[digits..];
    }
    Ok(Alt::Field {
        prefix: alt[..start].to_string(),
        field,
        pad,
        suffix: tail.to_string(),
    })
}

fn render_alt(alt: &Alt, rec: &FileRecord) -> Option<String> {
    match alt {
        Alt::Literal(s) => Some(s.clone()),
        Alt::Field {
            prefix,
            field,
            pad,
            suffix,
        } => {
            let value = field_value(*field, rec)?;
            let mut out = String::with_capacity(prefix.len() + value.len() + suffix.len());
            out.push_str(prefix);
            let padded = value.len() < *pad && value.bytes().all(|b| b.is_ascii_digit());
            if padded {
                for _ in value.len()..*pad {
                    out.push('0');
                }
            }
            out.push_str(&value);
            out.push_str(suffix);
            Some(out)
        }
    }
}

fn non_empty(s: &Option<String>) -> Option<String> {
    s.as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

fn number(n: Option<u32>) -> Option<String> {
    n.filter(|n| *n > 0).map(|n| {
        let mut s = String::new();
        let _ = write!(s, "{n}");
        s
    })
}

fn file_name(rec: &FileRecord) -> &[u8] {
    let p = &rec.rel_path;
    match p.iter().rposition(|b| *b == b'/') {
        Some(i) => &p[i + 1..],
        None => p,
    }
}

/// The origin file name split into (stem, extension without the dot).
pub fn split_ext(name: &[u8]) -> (&[u8], Option<&[u8]>) {
    match name.iter().rposition(|b| *b == b'.') {
        Some(i) if i > 0 && i + 1 < name.len() => (&name[..i], Some(&name[i + 1..])),
        _ => (name, None),
    }
}

fn field_value(field: Field, rec: &FileRecord) -> Option<String> {
    let t = &rec.tags;
    match field {
        Field::Artist => non_empty(&t.artist),
        Field::AlbumArtist => non_empty(&t.album_artist),
        Field::Album => non_empty(&t.album),
        Field::Title => non_empty(&t.title),
        Field::Genre => non_empty(&t.genre),
        Field::Year => number(t.year),
        Field::Track => number(t.track),
        Field::TrackTotal => number(t.track_total),
        Field::Disc => {
            let multi = t.disc_total.is_some_and(|n| n > 1) || t.disc.is_some_and(|n| n > 1);
            if multi { number(t.disc) } else { None }
        }
        Field::DiscTotal => number(t.disc_total),
        Field::Filename => {
            let (stem, _) = split_ext(file_name(rec));
            Some(String::from_utf8_lossy(stem).into_owned()).filter(|s| !s.trim().is_empty())
        }
        Field::Ext => split_ext(file_name(rec))
            .1
            .map(|e| String::from_utf8_lossy(e).to_lowercase()),
        Field::Format => rec.format.clone(),
    }
}

/// Makes one path component safe: no `/`, no NUL or control characters, not
/// `.`/`..` or hidden, no surrounding spaces, at most 255 bytes cut on a UTF-8
/// boundary (keeping the extension of a file name). Never returns an empty name.
pub fn sanitize_name(raw: &str, is_file: bool) -> String {
    let mut s: String = raw
        .chars()
        .map(|c| if c == '/' || c.is_control() { '_' } else { c })
        .collect();
    let trimmed = s.trim();
    if trimmed.len() != s.len() {
        s = trimmed.to_string();
    }
    if s.starts_with('.') {
        // ".", "..", ".hidden" and a file with an empty stem (".flac")
        s.replace_range(0..1, "_");
    }
    if s.is_empty() {
        s.push('_');
    }
    fit_name(&s, is_file, "")
}

/// `name` with ` (n)` inserted before the extension, still within NAME_MAX.
pub fn with_collision_suffix(name: &str, is_file: bool, n: u32) -> String {
    fit_name(name, is_file, &format!(" ({n})"))
}

/// Cuts `name` so that name + `insert` fits NAME_MAX_BYTES; `insert` goes before
/// the extension of a file (extensions of up to 16 bytes are kept whole).
fn fit_name(name: &str, is_file: bool, insert: &str) -> String {
    let (stem, ext) = match (is_file, name.rfind('.')) {
        (true, Some(i)) if i > 0 && name.len() - i <= 17 => (&name[..i], &name[i..]),
        _ => (name, ""),
    };
    let budget = NAME_MAX_BYTES.saturating_sub(ext.len() + insert.len());
    let stem = cut_utf8(stem, budget);
    let mut out = String::with_capacity(stem.len() + insert.len() + ext.len());
    out.push_str(stem.trim_end());
    if out.is_empty() {
        out.push('_');
    }
    out.push_str(insert);
    out.push_str(ext);
    out
}

/// The longest prefix of `s` of at most `max` bytes that ends on a char boundary.
pub fn cut_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{AudioProps, Tags};

    fn rec(path: &str, tags: Tags) -> FileRecord {
        FileRecord {
            origin: 0,
            rel_path: path.as_bytes().to_vec(),
            size_bytes: 1,
            mtime_ns: 0,
            origin_ino: 1,
            fingerprint: 0,
            format: Some("flac".into()),
            tags,
            props: AudioProps::default(),
            probe_error: None,
            art: None,
            is_image: false,
        }
    }

    fn full() -> Tags {
        Tags {
            artist: Some("Radiohead".into()),
            album: Some("OK Computer".into()),
            title: Some("Airbag".into()),
            year: Some(1997),
            track: Some(1),
            ..Tags::default()
        }
    }

    #[test]
    fn default_template_full_tags() {
        let t = Template::parse(DEFAULT_TEMPLATE).unwrap();
        assert_eq!(
            t.render(&rec("x/y.FLAC", full())),
            ["Radiohead", "OK Computer (1997)", "01 - Airbag.flac"]
        );
    }

    #[test]
    fn fallbacks_for_untagged_file() {
        let t = Template::parse(DEFAULT_TEMPLATE).unwrap();
        assert_eq!(
            t.render(&rec("dir/some file.mp3", Tags::default())),
            ["Unknown Artist", "Unknown Album", "some file.mp3"]
        );
    }

    #[test]
    fn album_artist_wins_and_multi_disc_prefix() {
        let t = Template::parse(DEFAULT_TEMPLATE).unwrap();
        let mut tags = full();
        tags.album_artist = Some("Various Artists".into());
        tags.disc = Some(2);
        tags.disc_total = Some(2);
        tags.track = Some(7);
        assert_eq!(
            t.render(&rec("a.flac", tags.clone())),
            [
                "Various Artists",
                "OK Computer (1997)",
                "2-07 - Airbag.flac"
            ]
        );
        tags.disc = Some(1);
        tags.disc_total = Some(1);
        assert_eq!(t.render(&rec("a.flac", tags))[2], "07 - Airbag.flac");
    }

    #[test]
    fn slashes_dots_and_blank_values() {
        let t = Template::parse(DEFAULT_TEMPLATE).unwrap();
        let mut tags = full();
        tags.artist = Some("AC/DC".into());
        tags.album = Some("..".into());
        tags.title = Some("   ".into());
        let r = t.render(&rec("in/song.ogg", tags));
        assert_eq!(r, ["AC_DC", "_. (1997)", "01 - song.ogg"]);
        assert_eq!(sanitize_name("..", false), "_.");
        assert_eq!(sanitize_name(".", false), "_");
        assert_eq!(sanitize_name("a\0b\nc", false), "a_b_c");
    }

    #[test]
    fn long_names_cut_on_char_boundary_and_keep_extension() {
        let long = "é".repeat(300); // 600 bytes
        let name = sanitize_name(&format!("{long}.flac"), true);
        assert!(name.len() <= NAME_MAX_BYTES);
        assert!(name.ends_with(".flac"));
        let with = with_collision_suffix(&name, true, 12);
        assert!(with.len() <= NAME_MAX_BYTES);
        assert!(with.ends_with(" (12).flac"), "{with}");
        let dir = sanitize_name(&long, false);
        assert!(dir.len() <= NAME_MAX_BYTES && dir.len() >= NAME_MAX_BYTES - 1);
    }

    #[test]
    fn parse_errors_are_clear() {
        assert!(Template::parse("{artist").is_err());
        assert!(Template::parse("{nosuchfield}").is_err());
        assert!(Template::parse("a//b").is_err());
        assert!(Template::parse("/a").is_err());
        assert!(Template::parse("{track:}").is_err());
        let e = Template::parse("{bogus}").unwrap_err().to_string();
        assert!(e.contains("unknown field"), "{e}");
    }

    #[test]
    fn literal_with_pipe_and_brace_inside_quotes() {
        let t = Template::parse(r#"{genre|"a|b}c"}/{title}.{ext}"#).unwrap();
        assert_eq!(t.render(&rec("x.mp3", full()))[0], "a|b}c");
    }
}

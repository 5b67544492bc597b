//! Retagging an mp3 of a generated library as a tagger does, for the changed-track rows.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{BufRead, BufReader, Cursor};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};
use lofty::config::WriteOptions;
use lofty::file::{FileType, TaggedFileExt};
use lofty::probe::Probe;
use lofty::tag::{Accessor, ItemKey, TagExt, TagType};

use super::consts::{RETAG_ARTIST, RETAG_STRIDE};
use crate::genlib::{Kind, MANIFEST_NAME, ManifestEntry};

/// Whether `path` is an mp3 with an ID3v2 primary tag that no earlier run retagged and no other
/// tag (the generated mp3s also carry an empty ID3v1 tag) that could fill a path field.
fn retaggable(path: &Path) -> bool {
    let Ok(tagged) = Probe::open(path)
        .and_then(|p| Ok(p.guess_file_type()?))
        .and_then(|p| p.read())
    else {
        return false;
    };
    let set = |v: Option<std::borrow::Cow<'_, str>>| v.is_some_and(|v| !v.is_empty());
    tagged.file_type() == FileType::Mpeg
        && tagged.primary_tag().is_some_and(|t| {
            t.tag_type() == TagType::Id3v2
                && t.get_string(ItemKey::AlbumArtist) != Some(RETAG_ARTIST)
        })
        && tagged
            .tags()
            .iter()
            .filter(|t| t.tag_type() != TagType::Id3v2)
            .all(|t| {
                !set(t.artist())
                    && !set(t.album())
                    && !set(t.title())
                    && t.get_string(ItemKey::AlbumArtist).is_none_or(str::is_empty)
                    && t.date().is_none()
                    && t.track().is_none()
                    && t.disk().is_none()
            })
}

/// Up to `count` normal mp3 files of a generated library that can be retagged (see
/// [`retaggable`]), taken from every [`RETAG_STRIDE`]-th manifest line first.
pub(super) fn retag_candidates(lib: &Path, count: usize) -> Result<Vec<PathBuf>> {
    let manifest = lib.join(MANIFEST_NAME);
    let mut out: Vec<PathBuf> = Vec::new();
    for stride in [RETAG_STRIDE, 1] {
        let f =
            fs::File::open(&manifest).with_context(|| format!("opening {}", manifest.display()))?;
        for (i, line) in BufReader::new(f).lines().enumerate() {
            if out.len() >= count {
                return Ok(out);
            }
            let line = line.with_context(|| format!("reading {}", manifest.display()))?;
            if i % stride != 0 || line.trim().is_empty() {
                continue;
            }
            let entry: ManifestEntry = serde_json::from_str(&line)
                .with_context(|| format!("bad line in {}: {line}", manifest.display()))?;
            if entry.kind != Kind::Normal || entry.format != "mp3" || entry.ext != "mp3" {
                continue;
            }
            let path = lib.join(OsStr::from_bytes(&entry.raw_path()));
            if !out.contains(&path) && retaggable(&path) {
                out.push(path);
            }
        }
    }
    Ok(out)
}

/// Writes a copy of the mp3 `path` with a new album artist ([`RETAG_ARTIST`]), album, title and
/// track 1 (no year, disc or totals, so the virtual path is `RETAG_ARTIST/ALBUM/01 - TITLE.mp3`)
/// to a temporary file beside it, as a tagger does before renaming it over the original.
/// Returns the temporary file, whose tags have been read back.
pub(super) fn write_retagged(path: &Path, album: &str, title: &str) -> Result<PathBuf> {
    let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let tagged = Probe::new(Cursor::new(&bytes))
        .guess_file_type()?
        .read()
        .with_context(|| format!("lofty cannot read {}", path.display()))?;
    let mut tag = tagged
        .primary_tag()
        .cloned()
        .with_context(|| format!("{} has no tag", path.display()))?;
    tag.insert_text(ItemKey::AlbumArtist, RETAG_ARTIST.to_owned());
    tag.set_album(album.to_owned());
    tag.set_title(title.to_owned());
    tag.set_track(1);
    tag.remove_track_total();
    tag.remove_disk();
    tag.remove_disk_total();
    tag.remove_date();
    let mut cursor = Cursor::new(bytes);
    tag.save_to(&mut cursor, WriteOptions::default())
        .with_context(|| format!("lofty cannot write the tag of {}", path.display()))?;
    let bytes = cursor.into_inner();

    let check = Probe::new(Cursor::new(&bytes))
        .guess_file_type()?
        .read()
        .with_context(|| format!("lofty cannot read back the retagged {}", path.display()))?;
    let back = check.primary_tag();
    ensure!(
        back.and_then(|t| t.get_string(ItemKey::AlbumArtist)) == Some(RETAG_ARTIST)
            && back.and_then(|t| t.title()).as_deref() == Some(title)
            && back.and_then(|t| t.album()).as_deref() == Some(album),
        "the retagged {} does not read back as written",
        path.display()
    );

    let mut name = OsString::from(".");
    name.push(path.file_name().context("no file name")?);
    name.push(".bench-tmp");
    let tmp = path.with_file_name(name);
    fs::write(&tmp, &bytes).with_context(|| format!("writing {}", tmp.display()))?;
    Ok(tmp)
}

//! The bytes of every file: the template with its tags written by lofty, or a bad file.

use std::io::Cursor;

use anyhow::{Context, Result};
use lofty::config::WriteOptions;
use lofty::id3::v2::{Frame, Id3v2Tag};
use lofty::tag::{Tag, TagExt, TagType};
use rand::Rng;

use super::formats::Format;
use super::manifest::{Kind, TagValues};
use super::model::TrackPlan;
use super::words::{SALT_GARBAGE, rng_for};

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

pub(super) fn render(
    track: &TrackPlan,
    index: usize,
    template: &[u8],
    seed: u64,
) -> Result<Vec<u8>> {
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

//! Matroska and WebM: `Info` (duration, title), the first audio track's
//! sampling frequency and channels, and `Tags` (SimpleTag name/value pairs;
//! found in the segment before the first cluster, or where the SeekHead
//! points).

use super::{Budget, Found, apply_key};
use crate::model::{AudioProps, Tags};

const SEGMENT: u64 = 0x1853_8067;
const SEEK_HEAD: u64 = 0x114d_9b74;
const SEEK: u64 = 0x4dbb;
const SEEK_ID: u64 = 0x53ab;
const SEEK_POSITION: u64 = 0x53ac;
const INFO: u64 = 0x1549_a966;
const TIMECODE_SCALE: u64 = 0x2a_d7b1;
const DURATION: u64 = 0x4489;
const TITLE: u64 = 0x7ba9;
const TRACKS: u64 = 0x1654_ae6b;
const TRACK_ENTRY: u64 = 0xae;
const TRACK_TYPE: u64 = 0x83;
const AUDIO: u64 = 0xe1;
const SAMPLING_FREQUENCY: u64 = 0xb5;
const CHANNELS: u64 = 0x9f;
const TAGS: u64 = 0x1254_c367;
const TAG: u64 = 0x7373;
const TARGETS: u64 = 0x63c0;
const TARGET_TYPE_VALUE: u64 = 0x68ca;
const SIMPLE_TAG: u64 = 0x67c8;
const TAG_NAME: u64 = 0x45a3;
const TAG_STRING: u64 = 0x4487;
const CLUSTER: u64 = 0x1f43_b675;
const EBML: u64 = 0x1a45_dfa3;
const DOC_TYPE: u64 = 0x4282;

/// Most bytes of one element read whole (Info, Tracks, Tags, SeekHead).
const MAX_ELEMENT_BYTES: u64 = 1024 * 1024;

/// An element header: id, data size (None: unknown), header length.
fn header(b: &[u8]) -> Result<(u64, Option<u64>, usize), String> {
    let (id, id_len) = vint(b, true)?;
    let (size, size_len) = vint(b.get(id_len..).ok_or("EBML: truncated")?, false)?;
    let unknown = size == (1u64 << (7 * size_len)) - 1;
    Ok((id, (!unknown).then_some(size), id_len + size_len))
}

/// A variable-length integer; `keep_marker` for element ids.
fn vint(b: &[u8], keep_marker: bool) -> Result<(u64, usize), String> {
    let first = *b.first().ok_or("EBML: truncated")?;
    let len = first.leading_zeros() as usize + 1;
    if len > 8 || b.len() < len {
        return Err("EBML: bad variable-length integer".into());
    }
    let mut v = if keep_marker {
        u64::from(first)
    } else {
        u64::from(first) & ((1u64 << (8 - len)) - 1)
    };
    for byte in &b[1..len] {
        v = (v << 8) | u64::from(*byte);
    }
    Ok((v, len))
}

/// The children of an element's data: (id, data).
fn children(data: &[u8]) -> Vec<(u64, &[u8])> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < data.len() {
        let Ok((id, size, hl)) = header(&data[at..]) else {
            break;
        };
        let start = at + hl;
        let end = size
            .and_then(|s| usize::try_from(s).ok())
            .map_or(data.len(), |s| start.saturating_add(s).min(data.len()));
        out.push((id, &data[start.min(end)..end]));
        at = end;
    }
    out
}

fn uint(d: &[u8]) -> u64 {
    d.iter()
        .take(8)
        .fold(0, |acc, b| (acc << 8) | u64::from(*b))
}

fn float(d: &[u8]) -> f64 {
    match d.len() {
        4 => f64::from(f32::from_be_bytes([d[0], d[1], d[2], d[3]])),
        8 => f64::from_be_bytes(d.try_into().unwrap_or([0; 8])),
        _ => 0.0,
    }
}

fn text(d: &[u8]) -> String {
    String::from_utf8_lossy(d)
        .trim_end_matches('\0')
        .to_string()
}

pub(super) fn read(budget: &mut Budget<'_>) -> Result<Found, String> {
    let size = budget.size();
    let head = budget.read(0, 64.min(size))?;
    let (id, ebml_size, hl) = header(&head)?;
    if id != EBML {
        return Err("Matroska: no EBML header".into());
    }
    let ebml_len = ebml_size.ok_or("Matroska: EBML header of unknown size")?;
    let ebml = budget.read(hl as u64, ebml_len.min(4096))?;
    let doc = children(&ebml)
        .into_iter()
        .find(|(id, _)| *id == DOC_TYPE)
        .map(|(_, d)| text(d))
        .unwrap_or_default();
    let format = if doc == "webm" { "webm" } else { "matroska" };
    // The segment.
    let seg_at = hl as u64 + ebml_len;
    let seg_head = budget.read(seg_at, 12.min(size.saturating_sub(seg_at)))?;
    let (id, _, seg_hl) = header(&seg_head)?;
    if id != SEGMENT {
        return Err("Matroska: no segment".into());
    }
    let data_start = seg_at + seg_hl as u64;
    let (mut tags, mut props) = (Tags::default(), AudioProps::default());
    let mut title = None;
    let mut tags_at = None;
    let mut found_tags = false;
    let mut at = data_start;
    // Top-level elements up to the first cluster (bounded).
    for _ in 0..64 {
        if at + 2 > size {
            break;
        }
        let h = budget.read(at, 12.min(size - at))?;
        let (id, len, hl) = header(&h)?;
        let data_at = at + hl as u64;
        let Some(len) = len else { break };
        if id == CLUSTER {
            break;
        }
        if matches!(id, SEEK_HEAD | INFO | TRACKS | TAGS) && len <= MAX_ELEMENT_BYTES {
            let data = budget.read(data_at, len)?;
            match id {
                SEEK_HEAD => tags_at = seek_to_tags(&data).map(|p| data_start + p),
                INFO => title = info(&data, &mut props),
                TRACKS => tracks(&data, &mut props),
                _ => {
                    read_tags(&data, &mut tags);
                    found_tags = true;
                }
            }
        }
        at = data_at + len;
    }
    if !found_tags && let Some(p) = tags_at.filter(|p| *p < size) {
        let h = budget.read(p, 12.min(size - p))?;
        if let (TAGS, Some(len), hl) = header(&h)?
            && len <= MAX_ELEMENT_BYTES
        {
            read_tags(&budget.read(p + hl as u64, len)?, &mut tags);
        }
    }
    if let Some(t) = title {
        apply_key(&mut tags, "title", &t);
    }
    Ok((format.to_string(), tags, props))
}

/// Where the SeekHead says the Tags are (relative to the segment data).
fn seek_to_tags(data: &[u8]) -> Option<u64> {
    children(data)
        .into_iter()
        .filter(|(id, _)| *id == SEEK)
        .find_map(|(_, seek)| {
            let kids = children(seek);
            let target = kids.iter().find(|(id, _)| *id == SEEK_ID)?.1;
            let pos = kids.iter().find(|(id, _)| *id == SEEK_POSITION)?.1;
            (uint(target) == TAGS).then(|| uint(pos))
        })
}

/// Duration (and the segment title, returned).
fn info(data: &[u8], props: &mut AudioProps) -> Option<String> {
    let kids = children(data);
    let scale = kids
        .iter()
        .find(|(id, _)| *id == TIMECODE_SCALE)
        .map_or(1_000_000, |(_, d)| uint(d));
    if let Some((_, d)) = kids.iter().find(|(id, _)| *id == DURATION) {
        let ms = float(d) * scale as f64 / 1e6;
        if ms.is_finite() && ms > 0.0 {
            props.duration_ms = ms as u64;
        }
    }
    kids.iter()
        .find(|(id, _)| *id == TITLE)
        .map(|(_, d)| text(d))
}

/// The first audio track's sampling frequency and channels.
fn tracks(data: &[u8], props: &mut AudioProps) {
    for (_, entry) in children(data)
        .into_iter()
        .filter(|(id, _)| *id == TRACK_ENTRY)
    {
        let kids = children(entry);
        let audio_type = kids
            .iter()
            .find(|(id, _)| *id == TRACK_TYPE)
            .is_some_and(|(_, d)| uint(d) == 2);
        let Some((_, audio)) = kids.iter().find(|(id, _)| *id == AUDIO) else {
            continue;
        };
        if !audio_type {
            continue;
        }
        for (id, d) in children(audio) {
            match id {
                SAMPLING_FREQUENCY => props.sample_rate_hz = Some(float(d) as u32),
                CHANNELS => props.channels = u8::try_from(uint(d)).ok(),
                _ => {}
            }
        }
        return;
    }
}

/// SimpleTags of every Tag: no target (global) or track level (30) name
/// the track; album level (50, when given) names the album.
fn read_tags(data: &[u8], tags: &mut Tags) {
    for (_, tag) in children(data).into_iter().filter(|(id, _)| *id == TAG) {
        let kids = children(tag);
        let level = kids
            .iter()
            .find(|(id, _)| *id == TARGETS)
            .and_then(|(_, t)| {
                children(t)
                    .into_iter()
                    .find(|(id, _)| *id == TARGET_TYPE_VALUE)
                    .map(|(_, d)| uint(d))
            });
        for (_, simple) in kids.iter().filter(|(id, _)| *id == SIMPLE_TAG) {
            let parts = children(simple);
            let name = parts
                .iter()
                .find(|(id, _)| *id == TAG_NAME)
                .map(|(_, d)| text(d));
            let value = parts
                .iter()
                .find(|(id, _)| *id == TAG_STRING)
                .map(|(_, d)| text(d));
            let (Some(name), Some(value)) = (name, value) else {
                continue;
            };
            let key = match (level, name.to_ascii_uppercase().as_str()) {
                (Some(50), "TITLE") => "album".to_string(),
                (Some(50), "ARTIST") => "albumartist".to_string(),
                (_, "PART_NUMBER") => "track".to_string(),
                (_, "DATE_RELEASED" | "DATE_RECORDED" | "DATE") => "date".to_string(),
                (_, "ALBUM_ARTIST") => "albumartist".to_string(),
                _ => name,
            };
            apply_key(tags, &key, &value);
        }
    }
}

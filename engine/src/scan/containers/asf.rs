//! WMA (ASF): the Content Description and Extended Content Description
//! objects of the header, and the file and audio stream properties.

use super::{Budget, Cursor, Found, apply_key};
use crate::model::{AudioProps, Tags};

/// The ASF Header Object, as stored (little-endian GUID fields).
pub(super) const HEADER_GUID: [u8; 16] = [
    0x30, 0x26, 0xb2, 0x75, 0x8e, 0x66, 0xcf, 0x11, 0xa6, 0xd9, 0x00, 0xaa, 0x00, 0x62, 0xce, 0x6c,
];
pub(super) const CONTENT_DESCRIPTION: [u8; 16] = [
    0x33, 0x26, 0xb2, 0x75, 0x8e, 0x66, 0xcf, 0x11, 0xa6, 0xd9, 0x00, 0xaa, 0x00, 0x62, 0xce, 0x6c,
];
pub(super) const EXTENDED_CONTENT_DESCRIPTION: [u8; 16] = [
    0x40, 0xa4, 0xd0, 0xd2, 0x07, 0xe3, 0xd2, 0x11, 0x97, 0xf0, 0x00, 0xa0, 0xc9, 0x5e, 0xa8, 0x50,
];
const FILE_PROPERTIES: [u8; 16] = [
    0xa1, 0xdc, 0xab, 0x8c, 0x47, 0xa9, 0xcf, 0x11, 0x8e, 0xe4, 0x00, 0xc0, 0x0c, 0x20, 0x53, 0x65,
];
const STREAM_PROPERTIES: [u8; 16] = [
    0x91, 0x07, 0xdc, 0xb7, 0xb7, 0xa9, 0xcf, 0x11, 0x8e, 0xe6, 0x00, 0xc0, 0x0c, 0x20, 0x53, 0x65,
];
const AUDIO_MEDIA: [u8; 16] = [
    0x40, 0x9e, 0x69, 0xf8, 0x4d, 0x5b, 0xcf, 0x11, 0xa8, 0xfd, 0x00, 0x80, 0x5f, 0x5c, 0x44, 0x2b,
];

/// Most bytes of an ASF header read (tags and properties live there).
const MAX_HEADER_BYTES: u64 = 4 * 1024 * 1024;

pub(super) fn read(budget: &mut Budget<'_>) -> Result<Found, String> {
    let head = budget.read(0, 30)?;
    let mut c = Cursor::new(&head);
    c.skip(16)?;
    let header_size = c.u64le()?;
    let objects = c.u32le()?;
    if !(30..=MAX_HEADER_BYTES).contains(&header_size) {
        return Err(format!("ASF: header of {header_size} bytes"));
    }
    let header = budget.read(0, header_size.min(budget.size()))?;
    let mut c = Cursor::new(&header);
    c.skip(30)?;
    let (mut tags, mut props) = (Tags::default(), AudioProps::default());
    for _ in 0..objects.min(1024) {
        if c.remaining() < 24 {
            break;
        }
        let guid: [u8; 16] = c.take(16)?.try_into().map_err(|_| "ASF: guid")?;
        let size = usize::try_from(c.u64le()?).map_err(|_| "ASF: object size")?;
        if size < 24 {
            return Err("ASF: object smaller than its header".into());
        }
        let body = c.take((size - 24).min(c.remaining()))?;
        let mut b = Cursor::new(body);
        match guid {
            CONTENT_DESCRIPTION => content_description(&mut b, &mut tags)?,
            EXTENDED_CONTENT_DESCRIPTION => extended(&mut b, &mut tags)?,
            FILE_PROPERTIES => {
                b.skip(16 + 8 + 8 + 8)?;
                let play_100ns = b.u64le()?;
                let _send = b.u64le()?;
                let preroll_ms = b.u64le()?;
                props.duration_ms = (play_100ns / 10_000).saturating_sub(preroll_ms);
            }
            STREAM_PROPERTIES if b.take(16)? == AUDIO_MEDIA => {
                b.skip(16 + 8)?;
                let _type_len = b.u32le()?;
                let _ecc_len = b.u32le()?;
                b.skip(2 + 4)?;
                let _format = b.u16le()?;
                props.channels = u8::try_from(b.u16le()?).ok();
                props.sample_rate_hz = Some(b.u32le()?);
                props.bitrate_kbps = Some(b.u32le()? * 8 / 1000);
            }
            _ => {}
        }
    }
    Ok(("wma".to_string(), tags, props))
}

/// UTF-16LE text, NULs trimmed.
fn utf16(b: &[u8]) -> String {
    let units: Vec<u16> = b
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    String::from_utf16_lossy(&units)
        .trim_end_matches('\0')
        .to_string()
}

fn content_description(b: &mut Cursor<'_>, tags: &mut Tags) -> Result<(), String> {
    let lens = [b.u16le()?, b.u16le()?, b.u16le()?, b.u16le()?, b.u16le()?];
    let title = utf16(b.take(usize::from(lens[0]))?);
    let author = utf16(b.take(usize::from(lens[1]))?);
    apply_key(tags, "title", &title);
    apply_key(tags, "artist", &author);
    Ok(())
}

fn extended(b: &mut Cursor<'_>, tags: &mut Tags) -> Result<(), String> {
    let count = b.u16le()?;
    for _ in 0..count {
        let name_len = usize::from(b.u16le()?);
        let name = utf16(b.take(name_len)?);
        let kind = b.u16le()?;
        let len = usize::from(b.u16le()?);
        let raw = b.take(len)?;
        let mut v = Cursor::new(raw);
        let value = match kind {
            0 => utf16(raw),
            2 | 3 => v.u32le().map(|n| n.to_string()).unwrap_or_default(),
            4 => v.u64le().map(|n| n.to_string()).unwrap_or_default(),
            5 => v.u16le().map(|n| n.to_string()).unwrap_or_default(),
            _ => continue,
        };
        // WM/Track counts from 0; WM/TrackNumber from 1 (preferred).
        if name.eq_ignore_ascii_case("WM/Track") {
            if let Ok(n) = value.parse::<u32>()
                && tags.track.is_none()
            {
                tags.track = Some(n + 1);
            }
            continue;
        }
        apply_key(tags, &name, &value);
    }
    Ok(())
}

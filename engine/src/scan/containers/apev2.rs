//! TTA, TAK and OptimFROG: tags in an APEv2 block (and an ID3v1 trailer) at
//! the end and an ID3v2 tag at the start; TTA's properties from its header.

use super::{Budget, Cursor, Found, apply_id3v2, apply_key, id3v2_len};
use crate::model::{AudioProps, Tags};

/// The format of a file with one of these magics (after an ID3v2 tag, if
/// one comes first), with the offset of its own header.
pub(super) fn format_of(magic: &[u8], budget: &mut Budget<'_>) -> Option<(&'static str, u64)> {
    let at = id3v2_len(magic).unwrap_or(0);
    let head = if at == 0 {
        magic.get(..4)?.to_vec()
    } else {
        budget.read(at, 4).ok()?
    };
    let format = match head.as_slice() {
        b"TTA1" => "tta",
        b"tBaK" => "tak",
        b"OFR " => "optimfrog",
        _ => return None,
    };
    Some((format, at))
}

pub(super) fn read(
    budget: &mut Budget<'_>,
    (format, at): (&'static str, u64),
) -> Result<Found, String> {
    let mut tags = Tags::default();
    let mut errors = Vec::new();
    // APEv2 first (the usual tag of these formats), then ID3v2, then ID3v1.
    let size = budget.size();
    let id3v1 = size >= 128 && budget.read(size - 128, 3)? == b"TAG";
    let end = if id3v1 { size - 128 } else { size };
    if let Err(e) = read_apev2(budget, end, &mut tags) {
        errors.push(e);
    }
    if at > 0 {
        let bytes = budget.read(0, at)?;
        if let Err(e) = apply_id3v2(&mut tags, &bytes) {
            errors.push(format!("ID3v2: {e}"));
        }
    }
    if id3v1 {
        apply_id3v1(&mut tags, &budget.read(size - 128, 128)?);
    }
    let props = if format == "tta" {
        tta_props(&budget.read(at, 22)?)?
    } else {
        AudioProps::default()
    };
    if tags == Tags::default() && !errors.is_empty() {
        return Err(errors.join("; "));
    }
    Ok((format.to_string(), tags, props))
}

/// An APEv2 block whose footer ends at `end`, if there is one.
fn read_apev2(budget: &mut Budget<'_>, end: u64, tags: &mut Tags) -> Result<(), String> {
    if end < 32 {
        return Ok(());
    }
    let footer = budget.read(end - 32, 32)?;
    if &footer[..8] != b"APETAGEX" {
        return Ok(());
    }
    let mut c = Cursor::new(&footer[8..]);
    let _version = c.u32le()?;
    let tag_size = u64::from(c.u32le()?);
    let items = c.u32le()?;
    if tag_size < 32 || tag_size > end {
        return Err(format!("APEv2: bad tag size {tag_size}"));
    }
    let body = budget.read(end - tag_size, tag_size - 32)?;
    let mut c = Cursor::new(&body);
    for _ in 0..items.min(4096) {
        if c.remaining() < 9 {
            break;
        }
        let len = c.u32le()? as usize;
        let flags = c.u32le()?;
        let rest = &body[c.pos()..];
        let key_len = rest
            .iter()
            .position(|b| *b == 0)
            .ok_or("APEv2: unterminated key")?;
        let key = String::from_utf8_lossy(c.take(key_len)?).into_owned();
        c.skip(1)?;
        let value = c.take(len)?;
        // Bits 1-2: 0 = UTF-8 text (others: binary, external).
        if flags & 0b110 == 0 {
            // Several values are separated by NUL: the first one counts.
            let text = String::from_utf8_lossy(value);
            apply_key(tags, &key, text.split('\0').next().unwrap_or(""));
        }
    }
    Ok(())
}

/// An ID3v1 trailer (Latin-1; ID3v1.1's track number).
pub(super) fn apply_id3v1(tags: &mut Tags, t: &[u8]) {
    let text = |b: &[u8]| -> String {
        let end = b.iter().position(|c| *c == 0).unwrap_or(b.len());
        b[..end].iter().map(|c| char::from(*c)).collect()
    };
    apply_key(tags, "title", &text(&t[3..33]));
    apply_key(tags, "artist", &text(&t[33..63]));
    apply_key(tags, "album", &text(&t[63..93]));
    apply_key(tags, "year", &text(&t[93..97]));
    if t[125] == 0 && t[126] != 0 {
        apply_key(tags, "track", &t[126].to_string());
    }
}

/// TTA1 header: format, channels, bits, sample rate, samples.
fn tta_props(h: &[u8]) -> Result<AudioProps, String> {
    let mut c = Cursor::new(&h[4..]);
    let _format = c.u16le()?;
    let channels = c.u16le()?;
    let _bits = c.u16le()?;
    let rate = c.u32le()?;
    let samples = c.u32le()?;
    Ok(AudioProps {
        duration_ms: if rate > 0 {
            u64::from(samples) * 1000 / u64::from(rate)
        } else {
            0
        },
        bitrate_kbps: None,
        sample_rate_hz: (rate > 0).then_some(rate),
        channels: u8::try_from(channels).ok(),
    })
}

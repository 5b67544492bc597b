//! DSD audio: DSF (an ID3v2 tag at the offset its header names) and
//! DSDIFF (an optional `ID3 ` chunk).

use super::{Budget, Cursor, Found, apply_id3v2, id3v2_len};
use crate::model::{AudioProps, Tags};

/// Most bytes of an ID3v2 tag read from a DSD file.
const MAX_ID3_BYTES: u64 = 4 * 1024 * 1024;

pub(super) fn read_dsf(budget: &mut Budget<'_>) -> Result<Found, String> {
    // "DSD " chunk (28 bytes), then "fmt " (52 bytes).
    let head = budget.read(0, 28 + 52)?;
    let mut c = Cursor::new(&head);
    c.skip(4)?;
    if c.u64le()? != 28 {
        return Err("DSF: bad DSD chunk size".into());
    }
    let _total = c.u64le()?;
    let metadata_at = c.u64le()?;
    if c.take(4)? != b"fmt " {
        return Err("DSF: no fmt chunk".into());
    }
    let _fmt_size = c.u64le()?;
    let _version = c.u32le()?;
    let _format_id = c.u32le()?;
    let _channel_type = c.u32le()?;
    let channels = c.u32le()?;
    let rate = c.u32le()?;
    let _bits = c.u32le()?;
    let samples = c.u64le()?;
    let props = dsd_props(rate, channels, samples);
    let mut tags = Tags::default();
    if metadata_at != 0 {
        read_id3_at(
            budget,
            metadata_at,
            budget.size() - metadata_at.min(budget.size()),
            &mut tags,
        )?;
    }
    Ok(("dsf".to_string(), tags, props))
}

pub(super) fn read_dff(budget: &mut Budget<'_>) -> Result<Found, String> {
    let (mut rate, mut channels, mut samples) = (0u32, 0u32, 0u64);
    let mut tags = Tags::default();
    let form_end = (16 + read_u64be(budget, 4)?).min(budget.size());
    let mut at = 16;
    // Bounded: a few dozen chunks in real files.
    for _ in 0..256 {
        if at + 12 > form_end {
            break;
        }
        let h = budget.read(at, 12)?;
        let id = &h[..4];
        let len = u64::from_be_bytes(h[4..12].try_into().map_err(|_| "DFF: chunk")?);
        let data = at + 12;
        match id {
            b"PROP" => {
                let prop = budget.read(data, len.min(64 * 1024))?;
                (rate, channels) = dff_prop(&prop)?;
            }
            b"DSD " => {
                samples = if channels > 0 {
                    len * 8 / u64::from(channels)
                } else {
                    0
                }
            }
            b"ID3 " => read_id3_at(budget, data, len, &mut tags)?,
            _ => {}
        }
        at = data
            .checked_add(len + (len & 1))
            .ok_or("DFF: chunk size overflow")?;
    }
    Ok(("dff".to_string(), tags, dsd_props(rate, channels, samples)))
}

fn read_u64be(budget: &mut Budget<'_>, at: u64) -> Result<u64, String> {
    Cursor::new(&budget.read(at, 8)?).u64be()
}

/// The sample rate and channels from a PROP chunk's `FS  ` and `CHNL`.
fn dff_prop(prop: &[u8]) -> Result<(u32, u32), String> {
    let mut c = Cursor::new(prop);
    if c.take(4)? != b"SND " {
        return Err("DFF: PROP is not SND".into());
    }
    let (mut rate, mut channels) = (0, 0);
    while c.remaining() >= 12 {
        let id = c.take(4)?.to_vec();
        let len = usize::try_from(c.u64be()?).map_err(|_| "DFF: chunk")?;
        let body = c.take(len.min(c.remaining()))?;
        let mut b = Cursor::new(body);
        match id.as_slice() {
            b"FS  " => rate = b.u32be()?,
            b"CHNL" => channels = u32::from(b.u16be()?),
            _ => {}
        }
        if len & 1 == 1 && c.remaining() > 0 {
            c.skip(1)?;
        }
    }
    Ok((rate, channels))
}

fn read_id3_at(budget: &mut Budget<'_>, at: u64, room: u64, tags: &mut Tags) -> Result<(), String> {
    let header = budget.read(at, 10.min(room))?;
    let len = id3v2_len(&header).ok_or("no ID3v2 tag where the header points")?;
    if len > room || len > MAX_ID3_BYTES {
        return Err(format!(
            "ID3v2 tag of {len} bytes does not fit ({room} bytes left)"
        ));
    }
    apply_id3v2(tags, &budget.read(at, len)?).map_err(|e| format!("ID3v2: {e}"))
}

/// One bit per sample and channel.
fn dsd_props(rate: u32, channels: u32, samples: u64) -> AudioProps {
    AudioProps {
        duration_ms: if rate > 0 {
            samples * 1000 / u64::from(rate)
        } else {
            0
        },
        bitrate_kbps: u32::try_from(u64::from(rate) * u64::from(channels) / 1000).ok(),
        sample_rate_hz: (rate > 0).then_some(rate),
        channels: u8::try_from(channels).ok().filter(|c| *c > 0),
    }
}

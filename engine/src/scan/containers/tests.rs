//! Each reader on a small file built here, and on broken ones.

use std::io::Write;

use super::read;
use crate::model::Tags;

/// An ID3v2.3 tag with text frames (ISO-8859-1).
pub(crate) fn id3v23(frames: &[(&str, &str)]) -> Vec<u8> {
    let mut body = Vec::new();
    for (id, text) in frames {
        body.extend_from_slice(id.as_bytes());
        body.extend_from_slice(&(text.len() as u32 + 1).to_be_bytes());
        body.extend_from_slice(&[0, 0, 0]); // flags, encoding ISO-8859-1
        body.extend_from_slice(text.as_bytes());
    }
    let size = body.len() as u32;
    let mut tag = b"ID3\x03\x00\x00".to_vec();
    for shift in [21, 14, 7, 0] {
        tag.push(((size >> shift) & 0x7f) as u8);
    }
    tag.extend(body);
    tag
}

/// A DSF file: 2.8224 MHz stereo, `seconds` long (zero samples), with
/// `id3` as its metadata chunk.
pub(crate) fn dsf(seconds: u64, id3: &[u8]) -> Vec<u8> {
    let rate: u32 = 2_822_400;
    let samples = u64::from(rate) * seconds;
    let data_len = 4096u64 * 2;
    let total = 28 + 52 + 12 + data_len + id3.len() as u64;
    let mut f = b"DSD ".to_vec();
    f.extend_from_slice(&28u64.to_le_bytes());
    f.extend_from_slice(&total.to_le_bytes());
    f.extend_from_slice(&(28 + 52 + 12 + data_len).to_le_bytes());
    f.extend_from_slice(b"fmt ");
    f.extend_from_slice(&52u64.to_le_bytes());
    for v in [1u32, 0, 2, 2, rate, 1] {
        f.extend_from_slice(&v.to_le_bytes());
    }
    f.extend_from_slice(&samples.to_le_bytes());
    f.extend_from_slice(&4096u32.to_le_bytes());
    f.extend_from_slice(&0u32.to_le_bytes());
    f.extend_from_slice(b"data");
    f.extend_from_slice(&(12 + data_len).to_le_bytes());
    f.extend(std::iter::repeat_n(0x69, data_len as usize));
    f.extend_from_slice(id3);
    f
}

fn read_bytes(bytes: &[u8]) -> Option<Result<super::Found, String>> {
    let mut file = tempfile::tempfile().unwrap();
    file.write_all(bytes).unwrap();
    read(&mut file, bytes.len() as u64)
}

fn tags_of(bytes: &[u8]) -> (String, Tags, crate::model::AudioProps) {
    read_bytes(bytes)
        .expect("not recognised")
        .expect("not read")
}

#[test]
fn dsf_with_id3v2() {
    let id3 = id3v23(&[
        ("TIT2", "Deep Song"),
        ("TPE1", "DSD Band"),
        ("TALB", "Direct Stream"),
        ("TRCK", "3/9"),
        ("TYER", "2011"),
    ]);
    let (format, tags, props) = tags_of(&dsf(2, &id3));
    assert_eq!(format, "dsf");
    assert_eq!(tags.title.as_deref(), Some("Deep Song"));
    assert_eq!(tags.artist.as_deref(), Some("DSD Band"));
    assert_eq!(tags.album.as_deref(), Some("Direct Stream"));
    assert_eq!(
        (tags.track, tags.track_total, tags.year),
        (Some(3), Some(9), Some(2011))
    );
    assert_eq!(props.duration_ms, 2000);
    assert_eq!(
        (props.sample_rate_hz, props.channels),
        (Some(2_822_400), Some(2))
    );
}

#[test]
fn truncated_dsf_is_an_error_not_a_panic() {
    let full = dsf(1, &id3v23(&[("TIT2", "Cut")]));
    for cut in [4, 40, 90, full.len() - 5] {
        let r = read_bytes(&full[..cut]).expect("DSF magic not recognised");
        assert!(r.is_err(), "a DSF cut at {cut} bytes was read: {r:?}");
    }
}

fn ape_item(key: &str, value: &str) -> Vec<u8> {
    let mut i = (value.len() as u32).to_le_bytes().to_vec();
    i.extend_from_slice(&0u32.to_le_bytes());
    i.extend_from_slice(key.as_bytes());
    i.push(0);
    i.extend_from_slice(value.as_bytes());
    i
}

fn apev2(items: &[(&str, &str)]) -> Vec<u8> {
    let body: Vec<u8> = items.iter().flat_map(|(k, v)| ape_item(k, v)).collect();
    let mut footer = b"APETAGEX".to_vec();
    footer.extend_from_slice(&2000u32.to_le_bytes());
    footer.extend_from_slice(&(body.len() as u32 + 32).to_le_bytes());
    footer.extend_from_slice(&(items.len() as u32).to_le_bytes());
    footer.extend_from_slice(&0u32.to_le_bytes());
    footer.extend_from_slice(&[0u8; 8]);
    [body, footer].concat()
}

#[test]
fn tta_with_apev2_and_id3v1() {
    let mut f = b"TTA1".to_vec();
    f.extend_from_slice(&1u16.to_le_bytes());
    f.extend_from_slice(&2u16.to_le_bytes());
    f.extend_from_slice(&16u16.to_le_bytes());
    f.extend_from_slice(&44_100u32.to_le_bytes());
    f.extend_from_slice(&(44_100u32 * 3).to_le_bytes());
    f.extend_from_slice(&[0u8; 4]);
    f.extend(std::iter::repeat_n(7u8, 3000));
    f.extend(apev2(&[
        ("Title", "True Audio"),
        ("Artist", "Tester"),
        ("Album Artist", "Various"),
        ("Track", "2/5"),
    ]));
    let mut v1 = b"TAG".to_vec();
    v1.extend_from_slice(&[b'x'; 30]);
    v1.extend_from_slice(b"V1 Artist");
    v1.resize(128, 0);
    v1[63..71].copy_from_slice(b"V1 Album");
    f.extend(v1);
    let (format, tags, props) = tags_of(&f);
    assert_eq!(format, "tta");
    assert_eq!(tags.title.as_deref(), Some("True Audio"));
    assert_eq!(tags.artist.as_deref(), Some("Tester"));
    assert_eq!(tags.album_artist.as_deref(), Some("Various"));
    assert_eq!(
        tags.album.as_deref(),
        Some("V1 Album"),
        "ID3v1 fills the gaps"
    );
    assert_eq!((tags.track, tags.track_total), (Some(2), Some(5)));
    assert_eq!((props.duration_ms, props.channels), (3000, Some(2)));
}

fn utf16(s: &str) -> Vec<u8> {
    s.encode_utf16()
        .chain(std::iter::once(0))
        .flat_map(u16::to_le_bytes)
        .collect()
}

#[test]
fn wma_content_descriptions() {
    let (title, author) = (utf16("Windows Song"), utf16("WM Artist"));
    let mut cd = Vec::new();
    for len in [title.len(), author.len(), 0, 0, 0] {
        cd.extend_from_slice(&(len as u16).to_le_bytes());
    }
    cd.extend(&title);
    cd.extend(&author);
    let mut ext = 2u16.to_le_bytes().to_vec();
    for (name, value) in [("WM/AlbumTitle", "WM Album"), ("WM/TrackNumber", "4")] {
        let (n, v) = (utf16(name), utf16(value));
        ext.extend_from_slice(&(n.len() as u16).to_le_bytes());
        ext.extend(&n);
        ext.extend_from_slice(&0u16.to_le_bytes());
        ext.extend_from_slice(&(v.len() as u16).to_le_bytes());
        ext.extend(&v);
    }
    let object = |guid: [u8; 16], body: &[u8]| {
        let mut o = guid.to_vec();
        o.extend_from_slice(&(24 + body.len() as u64).to_le_bytes());
        o.extend_from_slice(body);
        o
    };
    let objects = [
        object(super::asf::CONTENT_DESCRIPTION, &cd),
        object(super::asf::EXTENDED_CONTENT_DESCRIPTION, &ext),
    ]
    .concat();
    let mut f = super::asf::HEADER_GUID.to_vec();
    f.extend_from_slice(&(30 + objects.len() as u64).to_le_bytes());
    f.extend_from_slice(&2u32.to_le_bytes());
    f.extend_from_slice(&[1, 2]);
    f.extend(objects);
    f.extend(std::iter::repeat_n(0u8, 500));
    let (format, tags, _) = tags_of(&f);
    assert_eq!(format, "wma");
    assert_eq!(tags.title.as_deref(), Some("Windows Song"));
    assert_eq!(tags.artist.as_deref(), Some("WM Artist"));
    assert_eq!(tags.album.as_deref(), Some("WM Album"));
    assert_eq!(tags.track, Some(4));
    // Cut inside the header: an error, not a panic.
    assert!(read_bytes(&f[..60]).unwrap().is_err());
}

/// An EBML element with a 1-byte size (so `data` < 127 bytes) or an 8-byte one.
fn el(id: &[u8], data: &[u8]) -> Vec<u8> {
    let mut e = id.to_vec();
    if data.len() < 127 {
        e.push(0x80 | data.len() as u8);
    } else {
        e.push(0x01);
        e.extend_from_slice(&(data.len() as u64).to_be_bytes()[1..]);
    }
    e.extend_from_slice(data);
    e
}

#[test]
fn matroska_tags_and_info() {
    let ebml = el(&[0x1a, 0x45, 0xdf, 0xa3], &el(&[0x42, 0x82], b"webm"));
    let info = el(
        &[0x15, 0x49, 0xa9, 0x66],
        &[
            el(&[0x2a, 0xd7, 0xb1], &[0x0f, 0x42, 0x40]),
            el(&[0x44, 0x89], &2500.0f64.to_be_bytes()),
        ]
        .concat(),
    );
    let simple = |name: &str, value: &str| {
        el(
            &[0x67, 0xc8],
            &[
                el(&[0x45, 0xa3], name.as_bytes()),
                el(&[0x44, 0x87], value.as_bytes()),
            ]
            .concat(),
        )
    };
    let tag = el(
        &[0x73, 0x73],
        &[
            el(&[0x63, 0xc0], &[]),
            simple("TITLE", "Web Song"),
            simple("ARTIST", "Web Artist"),
            simple("ALBUM", "Web Album"),
            simple("DATE", "2020-05-01"),
        ]
        .concat(),
    );
    let tags = el(&[0x12, 0x54, 0xc3, 0x67], &tag);
    let segment = el(&[0x18, 0x53, 0x80, 0x67], &[info, tags].concat());
    let f = [ebml, segment].concat();
    let (format, t, props) = tags_of(&f);
    assert_eq!(format, "webm");
    assert_eq!(t.title.as_deref(), Some("Web Song"));
    assert_eq!(t.artist.as_deref(), Some("Web Artist"));
    assert_eq!(t.album.as_deref(), Some("Web Album"));
    assert_eq!(t.year, Some(2020));
    assert_eq!(props.duration_ms, 2500);
    for cut in [10, 30, f.len() - 3] {
        // Cut short: whatever was read, never a panic.
        let _ = read_bytes(&f[..cut]);
    }
}

#[test]
fn other_magics_are_left_to_lofty() {
    assert!(read_bytes(b"fLaC\0\0\0\x22").is_none());
    assert!(read_bytes(b"ID3\x03\0\0\0\0\0\x01xFFFB").is_none());
    let (format, tags, _) = tags_of(b"MThd\0\0\0\x06\0\x01\0\x01\x01\xe0");
    assert_eq!((format.as_str(), tags), ("midi", Tags::default()));
}

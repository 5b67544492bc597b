//! Cover art found while probing: a folder image's type (by its magic
//! bytes), and where an audio file's embedded front cover lies in the file,
//! so that it is served by range from the file itself (never copied).
//!
//! lofty gives the picture's bytes (FLAC PICTURE blocks, ID3v2 APIC, MP4
//! `covr`, APE); their offset is found by searching the file's head for
//! them, a piece at a time, at most `MAX_HEADER_READ_BYTES` in. A picture
//! stored encoded (Vorbis comments' base64, unsynchronised ID3v2.3 frames)
//! or past that is not found, and gives no cover.

use std::io::SeekFrom;

use lofty::file::{TaggedFile, TaggedFileExt};
use lofty::picture::PictureType;

use crate::model::{Art, image_ext};
use crate::scan::tags::{MAX_HEADER_READ_BYTES, Source};

/// Bytes of a picture searched for (then the whole is compared).
const NEEDLE: usize = 64;
const PIECE: usize = 256 * 1024;

/// The front cover of `tagged` (else its first picture): bytes and type.
pub(super) fn front_cover(tagged: &TaggedFile) -> Option<(Vec<u8>, &'static str)> {
    let pictures: Vec<&lofty::picture::Picture> =
        tagged.tags().iter().flat_map(|t| t.pictures()).collect();
    let pic = pictures
        .iter()
        .find(|p| p.pic_type() == PictureType::CoverFront)
        .or_else(|| pictures.first())?;
    let data = pic.data();
    let ext = image_ext(data)?;
    Some((data.to_vec(), ext))
}

/// Where `data` lies in `file` (of `size` bytes), searched from the start.
pub(super) fn locate<S: Source>(file: &mut S, size: u64, data: &[u8], ext: &str) -> Option<Art> {
    if data.len() < NEEDLE || data.len() as u64 > size {
        return None;
    }
    let needle = &data[..NEEDLE];
    file.seek(SeekFrom::Start(0)).ok()?;
    let limit = size.min(MAX_HEADER_READ_BYTES) as usize;
    let mut buf: Vec<u8> = Vec::new();
    // `buf` holds the file from `start`; pieces are appended, and what can
    // no longer begin a match is dropped.
    let mut start = 0usize;
    let mut piece = vec![0u8; PIECE];
    while start + buf.len() < limit {
        let want = PIECE.min(limit - start - buf.len());
        let n = file.read(&mut piece[..want]).ok()?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&piece[..n]);
        if let Some(at) = buf.windows(NEEDLE).position(|w| w == needle) {
            let offset = (start + at) as u64;
            return verify(file, offset, data).then(|| Art {
                offset,
                len: data.len() as u64,
                ext: ext.to_string(),
            });
        }
        let keep = NEEDLE - 1;
        if buf.len() > keep {
            let drop = buf.len() - keep;
            buf.drain(..drop);
            start += drop;
        }
    }
    None
}

fn verify<S: Source>(file: &mut S, offset: u64, data: &[u8]) -> bool {
    let mut got = vec![0u8; data.len()];
    file.seek(SeekFrom::Start(offset)).is_ok() && file.read_exact(&mut got).is_ok() && got == data
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_picture_across_pieces() {
        let mut file = vec![7u8; PIECE + 1000];
        let pic: Vec<u8> = (0..5000u32).map(|i| (i * 31 % 251) as u8).collect();
        // Straddling the first piece's end.
        let at = PIECE - 20;
        file.splice(at..at, pic.iter().copied());
        let size = file.len() as u64;
        let art = locate(&mut std::io::Cursor::new(file), size, &pic, "png").unwrap();
        assert_eq!((art.offset, art.len), (at as u64, 5000));
        let other = vec![1u8; 100];
        let f2 = vec![0u8; 10_000];
        assert!(locate(&mut std::io::Cursor::new(f2), 10_000, &other, "png").is_none());
    }
}

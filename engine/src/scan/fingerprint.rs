//! A cheap content fingerprint, for when an mtime cannot be trusted.

use std::fs::File;
use std::io;

/// Bytes hashed at each end of a file for its fingerprint.
const FINGERPRINT_EDGE_BYTES: u64 = 4096;

/// A cheap content fingerprint: blake3 of the size and the first and last
/// 4 KiB. Tags live at the ends of audio files, so a retag changes it.
pub fn fingerprint_file(file: &File, size: u64) -> io::Result<u64> {
    use std::os::unix::fs::FileExt;
    fingerprint_with(size, |buf, at| file.read_exact_at(buf, at))
}

/// `fingerprint_file` of a file read through `source` (seeks it).
pub fn fingerprint_source(
    source: &mut dyn crate::scan::tags::Source,
    size: u64,
) -> io::Result<u64> {
    use std::io::SeekFrom;
    fingerprint_with(size, |buf, at| {
        source.seek(SeekFrom::Start(at))?;
        source.read_exact(buf)
    })
}

fn fingerprint_with(
    size: u64,
    mut read_at: impl FnMut(&mut [u8], u64) -> io::Result<()>,
) -> io::Result<u64> {
    let mut h = blake3::Hasher::new();
    h.update(&size.to_le_bytes());
    let mut buf = vec![0u8; FINGERPRINT_EDGE_BYTES as usize];
    let head = size.min(FINGERPRINT_EDGE_BYTES) as usize;
    read_at(&mut buf[..head], 0)?;
    h.update(&buf[..head]);
    if size > FINGERPRINT_EDGE_BYTES {
        let tail_len = (size - FINGERPRINT_EDGE_BYTES).min(FINGERPRINT_EDGE_BYTES) as usize;
        read_at(&mut buf[..tail_len], size - tail_len as u64)?;
        h.update(&buf[..tail_len]);
    }
    let d = h.finalize();
    Ok(u64::from_le_bytes(
        d.as_bytes()[..8].try_into().unwrap_or([0; 8]),
    ))
}

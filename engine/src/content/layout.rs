//! How a file is cut into chunks, and the key of one content version.
//!
//! The head and the tail of every file are their own small chunks, because
//! that is where tags and cover art live: a scan or a media server's probe
//! reads them and never pulls a whole file. The body between them is cut
//! into `BODY_CHUNK_BYTES` pieces. One MiB, not JuiceFS's 4 MiB: a seek
//! into an uncached part waits for one chunk from the origin (about 100 ms
//! on a 100 Mbit/s share), read-ahead keeps sequential reads streaming, and
//! a chunk costs one file and one index row (about 100 bytes), which is
//! nothing beside a MiB. Chunks are cut at fixed offsets, not by content:
//! music files are whole objects that change rarely and never shift bytes
//! for a neighbour to share, and fixed offsets map a read to its chunk
//! without a lookup.

/// The first chunk of a file: tags (ID3v2, FLAC metadata, MP4 `moov` at the
/// front) and embedded art in most files.
pub const HEAD_BYTES: u64 = 256 * 1024;
/// The last chunk: ID3v1, APEv2, and an MP4 `moov` at the end.
pub const TAIL_BYTES: u64 = 128 * 1024;
/// The chunks in between.
pub const BODY_CHUNK_BYTES: u64 = 1024 * 1024;
/// The largest chunk there is.
pub const MAX_CHUNK_BYTES: u64 = BODY_CHUNK_BYTES;

/// One content version of one origin file: blake3 of the file's key in the
/// catalog, its size and its mtime (not its inode: a network share that is
/// mounted again renumbers inodes, and its cached chunks stay good).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContentKey(pub [u8; 16]);

impl ContentKey {
    pub fn of(file_key: &[u8], size_bytes: u64, mtime_ns: i64) -> ContentKey {
        let mut h = blake3::Hasher::new();
        h.update(&(file_key.len() as u64).to_le_bytes());
        h.update(file_key);
        h.update(&size_bytes.to_le_bytes());
        h.update(&mtime_ns.to_le_bytes());
        let mut key = [0u8; 16];
        key.copy_from_slice(&h.finalize().as_bytes()[..16]);
        ContentKey(key)
    }
}

/// The chunks of a file of `size_bytes`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub size_bytes: u64,
}

impl Layout {
    pub fn new(size_bytes: u64) -> Layout {
        Layout { size_bytes }
    }

    /// Where the tail chunk starts (only meaningful past the head).
    fn tail_start(&self) -> u64 {
        self.size_bytes.saturating_sub(TAIL_BYTES).max(HEAD_BYTES)
    }

    fn body_chunks(&self) -> u64 {
        (self.tail_start() - HEAD_BYTES).div_ceil(BODY_CHUNK_BYTES)
    }

    /// How many chunks the file has (0 for an empty file).
    pub fn count(&self) -> u32 {
        let n = match self.size_bytes {
            0 => 0,
            s if s <= HEAD_BYTES => 1,
            _ => 2 + self.body_chunks(),
        };
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    /// Offset and length of chunk `i` (`i < count()`).
    pub fn range(&self, i: u32) -> (u64, u64) {
        let i = u64::from(i);
        if i == 0 {
            return (0, self.size_bytes.min(HEAD_BYTES));
        }
        let tail = self.tail_start();
        if i > self.body_chunks() {
            return (tail, self.size_bytes - tail);
        }
        let start = HEAD_BYTES + (i - 1) * BODY_CHUNK_BYTES;
        (start, (start + BODY_CHUNK_BYTES).min(tail) - start)
    }

    /// The chunk that holds byte `offset` (`offset < size_bytes`).
    pub fn index_of(&self, offset: u64) -> u32 {
        let i = if offset < HEAD_BYTES {
            0
        } else if offset >= self.tail_start() {
            1 + self.body_chunks()
        } else {
            1 + (offset - HEAD_BYTES) / BODY_CHUNK_BYTES
        };
        u32::try_from(i).unwrap_or(u32::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every byte of every size belongs to exactly one chunk, in order, and
    /// `index_of` finds it; head and tail are small.
    #[test]
    fn chunks_tile_the_file() {
        let sizes = [
            0,
            1,
            HEAD_BYTES - 1,
            HEAD_BYTES,
            HEAD_BYTES + 1,
            HEAD_BYTES + TAIL_BYTES,
            HEAD_BYTES + TAIL_BYTES + 1,
            HEAD_BYTES + BODY_CHUNK_BYTES + TAIL_BYTES,
            40 * 1024 * 1024 + 12345,
        ];
        for size in sizes {
            let l = Layout::new(size);
            let mut next = 0;
            for i in 0..l.count() {
                let (off, len) = l.range(i);
                assert_eq!(off, next, "size {size} chunk {i}");
                assert!(len > 0 && len <= MAX_CHUNK_BYTES, "size {size} chunk {i}");
                assert_eq!(l.index_of(off), i);
                assert_eq!(l.index_of(off + len - 1), i);
                next = off + len;
            }
            assert_eq!(next, size);
            if size > HEAD_BYTES + TAIL_BYTES {
                assert_eq!(l.range(0).1, HEAD_BYTES);
                assert_eq!(l.range(l.count() - 1).1, TAIL_BYTES);
            }
        }
    }

    #[test]
    fn keys_change_with_size_mtime_and_file() {
        let a = ContentKey::of(b"\0\0\0\0a.flac", 10, 5);
        assert_eq!(a, ContentKey::of(b"\0\0\0\0a.flac", 10, 5));
        assert_ne!(a, ContentKey::of(b"\0\0\0\0a.flac", 11, 5));
        assert_ne!(a, ContentKey::of(b"\0\0\0\0a.flac", 10, 6));
        assert_ne!(a, ContentKey::of(b"\0\0\0\0b.flac", 10, 5));
    }
}

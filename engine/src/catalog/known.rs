//! What a delta scan compares the origin with: every known file of one
//! origin (under a prefix), packed for a million files.
//!
//! One byte buffer holds the relative paths back to back, in the catalog's
//! key order; lookups are binary searches. At 1M files this is about 110 MB
//! less than a `HashMap<Vec<u8>, KnownFile>` plus a `HashSet` of the files
//! seen: no allocation per path, no hash table slack, one bit per "seen".

use crate::catalog::records::KnownFile;

#[derive(Default)]
pub struct KnownFiles {
    /// Every path, back to back.
    names: Vec<u8>,
    /// Where path `i` ends in `names` (it starts where `i - 1` ends).
    ends: Vec<usize>,
    files: Vec<KnownFile>,
    /// Marked by the scan that compares (`mark_seen`).
    seen: Vec<bool>,
}

impl KnownFiles {
    /// Appends one path. Paths must come in ascending byte order (the order
    /// of the catalog's keys); `finish` sorts them if they did not.
    pub(super) fn push(&mut self, rel: &[u8], file: KnownFile) {
        self.names.extend_from_slice(rel);
        self.ends.push(self.names.len());
        self.files.push(file);
        self.seen.push(false);
    }

    /// Makes the table searchable: sorts it if the paths did not come in
    /// order, and gives back spare capacity.
    pub(super) fn finish(mut self) -> Self {
        let n = self.len();
        if !(1..n).all(|i| self.name(i - 1) < self.name(i)) {
            let mut order: Vec<usize> = (0..n).collect();
            order.sort_by(|&a, &b| self.name(a).cmp(self.name(b)));
            order.dedup_by(|a, b| self.name(*a) == self.name(*b));
            let mut sorted = KnownFiles::default();
            for i in order {
                sorted.push(self.name(i), self.files[i]);
            }
            self = sorted;
        }
        self.names.shrink_to_fit();
        self.ends.shrink_to_fit();
        self.files.shrink_to_fit();
        self.seen.shrink_to_fit();
        self
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    fn name(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.names[start..self.ends[i]]
    }

    fn index(&self, rel: &[u8]) -> Option<usize> {
        let (mut lo, mut hi) = (0, self.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.name(mid).cmp(rel) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Some(mid),
            }
        }
        None
    }

    pub fn get(&self, rel: &[u8]) -> Option<&KnownFile> {
        self.index(rel).map(|i| &self.files[i])
    }

    pub fn contains(&self, rel: &[u8]) -> bool {
        self.index(rel).is_some()
    }

    /// Marks `rel` as present at the origin; false if it is not known.
    pub fn mark_seen(&mut self, rel: &[u8]) -> bool {
        match self.index(rel) {
            Some(i) => {
                self.seen[i] = true;
                true
            }
            None => false,
        }
    }

    /// Every path, in byte order.
    pub fn paths(&self) -> impl Iterator<Item = &[u8]> {
        (0..self.len()).map(|i| self.name(i))
    }

    /// The paths not marked seen, in byte order.
    pub fn unseen(&self) -> impl Iterator<Item = &[u8]> {
        (0..self.len())
            .filter(|&i| !self.seen[i])
            .map(|i| self.name(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(size: u64) -> KnownFile {
        KnownFile {
            size,
            mtime_ns: 0,
            ino: 0,
            fingerprint: 0,
        }
    }

    #[test]
    fn lookups_marks_and_the_unseen() {
        let mut t = KnownFiles::default();
        for (i, p) in ["a/1.flac", "a/2.flac", "a-b/1.flac", "b/1.flac"]
            .iter()
            .enumerate()
        {
            t.push(p.as_bytes(), k(i as u64));
        }
        let mut t = t.finish();
        assert_eq!(t.len(), 4);
        assert_eq!(t.get(b"a-b/1.flac").map(|f| f.size), Some(2));
        assert_eq!(t.get(b"b/1.flac").map(|f| f.size), Some(3));
        assert!(t.get(b"a/3.flac").is_none() && t.get(b"").is_none());
        assert!(t.mark_seen(b"a/2.flac") && t.mark_seen(b"b/1.flac"));
        assert!(!t.mark_seen(b"c.flac"));
        let unseen: Vec<&[u8]> = t.unseen().collect();
        // Byte order: '-' sorts before '/'.
        assert_eq!(unseen, vec![&b"a-b/1.flac"[..], &b"a/1.flac"[..]]);
    }

    #[test]
    fn paths_out_of_order_are_sorted_and_deduplicated() {
        let mut t = KnownFiles::default();
        for (i, p) in ["z", "a", "m", "a"].iter().enumerate() {
            t.push(p.as_bytes(), k(i as u64));
        }
        let t = t.finish();
        let paths: Vec<&[u8]> = t.paths().collect();
        assert_eq!(paths, vec![&b"a"[..], &b"m"[..], &b"z"[..]]);
        assert_eq!(t.get(b"z").map(|f| f.size), Some(0));
        assert!(t.contains(b"m"));
    }
}

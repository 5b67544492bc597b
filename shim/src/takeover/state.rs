//! The state a successor needs, kept with the FUSE fd: a memfd that the
//! holder (the supervisor, or systemd's fd store as `fuse-state`) keeps
//! beside the /dev/fuse fd. Versioned: a header (magic, format version,
//! what the kernel offered at INIT, what fuser answered, our own choices),
//! then fixed 32-byte slots, one per live entry of the handle tables
//! (passthrough backing ids by (inode, version), idle ones included, and the
//! opens the shim answered itself; the page cache's owner and open counts
//! per inode). A change is one `pwrite` of one slot: a process
//! killed at any moment leaves every slot old or new, never torn, and the
//! file never needs compacting.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;

use anyhow::{Context, Result, bail};
use parking_lot::Mutex;
use tracing::warn;

const MAGIC: &[u8; 8] = b"MFSTAKE\0";
/// Bumped whenever the layout or the meaning of a slot changes: a shim
/// never adopts a state it does not know.
pub const FORMAT_VERSION: u32 = 2;
const HEADER_BYTES: u64 = 4096;
const SLOT_BYTES: u64 = 32;
/// Slots: passthrough versions (open, or idle: at most 8,192) and the opens
/// answered by the shim, open page-cache versions, and the page-cache
/// owners the shim remembers (`PAGE_CACHE_INODES_MAX`), with room.
pub const SLOTS_MAX: u32 = 256 * 1024;

/// What a slot holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Kind {
    /// (inode, version) -> backing id << 32 | open handles the engine
    /// answered (0: idle, the id kept for reopens).
    Backing = 1,
    /// (inode, version) -> open handles that read through the shim.
    CacheOpen = 2,
    /// (inode, 0) -> the version the page cache holds.
    CacheOwner = 3,
    /// (inode, version) -> open passthrough handles the shim answered
    /// itself (reopens): their releases are not the engine's.
    LocalOpens = 4,
}

impl Kind {
    fn from_raw(v: u32) -> Option<Kind> {
        match v {
            1 => Some(Kind::Backing),
            2 => Some(Kind::CacheOpen),
            3 => Some(Kind::CacheOwner),
            4 => Some(Kind::LocalOpens),
            _ => None,
        }
    }
}

/// The connection as negotiated: the kernel's INIT (`fuse_init_in`) and
/// fuser's answer (`fuse_init_out`), byte for byte, and our choices.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Negotiated {
    pub init_in: [u8; 64],
    pub init_out: [u8; 64],
    pub passthrough: bool,
}

/// One live table entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    pub kind: Kind,
    pub ino: u64,
    pub fh: u64,
    pub value: u64,
}

fn check(kind: u32, ino: u64, fh: u64, value: u64) -> u32 {
    let x = (u64::from(kind) ^ 0x9e37_79b9_7f4a_7c15).wrapping_mul(0xff51_afd7_ed55_8ccd)
        ^ ino.rotate_left(17)
        ^ fh.rotate_left(31)
        ^ value.rotate_left(47);
    let x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    ((x >> 32) as u32) ^ (x as u32) | 1
}

fn encode(s: &Slot) -> [u8; 32] {
    let mut b = [0u8; 32];
    let k = s.kind as u32;
    b[0..4].copy_from_slice(&k.to_le_bytes());
    b[4..8].copy_from_slice(&check(k, s.ino, s.fh, s.value).to_le_bytes());
    b[8..16].copy_from_slice(&s.ino.to_le_bytes());
    b[16..24].copy_from_slice(&s.fh.to_le_bytes());
    b[24..32].copy_from_slice(&s.value.to_le_bytes());
    b
}

fn decode(b: &[u8]) -> Option<Slot> {
    let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    let u64_at = |i: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[i..i + 8]);
        u64::from_le_bytes(a)
    };
    let (k, c) = (u32_at(0), u32_at(4));
    let (ino, fh, value) = (u64_at(8), u64_at(16), u64_at(24));
    let kind = Kind::from_raw(k)?;
    (check(k, ino, fh, value) == c).then_some(Slot {
        kind,
        ino,
        fh,
        value,
    })
}

struct Index {
    by_key: HashMap<(Kind, u64, u64), u32>,
    free: Vec<u32>,
    /// Slots ever used (the reader scans that many).
    high: u32,
    full_warned: bool,
}

/// The state file of one connection, shared by every table that writes it.
pub struct StateFile {
    file: File,
    index: Mutex<Index>,
}

impl StateFile {
    /// A new state for a connection just negotiated.
    pub fn create(n: &Negotiated) -> Result<StateFile> {
        // SAFETY: memfd_create with a valid C string; the fd it returns is
        // new and owned here alone.
        let raw = unsafe { libc::memfd_create(c"musicfs-fuse-state".as_ptr(), libc::MFD_CLOEXEC) };
        if raw < 0 {
            return Err(std::io::Error::last_os_error()).context("memfd_create");
        }
        // SAFETY: `raw` was just returned by memfd_create and nothing else owns it.
        let file = File::from(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) });
        file.set_len(HEADER_BYTES + u64::from(SLOTS_MAX) * SLOT_BYTES)
            .context("cannot size the state memfd")?;
        let mut h = [0u8; 160];
        h[0..8].copy_from_slice(MAGIC);
        h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        h[12..16].copy_from_slice(&u32::from(n.passthrough).to_le_bytes());
        h[16..80].copy_from_slice(&n.init_in);
        h[80..144].copy_from_slice(&n.init_out);
        h[148..152].copy_from_slice(&SLOTS_MAX.to_le_bytes());
        file.write_all_at(&h, 0)
            .context("cannot write the state header")?;
        Ok(StateFile {
            file,
            index: Mutex::new(Index {
                by_key: HashMap::new(),
                free: Vec::new(),
                high: 0,
                full_warned: false,
            }),
        })
    }

    /// Reads a predecessor's state: what was negotiated and every live
    /// slot. Refuses a file of another format, with the reason.
    pub fn open(fd: OwnedFd) -> Result<(StateFile, Negotiated, Vec<Slot>)> {
        let file = File::from(fd);
        let mut h = [0u8; 160];
        file.read_exact_at(&mut h, 0)
            .context("cannot read the state header")?;
        if &h[0..8] != MAGIC {
            bail!("the fd store's fuse-state is not a MusicFS takeover state");
        }
        let version = u32::from_le_bytes([h[8], h[9], h[10], h[11]]);
        if version != FORMAT_VERSION {
            bail!(
                "the takeover state has format {version}, this shim reads format {FORMAT_VERSION}"
            );
        }
        let mut n = Negotiated {
            init_in: [0; 64],
            init_out: [0; 64],
            passthrough: h[12] & 1 == 1,
        };
        n.init_in.copy_from_slice(&h[16..80]);
        n.init_out.copy_from_slice(&h[80..144]);
        let high = u32::from_le_bytes([h[144], h[145], h[146], h[147]]).min(SLOTS_MAX);
        let mut raw = vec![0u8; high as usize * SLOT_BYTES as usize];
        file.read_exact_at(&mut raw, HEADER_BYTES)
            .context("cannot read the state slots")?;
        let mut by_key = HashMap::new();
        let mut free = Vec::new();
        let mut slots = Vec::new();
        for (i, chunk) in raw.chunks_exact(SLOT_BYTES as usize).enumerate() {
            match decode(chunk) {
                Some(s) if !by_key.contains_key(&(s.kind, s.ino, s.fh)) => {
                    by_key.insert((s.kind, s.ino, s.fh), i as u32);
                    slots.push(s);
                }
                _ => free.push(i as u32),
            }
        }
        let state = StateFile {
            file,
            index: Mutex::new(Index {
                by_key,
                free,
                high,
                full_warned: false,
            }),
        };
        Ok((state, n, slots))
    }

    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// Records that `kind`'s entry (ino, fh) is `value` now.
    pub fn set(&self, kind: Kind, ino: u64, fh: u64, value: u64) {
        let mut ix = self.index.lock();
        let slot = match ix.by_key.get(&(kind, ino, fh)) {
            Some(s) => *s,
            None => {
                let s = match ix.free.pop() {
                    Some(s) => s,
                    None if ix.high < SLOTS_MAX => {
                        ix.high += 1;
                        if let Err(e) = self.file.write_all_at(&ix.high.to_le_bytes(), 144) {
                            warn!("cannot write the takeover state: {e}");
                        }
                        ix.high - 1
                    }
                    None => {
                        if !ix.full_warned {
                            ix.full_warned = true;
                            warn!(
                                "the takeover state is full ({SLOTS_MAX} entries); a successor shim may not know every open handle"
                            );
                        }
                        return;
                    }
                };
                ix.by_key.insert((kind, ino, fh), s);
                s
            }
        };
        let bytes = encode(&Slot {
            kind,
            ino,
            fh,
            value,
        });
        if let Err(e) = self
            .file
            .write_all_at(&bytes, HEADER_BYTES + u64::from(slot) * SLOT_BYTES)
        {
            warn!("cannot write the takeover state: {e}");
        }
    }

    /// Records that `kind`'s entry (ino, fh) is gone.
    pub fn remove(&self, kind: Kind, ino: u64, fh: u64) {
        let mut ix = self.index.lock();
        let Some(slot) = ix.by_key.remove(&(kind, ino, fh)) else {
            return;
        };
        if let Err(e) = self
            .file
            .write_all_at(&[0u8; 32], HEADER_BYTES + u64::from(slot) * SLOT_BYTES)
        {
            warn!("cannot write the takeover state: {e}");
        }
        ix.free.push(slot);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn negotiated() -> Negotiated {
        let mut n = Negotiated {
            init_in: [0; 64],
            init_out: [0; 64],
            passthrough: true,
        };
        n.init_in[0] = 7;
        n.init_out[4] = 40;
        n
    }

    /// What one shim writes, the next reads: the header and exactly the
    /// live slots (a removed one is gone, a changed one has its last value,
    /// a freed slot is reused).
    #[test]
    fn a_successor_reads_what_the_predecessor_wrote() {
        let s = StateFile::create(&negotiated()).unwrap();
        s.set(Kind::Backing, 5, 11, (3 << 32) | 1);
        s.set(Kind::CacheOpen, 6, 22, 1);
        s.set(Kind::CacheOwner, 6, 0, 22);
        s.set(Kind::Backing, 5, 11, (3 << 32) | 2);
        s.remove(Kind::CacheOpen, 6, 22);
        s.set(Kind::CacheOpen, 7, 33, 4); // reuses the freed slot
        let dup = s.fd().try_clone_to_owned().unwrap();
        let (again, n, mut slots) = StateFile::open(dup).unwrap();
        assert_eq!(n, negotiated());
        slots.sort_by_key(|s| (s.ino, s.fh));
        assert_eq!(
            slots,
            vec![
                Slot {
                    kind: Kind::Backing,
                    ino: 5,
                    fh: 11,
                    value: (3 << 32) | 2
                },
                Slot {
                    kind: Kind::CacheOwner,
                    ino: 6,
                    fh: 0,
                    value: 22
                },
                Slot {
                    kind: Kind::CacheOpen,
                    ino: 7,
                    fh: 33,
                    value: 4
                },
            ]
        );
        assert_eq!(again.index.lock().high, 3);
        // The successor writes on in the same file.
        again.remove(Kind::Backing, 5, 11);
        let (_, _, slots) = StateFile::open(s.fd().try_clone_to_owned().unwrap()).unwrap();
        assert_eq!(slots.len(), 2);
    }

    /// A corrupt slot is skipped, and a file of another format refused.
    #[test]
    fn corrupt_slots_and_other_formats_are_refused() {
        let s = StateFile::create(&negotiated()).unwrap();
        s.set(Kind::Backing, 5, 11, 1);
        s.set(Kind::Backing, 6, 12, 1);
        s.file.write_all_at(&[0xff], HEADER_BYTES + 9).unwrap();
        let (_, _, slots) = StateFile::open(s.fd().try_clone_to_owned().unwrap()).unwrap();
        assert_eq!(slots.len(), 1);
        assert_eq!(slots[0].ino, 6);
        s.file.write_all_at(&9u32.to_le_bytes(), 8).unwrap();
        let err = StateFile::open(s.fd().try_clone_to_owned().unwrap())
            .err()
            .unwrap();
        assert!(err.to_string().contains("format 9"), "{err}");
    }
}

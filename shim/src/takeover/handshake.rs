//! Route (a): a fuser session over a live connection, with fuser's public
//! API only. `Session::from_fd` always runs the INIT handshake, and the
//! kernel sends INIT once per connection. So the session is first built on
//! one end of a `SOCK_SEQPACKET` socketpair whose other end already holds a
//! synthetic INIT: the kernel's own offer, as recorded when the connection
//! was made. fuser answers it on the socket (we read that answer back: it is
//! what fuser would have told the kernel, and must be what the kernel was
//! told), then the real /dev/fuse fd is `dup2`ed onto the session's fd
//! number. fuser reads and writes that fd with plain read/write/writev and
//! clones nothing before `run()`, so from then on it serves the kernel.
//!
//! The same replay of the offer, made by the first shim right after its
//! real mount, gives the answer the kernel got: kept in the state, and a
//! successor whose fuser answers otherwise (another ABI minor, max_write,
//! flags) refuses to take over and says which field differs.

use std::io::{IoSlice, Read};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;

use anyhow::{Context, Result, bail};
use fuser::{Config, Filesystem, InitFlags, KernelConfig, Session, SessionACL, Version};
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};

const FUSE_INIT: u32 = 26;
const IN_HEADER_BYTES: usize = 40;
const OUT_HEADER_BYTES: usize = 16;
const SYNTHETIC_UNIQUE: u64 = 1;

/// What the kernel offered in its INIT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelOffer {
    pub major: u32,
    pub minor: u32,
    pub max_readahead: u32,
    pub capabilities: u64,
}

impl KernelOffer {
    /// Read from the handshake's `KernelConfig` (call from `init`; changes
    /// nothing in it).
    pub fn record(config: &mut KernelConfig) -> KernelOffer {
        let Version(major, minor) = config.kernel_abi();
        // The kernel's max_readahead is the ceiling set_max_readahead reports.
        let max_readahead = match config.set_max_readahead(u32::MAX) {
            Err(max) => max,
            Ok(previous) => {
                let _ = config.set_max_readahead(previous);
                u32::MAX
            }
        };
        KernelOffer {
            major,
            minor,
            max_readahead,
            capabilities: config.capabilities().bits(),
        }
    }

    /// Whether the kernel requeues requests a dead server had read
    /// (`FUSE_HAS_RESEND`, Linux 6.9).
    pub fn resend(&self) -> bool {
        InitFlags::from_bits_retain(self.capabilities).contains(InitFlags::FUSE_HAS_RESEND)
    }

    /// The offer as `fuse_init_in`.
    pub fn init_in(&self) -> [u8; 64] {
        let caps = self.capabilities | InitFlags::FUSE_INIT_EXT.bits();
        let mut b = [0u8; 64];
        b[0..4].copy_from_slice(&self.major.to_le_bytes());
        b[4..8].copy_from_slice(&self.minor.to_le_bytes());
        b[8..12].copy_from_slice(&self.max_readahead.to_le_bytes());
        b[12..16].copy_from_slice(&(caps as u32).to_le_bytes());
        b[16..20].copy_from_slice(&((caps >> 32) as u32).to_le_bytes());
        b
    }

    pub fn from_init_in(b: &[u8; 64]) -> KernelOffer {
        let u = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        KernelOffer {
            major: u(0),
            minor: u(4),
            max_readahead: u(8),
            capabilities: (u64::from(u(12)) | (u64::from(u(16)) << 32))
                & !InitFlags::FUSE_INIT_EXT.bits(),
        }
    }
}

/// The synthetic INIT request: `fuse_in_header` + `fuse_init_in`.
fn init_request(offer: &KernelOffer) -> Vec<u8> {
    let body = offer.init_in();
    let len = (IN_HEADER_BYTES + body.len()) as u32;
    let mut m = Vec::with_capacity(len as usize);
    m.extend_from_slice(&len.to_le_bytes());
    m.extend_from_slice(&FUSE_INIT.to_le_bytes());
    m.extend_from_slice(&SYNTHETIC_UNIQUE.to_le_bytes());
    m.extend_from_slice(&0u64.to_le_bytes()); // nodeid
    m.extend_from_slice(&nix::unistd::geteuid().as_raw().to_le_bytes());
    m.extend_from_slice(&nix::unistd::getegid().as_raw().to_le_bytes());
    m.extend_from_slice(&std::process::id().to_le_bytes());
    m.extend_from_slice(&0u32.to_le_bytes()); // padding
    m.extend_from_slice(&body);
    m
}

/// Builds a session for `fs` on a socketpair fed `offer` as its INIT, and
/// returns it with fuser's answer (`fuse_init_out`, 64 bytes, zero padded).
/// Every read is bounded: the socket is shut after the one INIT, so a
/// handshake that wanted another would fail at once instead of waiting.
pub fn replay<FS: Filesystem>(
    fs: FS,
    offer: &KernelOffer,
    acl: SessionACL,
    config: Config,
) -> Result<(Session<FS>, [u8; 64])> {
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .context("socketpair")?;
    let msg = init_request(offer);
    let n = nix::sys::socket::sendmsg::<()>(
        ours.as_raw_fd(),
        &[IoSlice::new(&msg)],
        &[],
        nix::sys::socket::MsgFlags::empty(),
        None,
    )
    .context("cannot write the synthetic INIT")?;
    if n != msg.len() {
        bail!("short write of the synthetic INIT ({n} of {})", msg.len());
    }
    nix::sys::socket::shutdown(ours.as_raw_fd(), nix::sys::socket::Shutdown::Write)
        .context("shutdown")?;
    let session =
        Session::from_fd(fs, theirs, acl, config).context("fuser refused the synthetic INIT")?;
    let mut reply = [0u8; 256];
    let mut sock = UnixStream::from(ours);
    sock.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
    let got = sock.read(&mut reply).context("no INIT answer from fuser")?;
    if got < OUT_HEADER_BYTES {
        bail!("fuser's INIT answer is {got} bytes");
    }
    let error = i32::from_le_bytes([reply[4], reply[5], reply[6], reply[7]]);
    if error != 0 {
        bail!("fuser answered the synthetic INIT with error {error}");
    }
    let mut out = [0u8; 64];
    let body = &reply[OUT_HEADER_BYTES..got];
    out[..body.len().min(64)].copy_from_slice(&body[..body.len().min(64)]);
    Ok((session, out))
}

/// Points `session` at the live connection `fuse` (which it consumes).
pub fn adopt<FS: Filesystem>(session: &Session<FS>, fuse: OwnedFd) -> Result<()> {
    let target = session.as_fd().as_raw_fd();
    // SAFETY: dup3 onto the session's own fd number, which it owns and
    // which no other thread uses yet (run() has not started); afterwards
    // that number names the /dev/fuse open file.
    let r = unsafe { libc::dup3(fuse.as_raw_fd(), target, libc::O_CLOEXEC) };
    if r < 0 {
        return Err(std::io::Error::last_os_error()).context("dup3 of the FUSE fd");
    }
    Ok(())
}

/// Names the fields in which two `fuse_init_out` answers differ.
pub fn differences(saved: &[u8; 64], ours: &[u8; 64]) -> Vec<String> {
    const FIELDS: &[(&str, usize, usize)] = &[
        ("major", 0, 4),
        ("minor", 4, 4),
        ("max_readahead", 8, 4),
        ("flags", 12, 4),
        ("max_background", 16, 2),
        ("congestion_threshold", 18, 2),
        ("max_write", 20, 4),
        ("time_gran", 24, 4),
        ("max_pages", 28, 2),
        ("flags2", 32, 4),
        ("max_stack_depth", 36, 4),
    ];
    let val = |b: &[u8; 64], at: usize, len: usize| {
        b[at..at + len]
            .iter()
            .rev()
            .fold(0u64, |v, x| (v << 8) | u64::from(*x))
    };
    let mut out: Vec<String> = FIELDS
        .iter()
        .filter(|(_, at, len)| val(saved, *at, *len) != val(ours, *at, *len))
        .map(|(name, at, len)| {
            format!(
                "{name}: connection {:#x}, this shim {:#x}",
                val(saved, *at, *len),
                val(ours, *at, *len)
            )
        })
        .collect();
    if out.is_empty() && saved != ours {
        out.push("reserved fields differ".into());
    }
    out
}

/// Writes FUSE_NOTIFY_RESEND: the kernel requeues every request a dead
/// server had read and not answered, with bit 63 set in its id.
pub fn notify_resend(fuse: impl AsFd) -> std::io::Result<()> {
    const FUSE_NOTIFY_RESEND: i32 = 7;
    let mut b = [0u8; 16];
    b[0..4].copy_from_slice(&16u32.to_le_bytes());
    b[4..8].copy_from_slice(&FUSE_NOTIFY_RESEND.to_le_bytes());
    let n = nix::unistd::write(fuse, &b)?;
    if n != b.len() {
        return Err(std::io::Error::other("short write of FUSE_NOTIFY_RESEND"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Probe;
    impl Filesystem for Probe {}

    /// Route (a) on its own: fuser takes the synthetic INIT over the
    /// socketpair and answers it with our version, the offer's flags that
    /// it wants and its max_write; a changed answer is named field by field.
    #[test]
    fn fuser_answers_a_synthetic_init_over_a_socketpair() {
        let offer = KernelOffer {
            major: 7,
            minor: 45,
            max_readahead: 128 * 1024,
            capabilities: (InitFlags::FUSE_ASYNC_READ
                | InitFlags::FUSE_BIG_WRITES
                | InitFlags::FUSE_MAX_PAGES
                | InitFlags::FUSE_HAS_RESEND)
                .bits(),
        };
        assert!(offer.resend());
        // Before Linux 6.9 there is no FUSE_HAS_RESEND: no takeover.
        let old_kernel = KernelOffer {
            capabilities: offer.capabilities & !InitFlags::FUSE_HAS_RESEND.bits(),
            ..offer
        };
        assert!(!old_kernel.resend());
        assert_eq!(KernelOffer::from_init_in(&offer.init_in()), offer);
        let (_session, out) = replay(Probe, &offer, SessionACL::Owner, Config::default()).unwrap();
        let u = |i: usize| u32::from_le_bytes([out[i], out[i + 1], out[i + 2], out[i + 3]]);
        assert_eq!(u(0), 7);
        assert!(u(4) >= 31 && u(4) <= 45, "minor {}", u(4));
        assert_eq!(u(8), 128 * 1024);
        assert!(u(20) >= 128 * 1024, "max_write {}", u(20));
        let flags = InitFlags::from_bits_retain(u64::from(u(12)) | (u64::from(u(32)) << 32));
        assert!(flags.contains(InitFlags::FUSE_ASYNC_READ), "{flags:?}");
        assert!(!flags.contains(InitFlags::FUSE_PASSTHROUGH));
        let mut other = out;
        other[20] ^= 1;
        let d = differences(&out, &other);
        assert_eq!(d.len(), 1);
        assert!(d[0].starts_with("max_write"), "{d:?}");
        assert!(differences(&out, &out).is_empty());
    }
}

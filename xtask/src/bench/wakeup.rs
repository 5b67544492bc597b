//! What a wakeup costs on this machine. Every FUSE request is a chain of them: the caller wakes
//! a shim thread, the shim the engine, the engine the shim's reader, the reader the caller. On a
//! virtual machine whose idle vCPUs halt (a KVM guest without halt polling), waking a thread on
//! the other vCPU costs a VM exit and an interrupt, tens of microseconds, while on one CPU or on
//! bare metal it costs a few. The walk and small-file rows are bounded by it, so each run
//! reports it beside them: a blocking pipe ping-pong between two threads on two CPUs and on one.
//!
//! `--guest-halt-poll-ns N` sets the guest's halt polling (`haltpoll` cpuidle driver) for the
//! run and puts the old value back after it, so a run can also show the rows on a machine whose
//! wakeups cost what they cost on hardware.

use std::fs;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Instant;

use anyhow::{Context, Result, bail};

/// The guest's halt-polling knob (`cpuidle_haltpoll`), when the kernel has it.
pub(super) const HALT_POLL_KNOB: &str = "/sys/module/haltpoll/parameters/guest_halt_poll_ns";
/// Round trips per measurement.
const ROUND_TRIPS: u32 = 20_000;

/// The halt-polling knob's value now, if there is one.
pub(super) fn halt_poll_ns() -> Option<u64> {
    fs::read_to_string(HALT_POLL_KNOB)
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

/// Puts the halt-polling knob back when dropped.
pub(super) struct HaltPoll(u64);

impl HaltPoll {
    /// Sets the knob to `ns` for the life of the guard.
    pub(super) fn set(ns: u64) -> Result<HaltPoll> {
        let Some(old) = halt_poll_ns() else {
            bail!("{HALT_POLL_KNOB} is missing: this kernel has no guest halt polling");
        };
        fs::write(HALT_POLL_KNOB, ns.to_string())
            .with_context(|| format!("setting {HALT_POLL_KNOB} to {ns} (needs root)"))?;
        Ok(HaltPoll(old))
    }
}

impl Drop for HaltPoll {
    fn drop(&mut self) {
        if let Err(e) = fs::write(HALT_POLL_KNOB, self.0.to_string()) {
            eprintln!(
                "bench: could not put {HALT_POLL_KNOB} back to {}: {e}",
                self.0
            );
        }
    }
}

/// One blocking round trip between two threads, in microseconds: (on two CPUs, on one CPU).
/// `None` for a case this machine cannot pin (one CPU, or affinity refused).
/// The first two CPUs this thread may run on are used.
pub(super) fn wakeup_round_trip_us() -> (Option<f64>, Option<f64>) {
    let cpus = allowed_cpus();
    let across = match cpus[..] {
        [a, b, ..] => ping_pong(a, b),
        _ => None,
    };
    (across, cpus.first().and_then(|&a| ping_pong(a, a)))
}

/// The CPUs the calling thread may run on.
fn allowed_cpus() -> Vec<usize> {
    let Some(set) = affinity() else {
        return Vec::new();
    };
    (0..libc::CPU_SETSIZE as usize)
        // SAFETY: CPU_ISSET reads within the set for cpu < CPU_SETSIZE.
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect()
}

/// A pipe: (read end, write end).
fn pipe() -> Option<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 writes two fds into the array on success; each is owned once.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return None;
    }
    // SAFETY: both fds were just opened by pipe2 and nothing else owns them.
    Some(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// The calling thread's CPU set, to put back.
fn affinity() -> Option<libc::cpu_set_t> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity fills it for this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        (libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) == 0)
            .then_some(set)
    }
}

fn set_affinity(set: &libc::cpu_set_t) -> bool {
    // SAFETY: a valid cpu_set_t of the size given, for this thread.
    unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), set) == 0 }
}

/// Pins the calling thread to `cpu`.
fn pin(cpu: usize) -> bool {
    // SAFETY: cpu_set_t is plain data; CPU_SET stays within it for cpu < CPU_SETSIZE.
    let set = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if cpu >= libc::CPU_SETSIZE as usize {
            return false;
        }
        libc::CPU_SET(cpu, &mut set);
        set
    };
    set_affinity(&set)
}

/// Writes one byte to `fd`.
fn put(fd: &OwnedFd, b: u8) -> bool {
    // SAFETY: writes one byte from a valid buffer to an open fd.
    unsafe { libc::write(fd.as_raw_fd(), (&raw const b).cast(), 1) == 1 }
}

/// Reads one byte from `fd` (blocking).
fn take(fd: &OwnedFd) -> Option<u8> {
    let mut b = 0u8;
    // SAFETY: reads at most one byte into a valid buffer from an open fd.
    (unsafe { libc::read(fd.as_raw_fd(), (&raw mut b).cast(), 1) } == 1).then_some(b)
}

/// The mean round trip of `ROUND_TRIPS` one-byte pipe ping-pongs, this thread on `a`, the
/// partner on `b`.
fn ping_pong(a: usize, b: usize) -> Option<f64> {
    let (to_partner_r, to_partner_w) = pipe()?;
    let (back_r, back_w) = pipe()?;
    let partner = std::thread::spawn(move || {
        if !pin(b) {
            return false;
        }
        (0..ROUND_TRIPS).all(|_| take(&to_partner_r).is_some_and(|x| put(&back_w, x)))
    });
    let restore = affinity();
    let mut ok = pin(a);
    let start = Instant::now();
    for i in 0..ROUND_TRIPS {
        if !ok {
            break;
        }
        ok = put(&to_partner_w, i as u8) && take(&back_r) == Some(i as u8);
    }
    let took = start.elapsed();
    // A failed side stops the other: closing our ends ends its reads and writes.
    drop(to_partner_w);
    drop(back_r);
    let partner_ok = partner.join().unwrap_or(false);
    if let Some(set) = restore {
        set_affinity(&set);
    }
    (ok && partner_ok).then(|| took.as_secs_f64() * 1e6 / f64::from(ROUND_TRIPS))
}

/// The machine line's part about wakeups.
pub(super) fn describe() -> String {
    let (across, one) = wakeup_round_trip_us();
    let us = |v: Option<f64>| v.map_or("n/a".into(), |v| format!("{v:.1} us"));
    let poll = match halt_poll_ns() {
        Some(ns) => format!("; guest halt polling (`{HALT_POLL_KNOB}`) {ns} ns"),
        None => String::new(),
    };
    format!(
        "wakeup round trip (blocking pipe ping-pong between two threads) {} across two CPUs, {} \
         on one{poll}",
        us(across),
        us(one)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ping-pong measures something on any machine: a positive round trip on one CPU (and
    /// across two where there are two), and it leaves the thread's CPU set as it found it.
    #[test]
    fn a_wakeup_round_trip_is_measured_and_the_affinity_restored() {
        let before = allowed_cpus();
        let (across, one) = wakeup_round_trip_us();
        assert!(one.is_some_and(|us| us > 0.0), "{one:?}");
        if before.len() >= 2 {
            assert!(across.is_some_and(|us| us > 0.0), "{across:?}");
        }
        assert_eq!(allowed_cpus(), before);
    }
}

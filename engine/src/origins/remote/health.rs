//! The health of one remote origin: Ready → Degraded → Offline, driven by
//! the outcome of its requests and of the health checks (seed 4.1, 4.2.2,
//! 4.2.3). A failed request or check makes a Ready origin Degraded; three
//! failed checks in a row make it Offline; one good check makes it Ready.
//! Re-checks back off (2 s doubling to 60 s) while it is Offline; a DNS
//! failure keeps it Degraded with the fastest re-check (seed 4.2.5: a
//! resolver hiccup is not an outage).

use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Where an origin stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Ready,
    Degraded,
    Offline,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Ready => "ready",
            State::Degraded => "degraded",
            State::Offline => "offline",
        }
    }
}

/// Failed checks in a row that make an origin Offline.
const OFFLINE_AFTER: u32 = 3;
/// The re-check interval of a Degraded origin, and the bounds of an
/// Offline one's backoff.
const RECHECK_FAST: Duration = Duration::from_secs(2);
const RECHECK_MAX: Duration = Duration::from_secs(60);

#[derive(Debug)]
struct Inner {
    state: State,
    failed_checks: u32,
    last_error: Option<String>,
    next_check: Instant,
    backoff: Duration,
}

/// One origin's health (shared by the data plane, the syncer and the
/// checker).
#[derive(Debug)]
pub struct Health(Mutex<Inner>);

impl Default for Health {
    fn default() -> Self {
        Health(Mutex::new(Inner {
            state: State::Ready,
            failed_checks: 0,
            last_error: None,
            next_check: Instant::now(),
            backoff: RECHECK_FAST,
        }))
    }
}

/// What a change of state was, for the log and the events.
pub type Transition = Option<(State, State)>;

impl Health {
    pub fn state(&self) -> State {
        self.0.lock().state
    }

    /// The last error, if the origin is not Ready.
    pub fn last_error(&self) -> Option<String> {
        let g = self.0.lock();
        (g.state != State::Ready)
            .then(|| g.last_error.clone())
            .flatten()
    }

    /// A request succeeded.
    pub fn request_ok(&self) -> Transition {
        let mut g = self.0.lock();
        let before = g.state;
        if before == State::Degraded && g.failed_checks == 0 {
            g.state = State::Ready;
            g.last_error = None;
        }
        (before != g.state).then_some((before, g.state))
    }

    /// A request failed (an error or a missed deadline).
    pub fn request_failed(&self, why: &str) -> Transition {
        let mut g = self.0.lock();
        let before = g.state;
        if before == State::Ready {
            g.state = State::Degraded;
            g.next_check = Instant::now();
        }
        g.last_error = Some(why.to_string());
        (before != g.state).then_some((before, g.state))
    }

    /// Whether a health check is due now.
    pub fn check_due(&self, now: Instant) -> bool {
        let g = self.0.lock();
        g.state != State::Ready && now >= g.next_check
    }

    /// A health check's outcome; `dns`: it failed resolving the name.
    pub fn checked(&self, outcome: Result<(), (String, bool)>, now: Instant) -> Transition {
        let mut g = self.0.lock();
        let before = g.state;
        match outcome {
            Ok(()) => {
                g.state = State::Ready;
                g.failed_checks = 0;
                g.last_error = None;
                g.backoff = RECHECK_FAST;
                g.next_check = now + RECHECK_FAST;
            }
            Err((why, dns)) => {
                g.failed_checks = g.failed_checks.saturating_add(1);
                g.last_error = Some(why);
                if dns {
                    g.state = State::Degraded;
                    g.backoff = RECHECK_FAST;
                } else if g.failed_checks >= OFFLINE_AFTER {
                    g.state = State::Offline;
                    g.backoff = (g.backoff * 2).min(RECHECK_MAX);
                } else {
                    g.state = State::Degraded;
                }
                g.next_check = now + g.backoff;
            }
        }
        (before != g.state).then_some((before, g.state))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fail(h: &Health, dns: bool, now: Instant) -> Transition {
        h.checked(Err(("down".into(), dns)), now)
    }

    #[test]
    fn ready_degraded_offline_and_back() {
        let h = Health::default();
        let t = Instant::now();
        assert_eq!(h.state(), State::Ready);
        assert_eq!(
            h.request_failed("timeout"),
            Some((State::Ready, State::Degraded))
        );
        assert!(h.check_due(t + Duration::from_millis(1)));
        fail(&h, false, t);
        fail(&h, false, t);
        assert_eq!(fail(&h, false, t), Some((State::Degraded, State::Offline)));
        assert!(
            !h.check_due(t + Duration::from_secs(1)),
            "offline backs off"
        );
        assert_eq!(h.last_error().as_deref(), Some("down"));
        // Requests alone do not bring an origin back: a check does.
        assert_eq!(h.request_ok(), None);
        assert_eq!(h.checked(Ok(()), t), Some((State::Offline, State::Ready)));
        assert_eq!(h.last_error(), None);
    }

    #[test]
    fn dns_failure_is_degraded_with_fast_recheck() {
        let h = Health::default();
        let t = Instant::now();
        for _ in 0..10 {
            fail(&h, true, t);
        }
        assert_eq!(h.state(), State::Degraded);
        assert!(h.check_due(t + RECHECK_FAST));
    }
}

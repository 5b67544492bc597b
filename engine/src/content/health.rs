//! The cache disk's health, after JuiceFS: normal → unstable after 3 I/O
//! errors within a minute → back to normal after 60 good operations with no
//! error in the last minute → down after 30 minutes unstable. Unstable and
//! down bypass the cache (reads go to the origins); probes keep running so
//! that a disk that heals is used again.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How the cache disk is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Normal,
    Unstable,
    Down,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Normal => "normal",
            State::Unstable => "unstable",
            State::Down => "down",
        }
    }
}

const ERRORS_TO_UNSTABLE: usize = 3;
const GOOD_OPS_TO_NORMAL: u32 = 60;
const UNSTABLE_TO_DOWN: Duration = Duration::from_secs(30 * 60);

/// What changed, for one log line and one event.
#[derive(Debug, PartialEq, Eq)]
pub enum Transition {
    None,
    Bypassed,
    Restored,
    Down,
}

#[derive(Debug)]
pub struct Health {
    pub state: State,
    errors: VecDeque<Instant>,
    /// Errors older than this are forgotten (a minute at the default probe
    /// interval of 500 ms: 120 probes).
    window: Duration,
    good_ops: u32,
    unstable_since: Option<Instant>,
    /// The last error, while bypassed.
    pub reason: String,
    /// When the state last changed (ms since the epoch).
    pub since_ms: u64,
}

impl Health {
    /// A healthy disk probed every `probe_interval`.
    pub fn new(probe_interval: Duration) -> Health {
        Health {
            state: State::Normal,
            errors: VecDeque::new(),
            window: probe_interval * 120,
            good_ops: 0,
            unstable_since: None,
            reason: String::new(),
            since_ms: crate::sys::time::now_ms(),
        }
    }
}

impl Health {
    /// Whether the cache may be used.
    pub fn usable(&self) -> bool {
        self.state == State::Normal
    }

    /// Bypassed at once (the cache cannot be opened at all).
    pub fn bypass_now(&mut self, reason: String) -> Transition {
        self.reason = reason;
        self.good_ops = 0;
        self.errors.clear();
        self.errors.push_back(Instant::now());
        if self.state == State::Normal {
            self.enter(State::Unstable);
            return Transition::Bypassed;
        }
        Transition::None
    }

    fn enter(&mut self, state: State) {
        self.state = state;
        self.since_ms = crate::sys::time::now_ms();
        self.unstable_since = (state == State::Unstable).then(Instant::now);
    }

    fn prune(&mut self, now: Instant) {
        while self
            .errors
            .front()
            .is_some_and(|t| now.duration_since(*t) > self.window)
        {
            self.errors.pop_front();
        }
    }

    /// An I/O error of the cache disk.
    pub fn error(&mut self, reason: String) -> Transition {
        let now = Instant::now();
        self.prune(now);
        self.errors.push_back(now);
        self.good_ops = 0;
        self.reason = reason;
        if self.state == State::Normal && self.errors.len() >= ERRORS_TO_UNSTABLE {
            self.enter(State::Unstable);
            return Transition::Bypassed;
        }
        Transition::None
    }

    /// A good operation (a probe that wrote, synced, read and removed).
    pub fn ok(&mut self) -> Transition {
        let now = Instant::now();
        self.prune(now);
        if self.state == State::Normal {
            return Transition::None;
        }
        self.good_ops = self.good_ops.saturating_add(1);
        if self.good_ops >= GOOD_OPS_TO_NORMAL && self.errors.is_empty() {
            self.enter(State::Normal);
            self.reason.clear();
            return Transition::Restored;
        }
        Transition::None
    }

    /// Time passing: unstable for too long is down.
    pub fn tick(&mut self) -> Transition {
        if self.state == State::Unstable
            && self
                .unstable_since
                .is_some_and(|t| t.elapsed() >= UNSTABLE_TO_DOWN)
        {
            self.enter(State::Down);
            return Transition::Down;
        }
        Transition::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_errors_bypass_and_sixty_good_operations_restore() {
        let mut h = Health::new(Duration::from_millis(500));
        assert_eq!(h.error("EROFS".into()), Transition::None);
        assert_eq!(h.error("EROFS".into()), Transition::None);
        assert!(h.usable());
        assert_eq!(h.error("EROFS".into()), Transition::Bypassed);
        assert!(!h.usable());
        // Errors in the last minute keep it unstable however many probes pass.
        for _ in 0..100 {
            assert_eq!(h.ok(), Transition::None);
        }
        // Once the errors are out of the window, the good operations count.
        h.errors.clear();
        assert_eq!(h.ok(), Transition::Restored);
        // Fresh errors: 60 good operations are needed again.
        for _ in 0..3 {
            h.error("EIO".into());
        }
        h.errors.clear();
        for _ in 0..GOOD_OPS_TO_NORMAL - 1 {
            assert_eq!(h.ok(), Transition::None);
        }
        assert_eq!(h.ok(), Transition::Restored);
        assert!(h.usable() && h.reason.is_empty());
        h.bypass_now("gone".into());
        h.unstable_since = Some(Instant::now() - UNSTABLE_TO_DOWN);
        assert_eq!(h.tick(), Transition::Down);
        assert_eq!(h.state, State::Down);
    }
}

//! How fast a dead engine is restarted.

use std::time::{Duration, Instant};

/// Restart policy. An engine that never answered a heartbeat is a crash
/// loop: immediate, then 250 ms doubling to 10 s. An engine that served is
/// restarted at once, unless restarts pile up (more than 30 in a minute: a
/// request that kills every engine it reaches), which grows the delay the
/// same way. An engine that ran for a healthy minute resets everything.
#[derive(Default)]
pub(super) struct Backoff {
    failures: u32,
    recent: std::collections::VecDeque<Instant>,
}

const RESTARTS_PER_MINUTE_BEFORE_BACKOFF: usize = 30;

impl Backoff {
    pub(super) fn next(&mut self, uptime: Duration, was_healthy: bool) -> Duration {
        let now = Instant::now();
        if uptime >= Duration::from_secs(60) {
            self.failures = 0;
            self.recent.clear();
        }
        while self
            .recent
            .front()
            .is_some_and(|t| now.duration_since(*t) > Duration::from_secs(60))
        {
            self.recent.pop_front();
        }
        self.recent.push_back(now);
        if was_healthy {
            self.failures = 0;
        }
        let excess = self
            .recent
            .len()
            .saturating_sub(RESTARTS_PER_MINUTE_BEFORE_BACKOFF) as u32;
        let n = self.failures.max(excess);
        if !was_healthy {
            self.failures = self.failures.saturating_add(1);
        }
        match n {
            0 => Duration::ZERO,
            n => (Duration::from_millis(250) * 2u32.saturating_pow(n - 1))
                .min(Duration::from_secs(10)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crash_loop_backs_off_and_a_healthy_minute_resets() {
        let mut b = Backoff::default();
        let short = Duration::from_secs(1);
        let delays: Vec<u128> = (0..8).map(|_| b.next(short, false).as_millis()).collect();
        assert_eq!(delays, [0, 250, 500, 1000, 2000, 4000, 8000, 10000]);
        assert_eq!(b.next(Duration::from_secs(61), false), Duration::ZERO);
        assert_eq!(b.next(short, false), Duration::from_millis(250));
    }

    #[test]
    fn engines_that_served_restart_at_once_until_restarts_pile_up() {
        let mut b = Backoff::default();
        let short = Duration::from_millis(500);
        for _ in 0..RESTARTS_PER_MINUTE_BEFORE_BACKOFF {
            assert_eq!(b.next(short, true), Duration::ZERO);
        }
        assert_eq!(b.next(short, true), Duration::from_millis(250));
        assert_eq!(b.next(short, true), Duration::from_millis(500));
    }
}

//! The first scan's progress on a terminal: `musicfs mount` reads what the
//! engine writes to `first-scan.progress` (files found so far, files read)
//! and draws a bar over one line of stderr until the engine serves.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::config::state::first_scan_progress_file;

pub(super) struct FirstScan {
    file: PathBuf,
    tty: bool,
    last: Instant,
    drawn: bool,
    started: Instant,
}

impl FirstScan {
    pub(super) fn new(state_dir: &Path) -> FirstScan {
        FirstScan {
            file: first_scan_progress_file(state_dir),
            tty: std::io::stderr().is_terminal(),
            // The first update draws at once.
            last: Instant::now() - Duration::from_secs(1),
            drawn: false,
            started: Instant::now(),
        }
    }

    /// Draws the bar (at most 5 times a second); `done`: the engine serves,
    /// the line is cleared.
    pub(super) fn update(&mut self, done: bool) {
        if !self.tty {
            if done {
                let _ = std::fs::remove_file(&self.file);
            }
            return;
        }
        if done {
            // The last figures (a fast scan may have drawn none), then the
            // line cleared.
            if self.draw() || self.drawn {
                eprint!("\r\x1b[2K");
                let _ = std::io::stderr().flush();
                self.drawn = false;
            }
            let _ = std::fs::remove_file(&self.file);
            return;
        }
        if self.last.elapsed() >= Duration::from_millis(200) && self.draw() {
            self.last = Instant::now();
        }
    }

    /// Draws what the progress file says; false if there is nothing yet.
    fn draw(&mut self) -> bool {
        let Some((found, probed)) = std::fs::read_to_string(&self.file).ok().and_then(|t| {
            let mut it = t.split_whitespace().map(|w| w.parse::<u64>().ok());
            Some((it.next()??, it.next()??))
        }) else {
            return false;
        };
        eprint!("\r\x1b[2K{}", line(found, probed, self.started.elapsed()));
        let _ = std::io::stderr().flush();
        self.drawn = true;
        true
    }
}

/// `scanning [#####     ] 1200/2400 files read (found so far), 600/s`.
fn line(found: u64, probed: u64, elapsed: Duration) -> String {
    const WIDTH: u64 = 30;
    let filled = (probed * WIDTH).checked_div(found).unwrap_or(0).min(WIDTH);
    let rate = probed as f64 / elapsed.as_secs_f64().max(0.001);
    format!(
        "scanning [{}{}] {probed}/{found} files read (found so far), {rate:.0}/s",
        "#".repeat(filled as usize),
        " ".repeat((WIDTH - filled) as usize)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bar_fills_with_the_files_read() {
        let l = line(100, 50, Duration::from_secs(1));
        assert!(
            l.contains(&format!("[{}{}]", "#".repeat(15), " ".repeat(15))),
            "{l}"
        );
        assert!(l.contains("50/100 files") && l.contains("50/s"), "{l}");
        assert!(line(0, 0, Duration::ZERO).contains("0/0"));
    }
}

//! Reading the log file of the `musicfs mount` runs.

use std::fs;
use std::path::Path;

/// The current length of a log file (0 if it cannot be read).
pub(super) fn log_len(path: &Path) -> u64 {
    fs::metadata(path).map_or(0, |m| m.len())
}

/// What a log file got after `offset` bytes.
pub(super) fn log_since(path: &Path, offset: u64) -> String {
    let bytes = fs::read(path).unwrap_or_default();
    let from = usize::try_from(offset)
        .unwrap_or(usize::MAX)
        .min(bytes.len());
    String::from_utf8_lossy(&bytes[from..]).into_owned()
}

/// The number in `key=N` of a tracing log line.
pub(super) fn log_field(line: &str, key: &str) -> Option<u64> {
    line.split_whitespace().find_map(|w| {
        w.strip_prefix(key)?
            .strip_prefix('=')?
            .trim_matches('"')
            .parse()
            .ok()
    })
}

pub(super) fn log_tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

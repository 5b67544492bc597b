//! Logging to stderr (journald under systemd) with a filter that a reload can
//! change at run time (`log_level`). lofty's own lines (target `lofty`) are
//! capped at `error` unless the filter names `lofty`: the engine logs one
//! warning per unreadable file itself.

use std::sync::OnceLock;

use anyhow::{Result, bail};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, reload};

static FILTER: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

/// Starts logging with `MUSICFS_LOG` if set, else `level`.
pub fn init(level: &str) {
    let filter = std::env::var("MUSICFS_LOG").unwrap_or_else(|_| level.to_string());
    let filter = EnvFilter::try_new(filter_string(&filter))
        .unwrap_or_else(|_| EnvFilter::new(filter_string("info")));
    let (layer, handle) = reload::Layer::new(filter);
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if tracing_subscriber::registry()
        .with(layer)
        .with(fmt)
        .try_init()
        .is_ok()
    {
        let _ = FILTER.set(handle);
    }
}

/// Checks that `level` is a valid filter (`info`, `debug`,
/// `musicfs_engine=debug,info`, ...).
pub fn validate(level: &str) -> Result<()> {
    if let Err(e) = EnvFilter::try_new(level) {
        bail!("log_level {level:?} is not a valid filter: {e}");
    }
    Ok(())
}

/// Replaces the filter (reload).
pub fn set_level(level: &str) -> Result<()> {
    validate(level)?;
    let Some(handle) = FILTER.get() else {
        bail!("logging was not started by musicfs");
    };
    handle.reload(EnvFilter::new(filter_string(level)))?;
    Ok(())
}

/// The filter in force for `level`: `level` with `lofty=error` added,
/// unless one of its directives names `lofty` (or a module of it).
pub fn filter_string(level: &str) -> String {
    let names_lofty = level.split(',').any(|directive| {
        let target = directive
            .split(['=', '['])
            .next()
            .unwrap_or_default()
            .trim();
        target == "lofty" || target.starts_with("lofty::")
    });
    let level = level.trim().trim_end_matches(',');
    match (names_lofty, level.is_empty()) {
        (true, _) => level.to_string(),
        (false, true) => "lofty=error".to_string(),
        (false, false) => format!("{level},lofty=error"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lofty_is_capped_at_error_unless_named() {
        assert_eq!(filter_string("info"), "info,lofty=error");
        assert_eq!(filter_string("debug"), "debug,lofty=error");
        assert_eq!(
            filter_string("musicfs_engine=debug,info"),
            "musicfs_engine=debug,info,lofty=error"
        );
        assert_eq!(filter_string(""), "lofty=error");
        // Named explicitly: the user's word stands.
        assert_eq!(filter_string("info,lofty=warn"), "info,lofty=warn");
        assert_eq!(filter_string("lofty=trace"), "lofty=trace");
        assert_eq!(filter_string("lofty"), "lofty");
        assert_eq!(
            filter_string("info,lofty::id3=debug"),
            "info,lofty::id3=debug"
        );
        // Not lofty: another crate whose name starts the same way.
        assert_eq!(
            filter_string("loftyish=debug"),
            "loftyish=debug,lofty=error"
        );
        for level in ["info", "debug,lofty=warn", "", "musicfs_engine=debug,info"] {
            assert!(EnvFilter::try_new(filter_string(level)).is_ok(), "{level}");
        }
    }

    /// What the filter lets through, with events of lofty and of ours.
    fn logged(level: &str) -> String {
        use std::sync::{Arc, Mutex};
        let out = Arc::new(Mutex::new(Vec::<u8>::new()));
        let sink = out.clone();
        let fmt = tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .with_writer(move || Writer(sink.clone()));
        let subscriber = tracing_subscriber::registry()
            .with(EnvFilter::new(filter_string(level)))
            .with(fmt);
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(target: "lofty::id3::v2::read", "lofty warns");
            tracing::error!(target: "lofty::flac", "lofty errs");
            tracing::warn!(target: "musicfs_engine::scan", "unreadable tags");
        });
        let bytes = out.lock().map(|b| b.clone()).unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    struct Writer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Writer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if let Ok(mut b) = self.0.lock() {
                b.extend_from_slice(buf);
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lofty_warnings_do_not_reach_the_log() {
        let out = logged("info");
        assert!(!out.contains("lofty warns"), "{out}");
        assert!(out.contains("lofty errs"), "{out}");
        assert!(out.contains("unreadable tags"), "{out}");
        let out = logged("warn,lofty=warn");
        assert!(out.contains("lofty warns"), "{out}");
    }
}

//! Configuration, layered with figment: built-in defaults <
//! `/etc/musicfs/config.toml` < `$XDG_CONFIG_HOME/musicfs/config.toml`
//! (`~/.config/...`) < an explicit `--config FILE` < `MUSICFS_*` environment <
//! command-line flags.
//!
//! Plain values and their validation; defaults that belong to a subsystem
//! live in `defaults`, the state directory's layout in `state`, what a
//! reload compares in `reload`. Probing origins is the origins room's job.
//! May use: model (to validate the template).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

use crate::model::template::{DEFAULT_TEMPLATE, Template};

pub mod defaults;
pub mod notify;
pub mod reload;
pub mod state;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where the library is mounted.
    pub mountpoint: Option<PathBuf>,
    /// Origin directories, in priority order.
    pub origins: Vec<PathBuf>,
    /// Path template (see the `template` module for the syntax).
    pub template: String,
    /// Where the catalog and the engine socket live. Default:
    /// `$XDG_STATE_HOME/musicfs/<mountpoint, escaped>` (`~/.local/state/...`).
    pub state_dir: Option<PathBuf>,
    /// Let other users see the mount (FUSE `allow_other`).
    pub allow_other: bool,
    /// Log filter, e.g. "info" or "musicfs_engine=debug".
    pub log_level: String,
    /// Scan worker threads (0 = two per core).
    pub scan_threads: usize,
    /// How long the kernel may cache names and attributes, in milliseconds.
    /// The engine tells the kernel of every change, so this may be long.
    pub entry_ttl_ms: u32,
    /// How long the kernel may remember that a name does not exist, in
    /// milliseconds (0: not at all). A name that appears is pushed at once.
    pub negative_ttl_ms: u32,
    /// Deadline for one request from the shim to the engine, in milliseconds.
    pub engine_wait_timeout_ms: u64,
    /// Let the kernel read local origin files directly (FUSE passthrough,
    /// Linux >= 6.9, needs CAP_SYS_ADMIN); falls back by itself when unavailable.
    pub passthrough: bool,
    /// How origins are followed: "auto" (inotify for local filesystems,
    /// polling for network ones), "inotify", "poll" or "off".
    pub watch: String,
    /// Quiet time after a change before it is applied, in milliseconds.
    pub debounce_ms: u64,
    /// Polling interval for origins on network filesystems, in seconds.
    pub poll_interval_s: u64,
    /// Files probed per scan checkpoint (one catalog commit each).
    pub checkpoint_files: usize,
    /// How often `musicfs mount` checks that the engine answers (ms).
    pub heartbeat_interval_ms: u64,
    /// An engine that does not answer a heartbeat within this is hung: it is
    /// killed and replaced (ms).
    pub heartbeat_timeout_ms: u64,
    /// On SIGTERM or `musicfs shutdown`: how long requests in flight and
    /// background tasks get to finish before the processes exit (ms).
    pub drain_timeout_ms: u64,
    /// Directory entries the engine keeps in its listing cache, in total
    /// (hot: a reload shrinks or grows it at once).
    pub listing_cache_entries: usize,
    /// Origin files the engine keeps open for reads through it (hot).
    pub open_files_max: usize,
    /// Extensions of the files listed, without the dot (case does not
    /// matter). Hot: a reload rescans the origins with the new list.
    pub audio_extensions: Vec<String>,
    /// Where the chunk cache for network origins lives. Default:
    /// `/var/cache/musicfs/<mountpoint, escaped>` for root, else
    /// `$XDG_CACHE_HOME/musicfs/<mountpoint, escaped>` (`~/.cache/...`).
    pub cache_dir: Option<PathBuf>,
    /// The most bytes of chunks the cache keeps (hot).
    pub cache_max_bytes: u64,
    /// Eviction starts when the cache disk has less free space than this
    /// percentage; at half of it no more chunks are written (hot).
    pub cache_min_free_percent: u32,
    /// A deadline for reads and opens of files of cached origins that must
    /// go to the origin (ms): past it the caller gets EIO.
    pub cache_fetch_timeout_ms: u64,
    /// Chunks the scrubber checks per hour (0: no scrubber).
    pub cache_scrub_chunks_per_hour: u64,
    /// Settings of single origins, by origin directory as written in
    /// `origins`: `[origin."/mnt/nas/music"] cache = true`.
    pub origin: std::collections::BTreeMap<PathBuf, OriginSettings>,
    /// Each album directory holds a `cover.<ext>`, from a folder image or an
    /// embedded front cover (applied at restart).
    pub cover_art: bool,
    /// Tracks after the one opened whose heads are fetched into the chunk
    /// cache in the background (cached origins only; 0: no prefetch; hot).
    pub prefetch_tracks: usize,
    /// The change feed for media servers (`[notify]`; applied at restart).
    pub notify: notify::NotifyConfig,
    /// The most entries a search directory, collection or playlist lists
    /// (hot).
    pub search_max_results: usize,
    /// Saved searches, name -> query (tantivy's syntax): each is
    /// `/.collections/<name>/` and `/.playlists/<name>.m3u8` (hot).
    pub collections: std::collections::BTreeMap<String, String>,
}

/// The environment variable that carries the per-origin settings (JSON).
pub const ORIGIN_SETTINGS_ENV: &str = "MUSICFS_ORIGIN_SETTINGS";
/// The environment variable that carries the `[collections]` table (JSON).
pub const COLLECTIONS_ENV: &str = "MUSICFS_COLLECTIONS";

/// Settings of one origin.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OriginSettings {
    /// Read through the chunk cache (`true`), or never (`false`). Unset:
    /// origins on network filesystems (NFS, SMB, sshfs, any FUSE) are
    /// cached, local disks are not (they keep passthrough).
    pub cache: Option<bool>,
    /// How often a remote origin (S3, WebDAV) is listed, in seconds
    /// (default: `poll_interval_s`).
    pub poll_interval_s: Option<u64>,
    /// A remote origin's first-byte deadline for a read (ms; default 1000).
    pub first_byte_timeout_ms: Option<u64>,
    /// A remote origin's deadline for a whole request (ms; default 10000).
    pub request_timeout_ms: Option<u64>,
    /// Connections to a remote origin at most (default 8).
    pub connections: Option<usize>,
    /// S3: files holding the access key id and the secret key (else the
    /// standard `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` variables).
    pub access_key_id_file: Option<PathBuf>,
    pub secret_access_key_file: Option<PathBuf>,
    /// WebDAV: the user, and a file holding the password.
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
    /// Which copy of a file held by several origins is read first (lower
    /// first; default: the origin's place in `origins`).
    pub priority: Option<u32>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            mountpoint: None,
            origins: Vec::new(),
            template: DEFAULT_TEMPLATE.to_string(),
            state_dir: None,
            allow_other: false,
            log_level: "info".to_string(),
            scan_threads: 0,
            entry_ttl_ms: defaults::KERNEL_TTL_MS,
            negative_ttl_ms: defaults::KERNEL_TTL_MS,
            engine_wait_timeout_ms: 30_000,
            passthrough: true,
            watch: "auto".to_string(),
            debounce_ms: 300,
            poll_interval_s: 300,
            checkpoint_files: 1000,
            heartbeat_interval_ms: 1000,
            heartbeat_timeout_ms: 5000,
            drain_timeout_ms: 5000,
            listing_cache_entries: defaults::LISTING_CACHE_ENTRIES,
            open_files_max: defaults::OPEN_FILES_MAX,
            audio_extensions: defaults::AUDIO_EXTENSIONS
                .iter()
                .map(|e| e.to_string())
                .collect(),
            cache_dir: None,
            cache_max_bytes: defaults::CACHE_MAX_BYTES,
            cache_min_free_percent: 10,
            cache_fetch_timeout_ms: 10_000,
            cache_scrub_chunks_per_hour: 3600,
            origin: std::collections::BTreeMap::new(),
            cover_art: true,
            prefetch_tracks: 2,
            notify: notify::NotifyConfig::default(),
            search_max_results: defaults::SEARCH_MAX_RESULTS,
            collections: std::collections::BTreeMap::new(),
        }
    }
}

/// Values given on the command line; `None` means "not given".
#[derive(Clone, Debug, Default, Serialize)]
pub struct Overrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mountpoint: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub origins: Option<Vec<PathBuf>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_dir: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow_other: Option<bool>,
}

fn home() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
}

fn xdg(var: &str, fallback: &str) -> Option<PathBuf> {
    std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| home().map(|h| h.join(fallback)))
}

impl Config {
    /// Loads the layered configuration.
    pub fn load(explicit_file: Option<&Path>, overrides: &Overrides) -> Result<Config> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::file("/etc/musicfs/config.toml"));
        if let Some(dir) = xdg("XDG_CONFIG_HOME", ".config") {
            fig = fig.merge(Toml::file(dir.join("musicfs/config.toml")));
        }
        if let Some(file) = explicit_file {
            if !file.is_file() {
                bail!("config file {} does not exist", file.display());
            }
            fig = fig.merge(Toml::file(file));
        }
        // Only the keys of this struct: other MUSICFS_* variables (MUSICFS_LOG,
        // MUSICFS_SHIM, test harness settings) are not configuration.
        // MUSICFS_ORIGINS is a ':'-separated list, like PATH (or one per
        // line, for URLs).
        let env = Env::prefixed("MUSICFS_").only(&[
            "mountpoint",
            "template",
            "state_dir",
            "allow_other",
            "log_level",
            "scan_threads",
            "entry_ttl_ms",
            "negative_ttl_ms",
            "engine_wait_timeout_ms",
            "passthrough",
            "watch",
            "debounce_ms",
            "poll_interval_s",
            "checkpoint_files",
            "heartbeat_interval_ms",
            "heartbeat_timeout_ms",
            "drain_timeout_ms",
            "listing_cache_entries",
            "open_files_max",
            "cache_dir",
            "cache_max_bytes",
            "cache_min_free_percent",
            "cache_fetch_timeout_ms",
            "cache_scrub_chunks_per_hour",
            "prefetch_tracks",
            "cover_art",
            "search_max_results",
        ]);
        fig = fig.merge(env);
        // MUSICFS_AUDIO_EXTENSIONS is a ','-separated list.
        if let Ok(list) = std::env::var("MUSICFS_AUDIO_EXTENSIONS") {
            let exts: Vec<String> = list
                .split(',')
                .map(str::trim)
                .filter(|e| !e.is_empty())
                .map(str::to_string)
                .collect();
            fig = fig.merge(Serialized::default("audio_extensions", exts));
        }
        // Per-origin settings, as JSON (how `musicfs mount` passes them on).
        if let Ok(json) = std::env::var(ORIGIN_SETTINGS_ENV) {
            let settings: std::collections::BTreeMap<PathBuf, OriginSettings> =
                serde_json::from_str(&json)
                    .with_context(|| format!("{ORIGIN_SETTINGS_ENV} is not valid"))?;
            fig = fig.merge(Serialized::default("origin", settings));
        }
        // `[notify]`, as JSON (how `musicfs mount` passes it on).
        if let Ok(json) = std::env::var(notify::NOTIFY_ENV) {
            let n: notify::NotifyConfig = serde_json::from_str(&json)
                .with_context(|| format!("{} is not valid", notify::NOTIFY_ENV))?;
            fig = fig.merge(Serialized::default("notify", n));
        }
        // Collections, as JSON (how `musicfs mount` passes them on).
        if let Ok(json) = std::env::var(COLLECTIONS_ENV) {
            let table: std::collections::BTreeMap<String, String> = serde_json::from_str(&json)
                .with_context(|| format!("{COLLECTIONS_ENV} is not valid"))?;
            fig = fig.merge(Serialized::default("collections", table));
        }
        if let Some(list) = std::env::var_os("MUSICFS_ORIGINS") {
            // URLs hold ':' themselves: a list with a newline is split there.
            let origins: Vec<PathBuf> = if list.as_encoded_bytes().contains(&b'\n') {
                list.to_string_lossy()
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(PathBuf::from)
                    .collect()
            } else {
                std::env::split_paths(&list).collect()
            };
            fig = fig.merge(Serialized::default("origins", origins));
        }
        fig = fig.merge(Serialized::defaults(overrides));
        let config: Config = fig.extract().context("invalid configuration")?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<()> {
        Template::parse(&self.template)?;
        if self.engine_wait_timeout_ms == 0 {
            bail!("engine_wait_timeout_ms must be > 0");
        }
        if !["auto", "inotify", "poll", "off"].contains(&self.watch.as_str()) {
            bail!(
                "watch must be one of auto, inotify, poll, off (got {:?})",
                self.watch
            );
        }
        if self.heartbeat_interval_ms == 0 || self.heartbeat_timeout_ms == 0 {
            bail!("heartbeat_interval_ms and heartbeat_timeout_ms must be > 0");
        }
        if self.checkpoint_files == 0 {
            bail!("checkpoint_files must be > 0");
        }
        if self.poll_interval_s == 0 {
            bail!("poll_interval_s must be > 0");
        }
        if self.listing_cache_entries == 0 || self.open_files_max == 0 {
            bail!("listing_cache_entries and open_files_max must be > 0");
        }
        if self.cache_min_free_percent > 90 {
            bail!("cache_min_free_percent must be at most 90");
        }
        if self.search_max_results == 0 {
            bail!("search_max_results must be > 0");
        }
        if self.cache_fetch_timeout_ms == 0 {
            bail!("cache_fetch_timeout_ms must be > 0");
        }
        self.notify.validate()?;
        if self.audio_extensions.is_empty() {
            bail!("audio_extensions must name at least one extension");
        }
        if let Some(bad) = self
            .audio_extensions
            .iter()
            .find(|e| e.is_empty() || e.contains(['.', '/']) || e.chars().any(char::is_whitespace))
        {
            bail!("audio_extensions: {bad:?} is not an extension (write \"flac\", not \".flac\")");
        }
        Ok(())
    }

    /// Scan worker threads: `scan_threads`, or two per core when 0 (tag
    /// reads wait on I/O as often as on CPU).
    pub fn scan_worker_threads(&self) -> usize {
        if self.scan_threads > 0 {
            return self.scan_threads;
        }
        std::thread::available_parallelism().map_or(2, |n| n.get() * 2)
    }

    /// The drain deadline of an ordered stop.
    pub fn drain_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.drain_timeout_ms)
    }

    /// The state directory: the configured one, or a per-mountpoint default.
    pub fn resolved_state_dir(&self) -> Result<PathBuf> {
        if let Some(d) = &self.state_dir {
            return Ok(d.clone());
        }
        let base = Config::state_base_dir()?;
        let name = match &self.mountpoint {
            Some(m) => escape_path(m),
            None => "default".to_string(),
        };
        Ok(base.join(name))
    }
}

impl Config {
    /// The chunk cache's directory: the configured one, or a per-mountpoint
    /// default (`/var/cache/musicfs/...` for root, else
    /// `$XDG_CACHE_HOME/musicfs/...`).
    pub fn resolved_cache_dir(&self) -> Result<PathBuf> {
        if let Some(d) = &self.cache_dir {
            return Ok(d.clone());
        }
        let base = if nix::unistd::geteuid().is_root()
            && std::env::var_os("XDG_CACHE_HOME").is_none()
        {
            PathBuf::from("/var/cache/musicfs")
        } else {
            xdg("XDG_CACHE_HOME", ".cache")
                .map(|d| d.join("musicfs"))
                .context("cannot find a cache directory: set HOME, XDG_CACHE_HOME or cache_dir")?
        };
        let name = match &self.mountpoint {
            Some(m) => escape_path(m),
            None => "default".to_string(),
        };
        Ok(base.join(name))
    }

    /// The settings of single origins, by origin.
    /// Every origin has one, with its priority (its place in `origins`
    /// unless set).
    pub fn origin_settings(&self) -> std::collections::HashMap<PathBuf, OriginSettings> {
        let mut all: std::collections::HashMap<PathBuf, OriginSettings> = self
            .origin
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (i, o) in self.origins.iter().enumerate() {
            let s = all.entry(o.clone()).or_default();
            s.priority
                .get_or_insert(u32::try_from(i).unwrap_or(u32::MAX));
        }
        all
    }

    /// The origins whose caching is set, with the setting.
    pub fn origin_cache_settings(&self) -> std::collections::HashMap<PathBuf, bool> {
        self.origin
            .iter()
            .filter_map(|(dir, o)| Some((dir.clone(), o.cache?)))
            .collect()
    }

    /// Where the per-mountpoint state directories live by default:
    /// `/var/lib/musicfs` for root, else `$XDG_STATE_HOME/musicfs`.
    pub fn state_base_dir() -> Result<PathBuf> {
        if nix::unistd::geteuid().is_root() && std::env::var_os("XDG_STATE_HOME").is_none() {
            return Ok(PathBuf::from("/var/lib/musicfs"));
        }
        xdg("XDG_STATE_HOME", ".local/state")
            .map(|d| d.join("musicfs"))
            .context("cannot find a state directory: set HOME, XDG_STATE_HOME or state_dir")
    }

    /// Whether the command line named a mount (a mountpoint or a state
    /// directory), rather than leaving it to be found.
    pub fn names_a_mount(&self) -> bool {
        self.mountpoint.is_some() || self.state_dir.is_some()
    }
}

/// `/mnt/my music` -> `mnt-my\x20music`, like systemd-escape --path.
pub fn escape_path(p: &Path) -> String {
    let s = p.to_string_lossy();
    let trimmed = s.trim_matches('/');
    if trimmed.is_empty() {
        return "-".to_string();
    }
    let mut out = String::new();
    for (i, c) in trimmed.chars().enumerate() {
        match c {
            '/' => out.push('-'),
            c if c.is_ascii_alphanumeric() || c == '_' || (c == '.' && i > 0) => out.push(c),
            c => {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    out.push_str(&format!("\\x{b:02x}"));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape() {
        assert_eq!(escape_path(Path::new("/mnt/music")), "mnt-music");
        assert_eq!(escape_path(Path::new("/mnt/my music/")), "mnt-my\\x20music");
        assert_eq!(escape_path(Path::new("/")), "-");
    }

    #[test]
    fn layers_file_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "origins = [\"/a\"]\nallow_other = true\nentry_ttl_ms = 5\n",
        )
        .unwrap();
        let c = Config::load(Some(&file), &Overrides::default()).unwrap();
        assert_eq!(c.origins, [PathBuf::from("/a")]);
        assert!(c.allow_other);
        assert_eq!(c.entry_ttl_ms, 5);
        let o = Overrides {
            origins: Some(vec!["/b".into()]),
            allow_other: Some(false),
            ..Overrides::default()
        };
        let c = Config::load(Some(&file), &o).unwrap();
        assert_eq!(c.origins, [PathBuf::from("/b")]);
        assert!(!c.allow_other);
    }

    #[test]
    fn unrelated_environment_is_not_configuration() {
        // SAFETY: tests in this module do not read this variable concurrently.
        unsafe { std::env::set_var("MUSICFS_SOME_TOOL_SETTING", "1") };
        let c = Config::load(None, &Overrides::default());
        unsafe { std::env::remove_var("MUSICFS_SOME_TOOL_SETTING") };
        assert!(c.is_ok(), "{c:?}");
    }

    #[test]
    fn bad_values_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "template = \"{nosuch}\"\n").unwrap();
        let e = format!(
            "{:#}",
            Config::load(Some(&file), &Overrides::default()).unwrap_err()
        );
        assert!(e.contains("unknown field"), "{e}");
        std::fs::write(&file, "typo_key = 1\n").unwrap();
        assert!(Config::load(Some(&file), &Overrides::default()).is_err());
    }
}

#[cfg(test)]
mod example_tests {
    use super::*;

    /// The shipped example parses and holds every key.
    #[test]
    fn packaged_example_is_valid() {
        let example =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/config.example.toml");
        let c = Config::load(Some(&example), &Overrides::default()).unwrap();
        assert_eq!(c.origins, [PathBuf::from("/srv/music")]);
        assert_eq!(c.template, DEFAULT_TEMPLATE);
    }
}

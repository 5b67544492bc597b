//! The `[notify]` table: where the change feed goes (generic webhooks and
//! the built-in Jellyfin, Plex and Subsonic triggers), and its bounds.
//! Secrets are never values here: every key, token and password comes from
//! a `*_file`.

use std::path::PathBuf;

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

/// The environment variable that carries `[notify]` to the engine (JSON).
pub const NOTIFY_ENV: &str = "MUSICFS_NOTIFY";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NotifyConfig {
    /// Change batches waiting per target; past it the oldest is dropped
    /// (and counted).
    pub queue: usize,
    /// A deadline for one delivery (connect, send, answer), in ms.
    pub timeout_ms: u64,
    /// Attempts per batch (the first included), with doubling backoff.
    pub attempts: u32,
    /// The first backoff between attempts, in ms (doubles, at most 30 s).
    pub backoff_ms: u64,
    /// The mount's path as the media servers see it (default: the
    /// mountpoint). Changed paths are sent below it.
    pub path_prefix: Option<PathBuf>,
    pub webhook: Vec<WebhookTarget>,
    pub jellyfin: Vec<JellyfinTarget>,
    pub plex: Vec<PlexTarget>,
    pub subsonic: Vec<SubsonicTarget>,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        NotifyConfig {
            queue: 64,
            timeout_ms: 5000,
            attempts: 4,
            backoff_ms: 500,
            path_prefix: None,
            webhook: Vec::new(),
            jellyfin: Vec::new(),
            plex: Vec::new(),
            subsonic: Vec::new(),
        }
    }
}

/// An HTTP POST of a JSON batch of changes per commit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookTarget {
    pub url: String,
    /// A file whose content is sent as `Authorization: Bearer …`.
    pub token_file: Option<PathBuf>,
}

/// `POST /Library/Media/Updated` with the changed paths.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JellyfinTarget {
    /// The server, e.g. `http://127.0.0.1:8096`.
    pub url: String,
    /// A file holding the API key (sent as `X-Emby-Token`).
    pub api_key_file: PathBuf,
}

/// `GET /library/sections/{section}/refresh?path=…` per changed directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlexTarget {
    /// The server, e.g. `http://127.0.0.1:32400`.
    pub url: String,
    /// The library section that holds the mount.
    pub section: u32,
    /// A file holding the `X-Plex-Token`.
    pub token_file: PathBuf,
}

/// `startScan` on a Subsonic server (Navidrome and others), with token
/// authentication (`t` = md5(password + salt), a new salt each call).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubsonicTarget {
    /// The server, e.g. `http://127.0.0.1:4533`.
    pub url: String,
    pub user: String,
    /// A file holding the password.
    pub password_file: PathBuf,
}

impl NotifyConfig {
    pub fn is_empty(&self) -> bool {
        self.webhook.is_empty()
            && self.jellyfin.is_empty()
            && self.plex.is_empty()
            && self.subsonic.is_empty()
    }

    pub fn validate(&self) -> Result<()> {
        if self.queue == 0 || self.timeout_ms == 0 || self.attempts == 0 {
            bail!("notify: queue, timeout_ms and attempts must be > 0");
        }
        let urls = self
            .webhook
            .iter()
            .map(|t| &t.url)
            .chain(self.jellyfin.iter().map(|t| &t.url))
            .chain(self.plex.iter().map(|t| &t.url))
            .chain(self.subsonic.iter().map(|t| &t.url));
        for url in urls {
            let Some((scheme, rest)) = url.split_once("://") else {
                bail!("notify: {url:?} is not an http:// or https:// URL");
            };
            if !["http", "https"].contains(&scheme) || rest.is_empty() {
                bail!("notify: {url:?} is not an http:// or https:// URL");
            }
            // A URL is the target's name in the status and the log.
            if rest
                .split('/')
                .next()
                .is_some_and(|host| host.contains('@'))
                || url.contains('?')
            {
                bail!(
                    "notify: {url:?} may carry no credentials or query (use the *_file settings)"
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_without_secrets_only() {
        let mut c = NotifyConfig::default();
        c.webhook.push(WebhookTarget {
            url: "http://127.0.0.1:9/hook".into(),
            token_file: None,
        });
        assert!(c.validate().is_ok());
        for bad in ["ftp://x/", "http://u:p@host/", "http://h/?token=1", "nourl"] {
            c.webhook[0].url = bad.into();
            assert!(c.validate().is_err(), "{bad}");
        }
    }
}

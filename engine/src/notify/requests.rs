//! What each kind of target is sent for a batch of changes: the HTTP
//! requests, built from plain data (tested without a server). Secrets go
//! only into headers or, for Subsonic (whose API has no other way), into
//! the query of a request that is never logged.

use std::path::Path;

use anyhow::{Context, Result};
use md5::Digest;
use serde_json::json;

use crate::config::notify::{JellyfinTarget, PlexTarget, SubsonicTarget, WebhookTarget};
use crate::notify::{Batch, ChangeKind};

/// Above this many changed directories, Plex gets one refresh of the
/// whole section instead of one per directory.
pub(super) const PLEX_DIRS_MAX: usize = 16;

/// One target, as configured.
#[derive(Clone, Debug)]
pub(super) enum Kind {
    Webhook(WebhookTarget),
    Jellyfin(JellyfinTarget),
    Plex(PlexTarget),
    Subsonic(SubsonicTarget),
}

/// An HTTP request to make: method, URL, headers, body.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Call {
    pub post: bool,
    pub url: String,
    pub headers: Vec<(&'static str, String)>,
    pub body: Option<Vec<u8>>,
}

impl Kind {
    pub(super) fn word(&self) -> &'static str {
        match self {
            Kind::Webhook(_) => "webhook",
            Kind::Jellyfin(_) => "jellyfin",
            Kind::Plex(_) => "plex",
            Kind::Subsonic(_) => "subsonic",
        }
    }

    pub(super) fn url(&self) -> &str {
        match self {
            Kind::Webhook(t) => &t.url,
            Kind::Jellyfin(t) => &t.url,
            Kind::Plex(t) => &t.url,
            Kind::Subsonic(t) => &t.url,
        }
    }

    /// The calls for `batch`; `prefix` is the mount as the servers see it.
    pub(super) fn calls(&self, batch: &Batch, prefix: &str) -> Result<Vec<Call>> {
        let base = self.url().trim_end_matches('/');
        let full = |p: &str| format!("{}/{p}", prefix.trim_end_matches('/'));
        Ok(match self {
            Kind::Webhook(t) => {
                let body = json!({
                    "mount": prefix,
                    "truncated": batch.truncated,
                    "changes": batch.changes.iter().map(|c| json!({
                        "kind": c.kind.word(),
                        "path": c.path,
                    })).collect::<Vec<_>>(),
                });
                let mut headers = vec![("content-type", "application/json".to_string())];
                if let Some(f) = &t.token_file {
                    headers.push(("authorization", format!("Bearer {}", secret(f)?)));
                }
                vec![Call {
                    post: true,
                    url: t.url.clone(),
                    headers,
                    body: Some(serde_json::to_vec(&body)?),
                }]
            }
            Kind::Jellyfin(t) => {
                let headers = vec![
                    ("content-type", "application/json".to_string()),
                    ("x-emby-token", secret(&t.api_key_file)?),
                ];
                if batch.truncated {
                    // Too many changes to name: the whole library.
                    vec![Call {
                        post: true,
                        url: format!("{base}/Library/Refresh"),
                        headers,
                        body: None,
                    }]
                } else {
                    let updates: Vec<_> = batch
                        .changes
                        .iter()
                        .map(|c| {
                            json!({
                                "Path": full(&c.path),
                                "UpdateType": match c.kind {
                                    ChangeKind::Added => "Created",
                                    ChangeKind::Changed => "Modified",
                                    ChangeKind::Removed => "Deleted",
                                },
                            })
                        })
                        .collect();
                    vec![Call {
                        post: true,
                        url: format!("{base}/Library/Media/Updated"),
                        headers,
                        body: Some(serde_json::to_vec(&json!({ "Updates": updates }))?),
                    }]
                }
            }
            Kind::Plex(t) => {
                let headers = vec![("x-plex-token", secret(&t.token_file)?)];
                let section = format!("{base}/library/sections/{}/refresh", t.section);
                let mut dirs: Vec<String> = batch
                    .changes
                    .iter()
                    .map(|c| full(c.path.rsplit_once('/').map_or("", |(d, _)| d)))
                    .map(|d| d.trim_end_matches('/').to_string())
                    .collect();
                dirs.sort();
                dirs.dedup();
                if batch.truncated || dirs.len() > PLEX_DIRS_MAX {
                    vec![Call {
                        post: false,
                        url: section,
                        headers,
                        body: None,
                    }]
                } else {
                    dirs.iter()
                        .map(|d| {
                            let mut url = reqwest::Url::parse(&section)?;
                            url.query_pairs_mut().append_pair("path", d);
                            Ok(Call {
                                post: false,
                                url: url.to_string(),
                                headers: headers.clone(),
                                body: None,
                            })
                        })
                        .collect::<Result<Vec<_>>>()?
                }
            }
            Kind::Subsonic(t) => {
                let password = secret(&t.password_file)?;
                let salt = salt();
                let token = hex(&md5::Md5::digest(format!("{password}{salt}").as_bytes()));
                let mut url = reqwest::Url::parse(&format!("{base}/rest/startScan"))?;
                url.query_pairs_mut()
                    .append_pair("u", &t.user)
                    .append_pair("t", &token)
                    .append_pair("s", &salt)
                    .append_pair("v", "1.16.1")
                    .append_pair("c", "musicfs")
                    .append_pair("f", "json");
                vec![Call {
                    post: false,
                    url: url.to_string(),
                    headers: Vec::new(),
                    body: None,
                }]
            }
        })
    }

    /// Whether an answer with a 2xx status is a success: a Subsonic server
    /// answers 200 with `"status": "failed"` for bad credentials.
    pub(super) fn answer_error(&self, body: &[u8]) -> Option<String> {
        let Kind::Subsonic(_) = self else {
            return None;
        };
        let v: serde_json::Value = serde_json::from_slice(body).ok()?;
        let r = &v["subsonic-response"];
        (r["status"].as_str() != Some("ok")).then(|| {
            format!(
                "the server refused: {}",
                r["error"]["message"].as_str().unwrap_or("no reason given")
            )
        })
    }
}

/// A secret from its file: trimmed, at most 4 KiB, never logged.
fn secret(file: &Path) -> Result<String> {
    use std::io::Read;
    let mut buf = String::new();
    std::fs::File::open(file)
        .and_then(|f| f.take(4096).read_to_string(&mut buf))
        .with_context(|| format!("cannot read {}", file.display()))?;
    Ok(buf.trim().to_string())
}

/// A new salt for each Subsonic call.
fn salt() -> String {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut h = blake3::Hasher::new();
    h.update(&crate::sys::time::now_ns().to_le_bytes());
    h.update(&n.to_le_bytes());
    h.update(&std::process::id().to_le_bytes());
    h.finalize().to_hex()[..12].to_string()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::Change;

    fn batch() -> Batch {
        Batch {
            changes: vec![
                Change {
                    kind: ChangeKind::Added,
                    path: "A/B (2000)/01 - x.flac".into(),
                },
                Change {
                    kind: ChangeKind::Removed,
                    path: "A/B (2000)/02 - y.flac".into(),
                },
            ],
            truncated: false,
        }
    }

    #[test]
    fn requests_of_each_kind() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key");
        std::fs::write(&key, "s3cret\n").unwrap();
        let j = Kind::Jellyfin(JellyfinTarget {
            url: "http://h:8096/".into(),
            api_key_file: key.clone(),
        });
        let calls = j.calls(&batch(), "/mnt/music").unwrap();
        assert_eq!(calls[0].url, "http://h:8096/Library/Media/Updated");
        assert!(
            calls[0]
                .headers
                .contains(&("x-emby-token", "s3cret".into()))
        );
        let body: serde_json::Value =
            serde_json::from_slice(calls[0].body.as_ref().unwrap()).unwrap();
        assert_eq!(
            body["Updates"][0]["Path"],
            "/mnt/music/A/B (2000)/01 - x.flac"
        );
        assert_eq!(body["Updates"][1]["UpdateType"], "Deleted");
        let p = Kind::Plex(PlexTarget {
            url: "http://h:32400".into(),
            section: 3,
            token_file: key.clone(),
        });
        let calls = p.calls(&batch(), "/mnt/music").unwrap();
        assert_eq!(calls.len(), 1, "one directory changed");
        assert_eq!(
            calls[0].url,
            "http://h:32400/library/sections/3/refresh?path=%2Fmnt%2Fmusic%2FA%2FB+%282000%29"
        );
        let s = Kind::Subsonic(SubsonicTarget {
            url: "http://h:4533".into(),
            user: "admin".into(),
            password_file: key,
        });
        let calls = s.calls(&batch(), "/mnt/music").unwrap();
        let url = reqwest::Url::parse(&calls[0].url).unwrap();
        let q: std::collections::HashMap<_, _> = url.query_pairs().into_owned().collect();
        assert_eq!(url.path(), "/rest/startScan");
        let want = hex(&md5::Md5::digest(format!("s3cret{}", q["s"]).as_bytes()));
        assert_eq!(q["t"], want);
        assert!(!calls[0].url.contains("s3cret"));
        assert_eq!(
            s.answer_error(br#"{"subsonic-response":{"status":"failed","error":{"code":40,"message":"Wrong username or password"}}}"#),
            Some("the server refused: Wrong username or password".into())
        );
        assert_eq!(
            s.answer_error(br#"{"subsonic-response":{"status":"ok"}}"#),
            None
        );
        // RFC 1321's test vector.
        assert_eq!(
            hex(&md5::Md5::digest(b"abc")),
            "900150983cd24fb0d6963f7d28e17f72"
        );
    }
}

//! Remote origins as URLs: `s3://BUCKET[/PREFIX]?endpoint=URL&region=R`,
//! `webdav://HOST[:PORT]/PATH` (http), `webdavs://…` (https),
//! `sftp://USER@HOST[:PORT]/PATH?key=FILE[&known_hosts=FILE]` (PATH is
//! absolute; `/~/PATH` is under the user's home). An origin's
//! URL is its name everywhere (the catalog, the status, the logs), so it may
//! carry no secret: a password in it, or a query key we do not know, is
//! refused with a line that says where secrets go instead.

use std::path::Path;

use anyhow::{Result, bail};

/// The kinds of remote origin.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    S3,
    Webdav,
    Webdavs,
    Sftp,
}

impl Scheme {
    pub fn name(self) -> &'static str {
        match self {
            Scheme::S3 => "s3",
            Scheme::Webdav => "webdav",
            Scheme::Webdavs => "webdavs",
            Scheme::Sftp => "sftp",
        }
    }
}

/// A parsed remote origin URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteSpec {
    pub scheme: Scheme,
    /// The URL as written (it holds no secret).
    pub url: String,
    /// S3: the bucket. WebDAV: `http[s]://HOST[:PORT]`. SFTP: `HOST`.
    pub authority: String,
    /// The directory inside the bucket or server, without leading or
    /// trailing slashes ("" for the whole of it).
    pub root: String,
    /// S3: the endpoint (`endpoint=`; default AWS) and region (`region=`).
    pub endpoint: Option<String>,
    pub region: Option<String>,
    /// SFTP: the user (`USER@`), the port (22), the private key
    /// (`key=`) and the known_hosts file (`known_hosts=`; default
    /// `~/.ssh/known_hosts`).
    pub user: Option<String>,
    pub port: Option<u16>,
    pub key: Option<std::path::PathBuf>,
    pub known_hosts: Option<std::path::PathBuf>,
}

const SCHEMES: [(&str, Scheme); 4] = [
    ("s3://", Scheme::S3),
    ("webdav://", Scheme::Webdav),
    ("webdavs://", Scheme::Webdavs),
    ("sftp://", Scheme::Sftp),
];

/// Whether an origin as written names a remote origin (by its scheme).
pub fn is_remote(origin: &Path) -> bool {
    let s = origin.as_os_str().as_encoded_bytes();
    SCHEMES.iter().any(|(prefix, _)| {
        s.len() > prefix.len() && s[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
    })
}

fn percent_decode(s: &str) -> Result<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3])?;
                out.push(u8::from_str_radix(hex, 16)?);
                i += 3;
            }
            b'%' => bail!("a '%' in {s:?} is not followed by two hex digits"),
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    Ok(String::from_utf8(out)?)
}

/// Whether percent-decoding `s` gives UTF-8 (a name a client could not
/// decode stays encoded: see `Remote::list`).
pub(super) fn decodes_to_utf8(s: &[u8]) -> bool {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        let hex = s
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (s[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    std::str::from_utf8(&out).is_ok()
}

/// `HOST[:PORT]` or `[V6]:PORT` into the host (without brackets) and port.
fn split_port(authority: &str) -> Result<(&str, Option<u16>)> {
    let (host, port) = match authority.strip_prefix('[') {
        Some(rest) => {
            let Some((host, after)) = rest.split_once(']') else {
                bail!("no ']' after the IPv6 address");
            };
            match after.strip_prefix(':') {
                Some(p) => (host, Some(p)),
                None if after.is_empty() => (host, None),
                None => bail!("{after:?} after the IPv6 address"),
            }
        }
        None => match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        },
    };
    let port = match port {
        Some(p) => Some(
            p.parse::<u16>()
                .map_err(|_| anyhow::anyhow!("the port {p:?} is not a number"))?,
        ),
        None => None,
    };
    Ok((host, port))
}

impl RemoteSpec {
    /// Parses a remote origin URL; refuses secrets and unknown keys.
    pub fn parse(origin: &Path) -> Result<RemoteSpec> {
        let Some(url) = origin.to_str() else {
            bail!("a remote origin URL must be UTF-8: {}", origin.display());
        };
        let Some((prefix, scheme)) = SCHEMES
            .iter()
            .find(|(p, _)| url.len() > p.len() && url[..p.len()].eq_ignore_ascii_case(p))
        else {
            bail!("{url} is not a remote origin URL (s3://, webdav://, webdavs:// or sftp://)");
        };
        let rest = &url[prefix.len()..];
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        let (authority, path) = match rest.split_once('/') {
            Some((a, p)) => (a, p),
            None => (rest, ""),
        };
        if authority.is_empty() {
            bail!(
                "{url}: no {} in the URL",
                if *scheme == Scheme::S3 {
                    "bucket"
                } else {
                    "host"
                }
            );
        }
        let (user, authority) = match authority.rsplit_once('@') {
            // SFTP names its user in the URL, never a password.
            Some((user, host)) if *scheme == Scheme::Sftp && !user.contains(':') => {
                (Some(percent_decode(user)?), host)
            }
            Some((_, host)) => {
                let hint = if *scheme == Scheme::Sftp {
                    "a key file as key=FILE, or a password_file in [origin.\"URL\"]"
                } else {
                    "username and password_file in [origin.\"URL\"]"
                };
                bail!(
                    "{prefix}{host}/…: no password in an origin URL (it is shown in the status and the logs); use {hint}"
                );
            }
            None => (None, authority),
        };
        let (authority, port) = if *scheme == Scheme::Sftp {
            split_port(authority).map_err(|e| anyhow::anyhow!("{url}: {e}"))?
        } else {
            (authority, None)
        };
        if *scheme == Scheme::Sftp && user.is_none() {
            bail!("{url}: an sftp origin names its user: sftp://USER@HOST/PATH");
        }
        let root = percent_decode(path.trim_matches('/'))?;
        let mut spec = RemoteSpec {
            scheme: *scheme,
            url: url.to_string(),
            authority: match scheme {
                Scheme::S3 => authority.to_string(),
                Scheme::Webdav => format!("http://{authority}"),
                Scheme::Webdavs => format!("https://{authority}"),
                Scheme::Sftp => authority.to_string(),
            },
            root,
            endpoint: None,
            region: None,
            user,
            port,
            key: None,
            known_hosts: None,
        };
        for pair in query
            .into_iter()
            .flat_map(|q| q.split('&'))
            .filter(|p| !p.is_empty())
        {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = percent_decode(v)?;
            match (spec.scheme, k) {
                (Scheme::S3, "endpoint") => spec.endpoint = Some(v),
                (Scheme::S3, "region") => spec.region = Some(v),
                (Scheme::Sftp, "key") => spec.key = Some(v.into()),
                (Scheme::Sftp, "known_hosts") => spec.known_hosts = Some(v.into()),
                // Not the URL itself: what follows the key may be a secret.
                _ => bail!(
                    "{}: unknown key {k:?} in the URL (s3 knows endpoint and region, sftp key and known_hosts; credentials go in [origin.\"URL\"] as *_file keys or in AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)",
                    &url[..url.find('?').unwrap_or(url.len())]
                ),
            }
        }
        Ok(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_s3_and_webdav() {
        let s = RemoteSpec::parse(Path::new(
            "s3://music/lib/flac?endpoint=http://127.0.0.1:9000&region=eu-1",
        ))
        .unwrap();
        assert_eq!(s.scheme, Scheme::S3);
        assert_eq!(s.authority, "music");
        assert_eq!(s.root, "lib/flac");
        assert_eq!(s.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert_eq!(s.region.as_deref(), Some("eu-1"));
        let w = RemoteSpec::parse(Path::new("webdavs://nas:8443/My%20Music/")).unwrap();
        assert_eq!(w.authority, "https://nas:8443");
        assert_eq!(w.root, "My Music");
        let whole = RemoteSpec::parse(Path::new("s3://bucket")).unwrap();
        assert_eq!(whole.root, "");
        assert!(is_remote(Path::new("S3://x")) && !is_remote(Path::new("/srv/s3://x")));
    }

    #[test]
    fn parses_sftp() {
        let s = RemoteSpec::parse(Path::new(
            "sftp://music@127.0.0.1:2222/srv/My%20Music?key=/k/id_ed25519&known_hosts=/k/hosts",
        ))
        .unwrap();
        assert_eq!(s.scheme, Scheme::Sftp);
        assert_eq!(s.authority, "127.0.0.1");
        assert_eq!(s.port, Some(2222));
        assert_eq!(s.user.as_deref(), Some("music"));
        assert_eq!(s.root, "srv/My Music");
        assert_eq!(s.key.as_deref(), Some(Path::new("/k/id_ed25519")));
        assert_eq!(s.known_hosts.as_deref(), Some(Path::new("/k/hosts")));
        let v6 = RemoteSpec::parse(Path::new("sftp://u@[::1]:22/~/music")).unwrap();
        assert_eq!((v6.authority.as_str(), v6.port), ("::1", Some(22)));
        assert_eq!(v6.root, "~/music");
        let bare = RemoteSpec::parse(Path::new("sftp://u@[::1]/m")).unwrap();
        assert_eq!((bare.authority.as_str(), bare.port), ("::1", None));
        let plain = RemoteSpec::parse(Path::new("sftp://u@nas/m")).unwrap();
        assert_eq!((plain.authority.as_str(), plain.port), ("nas", None));
        assert!(is_remote(Path::new("sftp://u@nas/m")));
    }

    #[test]
    fn undecodable_names() {
        assert!(decodes_to_utf8(b"a%20b/c.flac"));
        assert!(decodes_to_utf8(b"100%"));
        assert!(!decodes_to_utf8(b"x/%FF%FE%2001.wv"));
    }

    #[test]
    fn refuses_secrets_and_unknown_keys() {
        for bad in [
            "webdav://user:secret@nas/music",
            "s3://b?secret_access_key=abc",
            "s3://?endpoint=x",
            "webdav://nas/m?endpoint=x",
            "sftp://u:secret@h/p",
            "sftp://h/p",
            "sftp://u@h:x/p",
            "sftp://u@h/p?password=abc",
            "s3://b/%zz",
        ] {
            let e = RemoteSpec::parse(Path::new(bad)).unwrap_err().to_string();
            assert!(!e.contains("secret=") && !e.contains(":secret@"), "{e}");
            assert!(!e.contains("=abc"), "a secret in the error: {e}");
        }
    }
}

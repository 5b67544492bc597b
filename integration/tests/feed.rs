//! The change feed on a real mount: an HTTP server inside the test, on
//! 127.0.0.1, plays a webhook receiver and mock Jellyfin, Plex and Subsonic
//! servers; each gets its calls when a file is added, retagged and removed.
//! A target that never answers leaves the mount's reads unaffected.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use musicfs_integration::*;

/// One request the mock server got.
#[derive(Clone, Debug)]
struct Req {
    method: String,
    target: String,
    headers: HashMap<String, String>,
    body: String,
}

/// An HTTP/1.1 server that records every request and answers 200 (a
/// Subsonic `ok` to `/rest/`, 204 to Jellyfin).
struct Mock {
    base: String,
    got: Arc<Mutex<Vec<Req>>>,
}

impl Mock {
    fn start() -> Mock {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", l.local_addr().unwrap());
        let got = Arc::new(Mutex::new(Vec::new()));
        let g = got.clone();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(s) = s else { return };
                let g = g.clone();
                std::thread::spawn(move || serve(s, &g));
            }
        });
        Mock { base, got }
    }

    fn requests(&self) -> Vec<Req> {
        self.got.lock().unwrap().clone()
    }

    /// Waits for a request that `f` accepts.
    fn wait(&self, what: &str, f: impl Fn(&Req) -> bool) -> Req {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(r) = self.requests().into_iter().find(|r| f(r)) {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "no {what} request in {:#?}",
                self.requests()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn serve(mut s: std::net::TcpStream, got: &Mutex<Vec<Req>>) {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let text = String::from_utf8_lossy(&buf).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let mut lines = head.lines();
            let first: Vec<&str> = lines.next().unwrap_or_default().split(' ').collect();
            let headers: HashMap<String, String> = lines
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
                .collect();
            let len: usize = headers
                .get("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if body.len() >= len {
                let req = Req {
                    method: first.first().unwrap_or(&"").to_string(),
                    target: first.get(1).unwrap_or(&"").to_string(),
                    headers,
                    body: body.to_string(),
                };
                let answer = if req.target.starts_with("/rest/") {
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 50\r\nconnection: close\r\n\r\n{\"subsonic-response\":{\"status\":\"ok\",\"v\":\"1.16\"}}".to_string()
                } else if req.target.starts_with("/Library/") {
                    "HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n".to_string()
                } else {
                    "HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_string()
                };
                got.lock().unwrap().push(req);
                let _ = s.write_all(answer.as_bytes());
                return;
            }
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Percent-decodes a query value (`+` is a space).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap()
}

fn query(target: &str) -> HashMap<String, String> {
    target
        .split_once('?')
        .map(|(_, q)| q)
        .unwrap_or_default()
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), unescape(v)))
        .collect()
}

/// The webhook batches' changes so far: (kind, path).
fn webhook_changes(m: &Mock) -> Vec<(String, String)> {
    m.requests()
        .iter()
        .filter(|r| r.target == "/hook")
        .flat_map(|r| {
            let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
            v["changes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| {
                    (
                        c["kind"].as_str().unwrap().to_string(),
                        c["path"].as_str().unwrap().to_string(),
                    )
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

fn wait_change(m: &Mock, kind: &str, path: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !webhook_changes(m)
        .iter()
        .any(|(k, p)| k == kind && p == path)
    {
        assert!(
            Instant::now() < deadline,
            "no {kind} {path} in {:#?}",
            webhook_changes(m)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Writes `src` with a new title to `dst`, as a tag editor would: a new
/// file (made outside the origin) renamed over it.
fn retag(src: &Path, dst: &Path, title: &str) {
    let tmp = std::env::temp_dir().join(format!("mfs-feed-{}-{title}.flac", std::process::id()));
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-i"])
        .arg(src)
        .args(["-map", "0", "-c", "copy", "-metadata"])
        .arg(format!("title={title}"))
        .arg(&tmp)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}: {}",
        src.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::rename(&tmp, dst).unwrap();
}

/// A FLAC from the generated library (whose tags ffmpeg copies).
fn a_flac(lib: &Path, origin: &Path) -> std::path::PathBuf {
    let e = read_manifest(lib)
        .into_iter()
        .find(|e| e.kind == "normal" && e.ext == "flac" && e.tags.title.is_some())
        .expect("a tagged flac");
    origin.join(&e.path)
}

#[test]
fn media_servers_hear_of_every_change() {
    let lib = generated_library(12, 1503);
    let root = tempfile::Builder::new()
        .prefix("mfs-feed")
        .tempdir_in("/tmp")
        .unwrap();
    let origin = root.path().join("music");
    copy_tree(&lib, &origin);
    let mock = Mock::start();
    // A target that accepts connections and never answers.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let secret = |name: &str, value: &str| {
        let p = root.path().join(name);
        std::fs::write(&p, value).unwrap();
        p
    };
    let (jf, px, ss) = (
        secret("jellyfin.key", "jf-key-123\n"),
        secret("plex.token", "plex-tok-456"),
        secret("subsonic.pw", "sub-pw-789"),
    );
    let config = root.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "origins = [{origin:?}]\n\
             [notify]\ntimeout_ms = 2000\npath_prefix = \"/media/music\"\n\
             [[notify.webhook]]\nurl = \"{b}/hook\"\n\
             [[notify.webhook]]\nurl = \"http://{silent}/never\"\n\
             [[notify.jellyfin]]\nurl = \"{b}\"\napi_key_file = {jf:?}\n\
             [[notify.plex]]\nurl = \"{b}\"\nsection = 7\ntoken_file = {px:?}\n\
             [[notify.subsonic]]\nurl = \"{b}\"\nuser = \"admin\"\npassword_file = {ss:?}\n",
            b = mock.base,
            silent = silent.local_addr().unwrap(),
        ),
    )
    .unwrap();
    let m = Mount::start_with_config(&config, &[]);
    let before = list_files(&m.mnt);
    assert!(
        mock.requests().is_empty(),
        "the first scan is not announced"
    );

    // Added: a copy of a FLAC under a new name, with a new title.
    let src = a_flac(&lib, &origin);
    let added = origin.join("new/added.flac");
    std::fs::create_dir_all(added.parent().unwrap()).unwrap();
    retag(&src, &added, "Brand New Song");
    let added_path = loop {
        if let Some(p) = list_files(&m.mnt)
            .into_iter()
            .find(|p| p.to_string_lossy().contains("Brand New Song"))
        {
            break p.to_string_lossy().into_owned();
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    wait_change(&mock, "added", &added_path);
    // Jellyfin: the path as the server sees it, the key in its header.
    let j = mock.wait("jellyfin", |r| {
        r.method == "POST"
            && r.target == "/Library/Media/Updated"
            && r.body.contains("Brand New Song")
    });
    assert_eq!(
        j.headers.get("x-emby-token").map(String::as_str),
        Some("jf-key-123")
    );
    let v: serde_json::Value = serde_json::from_str(&j.body).unwrap();
    let upd = v["Updates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["Path"].as_str().unwrap().contains("Brand New Song"))
        .unwrap();
    assert_eq!(upd["Path"], format!("/media/music/{added_path}"));
    assert_eq!(upd["UpdateType"], "Created");
    // Plex: the album directory, the token in its header.
    let album_dir = format!("/media/music/{}", added_path.rsplit_once('/').unwrap().0);
    let p = mock.wait("plex", |r| {
        r.target.starts_with("/library/sections/7/refresh?")
            && query(&r.target).get("path") == Some(&album_dir)
    });
    assert_eq!(p.method, "GET");
    assert_eq!(
        p.headers.get("x-plex-token").map(String::as_str),
        Some("plex-tok-456")
    );
    // Subsonic: startScan with a token made from the password and salt.
    let s = mock.wait("subsonic", |r| r.target.starts_with("/rest/startScan?"));
    let q = query(&s.target);
    assert_eq!(q["u"], "admin");
    assert_eq!(q["t"].len(), 32, "an md5 token: {q:?}");
    assert!(
        !s.target.contains("sub-pw-789"),
        "the password itself is never sent"
    );

    // Retagged: a new title moves the file in the tree.
    retag(&added.clone(), &added, "Renamed Song");
    let renamed = added_path.replace("Brand New Song", "Renamed Song");
    wait_change(&mock, "added", &renamed);
    wait_change(&mock, "removed", &added_path);
    mock.wait("jellyfin delete", |r| {
        r.body.contains("Deleted") && r.body.contains("Brand New Song")
    });

    // Removed.
    std::fs::remove_file(&added).unwrap();
    wait_change(&mock, "removed", &renamed);
    let subsonic_calls = mock
        .requests()
        .iter()
        .filter(|r| r.target.starts_with("/rest/startScan"))
        .count();
    assert!(subsonic_calls >= 2, "{subsonic_calls}");

    // The silent target held back neither the others nor the mount: every
    // byte reads as before, promptly.
    assert_eq!(list_files(&m.mnt), before);
    let t = Instant::now();
    assert_eq!(assert_files_match(&m.mnt, &[&origin]), before.len());
    assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
    // The status names each target, with no secret.
    let status = status_json(&m.state);
    let targets = status["notify"].as_array().unwrap();
    assert_eq!(targets.len(), 5, "{targets:#?}");
    let text = status.to_string();
    for secret in ["jf-key-123", "plex-tok-456", "sub-pw-789"] {
        assert!(!text.contains(secret), "{secret} in the status");
        assert!(!m.log_text().contains(secret), "{secret} in the log");
    }
    let silent_state = targets
        .iter()
        .find(|t| t["name"].as_str().unwrap().contains("/never"))
        .unwrap();
    assert!(
        silent_state["delivered"] == 0 && silent_state["state"] != "ok",
        "{silent_state}"
    );
    assert!(m.stop().success());
    drop(silent);
}

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::{Duration, Instant};

use super::*;
use crate::config::notify::WebhookTarget;

/// An HTTP server on 127.0.0.1 that answers `status` to every request and
/// hands each request's first line and body to the test.
fn server(status: u16) -> (String, std::sync::mpsc::Receiver<(String, String)>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", l.local_addr().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            // Headers, then Content-Length bytes of body.
            let (head, body) = loop {
                let n = s.read(&mut chunk).unwrap_or(0);
                if n == 0 {
                    break (String::from_utf8_lossy(&buf).to_string(), String::new());
                }
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf).to_string();
                if let Some((h, b)) = text.split_once("\r\n\r\n") {
                    let len = h
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    if b.len() >= len {
                        break (h.to_string(), b.to_string());
                    }
                }
            };
            let first = head.lines().next().unwrap_or_default().to_string();
            let _ = tx.send((first, body));
            let _ = write!(
                s,
                "HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            );
        }
    });
    (url, rx)
}

fn config(url: &str) -> NotifyConfig {
    NotifyConfig {
        timeout_ms: 300,
        attempts: 3,
        backoff_ms: 10,
        queue: 4,
        path_prefix: Some("/mnt/m".into()),
        webhook: vec![WebhookTarget {
            url: url.to_string(),
            token_file: None,
        }],
        ..NotifyConfig::default()
    }
}

fn one(path: &str) -> Batch {
    Batch {
        changes: vec![Change {
            kind: ChangeKind::Added,
            path: path.into(),
        }],
        truncated: false,
    }
}

#[test]
fn webhook_gets_the_batch() {
    let (url, rx) = server(200);
    let n = Notifier::start(&config(&url)).unwrap().unwrap();
    n.send(&one("A/B/01 - x.flac"));
    let (line, body) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(line, "POST /hook HTTP/1.1");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["mount"], "/mnt/m");
    assert_eq!(v["changes"][0]["path"], "A/B/01 - x.flac");
    assert_eq!(v["changes"][0]["kind"], "added");
    assert!(crate::sys::time::now_ms() > 0);
    let deadline = Instant::now() + Duration::from_secs(5);
    while n.status()[0].delivered == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(n.status()[0].state, "ok");
    n.stop(Duration::from_secs(2));
}

#[test]
fn a_failing_target_retries_then_drops() {
    let (url, rx) = server(500);
    let n = Notifier::start(&config(&url)).unwrap().unwrap();
    n.send(&one("x"));
    for _ in 0..3 {
        rx.recv_timeout(Duration::from_secs(10)).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while n.status()[0].state != "failing" && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let s = &n.status()[0];
    assert_eq!((s.failed_attempts, s.dropped), (3, 1), "{s:?}");
    assert!(s.last_error.contains("500"), "{s:?}");
    n.stop(Duration::from_secs(2));
}

/// A target that accepts and never answers: sending never waits, the queue
/// stays bounded (the oldest dropped and counted), and stop is prompt.
#[test]
fn a_silent_target_never_blocks() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/", l.local_addr().unwrap());
    let mut cfg = config(&url);
    cfg.timeout_ms = 60_000;
    let n = Notifier::start(&cfg).unwrap().unwrap();
    let t = Instant::now();
    for i in 0..100 {
        n.send(&one(&format!("{i}")));
    }
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "{:?}",
        t.elapsed()
    );
    let s = &n.status()[0];
    // The queue holds 4; the worker took at most one merged delivery of
    // at most 4 before the silent target held it: the rest was dropped.
    assert!(s.queued <= 4, "{s:?}");
    assert!(s.dropped >= 100 - 4 - 4, "{s:?}");
    let t = Instant::now();
    n.stop(Duration::from_secs(5));
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    drop(l);
}

#[test]
fn merged_batches_are_bounded() {
    let mut b = Batch::default();
    for i in 0..(CHANGES_MAX + 5) {
        b.merge(one(&format!("{i}")));
    }
    assert_eq!(b.changes.len(), CHANGES_MAX);
    assert!(b.truncated);
}

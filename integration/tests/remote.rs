//! Remote origins on real servers started by the test on 127.0.0.1: S3
//! (moto_server), WebDAV (rclone serve webdav) and SFTP (OpenSSH's sshd).
//! Every byte read through
//! the mount is compared with the local copy the server was given.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use musicfs_integration::servers::{DavServer, S3_KEY, S3_SECRET, S3Server, SftpServer};
use musicfs_integration::*;

/// Multi-chunk files (wav, about 1.4 MB) beside one-chunk ones.
fn library() -> PathBuf {
    generated_library_with(
        18,
        61,
        &["--seconds", "8", "--formats", "wav=1,flac=2,mp3=2"],
    )
}

fn tempdir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in("/tmp")
        .unwrap()
}

const S3_ENV: [(&str, &str); 2] = [
    ("AWS_ACCESS_KEY_ID", S3_KEY),
    ("AWS_SECRET_ACCESS_KEY", S3_SECRET),
];

/// A config mounting `origins` (each with more settings of its own), its
/// cache in `dir/cache`, each listed every second.
fn config_with(dir: &Path, origins: &[(&str, &str)]) -> PathBuf {
    let names: Vec<&str> = origins.iter().map(|(o, _)| *o).collect();
    let mut text = format!(
        "origins = {names:?}\ncache_dir = {:?}\ncache_fetch_timeout_ms = 5000\n{}",
        dir.join("cache"),
        musicfs_integration::CACHE_ON_ANY_DISK
    );
    for (o, extra) in origins {
        text.push_str(&format!("[origin.{o:?}]\npoll_interval_s = 1\n{extra}"));
    }
    let path = dir.join("config.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn config(dir: &Path, origins: &[&str]) -> PathBuf {
    let with: Vec<(&str, &str)> = origins.iter().map(|o| (*o, "")).collect();
    config_with(dir, &with)
}

/// The origin object (key under the origin's URL, without its query) of
/// every file of the mount.
fn origin_keys(mnt: &Path, base: &str) -> HashMap<String, PathBuf> {
    keys_of(mnt, base, true)
}

/// `origin_keys`; not `strict`: files that go while it looks are left out
/// (the tree is changing).
fn keys_of(mnt: &Path, base: &str, strict: bool) -> HashMap<String, PathBuf> {
    let files = if strict {
        list_files(mnt)
    } else {
        list_files_lenient(mnt)
    };
    files
        .into_iter()
        .filter_map(|rel| {
            let origin = getxattr(&mnt.join(&rel), "user.musicfs.origin");
            let origin = if strict { origin.unwrap() } else { origin? };
            let origin = String::from_utf8(origin).unwrap();
            let key = origin
                .strip_prefix(base)
                .unwrap_or_else(|| panic!("{} comes from {origin}, not {base}", rel.display()))
                .trim_start_matches('/')
                .to_string();
            Some((key, rel))
        })
        .collect()
}

/// Every file of the mount has the bytes of its local copy under `lib`;
/// returns how many were compared.
fn assert_bytes_match(mnt: &Path, base: &str, lib: &Path) -> usize {
    let keys = origin_keys(mnt, base);
    for (key, rel) in &keys {
        assert_eq!(
            hash_file(&mnt.join(rel)).unwrap(),
            hash_file(&lib.join(key)).unwrap(),
            "{} (object {key}) has wrong bytes",
            rel.display()
        );
    }
    keys.len()
}

/// The audio files of `lib` whose paths are UTF-8 (what a server holds).
fn audio_keys(lib: &Path) -> Vec<String> {
    let exts = ["flac", "mp3", "wav"];
    walkdir::WalkDir::new(lib)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .filter_map(|e| {
            e.path()
                .strip_prefix(lib)
                .ok()?
                .to_str()
                .map(str::to_string)
        })
        .filter(|k| {
            exts.iter()
                .any(|x| k.to_ascii_lowercase().ends_with(&format!(".{x}")))
        })
        .collect()
}

fn ffprobe_ok(path: &Path) {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "format=duration",
            "-of",
            "csv=p=0",
        ])
        .arg(path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let secs: f64 = text.trim().parse().unwrap_or(0.0);
    assert!(
        out.status.success() && secs > 1.0,
        "ffprobe {}: {text} {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn object_base(url: &str) -> String {
    url.split('?')
        .next()
        .unwrap()
        .trim_end_matches('/')
        .to_string()
}

#[test]
fn s3_library_reads_right_and_follows_listing_changes() {
    let lib = library();
    let dir = tempdir("mfs-s3");
    let s3 = S3Server::start(dir.path());
    s3.create_bucket("music");
    let keys = s3.upload_tree("music", &lib);
    let url = s3.url("music");
    let base = object_base(&url);
    let cfg = config(dir.path(), &[&url]);
    let m = Mount::start_with_config(&cfg, &S3_ENV);

    let audio = audio_keys(&lib);
    assert!(
        keys.len() >= audio.len() && audio.len() >= 10,
        "{} objects",
        audio.len()
    );
    let n = assert_bytes_match(&m.mnt, &base, &lib);
    assert_eq!(n, audio.len(), "every audio object is in the tree once");
    for (key, rel) in origin_keys(&m.mnt, &base).iter().take(6) {
        if std::fs::metadata(lib.join(key)).unwrap().len() > 0 {
            ffprobe_ok(&m.mnt.join(rel));
        }
    }
    // A second read of everything is served from the cache.
    assert_bytes_match(&m.mnt, &base, &lib);

    // Changes on the server: one object added, one replaced, one deleted.
    let mut sorted = audio.clone();
    sorted.sort();
    let (victim, replaced, donor) = (&sorted[0], &sorted[1], &sorted[2]);
    s3.put(
        "music",
        "Added/new track.flac",
        std::fs::read(lib.join(donor)).unwrap(),
    );
    let new_bytes = std::fs::read(lib.join(sorted.last().unwrap())).unwrap();
    s3.put("music", replaced, new_bytes.clone());
    s3.delete("music", victim);
    let seen = eventually(Duration::from_secs(60), || {
        let k = keys_of(&m.mnt, &base, false);
        k.contains_key("Added/new track.flac")
            && !k.contains_key(victim.as_str())
            && k.get(replaced.as_str())
                .is_some_and(|rel| std::fs::read(m.mnt.join(rel)).is_ok_and(|b| b == new_bytes))
    });
    assert!(seen, "the listing change is not visible:\n{}", m.log_text());
    let k = origin_keys(&m.mnt, &base);
    assert_eq!(
        hash_file(&m.mnt.join(&k["Added/new track.flac"])).unwrap(),
        hash_file(&lib.join(donor)).unwrap()
    );
    assert_eq!(k.len(), audio.len(), "one added, one deleted");
    assert!(
        !m.log_text().contains(S3_SECRET),
        "the secret is in the log"
    );
    m.stop();
}

#[test]
fn webdav_library_reads_right() {
    let lib = library();
    let dir = tempdir("mfs-dav");
    let export = dir.path().join("export");
    copy_tree(&lib, &export);
    let dav = DavServer::start(&export, dir.path());
    let url = dav.url();
    let cfg = config(dir.path(), &[&url]);
    let m = Mount::start_with_config(&cfg, &[]);
    let n = assert_bytes_match(&m.mnt, &object_base(&url), &export);
    assert_eq!(
        n,
        audio_keys(&export).len(),
        "every audio file is in the tree once"
    );
    for (key, rel) in origin_keys(&m.mnt, &object_base(&url)).iter().take(4) {
        if std::fs::metadata(export.join(key)).unwrap().len() > 0 {
            ffprobe_ok(&m.mnt.join(rel));
        }
    }
    m.stop();
}

#[test]
fn a_dead_server_at_start_serves_from_catalog_and_cache() {
    let lib = library();
    let dir = tempdir("mfs-s3dead");
    let mut s3 = S3Server::start(dir.path());
    s3.create_bucket("music");
    s3.upload_tree("music", &lib);
    let url = s3.url("music");
    let base = object_base(&url);
    let cfg = config(dir.path(), &[&url]);
    let state = dir.path().join("state");
    let m = Mount::start_with_config_state(&cfg, &state, &S3_ENV);
    // Read everything once: every chunk is cached.
    let n = assert_bytes_match(&m.mnt, &base, &lib);
    // The cache writer commits in batches (every few seconds) and at stop.
    m.stop();
    s3.kill();

    let m = Mount::start_with_config_state(&cfg, &state, &S3_ENV);
    assert_eq!(
        assert_bytes_match(&m.mnt, &base, &lib),
        n,
        "served from the catalog and the cache"
    );
    let st = status_json(&m.state);
    let origin = &st["origins"][0];
    let away = eventually(Duration::from_secs(30), || {
        let st = status_json(&m.state);
        st["origins"][0]["reachable"] == false
    });
    assert!(away, "the dead server is not shown: {origin}");
    m.stop();
}

#[test]
fn wrong_credentials_say_so_and_other_origins_serve() {
    let lib = library();
    let dir = tempdir("mfs-davauth");
    let export = dir.path().join("export");
    copy_tree(&lib, &export);
    let local = generated_library(6, 62);
    let port_dir = dir.path().join("srv");
    std::fs::create_dir_all(&port_dir).unwrap();
    let dav = DavServer::start_with_auth(&export, &port_dir, "alice", "right-password");
    let url = dav.url();
    let pw = dir.path().join("password");
    std::fs::write(&pw, "wrong-password\n").unwrap();
    let creds = format!("username = \"alice\"\npassword_file = {pw:?}\n");
    let cfg = config_with(dir.path(), &[(local.to_str().unwrap(), ""), (&url, &creds)]);
    let m = Mount::start_with_config(&cfg, &[]);
    // The local origin serves, right.
    let files = assert_files_match_some(&m.mnt, &local);
    assert!(files > 0);
    let said = eventually(Duration::from_secs(30), || {
        let st = status_json(&m.state);
        let o = &st["origins"][1];
        o["reachable"] == false && o["error"].as_str().is_some_and(|e| !e.is_empty())
    });
    let st = status_json(&m.state);
    assert!(said, "no clear line in the status: {}", st["origins"]);
    let error = st["origins"][1]["error"].as_str().unwrap().to_string();
    assert!(
        error.contains("denied") || error.contains("401") || error.contains("nauthori"),
        "{error}"
    );
    assert!(!error.contains("wrong-password") && !m.log_text().contains("wrong-password"));
    assert!(
        m.log_text()
            .lines()
            .any(|l| l.contains("WARN") && l.contains(&url)),
        "{}",
        m.log_text()
    );
    m.stop();
}

/// The files of the mount from `origin` (a local directory) read right;
/// returns how many.
fn assert_files_match_some(mnt: &Path, origin: &Path) -> usize {
    let mut n = 0;
    for rel in list_files(mnt) {
        let p = mnt.join(&rel);
        let o = getxattr(&p, "user.musicfs.origin").unwrap();
        let o = PathBuf::from(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(&o));
        if o.starts_with(origin) {
            assert_eq!(
                hash_file(&p).unwrap(),
                hash_file(&o).unwrap(),
                "{}",
                rel.display()
            );
            n += 1;
        }
    }
    n
}

/// Waits (bounded) until the mount's files from `base` are exactly `want`
/// (keys under the origin) and each reads the bytes of `export/KEY`.
fn wait_for_keys(m: &Mount, base: &str, export: &Path, want: &[String]) {
    let seen = eventually(Duration::from_secs(60), || {
        let k = keys_of(&m.mnt, base, false);
        k.len() == want.len()
            && want.iter().all(|key| {
                k.get(key).is_some_and(|rel| {
                    std::fs::read(m.mnt.join(rel))
                        .is_ok_and(|b| std::fs::read(export.join(key)).is_ok_and(|o| o == b))
                })
            })
    });
    assert!(
        seen,
        "the tree does not show the server's files {want:?}:\n{:?}\n{}",
        keys_of(&m.mnt, base, false).keys().collect::<Vec<_>>(),
        m.log_text()
    );
}

#[test]
fn sftp_library_reads_right_and_follows_listing_changes() {
    let lib = library();
    let dir = tempdir("mfs-sftp");
    let export = dir.path().join("export");
    copy_tree(&lib, &export);
    let sftp = SftpServer::start(&export, dir.path());
    let url = sftp.url();
    let base = object_base(&url);
    let cfg = config(dir.path(), &[&url]);
    let m = Mount::start_with_config(&cfg, &[]);
    let audio = audio_keys(&export);
    let n = assert_bytes_match(&m.mnt, &base, &export);
    assert_eq!(n, audio.len(), "every audio file is in the tree once");
    for (key, rel) in origin_keys(&m.mnt, &base).iter().take(4) {
        if std::fs::metadata(export.join(key)).unwrap().len() > 0 {
            ffprobe_ok(&m.mnt.join(rel));
        }
    }
    // The URL names the key file; its contents appear nowhere.
    let key = std::fs::read_to_string(sftp.client_key()).unwrap();
    let secret_line = key.lines().nth(1).unwrap();
    let st = status_json(&m.state).to_string();
    assert!(!st.contains(secret_line) && !m.log_text().contains(secret_line));

    // Changes on the server: one file added, one replaced, one deleted.
    let mut sorted = audio.clone();
    sorted.sort();
    let (victim, replaced, donor) = (&sorted[0], &sorted[1], &sorted[2]);
    std::fs::create_dir_all(export.join("Added")).unwrap();
    std::fs::copy(export.join(donor), export.join("Added/new track.flac")).unwrap();
    let tmp = export.join(format!("{replaced}.new"));
    std::fs::copy(export.join(sorted.last().unwrap()), &tmp).unwrap();
    std::fs::rename(&tmp, export.join(replaced)).unwrap();
    std::fs::remove_file(export.join(victim)).unwrap();
    let mut want: Vec<String> = audio.iter().filter(|k| *k != victim).cloned().collect();
    want.push("Added/new track.flac".to_string());
    wait_for_keys(&m, &base, &export, &want);
    m.stop();
}

/// An SFTP host whose key is not known, and one that refuses our key:
/// each says so in one clear status line, and the local origin serves.
#[test]
fn sftp_unknown_host_and_refused_key_say_so() {
    let lib = library();
    let dir = tempdir("mfs-sftpauth");
    let export = dir.path().join("export");
    copy_tree(&lib, &export);
    let local = generated_library(6, 62);
    let sftp = SftpServer::start(&export, dir.path());
    let empty_hosts = dir.path().join("empty_known_hosts");
    std::fs::write(&empty_hosts, "").unwrap();
    let stranger = dir.path().join("stranger_ed25519");
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&stranger)
        .output()
        .unwrap();
    assert!(out.status.success());
    let unknown = sftp.url_with(&sftp.client_key(), &empty_hosts);
    let refused = sftp.url_with(&stranger, &sftp.known_hosts());
    let cfg = config(dir.path(), &[local.to_str().unwrap(), &unknown, &refused]);
    let m = Mount::start_with_config(&cfg, &[]);
    assert!(assert_files_match_some(&m.mnt, &local) > 0);
    let said = eventually(Duration::from_secs(30), || {
        let st = status_json(&m.state);
        (1..=2).all(|i| {
            let o = &st["origins"][i];
            o["reachable"] == false && o["error"].as_str().is_some_and(|e| !e.is_empty())
        })
    });
    let st = status_json(&m.state);
    assert!(said, "no clear lines in the status: {}", st["origins"]);
    let host_error = st["origins"][1]["error"].as_str().unwrap();
    assert!(
        host_error.contains("host key") && host_error.contains("ssh-keyscan"),
        "{host_error}"
    );
    let key_error = st["origins"][2]["error"].as_str().unwrap();
    assert!(key_error.contains("refused the login"), "{key_error}");
    m.stop();

    // doctor looks at each remote origin too: the good one answers.
    let doctor = |cfg: &Path| {
        let out = Command::new(musicfs_bin())
            .arg("doctor")
            .arg("--config")
            .arg(cfg)
            .env("HOME", dir.path())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.lines()
            .find(|l| l.contains(" origins: "))
            .unwrap_or_else(|| panic!("no origins line:\n{text}"))
            .to_string()
    };
    let line = doctor(&cfg);
    assert!(
        line.starts_with("FAIL") && line.contains("ssh-keyscan") && line.contains("refused"),
        "{line}"
    );
    let good = dir.path().join("good");
    std::fs::create_dir_all(&good).unwrap();
    let line = doctor(&config(&good, &[&sftp.url()]));
    assert!(
        line.starts_with("ok") && line.contains("sftp server answers"),
        "{line}"
    );
}

/// The SFTP server killed: what was read is served from the catalog and
/// the cache, and the status shows the origin unreachable.
#[test]
fn a_dead_sftp_server_serves_what_is_cached() {
    let lib = library();
    let dir = tempdir("mfs-sftpdead");
    let export = dir.path().join("export");
    copy_tree(&lib, &export);
    let mut sftp = SftpServer::start(&export, dir.path());
    let url = sftp.url();
    let base = object_base(&url);
    let cfg = config(dir.path(), &[&url]);
    let m = Mount::start_with_config(&cfg, &[]);
    let n = assert_bytes_match(&m.mnt, &base, &export);
    sftp.kill();
    assert_eq!(assert_bytes_match(&m.mnt, &base, &export), n);
    let away = eventually(Duration::from_secs(30), || {
        status_json(&m.state)["origins"][0]["reachable"] == false
    });
    assert!(away, "{}", status_json(&m.state)["origins"]);
    m.stop();
}

//! Library views on real mounts: the status xattrs of local and cached
//! files, prefetch ahead of an album play from an sshfs share, the change
//! feed to webhooks and media servers, and mpd reading the mount.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use musicfs_integration::*;

/// Every status attribute a file carries.
const XATTRS: &[&str] = &[
    "user.musicfs.origin",
    "user.musicfs.version",
    "user.musicfs.cached",
    "user.musicfs.served_from",
    "user.musicfs.error",
    "user.musicfs.tags",
];

/// `getfattr -d -m user.musicfs FILE`: name -> value (quotes stripped).
fn getfattr_all(path: &Path) -> std::collections::BTreeMap<String, String> {
    let out = Command::new("getfattr")
        .args(["--absolute-names", "-d", "-m", "user.musicfs"])
        .arg(path)
        .output()
        .expect("getfattr (package attr) is installed");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("user.musicfs."))
        .map(|l| match l.split_once('=') {
            Some((k, v)) => (k.to_string(), v.trim_matches('"').to_string()),
            None => (l.to_string(), String::new()),
        })
        .collect()
}

fn xattr_text(path: &Path, name: &str) -> String {
    String::from_utf8(getxattr(path, name).unwrap_or_default()).unwrap()
}

/// Checks the whole set on every file of `mnt`, against the manifest of
/// `lib` (the tags) and `origin_of` (where each file comes from); returns
/// the files.
fn check_xattrs(mnt: &Path, lib: &Path, cached: bool) -> Vec<PathBuf> {
    let manifest = read_manifest(lib);
    let files = list_files(mnt);
    assert_eq!(files.len(), manifest.len());
    for rel in &files {
        let p = mnt.join(rel);
        let all = getfattr_all(&p);
        for name in XATTRS {
            assert!(
                all.contains_key(*name),
                "{}: {name} missing in {all:?}",
                rel.display()
            );
        }
        let origin = PathBuf::from(std::ffi::OsStr::from_bytes(
            &getxattr(&p, "user.musicfs.origin").unwrap(),
        ));
        assert_eq!(
            xattr_text(&p, "user.musicfs.served_from"),
            origin.to_string_lossy()
        );
        let version = xattr_text(&p, "user.musicfs.version");
        assert!(
            version.len() == 16 && u64::from_str_radix(&version, 16).is_ok_and(|v| v != 0),
            "{version}"
        );
        let cached_now = xattr_text(&p, "user.musicfs.cached");
        if cached {
            assert!(cached_now.parse::<u64>().is_ok(), "{cached_now}");
        } else {
            assert_eq!(cached_now, "local");
        }
        let tags: serde_json::Value =
            serde_json::from_slice(&getxattr(&p, "user.musicfs.tags").unwrap()).unwrap();
        let entry = manifest
            .iter()
            .find(|e| origin.as_os_str().as_bytes().ends_with(&e.raw_path()))
            .unwrap_or_else(|| panic!("{} is in no manifest line", origin.display()));
        // Whole files have no error and the manifest's tags (a broken one
        // may or may not be read, and says why when it is not).
        let error = xattr_text(&p, "user.musicfs.error");
        match entry.kind.as_str() {
            "empty" => assert!(!error.is_empty(), "{}", rel.display()),
            "normal" | "untagged" | "misnamed" => assert_eq!(error, "", "{}", rel.display()),
            _ => continue,
        }
        assert_eq!(
            tags["title"].as_str(),
            entry.tags.title.as_deref(),
            "{}",
            rel.display()
        );
        assert_eq!(
            tags["album"].as_str(),
            entry.tags.album.as_deref(),
            "{}",
            rel.display()
        );
    }
    files
}

/// A file of `files` the generator made whole and tagged.
fn normal_file(mnt: &Path, lib: &Path, files: &[PathBuf]) -> PathBuf {
    let manifest = read_manifest(lib);
    files
        .iter()
        .find(|rel| {
            let origin = getxattr(&mnt.join(rel), "user.musicfs.origin").unwrap();
            manifest
                .iter()
                .any(|e| e.kind == "normal" && origin.ends_with(&e.raw_path()))
        })
        .expect("a normal file")
        .clone()
}

/// The status xattrs of files on a local disk: the whole set, `cached` is
/// `local`; a file whose origin went away gets its last error, with a time.
#[test]
fn xattrs_of_local_files() {
    let lib = generated_library(6, 1501);
    let origin = tempfile::tempdir().unwrap();
    copy_tree(&lib, origin.path());
    let m = Mount::start(&[origin.path()]);
    let files = check_xattrs(&m.mnt, &lib, false);
    // A file removed behind the engine's back (watch off: the catalog still
    // lists it) fails to open, and says so.
    drop(m);
    let m = Mount::start_with(&[origin.path()], None, &[("MUSICFS_WATCH", "off")]);
    let victim = m.mnt.join(normal_file(&m.mnt, &lib, &files));
    let origin_file = PathBuf::from(std::ffi::OsStr::from_bytes(
        &getxattr(&victim, "user.musicfs.origin").unwrap(),
    ));
    std::fs::remove_file(&origin_file).unwrap();
    assert!(std::fs::read(&victim).is_err());
    let error = xattr_text(&victim, "user.musicfs.error");
    assert!(error.contains(" UTC: open "), "{error}");
    assert!(error.contains("No such file"), "{error}");
    assert!(m.stop().success());
}

/// `lib` on an sshfs share, and a config in a temporary directory that
/// mounts it through a chunk cache there.
fn cached_share(lib: &Path) -> (tempfile::TempDir, SshShare, PathBuf) {
    let root = tempfile::Builder::new()
        .prefix("mfs-views")
        .tempdir_in("/tmp")
        .unwrap();
    let share = SshShare::start(lib);
    let config = root.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "origins = [{:?}]\ncache_dir = {:?}\n# The test disk is shared: no eviction by free space.\ncache_min_free_percent = 0\n",
            share.mountpoint(),
            root.path().join("cache")
        ),
    )
    .unwrap();
    (root, share, config)
}

/// The same on files of an sshfs share, read through the chunk cache:
/// `cached` counts the bytes in the cache, and grows to the file's size
/// once it was read.
#[test]
fn xattrs_of_cached_files() {
    let lib = generated_library(4, 1502);
    let (_root, _share, config) = cached_share(&lib);
    let m = Mount::start_with_config(&config, &[]);
    let files = check_xattrs(&m.mnt, &lib, true);
    let p = m.mnt.join(normal_file(&m.mnt, &lib, &files));
    let size = std::fs::metadata(&p).unwrap().len();
    std::fs::read(&p).unwrap();
    assert!(
        eventually(Duration::from_secs(10), || xattr_text(
            &p,
            "user.musicfs.cached"
        )
        .parse::<u64>()
        .is_ok_and(|n| n == size)),
        "cached {} of {size}",
        xattr_text(&p, "user.musicfs.cached")
    );
    assert!(m.stop().success());
}

fn musicfs(args: &[&str], state: &Path) {
    let out = Command::new(musicfs_bin())
        .args(args)
        .arg("--state-dir")
        .arg(state)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "musicfs {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn cached_bytes(p: &Path) -> u64 {
    xattr_text(p, "user.musicfs.cached").parse().unwrap_or(0)
}

/// A sequential play of an album from an sshfs share, with an empty chunk
/// cache: each open of track N fetches the heads of N+1 and N+2 (and no
/// further) into the cache before they are opened, as the `cached` xattr
/// shows.
#[test]
fn prefetch_fills_the_cache_ahead_of_an_album_play() {
    const HEAD: u64 = 256 * 1024;
    let lib = generated_library_with(
        16,
        41,
        &["--seconds", "12", "--formats", "wav=2,flac=1,mp3=1"],
    );
    let (_root, _share, config) = cached_share(&lib);
    let m = Mount::start_with_config(
        &config,
        &[("MUSICFS_LOG", "info,musicfs_engine::serve::prefetch=debug")],
    );
    // The album with the most tracks.
    let files = list_files(&m.mnt);
    let mut by_dir: std::collections::BTreeMap<PathBuf, Vec<PathBuf>> = Default::default();
    for f in &files {
        by_dir
            .entry(f.parent().unwrap().to_path_buf())
            .or_default()
            .push(m.mnt.join(f));
    }
    let album = by_dir.into_values().max_by_key(Vec::len).unwrap();
    assert!(album.len() >= 4, "{album:?}");
    // The scan cached every head: start from an empty cache.
    musicfs(&["cache", "clear"], &m.state);
    assert!(eventually(Duration::from_secs(10), || album
        .iter()
        .all(|p| cached_bytes(p) == 0)));
    let t = std::time::Instant::now();
    for (n, track) in album.iter().enumerate() {
        let before: Vec<u64> = album.iter().map(|p| cached_bytes(p)).collect();
        let data = std::fs::read(track).unwrap();
        assert_eq!(data.len() as u64, std::fs::metadata(track).unwrap().len());
        for next in album.iter().skip(n + 1).take(2) {
            let want = std::fs::metadata(next).unwrap().len().min(HEAD);
            assert!(
                eventually(Duration::from_secs(10), || cached_bytes(next) >= want),
                "track {} after opening track {n}: {} of {want} bytes cached\n{}",
                next.display(),
                cached_bytes(next),
                m.log_text()
            );
        }
        println!(
            "prefetch: before track {n}: cached {before:?}; after it: {:?}",
            album.iter().map(|p| cached_bytes(p)).collect::<Vec<_>>()
        );
        if n == 0 {
            // N+3 is not fetched ahead.
            assert_eq!(cached_bytes(&album[3]), 0, "{}", album[3].display());
        }
    }
    println!(
        "prefetch: album of {} tracks played in {:?}",
        album.len(),
        t.elapsed()
    );
    let counters = &status_json(&m.state)["counters"];
    println!("prefetch: counters {counters}");
    let prefetched = counters
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c[0] == "prefetched")
        .and_then(|c| c[1].as_u64())
        .unwrap();
    // Every track's head but the first was fetched ahead (a head whose
    // chunk was still on its way to the cache disk may be fetched twice).
    assert!(prefetched >= album.len() as u64 - 1, "{prefetched}");
    // Switched off (a reload): opening a track fetches nothing ahead.
    std::fs::write(
        &config,
        std::fs::read_to_string(&config).unwrap() + "prefetch_tracks = 0\n",
    )
    .unwrap();
    musicfs(&["reload"], &m.state);
    musicfs(&["cache", "clear"], &m.state);
    assert!(eventually(Duration::from_secs(10), || album
        .iter()
        .all(|p| cached_bytes(p) == 0)));
    std::fs::read(&album[0]).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        cached_bytes(&album[1]),
        0,
        "prefetched with prefetch_tracks = 0"
    );
    assert!(m.stop().success());
}

/// One mpd command over its protocol: the answer's `key: value` lines.
fn mpd_command(port: u16, cmd: &str) -> Vec<(String, String)> {
    use std::io::{BufRead, BufReader, Write};
    let s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert!(line.starts_with("OK MPD"), "{line}");
    (&s).write_all(format!("{cmd}\n").as_bytes()).unwrap();
    let mut out = Vec::new();
    let mut raw = Vec::new();
    loop {
        // File names on the origin may be any bytes.
        raw.clear();
        assert!(
            r.read_until(b'\n', &mut raw).unwrap() > 0,
            "mpd closed the connection"
        );
        let line = String::from_utf8_lossy(&raw).into_owned();
        let l = line.trim_end_matches('\n');
        if l == "OK" {
            return out;
        }
        assert!(!l.starts_with("ACK"), "{cmd}: {l}");
        if let Some((k, v)) = l.split_once(": ") {
            out.push((k.to_string(), v.to_string()));
        }
    }
}

type Songs = std::collections::BTreeMap<String, std::collections::BTreeMap<String, String>>;

/// Runs mpd on `music` (a private port on 127.0.0.1, a temporary config),
/// builds its database with `mpc update --wait`, and returns every song
/// with its tags (`listallinfo`), and how long the update took.
fn mpd_songs(music: &Path) -> (Songs, Duration) {
    let dir = tempfile::Builder::new()
        .prefix("mfs-mpd")
        .tempdir_in("/tmp")
        .unwrap();
    let d = dir.path();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let conf = d.join("mpd.conf");
    std::fs::write(
        &conf,
        format!(
            "music_directory {music:?}\ndb_file {:?}\nlog_file {:?}\npid_file {:?}\nstate_file {:?}\n\
             bind_to_address \"127.0.0.1\"\nport \"{port}\"\nauto_update \"no\"\nzeroconf_enabled \"no\"\n\
             audio_output {{\n type \"null\"\n name \"null\"\n}}\n",
            d.join("db"),
            d.join("log"),
            d.join("pid"),
            d.join("state"),
        ),
    )
    .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _mpd = Kill(
        Command::new("mpd")
            .arg("--no-daemon")
            .arg(&conf)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("mpd (Debian package mpd) is installed"),
    );
    assert!(
        eventually(Duration::from_secs(20), || std::net::TcpStream::connect((
            "127.0.0.1",
            port
        ))
        .is_ok()),
        "mpd did not listen: {}",
        std::fs::read_to_string(d.join("log")).unwrap_or_default()
    );
    let t = std::time::Instant::now();
    let out = Command::new("mpc")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "update",
            "--wait",
        ])
        .output()
        .expect("mpc is installed");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let took = t.elapsed();
    let mut songs = Songs::new();
    let mut current: Option<String> = None;
    for (k, v) in mpd_command(port, "listallinfo") {
        match k.as_str() {
            "file" => {
                songs.insert(v.clone(), Default::default());
                current = Some(v);
            }
            "directory" | "playlist" => current = None,
            // When mpd scanned it, not what the file says.
            "Last-Modified" | "Added" => {}
            _ => {
                if let Some(f) = &current {
                    songs.get_mut(f).unwrap().insert(k, v);
                }
            }
        }
    }
    (songs, took)
}

/// mpd (Debian's), with its music directory on the mount, builds its
/// database from it (`mpc update --wait`) and lists every track with the
/// tags it reads from the same files on the origin, and those of the
/// generator's manifest where mpd reads that format's tags.
#[test]
fn mpd_reads_the_library_from_the_mount() {
    let lib = generated_library(24, 1504);
    let m = Mount::start(&[&lib]);
    let (on_mount, took) = mpd_songs(&m.mnt);
    let (on_origin, _) = mpd_songs(&lib);
    println!(
        "mpd: database of the mount ({} songs) built in {took:?}",
        on_mount.len()
    );
    let manifest = read_manifest(&lib);
    let mut with_tags = 0;
    let files = list_files(&m.mnt);
    for rel in &files {
        let origin = getxattr(&m.mnt.join(rel), "user.musicfs.origin").unwrap();
        let origin_rel = String::from_utf8_lossy(&origin[lib.as_os_str().len() + 1..]).into_owned();
        let name = rel.to_string_lossy().into_owned();
        let Some(want) = on_origin.get(&origin_rel) else {
            // mpd skips it on the origin too (a file it cannot decode).
            assert!(!on_mount.contains_key(&name), "{name}");
            continue;
        };
        let got = on_mount
            .get(&name)
            .unwrap_or_else(|| panic!("mpd does not list {name}; it lists {:#?}", on_mount.keys()));
        assert_eq!(got, want, "{name} (origin {origin_rel})");
        let e = manifest
            .iter()
            .find(|e| origin.ends_with(&e.raw_path()))
            .unwrap();
        if e.kind == "normal" && want.contains_key("Title") {
            // mpd leaves out empty tags.
            let norm =
                |v: Option<&String>| v.map(|s| s.trim().to_string()).filter(|s| !s.is_empty());
            assert_eq!(
                norm(got.get("Title")),
                norm(e.tags.title.as_ref()),
                "{name}"
            );
            assert_eq!(
                norm(got.get("Album")),
                norm(e.tags.album.as_ref()),
                "{name}"
            );
            assert_eq!(
                norm(got.get("Artist")),
                norm(e.tags.artist.as_ref()),
                "{name}"
            );
            with_tags += 1;
        }
    }
    assert_eq!(on_mount.len(), on_origin.len());
    println!(
        "mpd: {} of {} tracks listed, {with_tags} checked against the manifest",
        on_mount.len(),
        files.len()
    );
    assert!(with_tags >= 10, "{with_tags}");
    assert!(m.stop().success());
}

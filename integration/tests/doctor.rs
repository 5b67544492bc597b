//! `musicfs doctor` on this machine, and the generated completions and man
//! pages. No mount: doctor only looks.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use musicfs_integration::musicfs_bin;

/// A temporary directory under /tmp that uid 65534 may enter, with an
/// origin of 30 directories (its root and 29 below it), a state and a
/// cache directory owned by 65534, and a config file naming them.
struct Setup {
    root: tempfile::TempDir,
}

impl Setup {
    fn new(allow_other: bool) -> Setup {
        let root = tempfile::Builder::new()
            .prefix("mfs-doctor")
            .tempdir_in("/tmp")
            .unwrap();
        std::fs::set_permissions(root.path(), PermissionsExt::from_mode(0o755)).unwrap();
        let origin = root.path().join("origin");
        for artist in 0..4 {
            for album in 0..6 {
                let dir = origin.join(format!("artist {artist}/album {album}"));
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(dir.join("01 track.flac"), b"not really flac").unwrap();
            }
        }
        // root + 4 artists + 24 albums = 29; one more:
        std::fs::create_dir(origin.join("singles")).unwrap();
        let (state, cache) = (root.path().join("state"), root.path().join("cache"));
        for d in [&state, &cache] {
            std::fs::create_dir(d).unwrap();
            std::os::unix::fs::chown(d, Some(65534), Some(65534)).unwrap();
        }
        std::fs::write(
            root.path().join("config.toml"),
            format!(
                "allow_other = {allow_other}\norigins = [{origin:?}]\nstate_dir = {state:?}\ncache_dir = {cache:?}\n"
            ),
        )
        .unwrap();
        Setup { root }
    }

    fn config(&self) -> std::path::PathBuf {
        self.root.path().join("config.toml")
    }

    /// `musicfs --config CONFIG doctor ARGS`, through `prefix` (setpriv ...)
    /// if given, with HOME and XDG_CONFIG_HOME in the temporary directory
    /// (no user configuration is read).
    fn doctor(&self, prefix: &[&str], args: &[&str]) -> Output {
        let mut cmd = match prefix.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(musicfs_bin());
                c
            }
            None => Command::new(musicfs_bin()),
        };
        cmd.arg("--config")
            .arg(self.config())
            .arg("doctor")
            .args(args)
            .env("HOME", self.root.path())
            .env("XDG_CONFIG_HOME", self.root.path().join("xdg"))
            .env_remove("MUSICFS_CONFIG")
            .env_remove("MUSICFS_LOG");
        cmd.output().expect("run musicfs doctor")
    }
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn lines(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

fn fuse_conf_allows_other() -> bool {
    std::fs::read_to_string("/etc/fuse.conf").is_ok_and(|t| {
        t.lines()
            .any(|l| l.split('#').next().unwrap_or_default().trim() == "user_allow_other")
    })
}

/// As uid 65534 with `allow_other = true`: /etc/fuse.conf here has
/// `user_allow_other` commented out, so that check fails and says what to
/// do, and the exit status is 1.
#[test]
fn a_user_without_user_allow_other_is_told_what_to_do() {
    let setup = Setup::new(true);
    let out = setup.doctor(
        &[
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
        ],
        &[],
    );
    let all = text(&out);
    let lines = lines(&out);
    let line = lines
        .iter()
        .find(|l| l.contains(" user_allow_other: "))
        .unwrap_or_else(|| panic!("no user_allow_other line:\n{all}"));
    if fuse_conf_allows_other() {
        // Not this machine's setup: then the check passes.
        assert!(line.starts_with("ok   "), "{all}");
        return;
    }
    assert!(line.starts_with("FAIL user_allow_other: "), "{all}");
    assert!(
        line.contains("add a line user_allow_other to /etc/fuse.conf"),
        "the line does not say what to do:\n{all}"
    );
    assert_eq!(out.status.code(), Some(1), "{all}");
    // The state and cache directories belong to 65534: those pass (a
    // warning that the host's disk is nearly full is a pass too).
    for check in ["state_dir", "cache_dir", "origins"] {
        let l = lines
            .iter()
            .find(|l| l.contains(&format!(" {check}: ")))
            .unwrap_or_else(|| panic!("no {check} line:\n{all}"));
        let low_disk = l.starts_with("warn ") && l.contains("on its disk: free some space");
        assert!(l.starts_with("ok   ") || low_disk, "{all}");
    }
    // Every line is one check with a status.
    for l in &lines {
        assert!(
            ["ok   ", "warn ", "FAIL "].iter().any(|s| l.starts_with(s)),
            "{l:?} in\n{all}"
        );
    }
}

/// As root with a normal configuration: every line is ok or warn (what
/// this machine cannot offer, fusectl not mounted, is a warning), the exit
/// status 0; the inotify line counts the origin's 30 directories.
#[test]
fn root_with_a_normal_config_passes() {
    let setup = Setup::new(false);
    let out = setup.doctor(&[], &[]);
    let all = text(&out);
    println!("{all}");
    let lines = lines(&out);
    assert!(lines.len() >= 10, "{all}");
    for l in &lines {
        assert!(
            l.starts_with("ok   ") || l.starts_with("warn "),
            "{l:?} is neither ok nor warn:\n{all}"
        );
    }
    assert!(out.status.success(), "{all}");
    let inotify = lines.iter().find(|l| l.contains(" inotify: ")).unwrap();
    assert!(
        inotify.contains("30 directories to watch in 1 origin"),
        "{all}"
    );
}

#[test]
fn json_lists_every_check() {
    let setup = Setup::new(false);
    let out = setup.doctor(&[], &["--json"]);
    let all = text(&out);
    let checks: serde_json::Value = serde_json::from_slice(&out.stdout).expect(&all);
    let checks = checks.as_array().expect(&all);
    let names: Vec<&str> = checks
        .iter()
        .map(|c| c["check"].as_str().unwrap())
        .collect();
    for name in [
        "fuse3",
        "/dev/fuse",
        "user_allow_other",
        "origins",
        "inotify",
        "passthrough",
        "notify_resend",
        "fusectl",
        "state_dir",
        "cache_dir",
    ] {
        assert!(names.contains(&name), "{name} missing:\n{all}");
    }
    for c in checks {
        let status = c["status"].as_str().unwrap();
        assert!(["ok", "warn", "fail"].contains(&status), "{all}");
        assert!(!c["detail"].as_str().unwrap().is_empty(), "{all}");
    }
    let inotify = checks.iter().find(|c| c["check"] == "inotify").unwrap();
    assert!(
        inotify["detail"]
            .as_str()
            .unwrap()
            .starts_with("30 directories"),
        "{all}"
    );
}

fn run(args: &[&str]) -> Output {
    let out = Command::new(musicfs_bin()).args(args).output().unwrap();
    assert!(out.status.success(), "musicfs {args:?}: {}", text(&out));
    out
}

#[test]
fn completions_and_man_pages_are_generated() {
    for shell in ["bash", "zsh", "fish"] {
        let out = run(&["completions", shell]);
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(
            script.contains("doctor") && script.contains("mount"),
            "{shell}: {script}"
        );
    }
    let out = run(&["manpage"]);
    let page = String::from_utf8_lossy(&out.stdout);
    assert!(
        page.starts_with(".ie") || page.contains(".TH musicfs"),
        "{page}"
    );
    assert!(page.contains("doctor"), "{page}");

    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("man1");
    run(&["manpage", "--out", out_dir.to_str().unwrap()]);
    let has = |name: &str| Path::new(&out_dir).join(name).is_file();
    for page in [
        "musicfs.1",
        "musicfs-mount.1",
        "musicfs-doctor.1",
        "musicfs-cache.1",
        "musicfs-cache-status.1",
    ] {
        assert!(has(page), "{page} was not written");
    }
    for hidden in [
        "musicfs-completions.1",
        "musicfs-manpage.1",
        "musicfs-help.1",
    ] {
        assert!(!has(hidden), "{hidden} was written");
    }
}

//! Operating a mount: status, metrics and shutdown over the control plane.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use musicfs_integration::*;

fn musicfs(args: &[&str], state: &Path) -> (bool, String, String) {
    let out = Command::new(musicfs_bin())
        .args(args)
        .arg("--state-dir")
        .arg(state)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Status (table and JSON) and metrics report an origin that went away.
#[test]
fn status_and_metrics_show_an_origin_that_went_away() {
    let src = generated_library(2000, 7);
    let e = read_manifest(&src)
        .into_iter()
        .find(|e| e.kind == "normal")
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    for o in [&a, &b] {
        std::fs::create_dir(o).unwrap();
        std::fs::copy(
            src.join(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(&e.raw_path())),
            o.join(format!("x.{}", e.ext)),
        )
        .unwrap();
    }
    let m = Mount::start_with(&[&a, &b], None, &[]);
    // Every socket is the owner's only (the supervisor's takes `swap BINARY`).
    for sock in ["engine.sock", "control.sock", "supervisor.sock"] {
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(m.state.join(sock)).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600, "{sock} has mode {mode:o}");
    }
    let (ok, out, err) = musicfs(&["status", "--json"], &m.state);
    assert!(ok, "{err}");
    let st: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(st["files"], 2, "{out}");
    assert_eq!(st["connected_shims"], 1, "{out}");
    assert!(
        st["origins"]
            .as_array()
            .unwrap()
            .iter()
            .all(|o| o["reachable"] == true),
        "{out}"
    );
    assert!(
        st["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["running"] == true),
        "{out}"
    );

    std::fs::rename(&b, dir.path().join("b-gone")).unwrap();
    let (ok, out, _) = musicfs(&["status", "--json"], &m.state);
    assert!(ok);
    let st: serde_json::Value = serde_json::from_str(&out).unwrap();
    let gone = st["origins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["path"] == b.to_str().unwrap())
        .expect("origin b listed");
    assert_eq!(gone["reachable"], false, "{out}");
    let (ok, table, _) = musicfs(&["status"], &m.state);
    assert!(ok && table.contains("UNREACHABLE"), "{table}");
    let (ok, metrics, _) = musicfs(&["metrics"], &m.state);
    assert!(ok);
    assert!(
        metrics.contains(&format!(
            "musicfs_origin_reachable{{origin=\"{}\"}} 0",
            b.display()
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "musicfs_origin_reachable{{origin=\"{}\"}} 1",
            a.display()
        )),
        "{metrics}"
    );
    assert!(metrics.contains("musicfs_files 2"), "{metrics}");
    assert!(m.stop().success());
}

/// `musicfs shutdown` stops a mount in order; afterwards status says clearly
/// that nothing runs.
#[test]
fn shutdown_stops_the_mount_and_status_says_nothing_runs() {
    let lib = generated_library(2000, 7);
    let mut m = Mount::start_with(&[&lib], None, &[]);
    let (ok, out, err) = musicfs(&["shutdown"], &m.state);
    assert!(ok, "shutdown failed: {out}{err}");
    assert!(
        eventually(Duration::from_secs(20), || !is_mountpoint(&m.mnt)),
        "still mounted after shutdown"
    );
    let status = m.stop_with_signal(0);
    assert!(status.success(), "musicfs mount exited with {status}");
    // Every client says so at once; `events --follow` does not wait.
    for args in [
        &["status"][..],
        &["metrics"],
        &["events"],
        &["events", "--follow"],
        &["reload"],
        &["shutdown"],
    ] {
        let t = std::time::Instant::now();
        let (ok, _, err) = musicfs(args, &m.state);
        assert!(!ok, "{args:?} succeeded with nothing running");
        assert!(
            err.contains("no engine is running"),
            "{args:?} unclear: {err}"
        );
        assert!(t.elapsed() < Duration::from_secs(10), "{args:?} waited");
    }
}

fn status_json(state: &Path) -> serde_json::Value {
    let (ok, out, err) = musicfs(&["status", "--json"], state);
    assert!(ok, "status failed: {err}");
    serde_json::from_str(&out).unwrap()
}

/// One small origin: `files` copies of a real generated track, in `dir`.
fn small_origin(dir: &Path, files: usize, tag: &str) {
    let src = generated_library(2000, 7);
    let e = read_manifest(&src)
        .into_iter()
        .find(|e| e.kind == "normal" && e.ext == "mp3")
        .unwrap();
    let from =
        src.join(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(&e.raw_path()));
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..files {
        std::fs::copy(&from, dir.join(format!("{tag}-{i}.mp3"))).unwrap();
    }
}

/// Every file name in the mount whose name contains `needle`.
fn names_with(mnt: &Path, needle: &str) -> Vec<String> {
    list_files_lenient(mnt)
        .into_iter()
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .filter(|n| n.contains(needle))
        .collect()
}

/// SIGTERM while readers and a walker are busy: `musicfs mount` exits 0 in
/// order (shim, then engine), leaves no mount and no process behind, and the
/// catalog was closed cleanly (the next engine has nothing to recover). The
/// same check after a kill -9 says "unclean", so it can fail.
#[test]
fn sigterm_under_read_load_stops_in_order_and_closes_the_catalog() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let lib = generated_library(2000, 7);
    let mut m = Mount::start_with(&[&lib], None, &[]);
    let files: Vec<_> = list_files(&m.mnt).iter().map(|f| m.mnt.join(f)).collect();
    assert!(files.len() >= 1000);
    let stop = Arc::new(AtomicBool::new(false));
    let bytes = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for r in 0..4 {
        let (files, stop, bytes) = (files.clone(), stop.clone(), bytes.clone());
        workers.push(std::thread::spawn(move || {
            for f in files.iter().skip(r * 97).cycle() {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                // Errors are expected once the mount goes away.
                if let Ok(data) = std::fs::read(f) {
                    bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
                }
            }
        }));
    }
    {
        let (mnt, stop) = (m.mnt.clone(), stop.clone());
        workers.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let _ = list_files_lenient(&mnt);
            }
        }));
    }
    std::thread::sleep(Duration::from_millis(1500));
    let before = bytes.load(Ordering::Relaxed);
    assert!(before > 0, "no load before the signal");
    let status = m.stop_with_signal(libc::SIGTERM);
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    let log = m.log_text();
    assert!(status.success(), "exit status {status}:\n{log}");
    assert!(!is_mountpoint(&m.mnt), "still mounted:\n{log}");
    assert!(std::fs::read_dir(&m.mnt).is_ok(), "mountpoint left broken");
    let state = m.state.to_string_lossy().into_owned();
    assert!(
        pids_with_cmdline(&state).is_empty(),
        "processes left behind: {:?}",
        pids_with_cmdline(&state)
    );
    assert!(log.contains("catalog closed cleanly"), "{log}");
    let (shim_stop, engine_stop) = (
        log.find("musicfs_shim: SIGTERM: stopping")
            .expect("shim stop logged"),
        log.find("engine stopping").expect("engine stop logged"),
    );
    assert!(
        shim_stop < engine_stop,
        "the engine stopped before the shim:\n{log}"
    );

    // The next engine finds a clean catalog...
    let log_path = m.root.path().join("engine2.log");
    let mut e = EngineProc::start(&lib, &m.state, &log_path, &[("MUSICFS_LOG", "info")]);
    e.wait_log("engine ready", 1, Duration::from_secs(60));
    let st = status_json(&m.state);
    assert_eq!(st["catalog_previous_close"], "clean", "{st}");
    // ...and after a kill -9, the one after it does not.
    e.kill9();
    let mut e = EngineProc::start(&lib, &m.state, &log_path, &[("MUSICFS_LOG", "info")]);
    e.wait_log("engine ready", 1, Duration::from_secs(60));
    let st = status_json(&m.state);
    assert_eq!(st["catalog_previous_close"], "unclean", "{st}");
    assert!(e.stop().success());
}

/// SIGHUP with a broken configuration: refused with one clear log line, the
/// old configuration keeps serving; `musicfs reload` says why and fails.
#[test]
fn sighup_with_a_broken_config_keeps_the_old_one() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    small_origin(&a, 3, "alpha");
    let cfg = dir.path().join("musicfs.toml");
    let good = format!("origins = [{:?}]\ntemplate = \"{{filename}}.{{ext}}\"\n", a);
    std::fs::write(&cfg, &good).unwrap();
    let m = Mount::start_with_config(&cfg, &[]);
    assert_eq!(names_with(&m.mnt, "alpha").len(), 3);

    // Not TOML at all.
    std::fs::write(&cfg, "origins = [unclosed\n").unwrap();
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(m.pid() as i32, libc::SIGHUP) };
    assert!(
        eventually(Duration::from_secs(10), || m
            .log_text()
            .contains("reload refused, the running configuration stays")),
        "no refusal logged:\n{}",
        m.log_text()
    );
    assert_eq!(
        names_with(&m.mnt, "alpha").len(),
        3,
        "the old config stopped serving"
    );

    // Valid TOML, bad values: a missing origin, a bad template.
    for (bad, why) in [
        (
            format!(
                "origins = [{:?}]\ntemplate = \"{{filename}}.{{ext}}\"\n",
                dir.path().join("nope")
            ),
            "nope",
        ),
        (
            format!("origins = [{:?}]\ntemplate = \"{{nosuch}}\"\n", a),
            "nosuch",
        ),
    ] {
        std::fs::write(&cfg, &bad).unwrap();
        let (ok, out, err) = musicfs(&["reload"], &m.state);
        assert!(!ok, "a broken config was accepted: {out}");
        assert!(err.contains(why), "the error does not say why: {err}");
        assert!(err.contains("running configuration stays"), "{err}");
    }
    assert_eq!(names_with(&m.mnt, "alpha").len(), 3);
    let st = status_json(&m.state);
    assert_eq!(st["origins"].as_array().unwrap().len(), 1, "{st}");

    // Fixed again: the reload goes through.
    std::fs::write(&cfg, &good).unwrap();
    let (ok, out, err) = musicfs(&["reload"], &m.state);
    assert!(ok, "{out}{err}");
    assert!(m.stop().success());
}

/// SIGHUP that adds an origin makes its files appear; a reload that removes
/// one makes them go; a template change re-lays the tree out; cold fields
/// are named, not applied.
#[test]
fn sighup_adding_an_origin_shows_its_files() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    small_origin(&a, 3, "alpha");
    small_origin(&b, 4, "bravo");
    let cfg = dir.path().join("musicfs.toml");
    let by_name = "template = \"{filename}.{ext}\"\n";
    std::fs::write(&cfg, format!("origins = [{:?}]\n{by_name}", a)).unwrap();
    let m = Mount::start_with_config(&cfg, &[]);
    assert_eq!(names_with(&m.mnt, "alpha").len(), 3);
    assert_eq!(names_with(&m.mnt, "bravo").len(), 0);

    std::fs::write(&cfg, format!("origins = [{:?}, {:?}]\n{by_name}", a, b)).unwrap();
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(m.pid() as i32, libc::SIGHUP) };
    assert!(
        eventually(Duration::from_secs(15), || names_with(&m.mnt, "bravo")
            .len()
            == 4),
        "the new origin's files did not appear:\n{}",
        m.log_text()
    );
    assert_eq!(names_with(&m.mnt, "alpha").len(), 3);
    let st = status_json(&m.state);
    assert_eq!(st["origins"].as_array().unwrap().len(), 2, "{st}");
    assert_eq!(st["files"], 7, "{st}");

    // Remove a, change the template and two cold fields in one reload.
    std::fs::write(
        &cfg,
        format!(
            "origins = [{:?}]\ntemplate = \"flat/{{filename}}.{{ext}}\"\nallow_other = true\nlog_level = \"debug\"\n",
            b
        ),
    )
    .unwrap();
    let (ok, out, err) = musicfs(&["reload"], &m.state);
    assert!(ok, "{out}{err}");
    for applied in ["origins", "template", "log_level"] {
        assert!(out.contains(applied), "{applied} not applied: {out}");
    }
    assert!(
        out.contains("after a restart: allow_other"),
        "the cold field is not named: {out}"
    );
    assert!(
        eventually(Duration::from_secs(15), || names_with(&m.mnt, "alpha")
            .is_empty()),
        "the removed origin's files stayed"
    );
    let flat: Vec<String> = std::fs::read_dir(m.mnt.join("flat"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(flat.len(), 4, "{flat:?}");
    assert!(flat.iter().all(|n| n.starts_with("bravo-")), "{flat:?}");
    let st = status_json(&m.state);
    assert_eq!(st["template"], "flat/{filename}.{ext}", "{st}");

    // A SIGHUP sent to the engine (as `systemctl reload` or a habit would)
    // reaches the supervisor, which owns the configuration: a comes back.
    std::fs::write(
        &cfg,
        format!(
            "origins = [{:?}, {:?}]\ntemplate = \"flat/{{filename}}.{{ext}}\"\n",
            b, a
        ),
    )
    .unwrap();
    let engine_pid = st["pid"].as_i64().unwrap();
    assert_ne!(engine_pid, i64::from(m.pid()));
    // SAFETY: plain kill(2) on the engine this test's mount started.
    unsafe { libc::kill(engine_pid as i32, libc::SIGHUP) };
    assert!(
        eventually(Duration::from_secs(15), || {
            std::fs::read_dir(m.mnt.join("flat")).is_ok_and(|d| d.count() == 7)
        }),
        "a SIGHUP to the engine did not reload:\n{}",
        m.log_text()
    );
    assert!(m.log_text().contains("passed on to it"), "{}", m.log_text());
    assert!(m.stop().success());
}

/// Under systemd the engine runs alone with `--config`: SIGHUP makes it
/// reload its own configuration files.
#[test]
fn engine_alone_reloads_its_config_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    small_origin(&a, 2, "alpha");
    small_origin(&b, 5, "bravo");
    let cfg = dir.path().join("engine.toml");
    std::fs::write(&cfg, format!("origins = [{:?}]\n", a)).unwrap();
    let state = dir.path().join("state");
    let log = dir.path().join("engine.log");
    let args = [
        "--config".as_ref(),
        cfg.as_os_str(),
        "engine".as_ref(),
        "--state-dir".as_ref(),
        state.as_os_str(),
    ];
    let mut e = EngineProc::start_args(&args, &state, &log, &[("MUSICFS_LOG", "info")]);
    e.wait_log("engine ready", 1, Duration::from_secs(60));
    assert_eq!(status_json(&state)["files"], 2);
    std::fs::write(&cfg, format!("origins = [{:?}, {:?}]\n", a, b)).unwrap();
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(e.child.id() as i32, libc::SIGHUP) };
    assert!(
        eventually(Duration::from_secs(15), || status_json(&state)["files"]
            == 7),
        "{}",
        e.log_text()
    );
    assert!(
        e.log_text()
            .contains("configuration reloaded: applied: origins")
    );
    // Cache limits are hot: they apply at once and status shows them.
    // `cache` is a list of [name, value] pairs.
    let cache = |st: &serde_json::Value, name: &str| {
        st["cache"]
            .as_array()?
            .iter()
            .find(|p| p[0] == name)
            .and_then(|p| p[1].as_u64())
    };
    let st = status_json(&state);
    assert_eq!(cache(&st, "listing_cache_limit"), Some(262_144), "{st}");
    assert_eq!(cache(&st, "open_files_max"), Some(256), "{st}");
    std::fs::write(
        &cfg,
        format!("origins = [{a:?}, {b:?}]\nlisting_cache_entries = 3\nopen_files_max = 2\n"),
    )
    .unwrap();
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(e.child.id() as i32, libc::SIGHUP) };
    e.wait_log(
        "applied: listing_cache_entries, open_files_max",
        1,
        Duration::from_secs(15),
    );
    let st = status_json(&state);
    assert_eq!(cache(&st, "listing_cache_limit"), Some(3), "{st}");
    assert_eq!(cache(&st, "open_files_max"), Some(2), "{st}");
    assert!(cache(&st, "listing_cache_entries").unwrap() <= 7, "{st}");
    // A broken configuration on this path is refused whole: everything is
    // validated before anything applies, so the template and log level
    // that came with the missing origin do not apply.
    let template_before = status_json(&state)["template"].clone();
    std::fs::write(
        &cfg,
        format!(
            "origins = [{:?}, {:?}]\ntemplate = \"flat/{{filename}}.{{ext}}\"\nlog_level = \"debug\"\n",
            a,
            dir.path().join("missing")
        ),
    )
    .unwrap();
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(e.child.id() as i32, libc::SIGHUP) };
    e.wait_log("reload refused", 1, Duration::from_secs(15));
    let st = status_json(&state);
    assert_eq!(st["template"], template_before, "{st}");
    assert_eq!(st["files"], 7, "{st}");
    assert_eq!(st["origins"].as_array().unwrap().len(), 2, "{st}");
    assert!(!e.log_text().contains("DEBUG"), "the log level changed");
    assert!(e.stop().success());
    assert!(
        e.log_text().contains("catalog closed cleanly"),
        "{}",
        e.log_text()
    );
}

/// `musicfs events` lists what happened; `--follow` prints new events as
/// they happen.
#[test]
fn events_list_and_follow() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    small_origin(&a, 2, "alpha");
    let m = Mount::start_with(&[&a], None, &[]);
    let (ok, out, err) = musicfs(&["events"], &m.state);
    assert!(ok, "{err}");
    assert!(
        out.contains("started") && out.contains("serving 2 files"),
        "{out}"
    );

    let mut follower = Command::new(musicfs_bin())
        .args(["events", "--follow", "--json", "--state-dir"])
        .arg(&m.state)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = follower.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<serde_json::Value>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if let Ok(v) = serde_json::from_str(&line) {
                let _ = tx.send(v);
            }
        }
    });
    // Past events first: the first scan's commit, then the start (the
    // follower process may take a while to start on a loaded machine).
    let mut past = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while let Ok(v) = rx.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
    {
        let started = v["kind"] == "started";
        past.push(v);
        if started {
            break;
        }
    }
    assert!(past.iter().any(|v| v["kind"] == "started"), "{past:?}");
    small_origin(&a, 3, "late");
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let mut seen = Vec::new();
    let change = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(v) if v["kind"] == "change" => break Some(v),
            Ok(v) => seen.push(v),
            Err(_) => break None,
        }
    };
    let _ = follower.kill();
    let _ = follower.wait();
    let change = change.unwrap_or_else(|| panic!("no change event followed; saw {seen:?}"));
    assert!(
        change["message"]
            .as_str()
            .unwrap()
            .contains("added or changed"),
        "{change}"
    );

    // Followers that go away free their connection, even with no new
    // events: 64 of them, all killed.
    let figure = |st: &serde_json::Value| {
        st["cache"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f[0] == "control_connections")
            .map_or(0, |f| f[1].as_u64().unwrap())
    };
    let mut many: Vec<std::process::Child> = (0..64)
        .map(|_| {
            Command::new(musicfs_bin())
                .args(["events", "--follow", "--state-dir"])
                .arg(&m.state)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    assert!(
        eventually(Duration::from_secs(30), || figure(&status_json(&m.state))
            > 64),
        "64 followers never connected: {}",
        status_json(&m.state)
    );
    for c in &mut many {
        let _ = c.kill();
        let _ = c.wait();
    }
    assert!(
        eventually(Duration::from_secs(10), || figure(&status_json(&m.state))
            <= 2),
        "the followers' connections stayed after they left: {}",
        status_json(&m.state)
    );
    assert!(m.stop().success());
}

/// Under systemd (the engine alone, started by systemd itself:
/// `SYSTEMD_EXEC_PID` is its own pid), `musicfs shutdown` does not stop the
/// engine (its unit would restart it and leave the shim mounted): it says
/// to use systemctl, and the engine serves on. An engine that merely
/// inherited systemd's variables (started from a shell in a user service)
/// stops as asked.
#[test]
fn shutdown_of_an_engine_under_systemd_points_to_systemctl() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    small_origin(&a, 2, "alpha");
    let state = dir.path().join("state");
    let log = dir.path().join("engine.log");
    // As systemd execs it: SYSTEMD_EXEC_PID names the process itself.
    let script = format!(
        "SYSTEMD_EXEC_PID=$$ INVOCATION_ID=0123456789abcdef exec {} engine --origin {} --state-dir {}",
        musicfs_bin().display(),
        a.display(),
        state.display()
    );
    let args = ["-c".as_ref(), std::ffi::OsStr::new(&script)];
    let mut e = EngineProc::start_program("sh".as_ref(), &args, &state, &log, &[]);
    e.wait_log("engine ready", 1, Duration::from_secs(60));
    let (ok, out, err) = musicfs(&["shutdown"], &state);
    assert!(!ok, "shutdown went through: {out}");
    assert!(err.contains("systemctl stop musicfs-shim@"), "{err}");
    assert_eq!(status_json(&state)["files"], 2);
    assert!(e.stop().success());

    // Inherited from a parent's service: not ours, so shutdown works.
    let mut e = EngineProc::start(
        &a,
        &state,
        &log,
        &[
            ("SYSTEMD_EXEC_PID", "1"),
            ("INVOCATION_ID", "0123456789abcdef"),
        ],
    );
    e.wait_log("engine ready", 1, Duration::from_secs(60));
    let (ok, out, err) = musicfs(&["shutdown"], &state);
    assert!(ok, "{out}{err}");
    assert!(e.stop().success());
}

/// A reload that fails after the engine applied part of it (a catalog write
/// that fails: injected) leaves the supervisor in step with what is in
/// force: the next engine (after a kill -9) still has the new origin.
#[test]
fn partly_applied_reload_survives_an_engine_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    small_origin(&a, 2, "alpha");
    small_origin(&b, 3, "bravo");
    let cfg = dir.path().join("musicfs.toml");
    let by_name = "template = \"{filename}.{ext}\"\n";
    std::fs::write(&cfg, format!("origins = [{:?}]\n{by_name}", a)).unwrap();
    let m = Mount::start_with_config(&cfg, &[("MUSICFS_FAULT", "reload-template-fail")]);
    std::fs::write(
        &cfg,
        format!(
            "origins = [{:?}, {:?}]\ntemplate = \"flat/{{filename}}.{{ext}}\"\n",
            a, b
        ),
    )
    .unwrap();
    let (ok, out, err) = musicfs(&["reload"], &m.state);
    assert!(!ok, "the injected fault did not fail the reload: {out}");
    assert!(err.contains("origins applied already"), "{err}");
    assert!(
        eventually(Duration::from_secs(15), || names_with(&m.mnt, "bravo")
            .len()
            == 3),
        "the applied origin's files did not appear"
    );
    let old = status_json(&m.state)["pid"].as_i64().unwrap();
    // SAFETY: kill(2) on the engine this test's mount started.
    unsafe { libc::kill(old as i32, libc::SIGKILL) };
    assert!(
        eventually(Duration::from_secs(30), || {
            let (ok, out, _) = musicfs(&["status", "--json"], &m.state);
            ok && serde_json::from_str::<serde_json::Value>(&out).is_ok_and(|v| {
                v["pid"].as_i64() != Some(old)
                    && v["origins"].as_array().is_some_and(|o| o.len() == 2)
            })
        }),
        "the restarted engine lost the applied origin:\n{}",
        m.log_text()
    );
    // Give its reconcile a moment, then the files are all still there.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(names_with(&m.mnt, "bravo").len(), 3);
    assert_eq!(names_with(&m.mnt, "alpha").len(), 2);
    assert!(m.stop().success());
}

use super::*;

/// With no engine at all, requests wait out their deadline and fail;
/// the shim stays healthy all along (its watchdog keeps pinging). The
/// old rule (unhealthy once a request waited half its deadline) fails
/// the check made past the half.
#[test]
fn parked_requests_do_not_make_the_shim_unhealthy() {
    let dir = std::env::temp_dir().join(format!("musicfs-rpc-test-{}", std::process::id()));
    let t = Transport::start(dir.join("no-engine.sock"), Duration::from_secs(4))
        .expect("transport threads");
    let (tx, rx) = std::sync::mpsc::channel();
    let sent = Instant::now();
    t.call(
        "getattr",
        |mut r| r.set_getattr(1),
        move |res| {
            let _ = tx.send(matches!(res, Err(CallError::Timeout)));
        },
    );
    std::thread::sleep(Duration::from_millis(2500));
    // (Checked only while the request is still parked, before its deadline.)
    if sent.elapsed() < Duration::from_millis(3900) {
        assert_eq!(t.pending(), 1, "the request is parked");
        assert!(t.healthy(), "a parked request made the shim unhealthy");
    }
    let timed_out = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the request was never failed");
    assert!(timed_out, "failed with another error than its deadline");
    assert_eq!(t.pending(), 0);
    assert!(t.healthy());
}

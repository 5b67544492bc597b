//! `musicfs-shim`: holds the kernel FUSE session and forwards every request to
//! the engine over Cap'n Proto. Deliberately small: no tree, no cache, no
//! origins. It never asks fuser to unmount when it dies (no auto-unmount):
//! it is not fuser's call. Its fd outlives it: a holder keeps a copy (the
//! supervisor through `--holder-fd`, or systemd's fd store), and the next
//! shim takes the live connection over (`takeover`). A stored connection
//! that cannot be taken over is ended (`leftover.rs`).

mod fs;
mod kcache;
mod leftover;
mod rpc;
mod session;
mod takeover;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use fuser::{Config, MountOption, SessionACL};
use nix::sys::signal::{SigSet, Signal};
use sd_notify::NotifyState;
use tracing::{error, info, warn};

#[derive(Parser, Debug)]
#[command(
    name = "musicfs-shim",
    version,
    about = "The FUSE half of MusicFS (started by `musicfs mount`)"
)]
struct Args {
    /// The engine's data-plane socket.
    #[arg(long)]
    socket: PathBuf,
    /// Where to mount.
    #[arg(long)]
    mountpoint: PathBuf,
    /// Let other users read the mount.
    #[arg(long)]
    allow_other: bool,
    /// Deadline for one request to the engine, in milliseconds.
    #[arg(long, default_value_t = 30_000)]
    engine_wait_timeout_ms: u64,
    /// How long to wait for the first engine before giving up, in milliseconds.
    #[arg(long, default_value_t = 60_000)]
    connect_timeout_ms: u64,
    /// Never use kernel passthrough (every read goes through the engine).
    #[arg(long)]
    no_passthrough: bool,
    /// On SIGTERM/SIGINT: how long open files and requests in flight get
    /// before the FUSE connection is closed, in milliseconds.
    #[arg(long, default_value_t = 5_000)]
    drain_timeout_ms: u64,
    /// FUSE worker threads (they only parse and queue requests). They
    /// share one /dev/fuse fd: requests read on a clone fd would be lost
    /// with the shim, and the kernel resends only those of fds still open.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// The fd-holder socket of `musicfs mount` (inherited at this number):
    /// it hands over a live connection or asks for a fresh mount, and keeps
    /// a copy of the connection for the next shim.
    #[arg(long)]
    holder_fd: Option<i32>,
}

fn init_logging() {
    // fuser warns on every clean external unmount (it tries to unmount again).
    let filter =
        std::env::var("MUSICFS_LOG").unwrap_or_else(|_| "info".into()) + ",fuser::session=error";
    let filter = tracing_subscriber::EnvFilter::try_new(&filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

fn run(args: Args) -> Result<()> {
    // Before any thread starts (it edits the environment).
    let mut stored = leftover::take_stored(&args.mountpoint);
    let holder = args.holder_fd.map(|fd| {
        // SAFETY: `musicfs mount` gave us this socket at this number, for us alone.
        unsafe { takeover::holder::Holder::from_raw(fd) }
    });
    if let Some(h) = &holder {
        stored = h.first().context("the fd holder")?;
    }
    // Block the stop signals in every thread; one thread waits for them.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGHUP);
    signals.thread_block().context("cannot block signals")?;

    let transport = rpc::Transport::start(
        args.socket.clone(),
        Duration::from_millis(args.engine_wait_timeout_ms),
    )
    .context("cannot start the transport threads")?;
    // A connection taken over serves what the kernel holds at once: its
    // requests park in the transport until an engine answers.
    if stored.is_none() {
        // Wait for the engine in slices, so that a stop signal (blocked,
        // and no signal thread yet) still ends the wait at once.
        let connect_deadline = Instant::now() + Duration::from_millis(args.connect_timeout_ms);
        loop {
            let slice = connect_deadline
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(100));
            if transport
                .wait_first_engine(slice)
                .map_err(anyhow::Error::msg)?
            {
                break;
            }
            if Instant::now() >= connect_deadline {
                bail!(
                    "no engine answered at {} within {} ms",
                    transport.socket().display(),
                    args.connect_timeout_ms
                );
            }
            if let Some(sig) = pending_stop_signal() {
                info!("{sig} before the mount: stopping");
                return Ok(());
            }
        }
    }

    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName("musicfs".into()),
        MountOption::Subtype("musicfs".into()),
        MountOption::RO,
        MountOption::NoSuid,
        MountOption::NoDev,
        MountOption::NoAtime,
        MountOption::DefaultPermissions,
    ];
    config.acl = if args.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    config.n_threads = Some(args.threads.max(1));
    // No clone fds: see `--threads`.
    config.clone_fd = false;
    let notices = transport.clone();
    let watchdog_transport = transport.clone();
    let drain_transport = transport.clone();
    let holder_transport = transport.clone();
    let notifier = std::sync::Arc::new(std::sync::OnceLock::new());
    let kcache = Arc::new(kcache::KernelCache::default());
    let make_fs = |passthrough: bool| {
        fs::ShimFs::new(
            transport.clone(),
            passthrough,
            notifier.clone(),
            kcache.clone(),
        )
    };
    let passthrough = !args.no_passthrough;
    let started = match stored {
        Some(handed) => match session::adopt(&make_fs, passthrough, handed, &config) {
            Ok(s) => s,
            Err(e) if holder.is_none() => {
                // From the fd store: end that connection, mount afresh.
                error!(
                    "cannot take the stored FUSE connection over: {e:#}; ending it and mounting afresh"
                );
                leftover::end(&args.mountpoint, Vec::new());
                session::mount(&make_fs, passthrough, &args.mountpoint, &config)?
            }
            Err(e) => return Err(e.context("cannot take the live FUSE connection over")),
        },
        None => session::mount(&make_fs, passthrough, &args.mountpoint, &config)?,
    };
    let session::Started {
        mut session,
        tables,
        state,
        adopted,
        kernel_minor,
    } = started;
    // Only the session's own tables hear of changed inodes (not a probe's).
    kcache.set_open_cache(tables.open_cache());
    if adopted {
        // No INIT reached this shim: the protocol minor is the one handed over.
        kcache.set_kernel_minor(kernel_minor);
    }
    let mut unmounter = session.unmount_callable();
    let _ = notifier.set(session.notifier());
    {
        use std::os::fd::AsFd;
        let fd = session
            .as_fd()
            .try_clone_to_owned()
            .context("cannot duplicate the FUSE fd")?;
        kcache.attach(fd, session.notifier());
    }
    notices
        .set_notifier(session.notifier(), kcache)
        .context("cannot start the notice thread")?;
    if adopted {
        // Notices of the engine while no shim ran are lost, and this shim
        // knows none of the directories the kernel holds listings of.
        notices.forget_everything("took the FUSE connection over");
    }
    info!(mountpoint = %args.mountpoint.display(), adopted, passthrough = tables.passthrough_enabled(), "mounted");
    use std::os::fd::AsFd;
    // Give the holder its copies before anyone may kill us.
    if let Some(h) = &holder
        && !adopted
    {
        let sent = match &state {
            Some(st) => h.hold(session.as_fd(), st.fd()),
            None => h.refuse(takeover::NO_RESEND),
        };
        if let Err(e) = sent {
            error!("cannot hand the FUSE fd to the holder: {e}");
        }
    }
    // Tell the supervisor (reading our stdout) that the mount is live. It may
    // be unmounted again at any moment, so "is it a mountpoint now?" is not
    // a reliable readiness check for the supervisor.
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "READY");
        let _ = out.flush();
    }
    // Under systemd: keep copies of the FUSE fd and its takeover state in
    // the fd store (the mount survives this process while systemd holds
    // them), then report ready. A connection taken over is stored already.
    if std::env::var_os("NOTIFY_SOCKET").is_some() {
        if !adopted {
            if let Err(e) = sd_notify::notify_with_fds(
                &[NotifyState::FdStore, NotifyState::FdName("fuse")],
                &[session.as_fd()],
            ) {
                error!("cannot store the FUSE fd with systemd: {e}");
            }
            if let Some(st) = &state
                && let Err(e) = sd_notify::notify_with_fds(
                    &[NotifyState::FdStore, NotifyState::FdName("fuse-state")],
                    &[st.fd()],
                )
            {
                error!("cannot store the takeover state with systemd: {e}");
            }
        }
        let status = format!("mounted at {}", args.mountpoint.display());
        let _ = sd_notify::notify(&[NotifyState::Ready, NotifyState::Status(&status)]);
    }
    if let Some(interval) = sd_notify::watchdog_enabled() {
        let t = watchdog_transport;
        std::thread::Builder::new()
            .name("musicfs-watchdog".into())
            .spawn(move || {
                // Ping only while requests are being answered within their deadline.
                loop {
                    std::thread::sleep(interval / 2);
                    if t.healthy() {
                        let _ = sd_notify::notify(&[NotifyState::Watchdog]);
                    }
                }
            })
            .context("cannot start the watchdog thread")?;
    }
    if let Some(h) = holder {
        h.serve(move || holder_transport.healthy())
            .context("cannot start the holder thread")?;
    }
    if adopted {
        // Ready to serve: what the dead shim had read comes again.
        takeover::resend(session.as_fd());
    }

    let session_done = Arc::new(AtomicBool::new(false));
    let done = session_done.clone();
    let mountpoint = args.mountpoint.clone();
    let drain = Duration::from_millis(args.drain_timeout_ms);
    std::thread::Builder::new()
        .name("musicfs-signals".into())
        .spawn(move || {
            loop {
                match signals.wait() {
                    Ok(Signal::SIGHUP) => {
                        info!("SIGHUP ignored by the shim (reload is the engine's job)")
                    }
                    Ok(sig) => {
                        info!("{sig}: stopping");
                        let _ = sd_notify::notify(&[NotifyState::Stopping]);
                        stop(
                            &mut unmounter,
                            adopted,
                            &mountpoint,
                            &drain_transport,
                            &done,
                            drain,
                        );
                        return;
                    }
                    Err(e) => {
                        error!("sigwait failed: {e}");
                        return;
                    }
                }
            }
        })
        .context("cannot start the signal thread")?;

    let outcome = session.run().context("FUSE session failed");
    session_done.store(true, Ordering::Release);
    outcome?;
    info!("unmounted; shim exiting");
    Ok(())
}

/// A stop signal (SIGTERM, SIGINT) that arrived while blocked, taken off
/// the queue without waiting.
fn pending_stop_signal() -> Option<Signal> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    let zero = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: sigtimedwait with a valid set, no info out-pointer and a zero
    // timeout only dequeues an already pending signal of the set.
    let n = unsafe { libc::sigtimedwait(set.as_ref(), std::ptr::null_mut(), &zero) };
    Signal::try_from(n).ok()
}

/// The ordered stop: unmount (no new opens or lookups), let open files and
/// requests in flight finish until the drain deadline, then end the FUSE
/// connection.
fn stop(
    unmounter: &mut fuser::SessionUnmounter,
    adopted: bool,
    mountpoint: &Path,
    transport: &rpc::Transport,
    session_done: &AtomicBool,
    drain: Duration,
) {
    let deadline = Instant::now() + drain;
    // An adopted session has no fuser mount to unmount: unmount the path.
    let unmounted = if adopted {
        unmount_path(mountpoint)
    } else {
        unmounter.unmount()
    };
    match unmounted {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
            // Files are open: detach the mount from the tree now; open
            // files keep working until they close or the deadline.
            info!(
                drain_ms = drain.as_millis() as u64,
                "files are still open: detached the mount; they get until the drain deadline"
            );
            if let Err(e) = detach(mountpoint) {
                error!("cannot detach {}: {e:#}", mountpoint.display());
            }
        }
        Err(e) => error!("unmount failed: {e}"),
    }
    while !session_done.load(Ordering::Acquire) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    if session_done.load(Ordering::Acquire) {
        return; // main returns and logs
    }
    // Still open at the deadline: answer what is in flight, then close.
    while transport.pending() > 0 && Instant::now() < deadline + Duration::from_secs(1) {
        std::thread::sleep(Duration::from_millis(5));
    }
    warn!(
        pending = transport.pending(),
        "drain deadline reached with files still open; closing the FUSE connection"
    );
    std::process::exit(0);
}

/// Unmount of `mountpoint` (EBUSY while files are open): umount2 as root,
/// `fusermount3 -u` otherwise.
fn unmount_path(mountpoint: &Path) -> std::io::Result<()> {
    match nix::mount::umount2(mountpoint, nix::mount::MntFlags::empty()) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EPERM) => {
            let out = std::process::Command::new("fusermount3")
                .arg("-u")
                .arg(mountpoint)
                .output()?;
            if out.status.success() {
                Ok(())
            } else if String::from_utf8_lossy(&out.stderr).contains("busy") {
                Err(std::io::Error::from_raw_os_error(libc::EBUSY))
            } else {
                Err(std::io::Error::other(
                    String::from_utf8_lossy(&out.stderr).trim().to_string(),
                ))
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// Lazy unmount: MNT_DETACH as root, `fusermount3 -uz` otherwise.
fn detach(mountpoint: &Path) -> Result<()> {
    match nix::mount::umount2(mountpoint, nix::mount::MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) => Ok(()),
        Err(nix::errno::Errno::EPERM) => {
            let out = std::process::Command::new("fusermount3")
                .arg("-uz")
                .arg(mountpoint)
                .output()
                .context("cannot run fusermount3")?;
            if !out.status.success() {
                bail!("{}", String::from_utf8_lossy(&out.stderr).trim());
            }
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// Logs every panic (thread, payload, backtrace) as one error line, then
/// runs the default handling, so that a panic in any thread is never silent.
fn install_panic_hook() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let thread = std::thread::current();
        let name = thread.name().unwrap_or("unnamed");
        let payload = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(non-string payload)".into());
        let location = info.location().map(|l| l.to_string()).unwrap_or_default();
        let backtrace = std::backtrace::Backtrace::force_capture();
        tracing::error!(thread = name, %location, "panic: {payload}\n{backtrace}");
        default(info);
    }));
}

fn main() -> ExitCode {
    init_logging();
    install_panic_hook();
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("musicfs-shim: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

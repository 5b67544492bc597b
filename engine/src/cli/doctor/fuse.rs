//! The checks of FUSE and the kernel: fusermount3, /dev/fuse, fuse.conf,
//! the mountpoint, passthrough, FUSE_NOTIFY_RESEND, fusectl.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use crate::cli::doctor::{Check, DIR_DEADLINE, KERNEL_6_9, Status, bounded, check, uid};
use crate::config::Config;

pub fn find_on_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

pub fn fusermount(root: bool) -> Check {
    const NAME: &str = "fuse3";
    match find_on_path("fusermount3") {
        Some(p) => check(NAME, Status::Ok, format!("{} is on PATH", p.display())),
        None if root => check(
            NAME,
            Status::Warn,
            "fusermount3 is not on PATH: root mounts without it, but install the fuse3 package (apt install fuse3) for mounts and unmounts by other users",
        ),
        None => check(
            NAME,
            Status::Fail,
            "fusermount3 is not on PATH: install the fuse3 package (apt install fuse3)",
        ),
    }
}

pub fn dev_fuse() -> Check {
    const NAME: &str = "/dev/fuse";
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse");
    match opened {
        Ok(_) => check(NAME, Status::Ok, "opens read-write"),
        Err(e) if e.kind() == ErrorKind::NotFound => check(
            NAME,
            Status::Fail,
            "does not exist: load the fuse module (modprobe fuse); in a container, pass the device in (--device /dev/fuse)",
        ),
        Err(e) if e.kind() == ErrorKind::PermissionDenied => check(
            NAME,
            Status::Fail,
            format!(
                "this user (uid {}) cannot open it read-write: make it mode 0666 as distributions ship it (chmod 0666 /dev/fuse), or mount as root",
                uid()
            ),
        ),
        Err(e) => check(
            NAME,
            Status::Fail,
            format!("cannot open it read-write: {e}"),
        ),
    }
}

/// Whether fuse.conf text has an uncommented `user_allow_other` line.
pub fn fuse_conf_allows_other(text: &str) -> bool {
    text.lines()
        .any(|l| l.split('#').next().unwrap_or_default().trim() == "user_allow_other")
}

pub fn allow_other(config: &Config, root: bool) -> Check {
    const NAME: &str = "user_allow_other";
    const CONF: &str = "/etc/fuse.conf";
    if !config.allow_other {
        return check(NAME, Status::Ok, "not needed (allow_other is off)");
    }
    if root {
        return check(
            NAME,
            Status::Ok,
            "not needed (root may mount with allow_other)",
        );
    }
    let fix = "add a line user_allow_other to /etc/fuse.conf (as root), or set allow_other = false";
    match std::fs::read_to_string(CONF) {
        Ok(text) if fuse_conf_allows_other(&text) => {
            check(NAME, Status::Ok, format!("{CONF} allows allow_other"))
        }
        Ok(_) => check(
            NAME,
            Status::Fail,
            format!("allow_other is set but {CONF} has no uncommented user_allow_other: {fix}"),
        ),
        Err(e) => check(
            NAME,
            Status::Fail,
            format!("allow_other is set but {CONF} cannot be read ({e}): {fix}"),
        ),
    }
}

pub fn mountpoint(m: &Path, root: bool) -> Check {
    const NAME: &str = "mountpoint";
    let path = m.to_path_buf();
    let look = bounded(DIR_DEADLINE, move || {
        let meta = std::fs::metadata(&path);
        let writable = nix::unistd::access(&path, nix::unistd::AccessFlags::W_OK).is_ok();
        (meta.map(|m| m.is_dir()), writable)
    });
    let shown = m.display();
    match look {
        None => check(
            NAME,
            Status::Fail,
            format!(
                "{shown}: no answer within {} s (a hung mount on its path? musicfs unmount --abort that mount)",
                DIR_DEADLINE.as_secs()
            ),
        ),
        Some((Ok(true), writable)) if root || writable => {
            check(NAME, Status::Ok, format!("{shown} is a directory"))
        }
        Some((Ok(true), _)) => check(
            NAME,
            Status::Fail,
            format!(
                "{shown} is not writable by this user (uid {}), as fusermount3 needs: chown it",
                uid()
            ),
        ),
        Some((Ok(false), _)) => check(NAME, Status::Fail, format!("{shown} is not a directory")),
        Some((Err(e), _)) if e.kind() == ErrorKind::NotFound => check(
            NAME,
            Status::Fail,
            format!("{shown} does not exist: mkdir -p {shown}"),
        ),
        Some((Err(e), _)) => check(NAME, Status::Fail, format!("{shown}: {e}")),
    }
}

/// The kernel's release, e.g. `6.18.44-generic`.
pub fn kernel_release() -> Option<String> {
    Some(
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .ok()?
            .trim()
            .to_string(),
    )
}

/// `6.18.44-x` -> (6, 18).
pub fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// Whether this process has CAP_SYS_ADMIN (bit 21 of CapEff).
pub fn has_sys_admin() -> bool {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << 21) != 0)
}

pub fn passthrough(config: &Config, release: Option<&str>) -> Check {
    const NAME: &str = "passthrough";
    let slow = "reads go through the engine (no passthrough)";
    if !config.passthrough {
        return check(
            NAME,
            Status::Ok,
            format!("off (passthrough = false): {slow}"),
        );
    }
    let Some((release, version)) = release.and_then(|r| Some((r, kernel_version(r)?))) else {
        return check(
            NAME,
            Status::Warn,
            format!("cannot read the kernel version: {slow} if it is older than 6.9"),
        );
    };
    if version < KERNEL_6_9 {
        return check(
            NAME,
            Status::Warn,
            format!("{slow}: Linux {release} has none; it needs 6.9 or newer"),
        );
    }
    if let Ok(kconfig) = std::fs::read_to_string(format!("/boot/config-{release}"))
        && !kconfig
            .lines()
            .any(|l| l.trim() == "CONFIG_FUSE_PASSTHROUGH=y")
    {
        return check(
            NAME,
            Status::Warn,
            format!("{slow}: Linux {release} is built without CONFIG_FUSE_PASSTHROUGH"),
        );
    }
    if !has_sys_admin() {
        return check(
            NAME,
            Status::Warn,
            format!("{slow}: it needs CAP_SYS_ADMIN: run the mount as root"),
        );
    }
    check(
        NAME,
        Status::Ok,
        format!("Linux {release} and CAP_SYS_ADMIN: the kernel reads local origin files directly"),
    )
}

pub fn notify_resend(release: Option<&str>) -> Check {
    const NAME: &str = "notify_resend";
    match release.and_then(|r| Some((r, kernel_version(r)?))) {
        Some((r, v)) if v >= KERNEL_6_9 => check(
            NAME,
            Status::Ok,
            format!("Linux {r}: requests in flight survive a shim restart (FUSE_NOTIFY_RESEND)"),
        ),
        Some((r, _)) => check(
            NAME,
            Status::Warn,
            format!(
                "Linux {r} has no FUSE_NOTIFY_RESEND: a shim restart fails the requests in flight; it needs Linux 6.9 or newer"
            ),
        ),
        None => check(
            NAME,
            Status::Warn,
            "cannot read the kernel version (FUSE_NOTIFY_RESEND needs Linux 6.9 or newer)",
        ),
    }
}

/// Whether mountinfo text has a fusectl mount.
pub fn has_fusectl(mountinfo: &str) -> bool {
    mountinfo.lines().any(|l| {
        l.split_once(" - ")
            .is_some_and(|(_, rest)| rest.split_whitespace().next() == Some("fusectl"))
    })
}

pub fn fusectl() -> Check {
    const NAME: &str = "fusectl";
    const DIR: &str = "/sys/fs/fuse/connections";
    match std::fs::read_to_string("/proc/self/mountinfo") {
        Ok(text) if has_fusectl(&text) => check(NAME, Status::Ok, format!("mounted on {DIR}")),
        Ok(_) => check(
            NAME,
            Status::Warn,
            format!(
                "{DIR} is not mounted, so a hung FUSE connection cannot be seen or aborted there: mount -t fusectl none {DIR}"
            ),
        ),
        Err(e) => check(
            NAME,
            Status::Warn,
            format!("cannot read /proc/self/mountinfo: {e}"),
        ),
    }
}

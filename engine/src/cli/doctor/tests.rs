//! Unit tests of the pure parts of the checks.

use crate::cli::doctor::disk::{count_dirs, human, suggest};
use crate::cli::doctor::fuse::{fuse_conf_allows_other, has_fusectl, kernel_version};
use crate::cli::doctor::{KERNEL_6_9, Status, WALK_DEADLINE, WALK_MAX_ENTRIES, check};

#[test]
fn fuse_conf_needs_an_uncommented_line() {
    assert!(!fuse_conf_allows_other(
        "# user_allow_other\n#user_allow_other\n"
    ));
    assert!(!fuse_conf_allows_other("mount_max = 1000\n"));
    assert!(fuse_conf_allows_other("# comment\n  user_allow_other  \n"));
    assert!(fuse_conf_allows_other("user_allow_other # yes\n"));
}

#[test]
fn kernel_versions_parse() {
    assert_eq!(kernel_version("6.18.44-fc-v857"), Some((6, 18)));
    assert_eq!(kernel_version("6.9.0"), Some((6, 9)));
    assert_eq!(kernel_version("5.15.0-91-generic"), Some((5, 15)));
    assert!(kernel_version("6.8.12") < Some(KERNEL_6_9));
    assert_eq!(kernel_version("garbage"), None);
}

#[test]
fn fusectl_is_found_in_mountinfo() {
    let with = "36 35 0:30 / /sys/fs/fuse/connections rw,relatime shared:13 - fusectl fusectl rw\n";
    let without = "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n";
    assert!(has_fusectl(with));
    assert!(!has_fusectl(without));
}

#[test]
fn directories_are_counted_within_bounds() {
    let dir = tempfile::tempdir().expect("tempdir");
    for i in 0..29 {
        std::fs::create_dir_all(dir.path().join(format!("a{}/b{i}", i % 3))).expect("mkdir");
    }
    std::fs::write(dir.path().join("a0/file.flac"), b"x").expect("write");
    let roots = [dir.path().to_path_buf()];
    // The root, a0..a2 and 29 below them.
    assert_eq!(
        count_dirs(&roots, WALK_DEADLINE, WALK_MAX_ENTRIES),
        (33, true)
    );
    let (n, complete) = count_dirs(&roots, WALK_DEADLINE, 5);
    assert!(!complete && n <= 5, "{n}");
}

#[test]
fn lines_read_as_asked() {
    assert_eq!(check("fuse3", Status::Ok, "x").line(), "ok   fuse3: x");
    assert_eq!(
        check("fusectl", Status::Warn, "y").line(),
        "warn fusectl: y"
    );
    assert_eq!(check("a", Status::Fail, "z").line(), "FAIL a: z");
    assert_eq!(human(3 << 30), "3.0 GiB");
    assert_eq!(suggest(400_000), 1_048_576);
}

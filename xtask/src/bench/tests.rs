use super::logs::log_field;
use super::mounts::unescape_mountinfo;
use super::record::{HEADER, sections};
use super::table::{Stats, fmt_thousands};

#[test]
fn stats() {
    let s = Stats::of(&[3.0, 1.0, 2.0]).unwrap();
    assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
    let s = Stats::of(&[4.0, 1.0, 2.0, 3.0]).unwrap();
    assert_eq!(s.median, 2.5);
    assert!(Stats::of(&[]).is_none());
}

#[test]
fn mountinfo_escapes() {
    assert_eq!(unescape_mountinfo(r"/a\040b"), b"/a b");
    assert_eq!(unescape_mountinfo(r"/plain"), b"/plain");
}

#[test]
fn sections_are_replaced_per_size() {
    let a = "<!-- bench tracks=10 -->\n## a\n<!-- /bench -->\n";
    let b = "<!-- bench tracks=20 -->\n## b\n<!-- /bench -->\n";
    let text = format!("{HEADER}\n{a}\n{b}");
    let found = sections(&text);
    assert_eq!(found.len(), 2);
    assert_eq!(found[0], ("<!-- bench tracks=10 -->", a));
    assert_eq!(found[1], ("<!-- bench tracks=20 -->", b));
}

#[test]
fn log_fields() {
    let line = "2026-11-26T14:08:20.999438Z DEBUG musicfs_engine::sync: checkpoint committed \
                upserts=1 removals=0 files=2000 elapsed_us=1134";
    assert_eq!(log_field(line, "elapsed_us"), Some(1134));
    assert_eq!(log_field(line, "upserts"), Some(1));
    assert_eq!(log_field(line, "files"), Some(2000));
    assert_eq!(log_field(line, "us"), None);
    assert_eq!(log_field(line, "missing"), None);
}

#[test]
fn thousands() {
    assert_eq!(fmt_thousands(1234567.4), "1,234,567");
    assert_eq!(fmt_thousands(999.0), "999");
}

//! Fields of /proc/self/mountinfo.

/// mountinfo's octal escapes (`\040` for a space) undone.
pub fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let oct = b
            .get(i + 1..i + 4)
            .and_then(|o| std::str::from_utf8(o).ok());
        match (b[i], oct.and_then(|o| u8::from_str_radix(o, 8).ok())) {
            (b'\\', Some(v)) => {
                out.push(v);
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    #[test]
    fn octal_escapes_are_undone() {
        assert_eq!(
            super::unescape("/srv/my\\040music\\134x"),
            "/srv/my music\\x"
        );
        assert_eq!(super::unescape("/a\\04"), "/a\\04");
    }
}

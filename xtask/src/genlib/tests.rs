use std::collections::HashSet;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::cli::Args;
use super::formats::{Format, parse_formats};
use super::generate::{generate, verify};
use super::layout::{MAX_COMPONENT, cut_bytes, path_parts, sanitize_component};
use super::manifest::{Kind, ManifestEntry, TagValues, read_manifest};
use super::model::{AlbumLayout, AlbumPlan, TrackPlan};
use super::plan::format_quotas;
use super::templates::unique_suffix;
use super::words::rng_for;

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("musicfs-genlib-{name}-{}", unique_suffix()));
        let _ = std::fs::remove_dir_all(&dir);
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn args(out: &Path, seed: u64, tracks: usize) -> Args {
    Args {
        tracks,
        out: out.to_path_buf(),
        seed,
        seconds: 1.0,
        formats: Vec::new(),
        jobs: None,
        verify: false,
    }
}

/// (raw relative path, blake3) of every file under `dir`, sorted.
fn hashes(dir: &Path) -> Vec<(Vec<u8>, String)> {
    let mut out: Vec<(Vec<u8>, String)> = walkdir::WalkDir::new(dir)
        .into_iter()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().is_file())
        .map(|e| {
            let rel = e.path().strip_prefix(dir).unwrap();
            let rel = rel.as_os_str().as_bytes().to_vec();
            let hash = blake3::hash(&std::fs::read(e.path()).unwrap());
            (rel, hash.to_hex().to_string())
        })
        .collect();
    out.sort();
    out
}

fn has_char_in(s: &str, lo: u32, hi: u32) -> bool {
    s.chars().any(|c| (lo..=hi).contains(&u32::from(c)))
}

/// Generate `tracks` tracks with `seed` into `dir` and check every promise of the generator.
fn generate_and_check(dir: &Path, seed: u64, tracks: usize) {
    let summary = generate(&args(dir, seed, tracks)).unwrap();
    assert_eq!(summary.tracks, tracks);

    // Every normal/misnamed file reads back with exactly the manifest's tags (and the
    // detected format), untagged files have no tags, sizes match.
    let problems = verify(dir).unwrap();
    assert!(problems.is_empty(), "seed {seed}:\n{}", problems.join("\n"));

    let manifest = read_manifest(dir).unwrap();
    assert_eq!(manifest.len(), tracks);
    for kind in [
        Kind::Normal,
        Kind::Corrupt,
        Kind::Truncated,
        Kind::Empty,
        Kind::Untagged,
        Kind::Misnamed,
    ] {
        assert!(
            manifest.iter().any(|e| e.kind == kind),
            "seed {seed}: no {kind:?} file"
        );
    }
    for e in &manifest {
        if matches!(e.kind, Kind::Corrupt | Kind::Empty | Kind::Untagged) {
            assert!(e.tags.is_empty(), "{e:?}");
        }
        if e.kind == Kind::Empty {
            assert_eq!(e.size, 0);
        }
        assert_eq!(e.kind == Kind::Misnamed, e.ext != e.format, "{e:?}");
    }
    for format in Format::ALL {
        assert!(
            manifest.iter().any(|e| e.format == format.name()),
            "seed {seed}: no {} file",
            format.name()
        );
    }

    // Paths: unique, sane components, some non-UTF-8, some in Incoming/.
    let raw: Vec<Vec<u8>> = manifest.iter().map(ManifestEntry::raw_path).collect();
    assert!(
        raw.iter()
            .filter(|p| std::str::from_utf8(p).is_err())
            .count()
            >= 2,
        "seed {seed}: fewer than 2 non-UTF-8 names"
    );
    let unique: HashSet<&Vec<u8>> = raw.iter().collect();
    assert_eq!(unique.len(), raw.len(), "seed {seed}: duplicate paths");
    for (p, e) in raw.iter().zip(&manifest) {
        let components: Vec<&[u8]> = p.split(|&b| b == b'/').collect();
        assert!((2..=4).contains(&components.len()), "{}", e.path);
        for c in &components {
            assert!(c.len() <= MAX_COMPONENT, "{}", e.path);
            assert!(!c.is_empty() && !c.starts_with(b"."), "{}", e.path);
        }
        let name = components.last().unwrap();
        assert!(
            name.ends_with(format!(".{}", e.ext).as_bytes()),
            "{}",
            e.path
        );
        assert_eq!(e.path, String::from_utf8_lossy(p));
    }
    assert!(raw.iter().any(|p| p.starts_with(b"Incoming/")));
    assert!(
        raw.iter()
            .any(|p| p.ends_with(b" (2).mp3") || p.contains(&b'('))
    );

    // Tricky tag values (only on files whose tags were written).
    let tagged: Vec<&TagValues> = manifest
        .iter()
        .filter(|e| matches!(e.kind, Kind::Normal | Kind::Misnamed))
        .map(|e| &e.tags)
        .collect();
    let any_string = |what: &str, pred: &dyn Fn(&str) -> bool| {
        let found = tagged.iter().any(|t| {
            [&t.artist, &t.album_artist, &t.album, &t.title, &t.genre]
                .into_iter()
                .flatten()
                .any(|s| pred(s))
        });
        assert!(found, "seed {seed}: no {what}");
    };
    any_string("CJK", &|s| has_char_in(s, 0x3040, 0x9FFF));
    any_string("Cyrillic", &|s| has_char_in(s, 0x0400, 0x04FF));
    any_string("NFC accent", &|s| has_char_in(s, 0xC0, 0xFF));
    any_string("NFD accent", &|s| has_char_in(s, 0x0300, 0x036F));
    any_string("emoji", &|s| has_char_in(s, 0x1F300, 0x1FAFF));
    any_string("slash", &|s| s.contains('/'));
    any_string("backslash", &|s| s.contains('\\'));
    any_string("colon", &|s| s.contains(':'));
    any_string("empty value", &|s| s.is_empty());
    any_string("long value", &|s| {
        (300..=600).contains(&s.len()) && !s.is_ascii()
    });
    any_string("spaces", &|s| s != s.trim() && !s.trim().is_empty());
    any_string("`.`", &|s| s == ".");
    any_string("`..`", &|s| s == "..");
    let any = |what: &str, pred: &dyn Fn(&TagValues) -> bool| {
        assert!(tagged.iter().any(|t| pred(t)), "seed {seed}: no {what}");
    };
    any("missing album", &|t| t.album.is_none());
    any("missing artist", &|t| t.artist.is_none());
    any("missing track", &|t| t.track.is_none());
    any("missing year", &|t| t.year.is_none());
    any("missing title", &|t| t.title.is_none());
    any("disc 1/2", &|t| {
        t.disc == Some(1) && t.disc_total == Some(2)
    });
    any("disc 2/2", &|t| {
        t.disc == Some(2) && t.disc_total == Some(2)
    });
    any("compilation", &|t| {
        t.compilation == Some(true) && t.album_artist.as_deref() == Some("Various Artists")
    });
    let mut seen = HashSet::new();
    let collision = tagged.iter().any(|t| {
        t.title.is_some()
            && t.track.is_some()
            && !seen.insert((&t.album, t.disc, t.track, &t.title))
    });
    assert!(collision, "seed {seed}: no in-album collision");
}

#[test]
fn generates_tricky_library_deterministically() {
    let a = TempDir::new("a");
    let b = TempDir::new("b");
    generate_and_check(&a.0, 7, 200);

    // Same seed, same bytes (the manifest included).
    generate(&args(&b.0, 7, 200)).unwrap();
    let (ha, hb) = (hashes(&a.0), hashes(&b.0));
    assert_eq!(ha.len(), 201);
    let differ: Vec<String> = ha
        .iter()
        .zip(&hb)
        .filter(|(x, y)| x != y)
        .map(|(x, _)| String::from_utf8_lossy(&x.0).into_owned())
        .collect();
    assert!(
        ha.len() == hb.len() && differ.is_empty(),
        "runs differ: {differ:?}"
    );
}

#[test]
fn every_seed_has_every_tricky_case() {
    for seed in [1, 2, 3, 42, 1234] {
        let dir = TempDir::new(&format!("seed{seed}"));
        generate_and_check(&dir.0, seed, 200);
    }
}

#[test]
fn refuses_non_empty_output_dir() {
    let dir = TempDir::new("nonempty");
    std::fs::create_dir_all(&dir.0).unwrap();
    std::fs::write(dir.0.join("x"), b"x").unwrap();
    assert!(generate(&args(&dir.0, 1, 10)).is_err());
}

#[test]
fn sanitizer_cuts_on_char_boundaries() {
    let long = "é".repeat(150);
    let s = sanitize_component(&long, 201);
    assert_eq!(s.len(), 200);
    assert_eq!(sanitize_component("a/b\0c", 200), "a_b_c");
    assert_eq!(sanitize_component("..", 200), "_..");
    assert_eq!(sanitize_component(".", 200), "_.");
    assert_eq!(sanitize_component(".hidden", 200), "_.hidden");
    assert_eq!(sanitize_component("", 200), "_");
    assert_eq!(cut_bytes("日本語".as_bytes(), 4), "日".as_bytes());
    assert_eq!(cut_bytes(b"\xff\xfe abc", 3), b"\xff\xfe ");
}

#[test]
fn file_names_never_split_on_slashes() {
    let mut rng = rng_for(0, 0, 0);
    let album = AlbumPlan {
        compilation: false,
        layout: AlbumLayout::default(),
        first_track: 0,
        n_tracks: 1,
    };
    let tags = TagValues {
        artist: Some("AC/DC".to_owned()),
        album: Some("Back/In/Black".to_owned()),
        title: Some("Either/Or: ..".to_owned()),
        track: Some(3),
        ..TagValues::default()
    };
    let track = TrackPlan {
        format: Format::Mp3,
        kind: Kind::Normal,
        album: 0,
        tags: tags.clone(),
        incoming: false,
        non_utf8: false,
        protected: false,
        rel: Vec::new(),
        ext: "mp3",
    };
    let (dirs, base) = path_parts(&track, &tags, &album, 0, &mut rng);
    assert_eq!(dirs, vec![b"AC_DC".to_vec(), b"Back_In_Black".to_vec()]);
    assert_eq!(base, b"03 - Either_Or: ..".to_vec());
}

#[test]
fn quotas_are_exact_and_cover_every_format() {
    let weights = parse_formats(&[]).unwrap();
    for n in [8, 10, 200, 1001] {
        let q = format_quotas(&weights, n);
        assert_eq!(q.iter().map(|(_, c)| c).sum::<usize>(), n);
        assert!(q.iter().all(|(_, c)| *c > 0));
    }
    assert!(parse_formats(&["ape".to_owned()]).is_err());
    assert!(parse_formats(&["mp4".to_owned()]).is_err());
    assert_eq!(
        parse_formats(&["mp3=3".to_owned(), "flac".to_owned()]).unwrap(),
        vec![(Format::Mp3, 3), (Format::Flac, 30)]
    );
}

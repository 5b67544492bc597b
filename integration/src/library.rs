//! Generated libraries (cached across runs) and their manifests.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::Deserialize;

use crate::{target_dir, xtask_bin};

/// A generated library, cached across test runs under target/integration-cache.
pub fn generated_library(tracks: usize, seed: u64) -> PathBuf {
    generated_library_with(tracks, seed, &[])
}

/// As `generated_library`, with more `gen-library` arguments (e.g.
/// `["--seconds", "20", "--formats", "wav=1,flac=1"]` for multi-MB files).
pub fn generated_library_with(tracks: usize, seed: u64, args: &[&str]) -> PathBuf {
    let cache = target_dir().join("integration-cache");
    std::fs::create_dir_all(&cache).unwrap();
    let suffix: String = args
        .iter()
        .map(|a| a.replace(|c: char| !c.is_ascii_alphanumeric(), "_"))
        .collect::<Vec<_>>()
        .join("-");
    let dir = cache.join(format!(
        "lib-{tracks}-{seed}{}{suffix}",
        if suffix.is_empty() { "" } else { "-" }
    ));
    // One generation at a time in this process (tests run in parallel);
    // other test processes use their own temporary directory and lose the
    // final rename race harmlessly.
    static GENERATING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = GENERATING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if dir.join(".complete").exists() {
        return dir;
    }
    let tmp = cache.join(format!("tmp-{tracks}-{seed}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let status = Command::new(xtask_bin())
        .args([
            "gen-library",
            "--tracks",
            &tracks.to_string(),
            "--seed",
            &seed.to_string(),
            "--out",
        ])
        .arg(&tmp)
        .args(args)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "gen-library failed");
    std::fs::write(tmp.join(".complete"), b"").unwrap();
    if std::fs::rename(&tmp, &dir).is_err() {
        // Another test generated it first.
        let _ = std::fs::remove_dir_all(&tmp);
    }
    assert!(dir.join(".complete").exists());
    dir
}

/// One line of the generator's manifest.
#[derive(Clone, Debug, Deserialize)]
pub struct ManifestEntry {
    pub path: String,
    pub path_hex: String,
    pub format: String,
    pub ext: String,
    pub kind: String,
    pub size: u64,
    pub tags: ManifestTags,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct ManifestTags {
    pub artist: Option<String>,
    pub album_artist: Option<String>,
    pub album: Option<String>,
    pub title: Option<String>,
    pub year: Option<u32>,
    pub track: Option<u32>,
    pub track_total: Option<u32>,
    pub disc: Option<u32>,
    pub disc_total: Option<u32>,
    pub genre: Option<String>,
    pub compilation: Option<bool>,
}

impl ManifestEntry {
    pub fn raw_path(&self) -> Vec<u8> {
        (0..self.path_hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&self.path_hex[i..i + 2], 16).unwrap())
            .collect()
    }
}

pub fn read_manifest(lib: &Path) -> Vec<ManifestEntry> {
    std::fs::read_to_string(lib.join(".musicfs-manifest.jsonl"))
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

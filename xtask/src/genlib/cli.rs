//! The `cargo xtask gen-library` command line.

use std::path::PathBuf;

/// `cargo xtask gen-library` arguments.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Number of audio files to generate.
    #[arg(long)]
    pub tracks: usize,
    /// Output directory (created if missing; must be empty).
    #[arg(long)]
    pub out: PathBuf,
    /// Seed: the same seed (and templates) always gives byte-identical output.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Length of the audio in every file, in seconds.
    #[arg(long, default_value_t = 1.0)]
    pub seconds: f64,
    /// Comma-separated formats, optionally weighted (`mp3=3,flac=1`); default is the standard
    /// mix mp3 35, flac 30, m4a 10, ogg 8, opus 7, wv 5, wav 3, aiff 2.
    #[arg(long, value_delimiter = ',')]
    pub formats: Vec<String>,
    /// Worker threads (default: all cores).
    #[arg(long)]
    pub jobs: Option<usize>,
    /// After generating, read every tagged file back with lofty and compare with the manifest.
    #[arg(long)]
    pub verify: bool,
}

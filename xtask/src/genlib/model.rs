//! The plan of an album and of a track.

use super::formats::Format;
use super::manifest::{Kind, TagValues};

#[derive(Clone, Copy, Debug, Default)]
pub(super) struct AlbumLayout {
    /// `<year> - <album>` directory names.
    pub(super) year_prefix: bool,
    /// 0: `NN - Title`, 1: `NN. Title`, 2: `NN Artist - Title`.
    pub(super) file_style: u8,
    /// Multi-disc layout. 0: `CD1/` subdirectory, 1: `1-NN` prefix, 2: `<album> (Disc 1)`.
    pub(super) disc_style: u8,
}

#[derive(Clone, Debug)]
pub(super) struct AlbumPlan {
    pub(super) compilation: bool,
    pub(super) layout: AlbumLayout,
    /// Tracks of this album: `first_track..first_track + n_tracks`.
    pub(super) first_track: usize,
    pub(super) n_tracks: usize,
}

#[derive(Clone, Debug)]
pub(super) struct TrackPlan {
    pub(super) format: Format,
    pub(super) kind: Kind,
    pub(super) album: usize,
    /// Tags that are written (and go into the manifest).
    pub(super) tags: TagValues,
    pub(super) incoming: bool,
    pub(super) non_utf8: bool,
    /// Part of an in-album collision: never given a quirk or a bad kind, so the duplicate survives.
    pub(super) protected: bool,
    /// Relative path, raw bytes.
    pub(super) rel: Vec<u8>,
    pub(super) ext: &'static str,
}

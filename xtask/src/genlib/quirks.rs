//! The tag fields and the tricky tag cases the plan spreads over the library.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Field {
    Artist,
    AlbumArtist,
    Album,
    Title,
    Genre,
}

impl Field {
    pub(super) const ALL: [Field; 5] = [
        Field::Artist,
        Field::AlbumArtist,
        Field::Album,
        Field::Title,
        Field::Genre,
    ];
}

/// Per-track tricky tag cases.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Quirk {
    Cjk,
    Cyrillic,
    AccentNfc,
    AccentNfd,
    Emoji,
    Slash,
    Backslash,
    Colon,
    EmptyValue,
    LongValue,
    Spaces,
    Dot,
    DotDot,
    NoAlbum,
    NoArtist,
    NoTrack,
    NoYear,
    NoTitle,
}

impl Quirk {
    pub(super) const ALL: [Quirk; 18] = [
        Quirk::Cjk,
        Quirk::Cyrillic,
        Quirk::AccentNfc,
        Quirk::AccentNfd,
        Quirk::Emoji,
        Quirk::Slash,
        Quirk::Backslash,
        Quirk::Colon,
        Quirk::EmptyValue,
        Quirk::LongValue,
        Quirk::Spaces,
        Quirk::Dot,
        Quirk::DotDot,
        Quirk::NoAlbum,
        Quirk::NoArtist,
        Quirk::NoTrack,
        Quirk::NoYear,
        Quirk::NoTitle,
    ];
}

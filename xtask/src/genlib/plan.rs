//! Planning the whole library up front from the seed: albums, tracks, formats, bad files and
//! tricky tags.

use std::collections::HashSet;

use rand::Rng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use super::formats::Format;
use super::layout::{path_parts, unique_path};
use super::manifest::{Kind, TagValues};
use super::model::{AlbumLayout, AlbumPlan, TrackPlan};
use super::quirks::{Field, Quirk};
use super::words::{
    EMOJI, GENRES, NOUNS, SALT_MASTER, SALT_PATH, SALT_PLACE, SALT_QUIRK, SALT_TRACK, accent_name,
    album_name, artist_name, cjk_name, cyrillic_name, long_value, pick, rng_for, to_nfd,
    track_title,
};

/// Split `n` into per-format counts by weight (largest remainder), every format at least once
/// when there are enough tracks.
pub(super) fn format_quotas(weights: &[(Format, u32)], n: usize) -> Vec<(Format, usize)> {
    let total: u64 = weights.iter().map(|(_, w)| u64::from(*w)).sum();
    let mut quotas: Vec<(Format, usize, u64)> = weights
        .iter()
        .map(|&(f, w)| {
            let exact = u64::from(w) * n as u64;
            (f, (exact / total) as usize, exact % total)
        })
        .collect();
    let assigned: usize = quotas.iter().map(|q| q.1).sum();
    let mut order: Vec<usize> = (0..quotas.len()).collect();
    order.sort_by(|&a, &b| quotas[b].2.cmp(&quotas[a].2).then(a.cmp(&b)));
    for &i in order.iter().take(n - assigned) {
        quotas[i].1 += 1;
    }
    if n >= quotas.len() {
        for i in 0..quotas.len() {
            if quotas[i].1 == 0 {
                let richest = (0..quotas.len())
                    .max_by_key(|&j| (quotas[j].1, std::cmp::Reverse(j)))
                    .expect("non-empty");
                quotas[richest].1 -= 1;
                quotas[i].1 += 1;
            }
        }
    }
    quotas.into_iter().map(|(f, c, _)| (f, c)).collect()
}

/// Hands out distinct track indices in a seeded random order.
struct Picker {
    order: Vec<usize>,
    /// Position of each index in `order`.
    pos_of: Vec<usize>,
    /// `next[p]`: a position >= p that may be unused (path-compressed skip over used positions).
    next: Vec<usize>,
}

impl Picker {
    fn new(n: usize, rng: &mut StdRng) -> Picker {
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(rng);
        let mut pos_of = vec![0; n];
        for (pos, &i) in order.iter().enumerate() {
            pos_of[i] = pos;
        }
        Picker {
            order,
            pos_of,
            next: (0..=n).collect(),
        }
    }

    /// The first position >= `pos` whose index is unused (`n` if none).
    fn find(&mut self, pos: usize) -> usize {
        let mut root = pos;
        while self.next[root] != root {
            root = self.next[root];
        }
        let mut p = pos;
        while self.next[p] != root {
            let up = self.next[p];
            self.next[p] = root;
            p = up;
        }
        root
    }

    /// Never hand out `index` (as if it had been picked).
    fn exclude(&mut self, index: usize) {
        let pos = self.pos_of[index];
        self.next[pos] = pos + 1;
    }

    /// An unused index satisfying `pred`, else (small libraries) an already used one.
    fn pick(&mut self, pred: impl Fn(usize) -> bool) -> Option<usize> {
        let n = self.order.len();
        let mut pos = self.find(0);
        while pos < n {
            let i = self.order[pos];
            if pred(i) {
                self.next[pos] = pos + 1;
                return Some(i);
            }
            pos = self.find(pos + 1);
        }
        self.order.iter().copied().find(|&i| pred(i))
    }
}

fn count_for(n: usize, per_mille: usize, min: usize) -> usize {
    ((n * per_mille + 500) / 1000).max(min)
}

pub(super) fn plan_library(n: usize, seed: u64, weights: &[(Format, u32)]) -> Vec<TrackPlan> {
    let mut rng = rng_for(seed, SALT_MASTER, 0);

    // Album sizes (about 10 tracks each).
    let mut sizes = Vec::new();
    let mut total = 0;
    while total < n {
        let size = rng.random_range(6..=14).min(n - total);
        sizes.push(size);
        total += size;
    }
    let n_albums = sizes.len();

    // Album-level features, each forced at least once (on distinct albums when possible).
    let mut multi_disc: Vec<bool> = sizes
        .iter()
        .map(|&s| s >= 4 && rng.random_bool(0.06))
        .collect();
    let mut compilation: Vec<bool> = sizes.iter().map(|_| rng.random_bool(0.06)).collect();
    let mut collision: Vec<bool> = sizes
        .iter()
        .map(|&s| s >= 3 && rng.random_bool(0.05))
        .collect();
    let mut forced = vec![false; n_albums];
    let mut album_order: Vec<usize> = (0..n_albums).collect();
    album_order.shuffle(&mut rng);
    for (flags, min_size) in [
        (&mut multi_disc, 4),
        (&mut compilation, 2),
        (&mut collision, 3),
    ] {
        if flags.iter().any(|&f| f) {
            continue;
        }
        let choice = album_order
            .iter()
            .copied()
            .find(|&a| sizes[a] >= min_size && !forced[a])
            .or_else(|| album_order.iter().copied().find(|&a| sizes[a] >= min_size));
        if let Some(a) = choice {
            flags[a] = true;
            forced[a] = true;
        }
    }

    // Albums and their tracks.
    let mut albums = Vec::with_capacity(n_albums);
    let mut tracks: Vec<TrackPlan> = Vec::with_capacity(n);
    let mut artist = String::new();
    let mut artist_albums_left = 0;
    for a in 0..n_albums {
        let size = sizes[a];
        let is_comp = compilation[a];
        let (album_main_artist, album_artist) = if is_comp {
            (
                "Various Artists".to_owned(),
                Some("Various Artists".to_owned()),
            )
        } else {
            if artist_albums_left == 0 {
                artist = artist_name(&mut rng);
                artist_albums_left = rng.random_range(1..=3);
            }
            artist_albums_left -= 1;
            let album_artist = rng.random_bool(0.4).then(|| artist.clone());
            (artist.clone(), album_artist)
        };
        let album_title = album_name(&mut rng);
        let year = rng.random_bool(0.95).then(|| rng.random_range(1955..=2024));
        let genre = rng
            .random_bool(0.9)
            .then(|| pick(&mut rng, GENRES).to_owned());
        let write_total = rng.random_bool(0.7);
        let write_disc = rng.random_bool(0.5);
        let layout = AlbumLayout {
            year_prefix: rng.random_bool(0.25),
            file_style: rng.random_range(0..3),
            disc_style: rng.random_range(0..3),
        };
        let discs: Vec<usize> = if multi_disc[a] {
            vec![size / 2, size - size / 2]
        } else {
            vec![size]
        };
        let first_track = tracks.len();
        for (d, &count) in discs.iter().enumerate() {
            for k in 1..=count {
                let index = tracks.len();
                let mut trng = rng_for(seed, SALT_TRACK, index as u64);
                let title = track_title(&mut trng);
                let track_artist = if is_comp {
                    artist_name(&mut trng)
                } else {
                    album_main_artist.clone()
                };
                let with_disc = multi_disc[a] || write_disc;
                let tags = TagValues {
                    artist: Some(track_artist),
                    album_artist: album_artist.clone(),
                    album: Some(album_title.clone()),
                    title: Some(title),
                    year,
                    track: Some(k as u32),
                    track_total: write_total.then_some(count as u32),
                    disc: with_disc.then_some(d as u32 + 1),
                    disc_total: with_disc.then_some(discs.len() as u32),
                    genre: genre.clone(),
                    compilation: is_comp.then_some(true),
                };
                tracks.push(TrackPlan {
                    format: Format::Mp3,
                    kind: Kind::Normal,
                    album: a,
                    tags,
                    incoming: false,
                    non_utf8: false,
                    protected: false,
                    rel: Vec::new(),
                    ext: "",
                });
            }
        }
        if collision[a] {
            // The last track repeats disc, number and title of the one before it.
            let last = tracks.len() - 1;
            let prev = tracks[last - 1].tags.clone();
            let t = &mut tracks[last].tags;
            t.disc = prev.disc;
            t.track = prev.track;
            t.title = prev.title;
            tracks[last].protected = true;
            tracks[last - 1].protected = true;
        }
        albums.push(AlbumPlan {
            compilation: is_comp,
            layout,
            first_track,
            n_tracks: size,
        });
    }

    // Formats: exact proportions, mostly one format per album (albums take consecutive runs of
    // a format-sorted list, in random album order).
    let mut format_list = Vec::with_capacity(n);
    for (f, count) in format_quotas(weights, n) {
        format_list.extend(std::iter::repeat_n(f, count));
    }
    let mut next_format = format_list.into_iter();
    for &a in &album_order {
        let album = &albums[a];
        for t in &mut tracks[album.first_track..album.first_track + album.n_tracks] {
            t.format = next_format.next().expect("one format per track");
        }
    }

    // Bad files, non-UTF-8 names and tag quirks on distinct, randomly chosen tracks.
    let mut picker = Picker::new(n, &mut rng);
    for (i, t) in tracks.iter().enumerate() {
        if t.protected {
            picker.exclude(i);
        }
    }
    let mut path_tags: Vec<Option<TagValues>> = vec![None; n];
    for (kind, per_mille) in [
        (Kind::Empty, 5),
        (Kind::Corrupt, 10),
        (Kind::Truncated, 10),
        (Kind::Untagged, 15),
        (Kind::Misnamed, 10),
    ] {
        for _ in 0..count_for(n, per_mille, 1) {
            if let Some(i) = picker.pick(|i| tracks[i].kind == Kind::Normal && !tracks[i].protected)
            {
                tracks[i].kind = kind;
            }
        }
    }
    for j in 0..count_for(n, 3, 2) {
        if let Some(i) = picker
            .pick(|i| tracks[i].kind == Kind::Normal && !tracks[i].non_utf8 && !tracks[i].protected)
        {
            tracks[i].non_utf8 = true;
            tracks[i].incoming = j % 2 == 1;
        }
    }
    for quirk in Quirk::ALL {
        for j in 0..count_for(n, 15, 1) {
            let Some(i) = picker.pick(|i| {
                tracks[i].kind == Kind::Normal
                    && !tracks[i].protected
                    && tracks[i].format.supports(quirk)
            }) else {
                continue;
            };
            let mut qrng = rng_for(seed, SALT_QUIRK, i as u64);
            let format = tracks[i].format;
            apply_quirk(&mut tracks[i].tags, format, quirk, j, &mut qrng);
        }
    }

    // Placement, then the written tags for bad kinds.
    for (i, t) in tracks.iter_mut().enumerate() {
        let mut prng = rng_for(seed, SALT_PLACE, i as u64);
        let r = prng.random_range(0..100);
        if r < 5 || (t.kind == Kind::Untagged && r < 50) {
            t.incoming = true;
        }
        t.ext = if t.kind == Kind::Misnamed {
            t.format.misnamed_ext()
        } else {
            t.format.ext()
        };
        if matches!(t.kind, Kind::Corrupt | Kind::Empty | Kind::Untagged) {
            path_tags[i] = Some(std::mem::take(&mut t.tags));
        }
    }

    // On-disk paths, unique.
    let mut taken: HashSet<Vec<u8>> = HashSet::with_capacity(n);
    for i in 0..n {
        let tags = path_tags[i].as_ref().unwrap_or(&tracks[i].tags).clone();
        let album = &albums[tracks[i].album];
        let mut prng = rng_for(seed, SALT_PATH, i as u64);
        let (dirs, base) = path_parts(&tracks[i], &tags, album, i, &mut prng);
        let rel = unique_path(&dirs, &base, tracks[i].ext, &mut taken);
        tracks[i].rel = rel;
    }
    tracks
}

/// Apply a tricky case to a track's tags; `j` (the occurrence number) rotates the field.
fn apply_quirk(tags: &mut TagValues, format: Format, quirk: Quirk, j: usize, rng: &mut StdRng) {
    const ROTATION: [Field; 3] = [Field::Title, Field::Artist, Field::Album];
    let field = ROTATION[j % ROTATION.len()];
    let current = tags
        .get(field)
        .cloned()
        .unwrap_or_else(|| pick(rng, NOUNS).to_owned());
    let new_value = match quirk {
        Quirk::Cjk => cjk_name(rng),
        Quirk::Cyrillic => cyrillic_name(rng),
        Quirk::AccentNfc => accent_name(rng),
        Quirk::AccentNfd => to_nfd(&accent_name(rng)),
        Quirk::Emoji => match rng.random_range(0..3) {
            0 => format!("{current} {}", pick(rng, EMOJI)),
            1 => format!("{} {current}", pick(rng, EMOJI)),
            _ => format!("{}{}", pick(rng, EMOJI), pick(rng, EMOJI)),
        },
        Quirk::Slash => match rng.random_range(0..3) {
            0 => format!("{}/{}", pick(rng, NOUNS), pick(rng, NOUNS)),
            1 => format!("{current} (Part 1/2)"),
            _ => format!("{} / {}", current, pick(rng, NOUNS)),
        },
        Quirk::Backslash => match rng.random_range(0..2) {
            0 => format!("{}\\{}", pick(rng, NOUNS), pick(rng, NOUNS)),
            _ => format!("{current} \\ Remix"),
        },
        Quirk::Colon => match rng.random_range(0..3) {
            0 => format!("{current}: Reprise"),
            1 => format!("Vol. {}: {current}", rng.random_range(1..=9)),
            _ => format!(
                "{:02}:{:02}",
                rng.random_range(0..24),
                rng.random_range(0..60)
            ),
        },
        Quirk::EmptyValue => {
            // Rotate over more fields so genre and album artist get empty values too.
            let fields: Vec<Field> = [
                Field::Title,
                Field::Artist,
                Field::Album,
                Field::Genre,
                Field::AlbumArtist,
            ]
            .into_iter()
            .filter(|&f| format.keeps_empty(f))
            .collect();
            if let Some(&field) = fields.get(j % fields.len().max(1)) {
                *tags.slot(field) = Some(String::new());
            }
            return;
        }
        Quirk::LongValue => long_value(rng),
        Quirk::Spaces => match rng.random_range(0..3) {
            0 => format!(" {current}"),
            1 => format!("{current}  "),
            _ => format!("  {current} "),
        },
        Quirk::Dot => ".".to_owned(),
        Quirk::DotDot => "..".to_owned(),
        Quirk::NoAlbum => {
            tags.album = None;
            return;
        }
        Quirk::NoArtist => {
            tags.artist = None;
            if j.is_multiple_of(2) {
                tags.album_artist = None;
            }
            return;
        }
        Quirk::NoTrack => {
            tags.track = None;
            tags.track_total = None;
            return;
        }
        Quirk::NoYear => {
            tags.year = None;
            return;
        }
        Quirk::NoTitle => {
            tags.title = None;
            return;
        }
    };
    *tags.slot(field) = Some(new_value);
}

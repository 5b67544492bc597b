//! Deterministic randomness (seeded rngs per purpose and index) and the word lists names are made
//! of.

use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

pub(super) const SALT_MASTER: u64 = 1;
pub(super) const SALT_TRACK: u64 = 2;
pub(super) const SALT_QUIRK: u64 = 3;
pub(super) const SALT_GARBAGE: u64 = 4;
pub(super) const SALT_PATH: u64 = 5;
pub(super) const SALT_PLACE: u64 = 6;

/// An rng derived from (seed, salt, index) only.
pub(super) fn rng_for(seed: u64, salt: u64, index: u64) -> StdRng {
    StdRng::seed_from_u64(splitmix64(
        seed ^ splitmix64(salt.wrapping_mul(0xD6E8_FEB8_6659_FD93) ^ splitmix64(index)),
    ))
}

const ADJECTIVES: &[&str] = &[
    "Silver", "Golden", "Broken", "Electric", "Midnight", "Crimson", "Hollow", "Quiet", "Velvet",
    "Neon", "Lonely", "Burning", "Frozen", "Wild", "Gentle", "Distant", "Lost", "Hidden", "Bright",
    "Dark", "Restless", "Sacred", "Savage", "Blue", "Purple", "Paper", "Iron", "Glass", "Secret",
    "Last", "First", "Endless", "Fading", "Rising", "Sleepy", "Crooked", "Static", "Cosmic",
    "Northern", "Southern", "Little", "Heavy", "Sweet", "Bitter", "Empty", "Early", "Late",
];
pub(super) const NOUNS: &[&str] = &[
    "Heart",
    "River",
    "Dream",
    "Shadow",
    "Fire",
    "Ocean",
    "Mirror",
    "Garden",
    "Highway",
    "Machine",
    "Summer",
    "Winter",
    "Storm",
    "Light",
    "Echo",
    "Horizon",
    "Forest",
    "City",
    "Desert",
    "Moon",
    "Star",
    "Rain",
    "Signal",
    "Ghost",
    "Kingdom",
    "Island",
    "Thunder",
    "Satellite",
    "Diamond",
    "Wolf",
    "Tiger",
    "Rose",
    "Stone",
    "Wave",
    "Mountain",
    "Valley",
    "Engine",
    "Radio",
    "Window",
    "Letter",
    "Morning",
    "Evening",
    "Harbor",
    "Lantern",
    "Feather",
    "Circus",
    "Carousel",
    "Anchor",
];
const PLURALS: &[&str] = &[
    "Foxes",
    "Wolves",
    "Kings",
    "Saints",
    "Lovers",
    "Strangers",
    "Machines",
    "Ghosts",
    "Rebels",
    "Pilots",
    "Sisters",
    "Brothers",
    "Tigers",
    "Ravens",
    "Shadows",
    "Hearts",
    "Satellites",
    "Drifters",
    "Comets",
    "Horses",
];
const FIRST_NAMES: &[&str] = &[
    "John", "Mary", "Alex", "Sam", "Lena", "Marcus", "Nina", "Oscar", "Ruby", "Leo", "Ivy", "Hank",
    "Della", "Otis", "June", "Felix", "Iris", "Jack", "Nora", "Ray", "Etta", "Miles", "Cleo",
    "Bobby",
];
const LAST_NAMES: &[&str] = &[
    "Harper", "Stone", "Rivers", "Black", "Wilde", "Carter", "Monroe", "Hayes", "Brooks", "Reed",
    "Flynn", "Moss", "Lane", "Keller", "Vance", "Price", "Shaw", "Dalton", "Quinn", "Marsh",
    "O'Brien", "McKay",
];
const VERBS_ING: &[&str] = &[
    "Running", "Falling", "Dancing", "Waiting", "Burning", "Chasing", "Dreaming", "Driving",
    "Flying", "Hiding", "Breaking", "Holding", "Calling", "Drifting", "Shining", "Walking",
];
const PLACES: &[&str] = &[
    "Berlin",
    "Tokyo",
    "Memphis",
    "Brooklyn",
    "Paris",
    "Detroit",
    "Lisbon",
    "Reykjavik",
    "Nashville",
    "Montreal",
    "the Fillmore",
    "Budokan",
];
pub(super) const GENRES: &[&str] = &[
    "Rock",
    "Pop",
    "Jazz",
    "Electronic",
    "Hip-Hop",
    "Classical",
    "Folk",
    "Blues",
    "Metal",
    "Ambient",
    "Soul",
    "R&B",
    "Country",
    "Reggae",
    "Punk",
    "Indie",
    "Drum & Bass",
    "Synthwave",
    "Bossa Nova",
    "K-Pop",
    "Singer-Songwriter",
    "Soundtrack",
];
const CJK_WORDS: &[&str] = &[
    "東京",
    "夜明け",
    "桜",
    "雨の日",
    "月光",
    "夢",
    "星空",
    "さくら",
    "カラオケ",
    "ありがとう",
    "사랑해",
    "서울의 밤",
    "北京",
    "春天",
    "龍",
    "海辺",
    "花火",
    "青い空",
    "静かな夜",
    "風",
];
const CYRILLIC_WORDS: &[&str] = &[
    "Кино",
    "Звезда",
    "Город",
    "Ночь",
    "Белые ночи",
    "Песня",
    "Летний дождь",
    "Москва",
    "Весна",
    "Мечта",
    "Ветер",
    "Сердце",
    "Последний герой",
    "Ёлка",
];
const ACCENT_WORDS: &[&str] = &[
    "Café",
    "Crème Brûlée",
    "Déjà Vu",
    "Naïve",
    "Über",
    "Señorita",
    "Mañana",
    "Ça Va",
    "Fiancée",
    "Résumé",
    "Ångström",
    "Smörgåsbord",
    "Noël",
    "Garçon",
    "Élan Vital",
    "Sólo",
    "Música",
    "Corazón",
    "Jalapeño",
    "São Paulo",
    "Zürich",
    "Köln",
    "Fête",
];
pub(super) const EMOJI: &[&str] = &[
    "🎸",
    "🔥",
    "🌙",
    "💿",
    "🎹",
    "❤️",
    "👩‍🎤",
    "🇯🇵",
    "✨",
    "🎧",
    "🦊",
    "🌊",
];
const LONG_PIECES: &[&str] = &[
    "Ünïcödé",
    "長い題名",
    "Длинное",
    "naïve",
    "—",
    "🎶",
    "Symphony",
    "No.",
    "in",
    "E♭",
    "Major",
    "Op.",
    "Allegro",
    "ma non troppo",
    "Été",
    "夜想曲",
];

/// NFD (decomposed) form of the accented letters used in [`ACCENT_WORDS`].
pub(super) fn to_nfd(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        let (base, mark) = match c {
            'é' => ('e', '\u{301}'),
            'è' => ('e', '\u{300}'),
            'ê' => ('e', '\u{302}'),
            'ë' => ('e', '\u{308}'),
            'á' => ('a', '\u{301}'),
            'à' => ('a', '\u{300}'),
            'â' => ('a', '\u{302}'),
            'ä' => ('a', '\u{308}'),
            'å' => ('a', '\u{30A}'),
            'ã' => ('a', '\u{303}'),
            'í' => ('i', '\u{301}'),
            'ï' => ('i', '\u{308}'),
            'î' => ('i', '\u{302}'),
            'ó' => ('o', '\u{301}'),
            'ô' => ('o', '\u{302}'),
            'ö' => ('o', '\u{308}'),
            'õ' => ('o', '\u{303}'),
            'ú' => ('u', '\u{301}'),
            'ü' => ('u', '\u{308}'),
            'û' => ('u', '\u{302}'),
            'ñ' => ('n', '\u{303}'),
            'ç' => ('c', '\u{327}'),
            'É' => ('E', '\u{301}'),
            'Ö' => ('O', '\u{308}'),
            'Ü' => ('U', '\u{308}'),
            'Å' => ('A', '\u{30A}'),
            'Ç' => ('C', '\u{327}'),
            _ => {
                out.push(c);
                continue;
            }
        };
        out.push(base);
        out.push(mark);
    }
    out
}

pub(super) fn pick<'a>(rng: &mut StdRng, list: &[&'a str]) -> &'a str {
    list.choose(rng).copied().unwrap_or("")
}

pub(super) fn cjk_name(rng: &mut StdRng) -> String {
    let n = rng.random_range(1..=2);
    (0..n)
        .map(|_| pick(rng, CJK_WORDS))
        .collect::<Vec<_>>()
        .join(if rng.random_bool(0.5) { "" } else { " " })
}

pub(super) fn cyrillic_name(rng: &mut StdRng) -> String {
    let n = rng.random_range(1..=2);
    (0..n)
        .map(|_| pick(rng, CYRILLIC_WORDS))
        .collect::<Vec<_>>()
        .join(" ")
}

pub(super) fn accent_name(rng: &mut StdRng) -> String {
    match rng.random_range(0..3) {
        0 => pick(rng, ACCENT_WORDS).to_owned(),
        1 => format!("{} {}", pick(rng, ACCENT_WORDS), pick(rng, NOUNS)),
        _ => format!("{} {}", pick(rng, ADJECTIVES), pick(rng, ACCENT_WORDS)),
    }
}

/// Occasionally (a few percent) a non-Latin or accented name, as in real libraries.
fn natural_unicode(rng: &mut StdRng) -> Option<String> {
    match rng.random_range(0..100) {
        0 => Some(cjk_name(rng)),
        1 => Some(cyrillic_name(rng)),
        2 => Some(accent_name(rng)),
        3 => Some(to_nfd(&accent_name(rng))),
        _ => None,
    }
}

pub(super) fn artist_name(rng: &mut StdRng) -> String {
    if let Some(name) = natural_unicode(rng) {
        return name;
    }
    match rng.random_range(0..8) {
        0 | 1 => format!("The {} {}", pick(rng, ADJECTIVES), pick(rng, PLURALS)),
        2 | 3 => format!("{} {}", pick(rng, FIRST_NAMES), pick(rng, LAST_NAMES)),
        4 => format!("{} {}", pick(rng, ADJECTIVES), pick(rng, NOUNS)),
        5 => format!(
            "{} {} & the {}",
            pick(rng, FIRST_NAMES),
            pick(rng, LAST_NAMES),
            pick(rng, PLURALS)
        ),
        6 => format!("DJ {}", pick(rng, NOUNS)),
        _ => format!("{} of {}", pick(rng, PLURALS), pick(rng, PLACES)),
    }
}

pub(super) fn album_name(rng: &mut StdRng) -> String {
    if let Some(name) = natural_unicode(rng) {
        return name;
    }
    match rng.random_range(0..10) {
        0..=2 => format!("{} {}", pick(rng, ADJECTIVES), pick(rng, NOUNS)),
        3 => format!("{} of the {}", pick(rng, NOUNS), pick(rng, NOUNS)),
        4 => format!("Songs from the {}", pick(rng, NOUNS)),
        5 => format!("Live in {}", pick(rng, PLACES)),
        6 => format!(
            "{} {} (Deluxe Edition)",
            pick(rng, ADJECTIVES),
            pick(rng, NOUNS)
        ),
        7 => format!("The {} Sessions", pick(rng, NOUNS)),
        8 => format!("Vol. {}", rng.random_range(1..=4)),
        _ => pick(rng, NOUNS).to_owned(),
    }
}

pub(super) fn track_title(rng: &mut StdRng) -> String {
    if let Some(name) = natural_unicode(rng) {
        return name;
    }
    match rng.random_range(0..12) {
        0..=2 => format!("{} {}", pick(rng, ADJECTIVES), pick(rng, NOUNS)),
        3 => format!("{} in the {}", pick(rng, VERBS_ING), pick(rng, NOUNS)),
        4 => pick(rng, NOUNS).to_owned(),
        5 => pick(rng, VERBS_ING).to_owned(),
        6 => format!("{} (Interlude)", pick(rng, NOUNS)),
        7 => format!(
            "{} {} (Remastered {})",
            pick(rng, ADJECTIVES),
            pick(rng, NOUNS),
            rng.random_range(1995..=2023)
        ),
        8 => format!("Don't Stop the {}", pick(rng, NOUNS)),
        9 => format!("{} & {}", pick(rng, NOUNS), pick(rng, NOUNS)),
        10 => format!("{}, Pt. {}", pick(rng, NOUNS), rng.random_range(1..=3)),
        _ => format!("{} {} [Live]", pick(rng, ADJECTIVES), pick(rng, NOUNS)),
    }
}

/// A 300..=600-byte value made mostly of multi-byte characters.
pub(super) fn long_value(rng: &mut StdRng) -> String {
    let target = rng.random_range(300..=600);
    let mut s = String::new();
    while s.len() < target {
        if !s.is_empty() {
            s.push(' ');
        }
        s.push_str(pick(rng, LONG_PIECES));
    }
    while s.len() > 599 {
        s.pop();
    }
    while s.ends_with(' ') {
        s.pop();
    }
    while s.len() < 300 {
        s.push('x');
    }
    s.push('!');
    s
}

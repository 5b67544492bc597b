//! Defaults that belong to a subsystem but that the configuration names.

/// Directory entries kept in the catalog's hot listing cache, in total
/// (`listing_cache_entries`).
pub const LISTING_CACHE_ENTRIES: usize = 256 * 1024;

/// Origin files the data plane keeps open for reads (`open_files_max`).
pub const OPEN_FILES_MAX: usize = 256;

/// Extensions (lower case, no dot) of the files the scan lists
/// (`audio_extensions`). Every file with one of them appears in the tree:
/// by its tags where they can be read, else by its file name.
pub const AUDIO_EXTENSIONS: &[&str] = &[
    "mp3", "mp2", "mp1", "flac", "ogg", "oga", "opus", "spx", "m4a", "m4b", "m4p", "mp4", "aac",
    "alac", "wav", "wave", "aif", "aiff", "aifc", "ape", "wv", "mpc", "mp+", "mpp", "tta", "tak",
    "ofr", "ofs", "wma", "asf", "dsf", "dff", "mka", "webm", "mid", "midi",
];

/// The most bytes the chunk cache keeps by default (`cache_max_bytes`):
/// about 500 albums of FLAC.
pub const CACHE_MAX_BYTES: u64 = 20 * 1024 * 1024 * 1024;

/// How long the kernel may keep names, attributes and misses by default
/// (`entry_ttl_ms`, `negative_ttl_ms`): 4 hours. Every change is pushed to
/// the kernel as it is committed, so the TTL only bounds what a lost
/// notice could cost.
pub const KERNEL_TTL_MS: u32 = 4 * 3600 * 1000;

/// The most entries a search directory lists.
pub const SEARCH_MAX_RESULTS: usize = 10_000;

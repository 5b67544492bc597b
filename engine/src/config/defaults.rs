//! Defaults that belong to a subsystem but that the configuration names.

/// Directory entries kept in the catalog's hot listing cache, in total
/// (`listing_cache_entries`).
pub const LISTING_CACHE_ENTRIES: usize = 256 * 1024;

/// Origin files the data plane keeps open for reads (`open_files_max`).
pub const OPEN_FILES_MAX: usize = 256;

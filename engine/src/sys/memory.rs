//! Giving freed memory back to the system.

/// Gives memory freed after a scan (the maps of known and seen files) back
/// to the system, so the idle engine stays small.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns unused heap pages to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

//! Fault injection for tests: `MUSICFS_FAULT=name[,name...]` names the
//! faults a process injects (each site documents its name).

/// Whether the fault `name` is asked for.
pub fn injected(name: &str) -> bool {
    std::env::var("MUSICFS_FAULT").is_ok_and(|f| f.split(',').any(|f| f == name))
}

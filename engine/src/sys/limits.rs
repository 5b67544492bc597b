//! Process limits the engine raises for itself.

/// Raises the soft limit of open files to the hard limit (capped at 1 Mi):
/// every open handle keeps its origin file open in the engine, and the
/// default soft limit (1,024) is below the handles a media server opens.
/// Returns the soft limit in force afterwards.
pub fn raise_open_files() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 0;
    }
    let want = lim.rlim_max.min(1 << 20);
    if want > lim.rlim_cur {
        let new = libc::rlimit {
            rlim_cur: want,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit reads the struct we own.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &new) } == 0 {
            return want;
        }
    }
    lim.rlim_cur
}

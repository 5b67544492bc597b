//! The load of the fault-injection tests: 8 readers hashing whole files
//! (each checked against its origin) and a walker stat-ing the whole tree,
//! until stopped; every failed syscall and wrong byte is counted.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::{getxattr, hash_file, list_files};

pub struct Load {
    stop: Arc<AtomicBool>,
    errors: Arc<parking_lot_free::Errors>,
    hashed: Arc<AtomicU64>,
    walks: Arc<AtomicU64>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

mod parking_lot_free {
    /// Errors seen by the load, with the first few messages.
    #[derive(Default)]
    pub struct Errors {
        pub count: std::sync::atomic::AtomicU64,
        pub first: std::sync::Mutex<Vec<String>>,
    }

    impl Errors {
        pub fn add(&self, msg: String) {
            self.count
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if let Ok(mut f) = self.first.lock()
                && f.len() < 10
            {
                f.push(msg);
            }
        }
    }
}

/// 8 readers hashing whole files (checked against the origin) and one walker
/// stat-ing the whole tree, until stopped.
pub fn start_load(mnt: &Path) -> Load {
    let files: Vec<(PathBuf, blake3::Hash)> = list_files(mnt)
        .into_iter()
        .map(|rel| {
            let p = mnt.join(rel);
            let origin = PathBuf::from(OsStr::from_bytes(
                &getxattr(&p, "user.musicfs.origin").unwrap(),
            ));
            (p, hash_file(&origin).unwrap())
        })
        .collect();
    let files = Arc::new(files);
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(parking_lot_free::Errors::default());
    let hashed = Arc::new(AtomicU64::new(0));
    let walks = Arc::new(AtomicU64::new(0));
    let mut threads = Vec::new();
    for r in 0..8usize {
        let (files, stop, errors, hashed) =
            (files.clone(), stop.clone(), errors.clone(), hashed.clone());
        threads.push(std::thread::spawn(move || {
            let mut i = r * 97;
            while !stop.load(Ordering::Relaxed) {
                let (path, want) = &files[i % files.len()];
                match hash_file(path) {
                    Ok(h) if h == *want => {
                        hashed.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) => errors.add(format!("WRONG BYTES {}", path.display())),
                    Err(e) => errors.add(format!("read {}: {e}", path.display())),
                }
                i += 1;
            }
        }));
    }
    let mnt = mnt.to_path_buf();
    let (stop2, errors2, walks2) = (stop.clone(), errors.clone(), walks.clone());
    threads.push(std::thread::spawn(move || {
        while !stop2.load(Ordering::Relaxed) {
            for e in walkdir::WalkDir::new(&mnt) {
                match e.and_then(|e| e.metadata().map(|_| ())) {
                    Ok(()) => {}
                    Err(err) => errors2.add(format!("walk: {err}")),
                }
            }
            walks2.fetch_add(1, Ordering::Relaxed);
        }
    }));
    Load {
        stop,
        errors,
        hashed,
        walks,
        threads,
    }
}

impl Load {
    /// Stops the load; panics with the first errors if there were any.
    pub fn finish(self, what: &str, log: &str) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        let n = self.errors.count.load(Ordering::Relaxed);
        assert_eq!(
            n,
            0,
            "{what}: {n} failed syscalls or wrong bytes, first: {:?}\n{log}",
            self.errors.first.lock().unwrap()
        );
        (
            self.hashed.load(Ordering::Relaxed),
            self.walks.load(Ordering::Relaxed),
        )
    }
}

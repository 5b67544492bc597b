//! Generating a library (templates, plan, parallel writes, manifest) and verifying it.

use std::ffi::OsStr;
use std::io::{BufWriter, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use lofty::file::TaggedFileExt;
use lofty::probe::Probe;

use super::cli::Args;
use super::formats::{Format, parse_formats};
use super::manifest::{Kind, MANIFEST_NAME, ManifestEntry, TagValues, read_manifest, to_hex};
use super::plan::plan_library;
use super::render::render;
use super::templates::{has_user_items, load_templates};

/// Write a file, creating its directory on first use (directories are created by the workers,
/// in parallel; `create_dir_all` tolerates races).
fn write_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    match std::fs::write(path, bytes) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(path, bytes)
        }
        other => other,
    }
}

/// Summary of a generation run.
#[derive(Debug, Clone)]
pub struct Summary {
    pub tracks: usize,
    pub bytes: u64,
    /// Total wall time.
    pub seconds: f64,
    /// Wall time of the phases: templates, planning, writing files.
    pub phases: [f64; 3],
}

/// Generate the library described by `args`.
pub fn generate(args: &Args) -> Result<Summary> {
    let start = Instant::now();
    ensure!(
        args.seconds.is_finite() && args.seconds > 0.0 && args.seconds <= 3600.0,
        "--seconds must be in (0, 3600]"
    );
    let weights = parse_formats(&args.formats)?;
    let out = &args.out;
    if out.exists() {
        let mut entries =
            std::fs::read_dir(out).with_context(|| format!("reading {}", out.display()))?;
        ensure!(
            entries.next().is_none(),
            "{} is not empty; refusing to generate into it",
            out.display()
        );
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;

    let formats: Vec<Format> = weights.iter().map(|(f, _)| *f).collect();
    let templates = load_templates(&formats, args.seconds)?;
    let t_templates = start.elapsed().as_secs_f64();
    let plan = plan_library(args.tracks, args.seed, &weights);
    let t_plan = start.elapsed().as_secs_f64();
    let jobs = args
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let sizes: Vec<u64> = std::thread::scope(|scope| -> Result<Vec<u64>> {
        let workers: Vec<_> = (0..jobs)
            .map(|_| {
                scope.spawn(|| -> Result<Vec<(usize, u64)>> {
                    let mut done = Vec::new();
                    const CHUNK: usize = 16;
                    while !failed.load(Ordering::Relaxed) {
                        let start = next.fetch_add(CHUNK, Ordering::Relaxed);
                        if start >= plan.len() {
                            break;
                        }
                        for (i, track) in plan.iter().enumerate().skip(start).take(CHUNK) {
                            let template = templates[track.format as usize]
                                .as_deref()
                                .expect("templates cover every planned format");
                            let path = out.join(OsStr::from_bytes(&track.rel));
                            let result = render(track, i, template, args.seed).and_then(|bytes| {
                                write_file(&path, &bytes)?;
                                Ok(bytes.len() as u64)
                            });
                            match result {
                                Ok(size) => done.push((i, size)),
                                Err(e) => {
                                    failed.store(true, Ordering::Relaxed);
                                    return Err(e.context(format!("writing {}", path.display())));
                                }
                            }
                        }
                    }
                    Ok(done)
                })
            })
            .collect();
        let mut sizes = vec![0u64; plan.len()];
        for worker in workers {
            let done = worker
                .join()
                .map_err(|_| anyhow::anyhow!("a worker thread panicked"))??;
            for (i, size) in done {
                sizes[i] = size;
            }
        }
        Ok(sizes)
    })?;

    let t_write = start.elapsed().as_secs_f64();
    let manifest_path = out.join(MANIFEST_NAME);
    let mut manifest = BufWriter::new(
        std::fs::File::create(&manifest_path)
            .with_context(|| format!("creating {}", manifest_path.display()))?,
    );
    let mut bytes = 0;
    for (track, &size) in plan.iter().zip(&sizes) {
        bytes += size;
        let entry = ManifestEntry {
            path: String::from_utf8_lossy(&track.rel).into_owned(),
            path_hex: to_hex(&track.rel),
            format: track.format.name().to_owned(),
            ext: track.ext.to_owned(),
            kind: track.kind,
            size,
            tags: track.tags.clone(),
        };
        serde_json::to_writer(&mut manifest, &entry)?;
        manifest.write_all(b"\n")?;
    }
    manifest.flush()?;
    drop(manifest);

    let summary = Summary {
        tracks: plan.len(),
        bytes,
        seconds: start.elapsed().as_secs_f64(),
        phases: [t_templates, t_plan - t_templates, t_write - t_plan],
    };
    if args.verify {
        let problems = verify(out)?;
        if !problems.is_empty() {
            for p in problems.iter().take(50) {
                eprintln!("verify: {p}");
            }
            bail!(
                "{} files do not read back as the manifest says",
                problems.len()
            );
        }
        println!("gen-library: verified {} files with lofty", plan.len());
    }
    Ok(summary)
}

/// Read every file of a generated library back with lofty and compare it with the manifest.
/// Returns one message per mismatch.
pub fn verify(dir: &Path) -> Result<Vec<String>> {
    let mut problems = Vec::new();
    for entry in read_manifest(dir)? {
        let path = dir.join(OsStr::from_bytes(&entry.raw_path()));
        let size = std::fs::metadata(&path)
            .with_context(|| format!("{} is missing", path.display()))?
            .len();
        if size != entry.size {
            problems.push(format!("{}: size {size} != {}", entry.path, entry.size));
        }
        if !matches!(entry.kind, Kind::Normal | Kind::Misnamed | Kind::Untagged) {
            continue;
        }
        let format = Format::from_name(&entry.format).context("unknown format in manifest")?;
        let read = Probe::open(&path)
            .and_then(|p| Ok(p.guess_file_type()?))
            .and_then(|p| p.read());
        let tagged = match read {
            Ok(t) => t,
            Err(e) => {
                problems.push(format!("{}: lofty cannot read it: {e}", entry.path));
                continue;
            }
        };
        if tagged.file_type() != format.file_type() {
            problems.push(format!(
                "{}: read as {:?}, manifest says {}",
                entry.path,
                tagged.file_type(),
                entry.format
            ));
        }
        if entry.kind == Kind::Untagged {
            if tagged.tags().iter().any(has_user_items) {
                problems.push(format!("{}: untagged file has tags", entry.path));
            }
            continue;
        }
        let got = tagged
            .primary_tag()
            .map(TagValues::from_tag)
            .unwrap_or_default();
        if got != entry.tags {
            problems.push(format!(
                "{} ({}): read back {got:?}, manifest {:?}",
                entry.path, entry.format, entry.tags
            ));
        }
    }
    Ok(problems)
}

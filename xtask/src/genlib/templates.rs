//! One untagged template per format, encoded with ffmpeg and cached under the target directory.

use std::collections::HashSet;
use std::io::Cursor;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context, Result, bail, ensure};
use lofty::config::WriteOptions;
use lofty::file::{FileType, TaggedFileExt};
use lofty::probe::Probe;
use lofty::tag::{ItemKey, Tag, TagType};

use super::formats::Format;

/// The cargo target directory (`$CARGO_TARGET_DIR` or `<workspace>/target`).
fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                std::env::current_dir()
                    .map(|cwd| cwd.join(&dir))
                    .unwrap_or(dir)
            }
        }
        _ => crate::harness::workspace_root().join("target"),
    }
}

fn seconds_label(seconds: f64) -> String {
    format!("{seconds}")
}

/// Names of the encoders of the installed ffmpeg.
fn ffmpeg_encoders() -> Result<HashSet<String>> {
    let output = Command::new("ffmpeg")
        .args(["-hide_banner", "-encoders"])
        .stdin(Stdio::null())
        .output()
        .context("cannot run `ffmpeg` (is it installed and on PATH?)")?;
    ensure!(
        output.status.success(),
        "`ffmpeg -encoders` failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8_lossy(&output.stdout);
    let mut names = HashSet::new();
    let mut in_list = false;
    for line in text.lines() {
        if line.trim_start().starts_with("------") {
            in_list = true;
            continue;
        }
        if !in_list {
            continue;
        }
        let mut words = line.split_whitespace();
        if let (Some(_flags), Some(name)) = (words.next(), words.next()) {
            names.insert(name.to_owned());
        }
    }
    Ok(names)
}

/// Remove every tag lofty can see, so templates are truly untagged.
fn strip_tags(bytes: Vec<u8>, file_type: FileType) -> Result<Vec<u8>> {
    let mut cursor = Cursor::new(bytes);
    for tag_type in [
        TagType::Id3v2,
        TagType::Id3v1,
        TagType::Ape,
        TagType::VorbisComments,
        TagType::Mp4Ilst,
        TagType::RiffInfo,
        TagType::AiffText,
    ] {
        if file_type.tag_support(tag_type).is_readable() {
            cursor.set_position(0);
            tag_type
                .remove_from(&mut cursor, WriteOptions::default())
                .with_context(|| format!("removing {tag_type:?} from a {file_type:?} template"))?;
        }
    }
    Ok(cursor.into_inner())
}

/// Check that lofty reads `bytes` as `format` with no tag items.
fn check_template(bytes: &[u8], format: Format) -> Result<()> {
    let tagged = Probe::new(Cursor::new(bytes))
        .guess_file_type()?
        .read()
        .with_context(|| format!("lofty cannot read the {} template", format.name()))?;
    ensure!(
        tagged.file_type() == format.file_type(),
        "the {} template is detected as {:?}",
        format.name(),
        tagged.file_type()
    );
    ensure!(
        !tagged.tags().iter().any(has_user_items),
        "the {} template still has tags",
        format.name()
    );
    Ok(())
}

/// Whether a tag holds anything but the Ogg vendor string (which Ogg files always keep; lofty
/// shows it as `EncoderSoftware`).
pub(super) fn has_user_items(tag: &Tag) -> bool {
    tag.picture_count() > 0 || tag.items().any(|i| i.key() != ItemKey::EncoderSoftware)
}

pub(super) fn unique_suffix() -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Encode (or load from the cache) one stripped template per format, indexed like `Format::ALL`.
pub(super) fn load_templates(formats: &[Format], seconds: f64) -> Result<Vec<Option<Vec<u8>>>> {
    let dir = target_dir()
        .join("xtask-templates")
        .join(seconds_label(seconds));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut encoders: Option<HashSet<String>> = None;
    let mut out = vec![None; Format::ALL.len()];
    for &format in formats {
        let path = dir.join(format!("template.{}", format.ext()));
        if let Ok(bytes) = std::fs::read(&path)
            && check_template(&bytes, format).is_ok()
        {
            out[format as usize] = Some(bytes);
            continue;
        }
        if encoders.is_none() {
            encoders = Some(ffmpeg_encoders()?);
        }
        let available = encoders.as_ref().expect("just set");
        let Some((codec, codec_args)) = format
            .encoders()
            .iter()
            .find(|(name, _)| available.contains(*name))
        else {
            bail!(
                "ffmpeg has no encoder for {} (needs one of: {}); install an ffmpeg build with it \
                 or leave {} out of --formats",
                format.name(),
                format
                    .encoders()
                    .iter()
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
                    .join(", "),
                format.name()
            );
        };
        let raw = dir.join(format!(".raw-{}.{}", unique_suffix(), format.ext()));
        let (muxer, muxer_args) = format.muxer();
        let rate = format.sample_rate().to_string();
        let status = Command::new("ffmpeg")
            .args(["-hide_banner", "-nostdin", "-loglevel", "error", "-y"])
            .args(["-f", "lavfi", "-i"])
            .arg(format!(
                "sine=frequency=440:sample_rate={rate}:duration={}",
                seconds_label(seconds)
            ))
            .args(["-ac", "2", "-ar", &rate, "-map_metadata", "-1"])
            .args(["-fflags", "+bitexact", "-flags:a", "+bitexact"])
            .args(["-c:a", codec])
            .args(*codec_args)
            .args(muxer_args.iter())
            .args(["-f", muxer])
            .arg(&raw)
            .stdin(Stdio::null())
            .status()
            .context("cannot run `ffmpeg` (is it installed and on PATH?)")?;
        if !status.success() {
            let _ = std::fs::remove_file(&raw);
            bail!(
                "ffmpeg failed to encode the {} template with encoder `{codec}`",
                format.name()
            );
        }
        let bytes = std::fs::read(&raw).with_context(|| format!("reading {}", raw.display()))?;
        let _ = std::fs::remove_file(&raw);
        let bytes = strip_tags(bytes, format.file_type())?;
        check_template(&bytes, format)?;
        let tmp = dir.join(format!(".tmp-{}.{}", unique_suffix(), format.ext()));
        std::fs::write(&tmp, &bytes).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("renaming to {}", path.display()))?;
        out[format as usize] = Some(bytes);
    }
    Ok(out)
}

//! The data directory: created durably, and marked with the format of the
//! store inside it, so that a directory of another format (or none) is
//! refused instead of misread or silently replaced.
//!
//! A name in a directory survives a power cut only once the directory has
//! been fsynced, so every file and directory created here is followed by an
//! fsync of its parent.

use std::fs::File;
use std::io::{self, Write as _};
use std::path::Path;

/// The marker file naming the store's format.
const MARKER: &str = "FORMAT";
/// The marker while it is being written.
const MARKER_TMP: &str = "FORMAT.tmp";

/// Fsyncs a directory, making the names in it durable.
pub(crate) fn sync(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates `dir` and any missing parents, each made durable in its parent.
pub(crate) fn create(dir: &Path) -> io::Result<()> {
    let mut missing = Vec::new();
    let mut p = Some(dir);
    while let Some(d) = p {
        if d.as_os_str().is_empty() || d.exists() {
            break;
        }
        missing.push(d);
        p = d.parent();
    }
    for d in missing.into_iter().rev() {
        std::fs::create_dir(d)?;
        match d.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => sync(parent)?,
            _ => sync(Path::new("."))?,
        }
    }
    if !dir.is_dir() {
        return Err(io::Error::other("not a directory"));
    }
    Ok(())
}

/// The format named by `dir`'s marker, or `None` if it has none.
pub(crate) fn format(dir: &Path) -> io::Result<Option<String>> {
    match std::fs::read_to_string(dir.join(MARKER)) {
        Ok(s) => Ok(Some(s.trim().to_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            // Listing proves the directory is readable at all.
            std::fs::read_dir(dir)?;
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Writes the marker: a temporary file, fsynced, renamed into place, and
/// the directory fsynced, so it is either absent or whole after a crash.
pub(crate) fn set_format(dir: &Path, format: &str) -> io::Result<()> {
    let tmp = dir.join(MARKER_TMP);
    let mut f = File::create(&tmp)?;
    f.write_all(format.as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, dir.join(MARKER))?;
    sync(dir)
}

/// Names in `dir` other than the marker and `ours`, sorted.
pub(crate) fn foreign_entries(dir: &Path, ours: &[&str]) -> io::Result<Vec<String>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let name = e?.file_name().to_string_lossy().into_owned();
        if name != MARKER && name != MARKER_TMP && !ours.contains(&name.as_str()) {
            out.push(name);
        }
    }
    out.sort();
    Ok(out)
}

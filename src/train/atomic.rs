//! Crash-safe file writes: write a temporary file beside the target, fsync it, rename it over the
//! target, fsync the directory. A reader sees the old file or the new one, never a torn one, and a
//! full disk fails the write without touching the previous file.

use anyhow::{Context, Result};
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::Path;

/// Replaces `path` with `bytes` atomically.
pub fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    write_with(path, |f| f.write_all(bytes))
}

/// Replaces `path` atomically with what `fill` writes (through a buffer): a file too large to be
/// formed in memory first is streamed to its temporary, then renamed over `path`.
pub fn write_with(
    path: &Path,
    fill: impl FnOnce(&mut BufWriter<File>) -> std::io::Result<()>,
) -> Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .with_context(|| format!("{} has no file name", path.display()))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| -> Result<()> {
        let f = File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        let mut w = BufWriter::with_capacity(1 << 20, f);
        fill(&mut w)
            .and_then(|()| w.flush())
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        w.get_ref()
            .sync_all()
            .with_context(|| format!("cannot flush {} to disk", tmp.display()))?;
        fs::rename(&tmp, path)
            .with_context(|| format!("cannot move {} to {}", tmp.display(), path.display()))?;
        // Make the rename itself durable.
        File::open(dir).and_then(|d| d.sync_all()).ok();
        Ok(())
    })();
    if result.is_err() {
        fs::remove_file(&tmp).ok();
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_content_and_leaves_no_temporary() {
        let dir = std::env::temp_dir().join(format!("lowrank-atomic-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let p = dir.join("state.json");
        write(&p, b"old").unwrap();
        write(&p, b"new").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"new");
        assert_eq!(
            fs::read_dir(&dir).unwrap().count(),
            1,
            "temporary file left behind"
        );
        // A target in a missing directory fails cleanly.
        assert!(write(&dir.join("missing/x"), b"y").is_err());
        fs::remove_dir_all(&dir).ok();
    }
}

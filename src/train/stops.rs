//! What a run says when it stops short or must not start: the last complete checkpoint to
//! `--resume` from, what to mend first, and a run directory that already holds a run.

use super::checkpoint;
use super::checkpoint_writer::WriteFailed;
use super::config::TrainConfig;
use crate::optim::Diverged;
use anyhow::{bail, Result};
use std::path::{Path, PathBuf};

/// A checkpoint that could not be written (a full disk) stops the run.
pub(super) fn checkpoint_failed(out: &Path, f: WriteFailed) -> anyhow::Error {
    let what = format!("the checkpoint of step {} could not be written", f.step);
    let stops = run_stops(out, &what, &f.error);
    f.error.context(stops)
}

/// What a failed write leaves: the run stops, and the last complete checkpoint (if any) is where
/// it continues from once what failed the write (`error`) is mended.
pub(super) fn run_stops(out: &Path, what: &str, error: &anyhow::Error) -> String {
    let last = match last_checkpoint(out) {
        Some(dir) => format!(
            "the last complete checkpoint, {}, is intact: {}continue from it with --resume {}",
            dir.display(),
            remedy(error, out),
            out.display()
        ),
        None => "no earlier checkpoint was written".to_string(),
    };
    format!("{what}, so the run stops; {last}")
}

/// What to mend before resuming, from the operating system's error under `error`: space for a
/// full disk, quota or file-size limit, permission for a refused or read-only directory, and
/// nothing named otherwise (the error itself follows the sentence).
fn remedy(error: &anyhow::Error, out: &Path) -> String {
    use std::io::ErrorKind::*;
    let io = error
        .chain()
        .find_map(|e| e.downcast_ref::<std::io::Error>());
    match io.map(std::io::Error::kind) {
        Some(StorageFull | QuotaExceeded | FileTooLarge) => "free some space and ".to_string(),
        Some(PermissionDenied | ReadOnlyFilesystem) => {
            format!("make {} writable and ", out.display())
        }
        _ => String::new(),
    }
}

/// What a diverged step leaves (it changed nothing): the last complete checkpoint, if any, to
/// continue from at a lower learning rate, or a fresh start.
pub(super) fn run_diverged(out: &Path, cfg: &TrainConfig, d: &Diverged) -> String {
    let (lr, warmup) = (cfg.lr, cfg.warmup);
    match last_checkpoint(out) {
        Some(dir) => format!(
            "{d}; the last complete checkpoint, {}, is intact: continue from it with --resume {} \
             and a lower --lr (this run's: {lr:e})",
            dir.display(),
            out.display()
        ),
        None => format!(
            "{d} before any checkpoint was written: start again with a lower --lr (this run's: \
             {lr:e}) or a longer --warmup (this run's: {warmup} steps)"
        ),
    }
}

/// The run's last complete checkpoint, if it has one (an unreadable `latest` counts as none): with
/// none in flight (`CheckpointWriter::settle`).
fn last_checkpoint(out: &Path) -> Option<PathBuf> {
    checkpoint::latest_dir(out).ok().flatten()
}

/// A fresh run must not silently mix its metrics and checkpoints with an earlier run's.
pub(super) fn refuse_to_overwrite(out: &Path) -> Result<()> {
    if checkpoint::latest_dir(out)?.is_some() || out.join("metrics.jsonl").exists() {
        bail!("{} already holds a training run: continue it with --resume {}, or choose another --out", out.display(), out.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::remedy;
    use anyhow::Context;
    use std::io::{Error, ErrorKind};
    use std::path::Path;

    /// The advice before `--resume` follows the operating system's error under the context the
    /// writer adds: a full disk (or quota, or file-size limit) asks for space, a refused or
    /// read-only directory for permission, anything else (an I/O error) names no remedy.
    #[test]
    fn a_failed_write_is_told_what_to_mend() {
        let failed = |kind: ErrorKind| {
            let e: anyhow::Result<()> = Err(Error::from(kind)).context("writing model.safetensors");
            remedy(&e.unwrap_err(), Path::new("runs/x"))
        };
        for kind in [
            ErrorKind::StorageFull,
            ErrorKind::QuotaExceeded,
            ErrorKind::FileTooLarge,
        ] {
            assert_eq!(failed(kind), "free some space and ", "{kind:?}");
        }
        for kind in [ErrorKind::PermissionDenied, ErrorKind::ReadOnlyFilesystem] {
            assert_eq!(failed(kind), "make runs/x writable and ", "{kind:?}");
        }
        assert_eq!(failed(ErrorKind::Other), "");
        assert_eq!(remedy(&anyhow::anyhow!("no I/O error"), Path::new("x")), "");
    }
}

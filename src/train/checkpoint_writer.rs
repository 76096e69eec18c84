//! Checkpoints written on a thread of their own while training goes on. The step's tensors are
//! copied off the device (training's pause), and the files, GPT-2 medium's 4.3 GB, are written and
//! flushed to disk behind the next steps. One checkpoint at a time: the next waits for the last
//! (checkpoints closer together than a write takes are written as if in the loop).

use super::checkpoint::{self, TrainState};
use super::tensor_file::FlatTensors;
use anyhow::{anyhow, Error};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What one checkpoint holds, on the host.
pub struct Snapshot {
    pub model: FlatTensors,
    pub m: Vec<f32>,
    pub v: Vec<f32>,
    pub state: TrainState,
}

/// A checkpoint that could not be written; what it had written is removed again and the latest
/// checkpoint left as it was (`checkpoint::save`).
#[derive(Debug)]
pub struct WriteFailed {
    pub step: u32,
    pub error: Error,
}

/// What the writing thread gives back: where the checkpoint went and how long it took, and the
/// snapshot, whose memory the next one reuses.
type Written = (anyhow::Result<(PathBuf, Duration)>, Snapshot);

pub struct CheckpointWriter {
    run_dir: PathBuf,
    pending: Option<(u32, JoinHandle<Written>)>,
    spare: Option<Snapshot>,
    written: u32,
    writing: Duration,
}

impl CheckpointWriter {
    pub fn new(run_dir: &Path) -> Self {
        CheckpointWriter {
            run_dir: run_dir.to_path_buf(),
            pending: None,
            spare: None,
            written: 0,
            writing: Duration::ZERO,
        }
    }

    /// Starts writing `snapshot` once the checkpoint before it is written (wait for that one
    /// before taking the snapshot, to hold one on the host at a time); that one's failure is
    /// returned instead, and this one is not started.
    pub fn start(&mut self, snapshot: Snapshot) -> Result<(), WriteFailed> {
        self.wait()?;
        let step = snapshot.state.step;
        let run_dir = self.run_dir.clone();
        let write = move || {
            let (s, started) = (snapshot, Instant::now());
            let saved = checkpoint::save(&run_dir, &s.model, &s.m, &s.v, &s.state);
            (saved.map(|dir| (dir, started.elapsed())), s)
        };
        let handle = std::thread::Builder::new()
            .name("checkpoint".into())
            .spawn(write)
            .map_err(|e| WriteFailed {
                step,
                error: anyhow!(e).context("cannot start the thread that writes checkpoints"),
            })?;
        self.pending = Some((step, handle));
        Ok(())
    }

    /// The outcome of the checkpoint in flight if it is done, without waiting: the directory it
    /// wrote or its failure; `None` while it is being written, or when none is.
    pub fn poll(&mut self) -> Result<Option<PathBuf>, WriteFailed> {
        match &self.pending {
            Some((_, handle)) if handle.is_finished() => self.wait(),
            _ => Ok(None),
        }
    }

    /// Waits for the checkpoint in flight: the directory it wrote or its failure; `None` when none
    /// is in flight.
    pub fn wait(&mut self) -> Result<Option<PathBuf>, WriteFailed> {
        let Some((step, handle)) = self.pending.take() else {
            return Ok(None);
        };
        match handle.join() {
            Ok((Ok((dir, took)), snapshot)) => {
                (self.written, self.writing) = (self.written + 1, self.writing + took);
                self.spare = Some(snapshot);
                Ok(Some(dir))
            }
            Ok((Err(error), _)) => Err(WriteFailed { step, error }),
            // The panic's message is already on stderr.
            Err(_) => Err(WriteFailed {
                step,
                error: anyhow!("the thread writing it panicked"),
            }),
        }
    }

    /// The last snapshot written, for the next to reuse its memory: faulting in a GPT-2 medium
    /// snapshot's 4.3 GB of fresh pages costs seconds (once more each checkpoint, as the
    /// allocator returns them to the system in between).
    pub fn take_spare(&mut self) -> Option<Snapshot> {
        self.spare.take()
    }

    /// How many checkpoints were written, and how long writing them took in all.
    pub fn written(&self) -> (u32, Duration) {
        (self.written, self.writing)
    }

    /// Waits for the checkpoint in flight, saying on stderr if it failed: before a run that
    /// stops for another reason names its last complete checkpoint.
    pub fn settle(&mut self) {
        if let Err(f) = self.wait() {
            eprintln!(
                "warning: the checkpoint of step {} could not be written: {:#}",
                f.step, f.error
            );
        }
    }
}

impl Drop for CheckpointWriter {
    /// A run that stops on an error still completes the checkpoint it had started.
    fn drop(&mut self) {
        self.settle();
    }
}

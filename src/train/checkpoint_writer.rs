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
    /// Where `settle` says that a checkpoint failed: above the progress bar, which a plain line
    /// on stderr would be drawn into (and, as the bar redraws, wiped with).
    warn: Box<dyn Fn(&str)>,
}

impl CheckpointWriter {
    /// Writes under `run_dir`; `warn` prints a warning line.
    pub fn new(run_dir: &Path, warn: impl Fn(&str) + 'static) -> Self {
        CheckpointWriter {
            run_dir: run_dir.to_path_buf(),
            pending: None,
            spare: None,
            written: 0,
            writing: Duration::ZERO,
            warn: Box::new(warn),
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

    /// Waits for the checkpoint in flight, warning if it failed: before a run that stops for
    /// another reason names its last complete checkpoint.
    pub fn settle(&mut self) {
        if let Err(f) = self.wait() {
            (self.warn)(&format!(
                "warning: the checkpoint of step {} could not be written: {:#}",
                f.step, f.error
            ));
        }
    }
}

impl Drop for CheckpointWriter {
    /// A run that stops on an error still completes the checkpoint it had started.
    fn drop(&mut self) {
        self.settle();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::LoaderPosition;
    use crate::train::config::{Device, TrainConfig};
    use std::cell::RefCell;
    use std::rc::Rc;

    fn snapshot(step: u32) -> Snapshot {
        let config = TrainConfig {
            model: "tiny".into(),
            data: None,
            val_data: None,
            batch: 1,
            seq: 8,
            accum: 1,
            lr: 1e-3,
            final_lr_frac: 0.1,
            warmup: 1,
            steps: step,
            decay: crate::optim::Decay::Cosine,
            weight_decay: 0.1,
            clip: 1.0,
            eval_every: 0,
            eval_batches: 1,
            checkpoint_every: 1,
            seed: 1,
            lowrank: Default::default(),
            init_from: None,
            recompute_gelu: false,
            device: Device::Cpu,
        };
        let loader = LoaderPosition {
            seed: 1,
            epoch: 0,
            index: 0,
            windows_per_epoch: 1,
        };
        Snapshot {
            model: FlatTensors {
                values: vec![1.0],
                spans: Vec::new(),
            },
            m: vec![0.0],
            v: vec![0.0],
            state: TrainState {
                step,
                tokens: 0,
                loader,
                config,
                ranks: None,
                lora_base_fingerprint: None,
                w0_seed: None,
            },
        }
    }

    /// A checkpoint that fails while the run stops for another reason is reported through the
    /// printer the run gives (its progress bar's), not written across the bar.
    #[test]
    fn a_failed_checkpoint_is_reported_through_the_warning_printer() {
        // The run directory is a file: the checkpoint's directory cannot be made in it.
        let run_dir = std::env::temp_dir().join(format!("lowrank-writer-{}", std::process::id()));
        std::fs::write(&run_dir, b"not a directory").unwrap();
        let said = Rc::new(RefCell::new(Vec::<String>::new()));
        let mut writer = CheckpointWriter::new(&run_dir, {
            let said = said.clone();
            move |w: &str| said.borrow_mut().push(w.to_string())
        });
        writer.start(snapshot(7)).unwrap();
        writer.settle();
        // Settled: nothing is left in flight for the drop to report again.
        drop(writer);
        std::fs::remove_file(&run_dir).unwrap();
        let said = said.borrow();
        assert_eq!(said.len(), 1, "{said:?}");
        assert!(
            said[0].starts_with("warning: the checkpoint of step 7 could not be written: "),
            "{said:?}"
        );
    }
}

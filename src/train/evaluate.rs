//! Evaluation: mean cross-entropy over sequential, non-overlapping validation batches.

use super::run::split_windows;
use crate::backend::Backend;
use crate::data::{BatchShape, EvalLoader, ShardSet};
use crate::model::Gpt;
use anyhow::{ensure, Context, Result};

/// Mean loss over the first `max_batches` batches of `set` (all of it when there are fewer).
pub fn mean_loss<B: Backend>(
    b: &B,
    model: &mut Gpt<B>,
    set: &ShardSet,
    shape: BatchShape,
    max_batches: usize,
) -> Result<f32> {
    let mut loader = EvalLoader::new(set, shape, Some(max_batches))?;
    ensure!(
        loader.batch_count() > 0,
        "the validation data ({}) holds fewer than one batch of {}×{} tokens",
        set.describe(),
        shape.batch,
        shape.seq_len + 1
    );
    let (mut inputs, mut targets) = (Vec::new(), Vec::new());
    let (mut sum, mut n) = (0.0f64, 0usize);
    while let Some(w) = loader.next_batch() {
        split_windows(w, shape.batch, shape.seq_len, &mut inputs, &mut targets);
        sum += model
            .forward(b, &inputs, Some(&targets))?
            .context("forward with targets returns a loss")? as f64;
        n += 1;
    }
    Ok((sum / n as f64) as f32)
}

//! Evaluation: mean cross-entropy over sequential, non-overlapping validation batches (training's
//! validation), or over every token of a split in sliding windows (`lowrank eval --stride`).

use super::progress::Progress;
use super::run::split_windows;
use crate::backend::Backend;
use crate::data::{copy_window, sliding_windows, BatchShape, EvalLoader, ShardSet};
use crate::model::Gpt;
use anyhow::{ensure, Context, Result};

/// Mean loss over the first `max_batches` batches of `set` (all of it when there are fewer); with
/// `show_progress`, a bar or lines on stderr (not inside training, which shows its own).
pub fn mean_loss<B: Backend>(
    b: &B,
    model: &mut Gpt<B>,
    set: &ShardSet,
    shape: BatchShape,
    max_batches: usize,
    show_progress: bool,
) -> Result<Scored> {
    let mut loader = EvalLoader::new(set, shape, Some(max_batches))?;
    ensure!(
        loader.batch_count() > 0,
        "the data to evaluate on ({}) holds fewer than one batch of {}×{} tokens",
        set.describe(),
        shape.batch,
        shape.seq_len + 1
    );
    let batches = loader.batch_count() as u32;
    let progress = show_progress.then(|| Progress::counting("batch", 0, batches));
    let (mut inputs, mut targets) = (Vec::new(), Vec::new());
    let (mut sum, mut n) = (0.0f64, 0usize);
    while let Some(w) = loader.next_batch() {
        split_windows(w, shape.batch, shape.seq_len, &mut inputs, &mut targets);
        sum += model
            .forward(b, &inputs, Some(&targets))?
            .context("forward with targets returns a loss")? as f64;
        n += 1;
        if let Some(p) = &progress {
            p.step(
                n as u32,
                batches,
                &format!("loss {:.4}", sum / n as f64),
                false,
            );
        }
    }
    if let Some(p) = &progress {
        p.finish();
    }
    Ok(Scored {
        loss: sum / n as f64,
        tokens: n * shape.batch * shape.seq_len,
        windows: n * shape.batch,
    })
}

/// What an evaluation scored.
#[derive(Clone, Copy, Debug)]
pub struct Scored {
    /// Mean cross-entropy over the scored tokens.
    pub loss: f64,
    pub tokens: usize,
    pub windows: usize,
}

/// Mean loss over every token of `set` but each shard's first, each scored once in windows of
/// T = `model.seq()` at `stride` (`data::sliding_windows`), B = `model.batch()` windows a forward;
/// only the first `max_batches` forwards' windows if there are more. Shows its progress.
pub fn sliding_loss<B: Backend>(
    b: &B,
    model: &mut Gpt<B>,
    set: &ShardSet,
    stride: usize,
    max_batches: usize,
) -> Result<Scored> {
    let (batch, seq) = (model.batch(), model.seq());
    ensure!(
        (1..=seq).contains(&stride),
        "--stride {stride}: must be 1 to the sequence length {seq}"
    );
    let windows = sliding_windows(set, seq, stride);
    let short = set
        .shards()
        .iter()
        .filter(|s| s.tokens().len() <= seq)
        .count();
    if short > 0 && !windows.is_empty() {
        eprintln!(
            "warning: {short} of {} shards hold {seq} tokens or fewer, no whole window of {}: left out",
            set.shards().len(),
            seq + 1
        );
    }
    ensure!(
        !windows.is_empty(),
        "no shard of {} holds more than {seq} tokens, a window's {}: use a shorter --seq",
        set.describe(),
        seq + 1
    );
    let batches = windows.len().div_ceil(batch).min(max_batches);
    let progress = Progress::counting("batch", 0, batches as u32);
    let mut buffer = vec![0u32; batch * (seq + 1)];
    let (mut inputs, mut targets) = (Vec::new(), Vec::new());
    let (mut total, mut tokens) = (0.0f64, 0usize);
    for (i, group) in windows.chunks(batch).take(batches).enumerate() {
        // A last, short batch repeats its last window in the rows left, which score nothing.
        for (r, row) in buffer.chunks_exact_mut(seq + 1).enumerate() {
            copy_window(set, group[r.min(group.len() - 1)], row);
        }
        split_windows(&buffer, batch, seq, &mut inputs, &mut targets);
        let losses = model.forward_losses(b, &inputs, &targets)?;
        for (w, row) in group.iter().zip(losses.chunks_exact(seq)) {
            total += row[seq - w.scored..].iter().map(|&x| x as f64).sum::<f64>();
            tokens += w.scored;
        }
        let line = format!("loss {:.4}", total / tokens as f64);
        progress.step(i as u32 + 1, batches as u32, &line, false);
    }
    progress.finish();
    Ok(Scored {
        loss: total / tokens as f64,
        tokens,
        windows: windows.len().min(batches * batch),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{cpu::Cpu, Backend, Buffer};
    use crate::model::GptConfig;
    use crate::util::rng::Rng;

    const CFG: GptConfig = GptConfig {
        n_layer: 2,
        n_head: 2,
        n_embd: 8,
        vocab_size: 11,
        padded_vocab: 16,
        max_seq: 8,
    };

    /// Models of any batch and length with the same weights.
    fn model_for(weights: &[f32], batch: usize, seq: usize) -> Gpt<Cpu> {
        let mut m = Gpt::new(&Cpu, CFG, batch, seq, 5).unwrap();
        Cpu.upload(weights, m.params_mut().buf_mut().all_mut())
            .unwrap();
        m.refresh_compute_copy(&Cpu).unwrap();
        m
    }

    /// The loss of predicting `next` after exactly `context`, from a batch-1 model of its length.
    fn next_token_loss(weights: &[f32], context: &[u16], next: u16) -> f64 {
        let inputs: Vec<u32> = context.iter().map(|&t| u32::from(t)).collect();
        let mut targets = inputs[1..].to_vec();
        targets.push(u32::from(next));
        let mut m = model_for(weights, 1, inputs.len());
        *m.forward_losses(&Cpu, &inputs, &targets)
            .unwrap()
            .last()
            .unwrap() as f64
    }

    /// Sliding-window evaluation against its definition, token by token: at stride 1 a token p
    /// of a shard is scored after the T tokens before it (all of them while p ≤ T); at stride T
    /// after the tokens since its disjoint window's start, but for the tail past the last whole
    /// window, scored after the shard's last T tokens before it. Shards of 11 and 8 tokens (the
    /// second's tail window at 3), T 4, batches of 3 (the last one short), and a shard of 4
    /// tokens, too short for a window, left out.
    #[test]
    fn sliding_loss_scores_each_token_after_its_defined_context() {
        let t = 4;
        let params = Gpt::new(&Cpu, CFG, 1, 1, 5).unwrap().layout().len();
        let weights = Rng::new(3).normal_vec(params, 0.5);
        let mut rng = Rng::new(8);
        let shards: Vec<Vec<u16>> = [11, 8, 4]
            .iter()
            .map(|&n| (0..n).map(|_| rng.below(11) as u16).collect())
            .collect();
        let set = ShardSet::from_tokens("s", shards.clone());
        let context_start = |stride: usize, p: usize, n: usize| match stride {
            1 => p.saturating_sub(t),
            _ if p <= (n - 1) / t * t => (p - 1) / t * t,
            _ => n - 1 - t,
        };
        for stride in [1, t] {
            let (mut sum, mut count) = (0.0, 0);
            for shard in shards.iter().filter(|s| s.len() > t) {
                for p in 1..shard.len() {
                    let from = context_start(stride, p, shard.len());
                    sum += next_token_loss(&weights, &shard[from..p], shard[p]);
                    count += 1;
                }
            }
            let mut model = model_for(&weights, 3, t);
            let got = sliding_loss(&Cpu, &mut model, &set, stride, usize::MAX).unwrap();
            assert_eq!((got.tokens, got.windows), (count, [11, 5][stride / t]));
            let want = sum / count as f64;
            assert!(
                (got.loss - want).abs() < 1e-5 * want,
                "stride {stride}: {} against {want}",
                got.loss
            );
        }
        // --max-batches: the first batch's windows only (stride 1: 3 windows, 4 + 1 + 1 tokens).
        let mut model = model_for(&weights, 3, t);
        let first = sliding_loss(&Cpu, &mut model, &set, 1, 1).unwrap();
        assert_eq!((first.tokens, first.windows), (6, 3));
    }
}

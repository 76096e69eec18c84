//! Batches of token windows, read straight from a `ShardSet`.
//!
//! A window is T+1 consecutive tokens of one shard (inputs are its first T, targets its last T).
//! Shard s of n tokens holds ⌊(n−1)/T⌋ windows, window k covering tokens [k·T, k·T+T+1): consecutive
//! windows share one boundary token, so every token but each shard's first is a target exactly once
//! per pass (llm.c's layout). Windows never span shards. Windows are numbered 0..W over all shards
//! in the set's (file-name) order.
//!
//! Training (`Loader`): epoch e visits windows in the order `order_e`, a Fisher–Yates shuffle
//! (`Rng::shuffle`) of [0, W) by `Rng::new(seed ^ e·0x9E3779B97F4A7C15)`; batch k of the epoch is
//! windows `order_e[k·B .. (k+1)·B]`. An epoch has ⌊W/B⌋ batches; the W mod B windows left over are
//! skipped in that epoch (other epochs' shuffles place them elsewhere). Epochs follow one another
//! without end. The position (seed, epoch, windows used in the epoch) fixes what comes next.
//!
//! Evaluation (`EvalLoader`): windows in order 0, 1, 2, ..., B per batch, ⌊W/B⌋ batches or fewer.

use super::error::DataError;
use super::shardset::ShardSet;
use crate::util::rng::Rng;

/// B rows of T+1 tokens per batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchShape {
    /// B: windows per batch.
    pub batch: usize,
    /// T: context length; each window holds T+1 tokens.
    pub seq_len: usize,
}

impl BatchShape {
    /// B·(T+1): the length of the slice each batch is.
    pub fn tokens(&self) -> usize {
        self.batch * (self.seq_len + 1)
    }
}

/// Where a training loader stands; stored in checkpoints so `Loader::restore` continues exactly.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LoaderPosition {
    pub seed: u64,
    pub epoch: u64,
    /// Windows of this epoch's order already handed out.
    pub index: usize,
    /// W of the data the position was taken on: a guard against resuming on other data.
    pub windows_per_epoch: usize,
}

/// The windows of a shard set for one context length.
struct Windows {
    set: ShardSet,
    seq_len: usize,
    /// `ends[s]`: windows in shards 0..=s.
    ends: Vec<usize>,
}

impl Windows {
    fn new(set: &ShardSet, shape: BatchShape) -> Result<Self, DataError> {
        if shape.batch == 0 || shape.seq_len == 0 {
            return Err(DataError::EmptyBatchShape {
                batch: shape.batch,
                seq_len: shape.seq_len,
            });
        }
        let mut ends = Vec::with_capacity(set.shards().len());
        let mut total = 0;
        for shard in set.shards() {
            total += shard.tokens().len().saturating_sub(1) / shape.seq_len;
            ends.push(total);
        }
        if total < shape.batch {
            let what = set.describe();
            return Err(DataError::TooFewWindows {
                what,
                windows: total,
                window_len: shape.seq_len + 1,
                needed: shape.batch,
            });
        }
        Ok(Windows {
            set: set.clone(),
            seq_len: shape.seq_len,
            ends,
        })
    }

    fn count(&self) -> usize {
        *self.ends.last().unwrap_or(&0)
    }

    /// Copies window `w`'s T+1 tokens into `out`.
    fn copy(&self, w: usize, out: &mut [u32]) {
        let shard = self.ends.partition_point(|&end| end <= w);
        let first_of_shard = if shard == 0 { 0 } else { self.ends[shard - 1] };
        let start = (w - first_of_shard) * self.seq_len;
        let tokens = &self.set.shards()[shard].tokens()[start..start + self.seq_len + 1];
        for (o, &t) in out.iter_mut().zip(tokens) {
            *o = u32::from(t);
        }
    }

    /// Fills `buffer` (B·(T+1)) with the windows `ids`, one row each.
    fn fill(&self, ids: impl Iterator<Item = usize>, buffer: &mut [u32]) {
        for (w, row) in ids.zip(buffer.chunks_exact_mut(self.seq_len + 1)) {
            self.copy(w, row);
        }
    }
}

/// Shuffled training batches, epoch after epoch.
pub struct Loader {
    windows: Windows,
    batch: usize,
    position: LoaderPosition,
    order: Vec<usize>,
    buffer: Vec<u32>,
}

impl Loader {
    /// A loader at the start of epoch 0. Errors if the set holds fewer than B windows.
    pub fn new(set: &ShardSet, shape: BatchShape, seed: u64) -> Result<Self, DataError> {
        let windows = Windows::new(set, shape)?;
        let position = LoaderPosition {
            seed,
            epoch: 0,
            index: 0,
            windows_per_epoch: windows.count(),
        };
        let order = epoch_order(windows.count(), seed, 0);
        Ok(Loader {
            windows,
            batch: shape.batch,
            position,
            order,
            buffer: vec![0; shape.tokens()],
        })
    }

    /// The next batch: B·(T+1) tokens, row-major, valid until the next call.
    pub fn next_batch(&mut self) -> &[u32] {
        if self.position.index + self.batch > self.order.len() {
            self.position.epoch += 1;
            self.position.index = 0;
            self.order = epoch_order(self.order.len(), self.position.seed, self.position.epoch);
        }
        let ids = &self.order[self.position.index..self.position.index + self.batch];
        self.windows.fill(ids.iter().copied(), &mut self.buffer);
        self.position.index += self.batch;
        &self.buffer
    }

    pub fn position(&self) -> LoaderPosition {
        self.position
    }

    /// Continues from `position` (taken by `position()` on the same data, any batch size).
    pub fn restore(&mut self, position: &LoaderPosition) -> Result<(), DataError> {
        let windows = self.windows.count();
        if position.windows_per_epoch != windows {
            let reason = format!(
                "it was taken on data of {} windows, this data has {windows}",
                position.windows_per_epoch
            );
            return Err(DataError::PositionMismatch { reason });
        }
        if position.index > windows {
            let reason = format!(
                "index {} is past the epoch's {windows} windows",
                position.index
            );
            return Err(DataError::PositionMismatch { reason });
        }
        self.order = epoch_order(windows, position.seed, position.epoch);
        self.position = *position;
        Ok(())
    }

    /// W: windows in the data (one epoch visits ⌊W/B⌋·B of them).
    pub fn windows_per_epoch(&self) -> usize {
        self.windows.count()
    }
}

/// Epoch `epoch`'s window order (see the module doc).
pub fn epoch_order(windows: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..windows).collect();
    Rng::new(seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15)).shuffle(&mut order);
    order
}

/// Sequential, non-overlapping evaluation batches.
pub struct EvalLoader {
    windows: Windows,
    batch: usize,
    batches: usize,
    next: usize,
    buffer: Vec<u32>,
}

impl EvalLoader {
    /// `max_batches` None: the whole split (⌊W/B⌋ batches); Some(n): the first min(n, ⌊W/B⌋).
    pub fn new(
        set: &ShardSet,
        shape: BatchShape,
        max_batches: Option<usize>,
    ) -> Result<Self, DataError> {
        let windows = Windows::new(set, shape)?;
        let available = windows.count() / shape.batch;
        let batches = max_batches.map_or(available, |n| n.min(available));
        Ok(EvalLoader {
            windows,
            batch: shape.batch,
            batches,
            next: 0,
            buffer: vec![0; shape.tokens()],
        })
    }

    /// How many batches this pass yields.
    pub fn batch_count(&self) -> usize {
        self.batches
    }

    /// The next batch (B·(T+1) tokens, row-major), or None when the pass is done.
    pub fn next_batch(&mut self) -> Option<&[u32]> {
        if self.next == self.batches {
            return None;
        }
        let ids = self.next * self.batch..(self.next + 1) * self.batch;
        self.windows.fill(ids, &mut self.buffer);
        self.next += 1;
        Some(&self.buffer)
    }
}

#[cfg(test)]
#[path = "loader_tests.rs"]
mod tests;

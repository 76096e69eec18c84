//! What a training run is: every setting, saved as DIR/config.json and checked on resume.

use crate::lowrank::LowRankConfig;
use crate::optim::Decay;
use anyhow::{ensure, Result};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Model preset name (see `GptConfig::from_name`).
    pub model: String,
    /// Training shards (a path or a `*` pattern); None trains on the embedded default corpus.
    pub data: Option<String>,
    /// Validation shards; by default the training pattern with `_train_` replaced by `_val_`.
    pub val_data: Option<String>,
    pub batch: usize,
    pub seq: usize,
    /// Micro-batches per optimiser step.
    pub accum: usize,
    pub lr: f32,
    pub final_lr_frac: f32,
    pub warmup: u32,
    pub steps: u32,
    pub decay: Decay,
    pub weight_decay: f32,
    pub clip: f32,
    pub eval_every: u32,
    pub eval_batches: usize,
    pub checkpoint_every: u32,
    pub seed: u64,
    /// Low-rank layers and rank growth (dense by default; absent in configs from before them).
    #[serde(default)]
    pub lowrank: LowRankConfig,
    /// A dense run's starting weights (a run or checkpoint directory, or a GPT-2 safetensors
    /// file); None: GPT-2's seeded random init.
    #[serde(default)]
    pub init_from: Option<String>,
    /// Keep one layer's GELU output and form each again in the backward (`--recompute-gelu`): a
    /// memory setting, the same gradients.
    #[serde(default)]
    pub recompute_gelu: bool,
}

impl TrainConfig {
    pub fn validate(&self) -> Result<()> {
        ensure!(self.batch > 0, "--batch must be positive");
        ensure!(self.seq > 1, "--seq must be at least 2");
        ensure!(self.accum > 0, "--accum must be positive");
        ensure!(self.steps > 0, "--steps must be positive");
        ensure!(
            self.init_from.is_none() || !self.lowrank.is_low_rank(),
            "--init-from starts a dense run from a checkpoint's weights; a low-rank run cannot take them (for LoRA over a checkpoint, use --lora-base)"
        );
        ensure!(self.eval_batches > 0, "--eval-batches must be positive");
        ensure!(
            self.clip >= 0.0,
            "--clip must be non-negative (0 disables clipping)"
        );
        ensure!(
            self.weight_decay >= 0.0,
            "--weight-decay must be non-negative"
        );
        self.lowrank.validate()
    }

    /// Tokens consumed by one optimiser step.
    pub fn tokens_per_step(&self) -> usize {
        self.batch * self.seq * self.accum
    }

    /// The validation pattern: given, or derived from the training pattern.
    pub fn val_pattern(&self) -> Option<String> {
        self.val_data.clone().or_else(|| {
            self.data
                .as_ref()
                .filter(|d| d.contains("_train_"))
                .map(|d| d.replace("_train_", "_val_"))
        })
    }

    /// Settings a resumed run must share with the checkpoint (everything that shapes the
    /// trajectory; the step budget and evaluation cadence may change).
    pub fn resume_mismatch(&self, saved: &TrainConfig) -> Option<String> {
        let pairs = [
            ("model", self.model != saved.model),
            ("data", self.data != saved.data),
            ("batch", self.batch != saved.batch),
            ("seq", self.seq != saved.seq),
            ("accum", self.accum != saved.accum),
            ("seed", self.seed != saved.seed),
            ("init-from", self.init_from != saved.init_from),
        ];
        let mut diff: Vec<&str> = pairs.iter().filter(|(_, d)| *d).map(|(n, _)| *n).collect();
        diff.extend(self.lowrank.resume_differences(&saved.lowrank));
        (!diff.is_empty()).then(|| diff.join(", "))
    }
}

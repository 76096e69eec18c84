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
    /// Where the run trains (a resumed run keeps it unless told otherwise; it may move: the
    /// checkpoint holds f32 values either way, the masters of the trained tensors and, of a
    /// frozen tensor on a bf16 device, the bf16 values the forward read; InRank's W0, left out,
    /// is drawn again in f32, which a bf16 device rounds as the run's start did). Absent in
    /// configs from before it: cpu.
    #[serde(default)]
    pub device: Device,
}

/// The backend a run trains on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Device {
    /// The f32 reference
    #[default]
    Cpu,
    /// The CPU in the CUDA backend's precision: bf16 weights and activations, f32 master weights
    /// of the trained tensors, gradients and optimiser state (previews a GPU run's numerics)
    CpuBf16,
    /// The GPU: bf16 compute (not yet verified on a GPU)
    Cuda,
}

/// The peak learning rate a run of `model` takes when `--lr` is not given: for the GPT-2 presets
/// GPT-3's at the nearest size (Brown et al., 2020, table 2.1: 125M 6e-4, 350M 3e-4, 760M
/// 2.5e-4; llm.c trains GPT-2 small at 6e-4 too); for the tiny model 3e-3.
pub fn default_lr(model: &str) -> f32 {
    match model {
        "gpt2" => 6e-4,
        "gpt2-medium" => 3e-4,
        "gpt2-large" => 2.5e-4,
        _ => 3e-3,
    }
}

/// The linear warm-up a run of `steps` steps takes when `--warmup` is not given: 30 % of them,
/// at most 700 (llm.c's for GPT-2 small). The tiny model's default 100 steps at 3e-3 with the
/// former 10 spiked (gradient norms 45–370) and ended 0.5–1.7 higher in validation loss than with
/// 30 (results/schedule/results.md).
pub fn default_warmup(steps: u32) -> u32 {
    ((steps as u64 * 3 / 10) as u32).clamp(1, 700).min(steps)
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

#[cfg(test)]
mod tests {
    use super::{default_lr, default_warmup};

    #[test]
    fn default_schedule_follows_the_presets_and_the_step_budget() {
        // GPT-3's table 2.1 at 125M, 350M and 760M parameters.
        assert_eq!(
            ["gpt2", "gpt2-medium", "gpt2-large", "tiny"].map(default_lr),
            [6e-4, 3e-4, 2.5e-4, 3e-3]
        );
        // 30 % of the steps, at least one, at most 700 and never more than the run.
        assert_eq!(
            [1, 3, 100, 1500, 5000].map(default_warmup),
            [1, 1, 30, 450, 700]
        );
    }
}

//! Selftest cases of whole models: the tiny GPT in each parameterisation, its loss (a model that
//! runs forward only), its gradients (a forward with targets and a backward) and its decoding
//! (a model that keeps every layer's keys and values), on the backend under test and on the
//! reference (the CPU in the CUDA backend's precision, `CpuBf16`). The per-op cases check each kernel; these check the model's
//! use of them (windows, dtypes, the low-rank runtime's scratch) end to end. The loss and the
//! gradients are separate cases, so the one number is not hidden behind the many.

use crate::backend::{Backend, Buffer};
use crate::lowrank::{LowRankConfig, LowRankLayers, LowRankMode};
use crate::model::{ActivationPlan, Gpt, GptConfig, Keep};
use crate::util::rng::Rng;
use anyhow::Result;

/// Sequences and tokens per sequence of the step: small, ragged against every tile.
const BATCH: usize = 3;
const SEQ: usize = 37;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelOutput {
    Loss,
    Grads,
    /// The first sequence's logits, decoded in pieces after the batch's forward (`Gpt::decode`).
    Decoded,
}

#[derive(Clone, Debug)]
pub struct ModelCase {
    pub mode: LowRankMode,
    pub output: ModelOutput,
    /// GELU formed again in the backward (`Keep::Backward`'s `recompute_gelu`).
    pub recompute_gelu: bool,
}

/// Every parameterisation on every linear layer (LoRA over the random init as its base), at a rank
/// that is not a multiple of 8: the loss, the gradients and decoding; the gradients of a dense and
/// a low-rank MLP with GELU recomputed.
pub fn cases() -> Vec<ModelCase> {
    use LowRankMode::*;
    let modes = [Dense, Efficient, Inrank, Lora, Dln, Dlra];
    let outputs = [ModelOutput::Loss, ModelOutput::Grads, ModelOutput::Decoded];
    let case = |mode, output, recompute_gelu| ModelCase {
        mode,
        output,
        recompute_gelu,
    };
    (modes.iter())
        .flat_map(|&mode| outputs.map(|output| case(mode, output, false)))
        .chain([Dense, Efficient].map(|mode| case(mode, ModelOutput::Grads, true)))
        .collect()
}

impl ModelCase {
    pub fn op(&self) -> String {
        let out = match self.output {
            ModelOutput::Loss => "loss",
            ModelOutput::Grads => "grads",
            ModelOutput::Decoded => "decoded",
        };
        let recompute = if self.recompute_gelu {
            "_recompute"
        } else {
            ""
        };
        format!("model_{out}_{:?}{recompute}", self.mode).to_lowercase()
    }

    pub fn shape(&self) -> String {
        format!("tiny {BATCH}x{SEQ}")
    }

    /// Two bf16 computations of the same step differ by rounding at every layer. Measured between
    /// f32 and bf16 on the CPU (three seeds, every mode): the loss by at most 3e-5, the gradients
    /// by 5e-3 to 9e-3 and the decoded logits by 6e-3 to 8e-3 (relative); two bf16 computations
    /// with their own rounding points and summation orders differ by about √2 times that.
    pub fn bound(&self) -> f64 {
        match self.output {
            ModelOutput::Loss => 5e-4,
            ModelOutput::Grads => 3e-2,
            ModelOutput::Decoded => 3e-2,
        }
    }

    pub fn run<B: Backend>(&self, b: &B, seed: u64) -> Result<Vec<f32>> {
        let lr = LowRankConfig {
            mode: self.mode,
            layers: LowRankLayers::All,
            rank_init: 11,
            rank_buffer: 6,
            lora_base: (self.mode == LowRankMode::Lora).then(|| "the random init".into()),
            ..LowRankConfig::default()
        };
        let config = GptConfig::preset("tiny")?;
        // Each output from a model keeping what it needs: the loss from one layer's activations,
        // decoding from every layer's keys and values.
        let keep = match self.output {
            ModelOutput::Loss => Keep::Nothing,
            ModelOutput::Grads => Keep::Backward {
                recompute_gelu: self.recompute_gelu,
            },
            ModelOutput::Decoded => Keep::KvCache,
        };
        let plan = ActivationPlan {
            batch: BATCH,
            seq: SEQ,
            keep,
        };
        let mut model = Gpt::with_plan(b, config, &lr, plan, seed)?;
        let mut rng = Rng::new(seed ^ 0x5EED);
        let mut tokens = |n: usize| -> Vec<u32> {
            (0..n)
                .map(|_| rng.below(config.vocab_size as u64) as u32)
                .collect()
        };
        let (inputs, targets) = (tokens(BATCH * SEQ), tokens(BATCH * SEQ));
        let loss = model.forward(b, &inputs, Some(&targets))?;
        Ok(match self.output {
            ModelOutput::Loss => vec![loss.unwrap_or(f32::NAN)],
            ModelOutput::Grads => {
                model.zero_grads(b)?;
                model.backward(b, 1.0)?;
                b.download(model.grads()?.buf().all())?
            }
            ModelOutput::Decoded => {
                // A prompt, one token, the rest: each piece reads the earlier pieces' k and v.
                for (start, end) in [(0, 20), (20, 21), (21, SEQ)] {
                    model.decode(b, &targets[start..end], start)?;
                }
                let rows = SEQ * config.padded_vocab;
                b.download(model.logits().buf.at(0, rows))?
            }
        })
    }
}

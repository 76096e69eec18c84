//! The whole-model tests' independent f64 reference: a GPT-2 forward in plain loops over the
//! Hugging Face names (low-rank layers read as their dense product), and the micro model and
//! random tokens those tests run.

use super::{GptConfig, ParamLayout};
use crate::util::rng::Rng;

/// Parameters in f64, looked up by Hugging Face name.
pub(super) struct Reference<'a> {
    pub cfg: GptConfig,
    pub layout: &'a ParamLayout,
    pub p: &'a [f64],
    /// Low-rank layers: W = W0 (when stored) + scale · Σ_{j,k<width} Ut[j]ᵀ·M[j,k]·Vt[k], M the
    /// stored middle of a compressed block or else I.
    pub lowrank: &'a [LowRankRef],
}

/// How the reference reads one low-rank layer.
pub(super) struct LowRankRef {
    pub prefix: String,
    pub width: usize,
    pub scale: f64,
}

type Rows = Vec<Vec<f64>>;

impl Reference<'_> {
    fn tensor(&self, name: &str) -> &[f64] {
        let t = self
            .layout
            .find(name)
            .unwrap_or_else(|| panic!("no tensor {name}"));
        &self.p[t.offset..t.offset + t.len()]
    }

    /// The (n_in × n_out) weight of a layer, dense or composed from its low-rank tensors.
    fn weight(&self, prefix: &str, n_out: usize) -> Vec<f64> {
        let Some(lr) = self.lowrank.iter().find(|l| l.prefix == prefix) else {
            return self.tensor(&format!("{prefix}.weight")).to_vec();
        };
        let vt = self.tensor(&format!("{prefix}.lowrank_vt"));
        let ut = self.tensor(&format!("{prefix}.lowrank_ut"));
        let n_in = ut.len() / (vt.len() / n_out);
        let mut w = match self.layout.find(&format!("{prefix}.lowrank_w0")) {
            Some(_) => self.tensor(&format!("{prefix}.lowrank_w0")).to_vec(),
            None => vec![0.0; n_in * n_out],
        };
        // A compressed block: W = Σ_{j,k} Ut[j]ᵀ·M[j, k]·Vt[k], M's live width × width block
        // stored contiguously at the start of its tensor; otherwise M = I.
        let width = lr.width;
        let mid = |j: usize, k: usize| match self.layout.find(&format!("{prefix}.lowrank_mid")) {
            Some(_) => self.tensor(&format!("{prefix}.lowrank_mid"))[j * width + k],
            None => f64::from(j == k),
        };
        for j in 0..lr.width {
            for k in 0..lr.width {
                let m = lr.scale * mid(j, k);
                if m == 0.0 {
                    continue;
                }
                for i in 0..n_in {
                    for o in 0..n_out {
                        w[i * n_out + o] += m * ut[j * n_in + i] * vt[k * n_out + o];
                    }
                }
            }
        }
        w
    }

    /// x·W + b with W stored (n_in × n_out).
    fn linear(&self, x: &Rows, prefix: &str) -> Rows {
        let b = self.tensor(&format!("{prefix}.bias"));
        let n_out = b.len();
        let w = &self.weight(prefix, n_out);
        x.iter()
            .map(|row| {
                (0..n_out)
                    .map(|o| {
                        b[o] + row
                            .iter()
                            .enumerate()
                            .map(|(i, v)| v * w[i * n_out + o])
                            .sum::<f64>()
                    })
                    .collect()
            })
            .collect()
    }

    fn layernorm(&self, x: &Rows, prefix: &str) -> Rows {
        let (w, b) = (
            self.tensor(&format!("{prefix}.weight")),
            self.tensor(&format!("{prefix}.bias")),
        );
        x.iter()
            .map(|row| {
                let n = row.len() as f64;
                let mean = row.iter().sum::<f64>() / n;
                let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
                row.iter()
                    .enumerate()
                    .map(|(i, v)| (v - mean) / (var + 1e-5).sqrt() * w[i] + b[i])
                    .collect()
            })
            .collect()
    }

    /// Causal multi-head attention from qkv rows (3C wide) to C-wide rows.
    fn attention(&self, qkv: &Rows) -> Rows {
        let (c, nh) = (self.cfg.n_embd, self.cfg.n_head);
        let hs = c / nh;
        let mut out = vec![vec![0.0; c]; qkv.len()];
        for h in 0..nh {
            for t in 0..qkv.len() {
                let score = |t2: usize| {
                    (0..hs)
                        .map(|i| qkv[t][h * hs + i] * qkv[t2][c + h * hs + i])
                        .sum::<f64>()
                        / (hs as f64).sqrt()
                };
                let scores: Vec<f64> = (0..=t).map(score).collect();
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = scores.iter().map(|s| (s - max).exp()).sum();
                for (t2, s) in scores.iter().enumerate() {
                    for i in 0..hs {
                        out[t][h * hs + i] += (s - max).exp() / z * qkv[t2][2 * c + h * hs + i];
                    }
                }
            }
        }
        out
    }

    /// The logits (real vocabulary only) of one sequence's every position.
    pub(super) fn logits(&self, tokens: &[u32]) -> Rows {
        let c = self.cfg.n_embd;
        let (wte, wpe) = (
            self.tensor("transformer.wte.weight"),
            self.tensor("transformer.wpe.weight"),
        );
        let gelu = |x: f64| {
            0.5 * x
                * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x.powi(3))).tanh())
        };
        let add = |a: &Rows, b: &Rows| -> Rows {
            a.iter()
                .zip(b)
                .map(|(a, b)| a.iter().zip(b).map(|(x, y)| x + y).collect())
                .collect()
        };
        let mut x: Rows = tokens
            .iter()
            .enumerate()
            .map(|(t, &tok)| {
                (0..c)
                    .map(|i| wte[tok as usize * c + i] + wpe[t * c + i])
                    .collect()
            })
            .collect();
        for l in 0..self.cfg.n_layer {
            let h = format!("transformer.h.{l}");
            let qkv = self.linear(
                &self.layernorm(&x, &format!("{h}.ln_1")),
                &format!("{h}.attn.c_attn"),
            );
            x = add(
                &x,
                &self.linear(&self.attention(&qkv), &format!("{h}.attn.c_proj")),
            );
            let fc = self.linear(
                &self.layernorm(&x, &format!("{h}.ln_2")),
                &format!("{h}.mlp.c_fc"),
            );
            let fc: Rows = fc
                .iter()
                .map(|r| r.iter().map(|&v| gelu(v)).collect())
                .collect();
            x = add(&x, &self.linear(&fc, &format!("{h}.mlp.c_proj")));
        }
        // Only the real vocabulary: padding rows of wte never reach the loss.
        (self.layernorm(&x, "transformer.ln_f").iter())
            .map(|row| {
                (0..self.cfg.vocab_size)
                    .map(|v| (0..c).map(|i| row[i] * wte[v * c + i]).sum())
                    .collect()
            })
            .collect()
    }

    /// Mean cross-entropy over all positions of `batch` sequences.
    pub(super) fn loss(&self, inputs: &[u32], targets: &[u32], batch: usize) -> f64 {
        let seq = inputs.len() / batch;
        let mut total = 0.0;
        for (tokens, targets) in inputs.chunks(seq).zip(targets.chunks(seq)) {
            for (logits, &target) in self.logits(tokens).iter().zip(targets) {
                let max = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let lse = max + logits.iter().map(|z| (z - max).exp()).sum::<f64>().ln();
                total += lse - logits[target as usize];
            }
        }
        total / inputs.len() as f64
    }
}

/// A micro GPT: 2 layers, 2 heads, width 8, a vocabulary of 11 padded to 16, context 6.
pub(super) fn micro() -> GptConfig {
    GptConfig {
        n_layer: 2,
        n_head: 2,
        n_embd: 8,
        vocab_size: 11,
        padded_vocab: 16,
        max_seq: 6,
    }
}

pub(super) fn random_tokens(n: usize, vocab: usize, seed: u64) -> Vec<u32> {
    let mut rng = Rng::new(seed);
    (0..n).map(|_| rng.below(vocab as u64) as u32).collect()
}

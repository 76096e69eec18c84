//! Selftest cases of the GPT-2 step's ops (embedding, LayerNorm, adds, GELU, attention, fused
//! classifier) and the function-aware init's (sub, ReLU): activations in bf16 (the CUDA backend's
//! compute type) or f32 (its other instantiation of every kernel) on both sides, gradients of
//! parameters and statistics in f32, each output its own case so a small one is not hidden behind
//! a large one.

use super::{poisoned, scaled_input};
use crate::backend::{AttentionSaved, Backend, Buffer, DType, MatShape, SeqShape};
use crate::util::rng::Rng;
use anyhow::Result;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GptOp {
    EmbeddingForward,
    EmbeddingBackward,
    LayernormForward,
    LayernormBackwardInput,
    LayernormBackwardParams,
    Add,
    AddBias,
    ColumnSums,
    GeluForward,
    GeluBackward,
    Sub,
    ReluForward,
    ReluBackward,
    AttentionForwardOut,
    AttentionForwardAtt,
    AttentionBackward,
    /// The rows from `start` of one sequence (`SeqShape::seq` rows in all), against the k and v of
    /// every row so far.
    AttentionCached {
        start: usize,
    },
    ClassifierLosses,
    ClassifierGrads,
}

const ALL: [GptOp; 18] = [
    GptOp::EmbeddingForward,
    GptOp::EmbeddingBackward,
    GptOp::LayernormForward,
    GptOp::LayernormBackwardInput,
    GptOp::LayernormBackwardParams,
    GptOp::Add,
    GptOp::AddBias,
    GptOp::ColumnSums,
    GptOp::GeluForward,
    GptOp::GeluBackward,
    GptOp::Sub,
    GptOp::ReluForward,
    GptOp::ReluBackward,
    GptOp::AttentionForwardOut,
    GptOp::AttentionForwardAtt,
    GptOp::AttentionBackward,
    GptOp::ClassifierLosses,
    GptOp::ClassifierGrads,
];

#[derive(Clone, Debug)]
pub struct GptCase {
    pub op: GptOp,
    pub s: SeqShape,
    pub heads: usize,
    /// Real vocabulary (classifier, embedding table rows); the classifier's rows are padded to a
    /// multiple of 64 as the model pads 50257 to 50304.
    pub vocab: usize,
    /// dtype of the activations and of the parameters read in the forward.
    pub act: DType,
}

/// Every op on a ragged shape (T=7, C=48, 3 heads of 16) with bf16 and with f32 activations, and
/// on GPT-2 small's widths in bf16; attention also on the head sizes of flash attention's kernels
/// (64 and 32) with a ragged last tile of 64 rows, on a single token and at T = 1024. Cached
/// attention: rows after a prefix, a whole prompt, GPT-2 small decoding its 1024th token, and
/// head sizes of 96 (lanes partly idle) and 256 (the kernel's largest).
pub fn cases() -> Vec<GptCase> {
    let ragged = (SeqShape::new(2, 7, 48), 3, 1000);
    let small = (SeqShape::new(4, 64, 768), 12, 50257);
    let mut out = Vec::new();
    for ((s, heads, vocab), act) in [
        (ragged, DType::BF16),
        (ragged, DType::F32),
        (small, DType::BF16),
    ] {
        for op in ALL {
            out.push(GptCase {
                op,
                s,
                heads,
                vocab,
                act,
            });
        }
    }
    let flash = [
        (SeqShape::new(2, 200, 128), 2),
        (SeqShape::new(3, 77, 96), 3),
        (SeqShape::new(1, 1, 64), 1),
        // GPT-2 small's full context: 16 tiles a row of the causal triangle.
        (SeqShape::new(1, 1024, 768), 12),
    ];
    for (s, heads) in flash {
        for op in [GptOp::AttentionForwardOut, GptOp::AttentionBackward] {
            out.push(GptCase {
                op,
                s,
                heads,
                vocab: 1000,
                act: DType::BF16,
            });
        }
    }
    let cached = [
        (SeqShape::new(1, 7, 48), 3, 4, DType::BF16),
        (SeqShape::new(1, 7, 48), 3, 4, DType::F32),
        (SeqShape::new(1, 77, 96), 1, 0, DType::BF16),
        (SeqShape::new(1, 1024, 768), 12, 1023, DType::BF16),
        (SeqShape::new(1, 33, 512), 2, 30, DType::BF16),
    ];
    for (s, heads, start, act) in cached {
        out.push(GptCase {
            op: GptOp::AttentionCached { start },
            s,
            heads,
            vocab: 1000,
            act,
        });
    }
    out
}

fn padded(vocab: usize) -> usize {
    vocab.div_ceil(64) * 64
}

impl GptCase {
    /// The op in snake case, `_f32` appended for f32 activations.
    pub fn op(&self) -> String {
        let debug = format!("{:?}", self.op);
        let variant = debug.split(' ').next().unwrap_or_default();
        let name = variant.chars().fold(String::new(), |mut acc, c| {
            if c.is_uppercase() && !acc.is_empty() {
                acc.push('_');
            }
            acc.push(c.to_ascii_lowercase());
            acc
        });
        match self.act {
            DType::BF16 => name,
            DType::F32 => name + "_f32",
        }
    }

    pub fn shape(&self) -> String {
        let shape = format!(
            "B{} T{} C{} h{}",
            self.s.batch, self.s.seq, self.s.channels, self.heads
        );
        match self.op {
            GptOp::AttentionCached { start } => format!("{shape} from {start}"),
            _ => shape,
        }
    }

    /// Attention's scores are rounded to bf16 before the softmax on the GPU (as llm.c does) but not
    /// on the CPU: probabilities differ by up to ~1% where scores are large, so its cases get twice
    /// the bf16 bound. Everything else: one bf16 rounding of the output. In f32 both sides compute
    /// alike up to summation order and the GPU's fast math: 1e-4, well under one bf16 rounding
    /// (≈1e-3 in this norm), so an f32 path that rounds through bf16 somewhere fails.
    pub fn bound(&self) -> f64 {
        match (self.act, self.op) {
            (DType::F32, _) => 1e-4,
            (
                DType::BF16,
                GptOp::AttentionForwardOut | GptOp::AttentionForwardAtt | GptOp::AttentionBackward,
            ) => 2e-2,
            (DType::BF16, _) => 1e-2,
        }
    }

    /// Whether the case compares like with like on `b`: the saved attention state is only
    /// comparable where `b` saves the probabilities, as the CPU does (flash attention saves the
    /// rows' log-sum-exp instead, which the backward case checks through its gradients).
    pub fn applies<B: Backend>(&self, b: &B) -> bool {
        self.op != GptOp::AttentionForwardAtt
            || b.attention_saved(self.s.channels / self.heads, self.act)
                == AttentionSaved::Probabilities
    }

    pub fn run<B: Backend>(&self, b: &B, seed: u64) -> Result<Vec<f32>> {
        let mut rng = Rng::new(seed);
        let (s, act, f32t) = (self.s, self.act, DType::F32);
        let (rows, c) = (s.tokens(), s.channels);
        let m = MatShape::new(rows, c);
        let mut rand = |dtype: DType, n: usize, std: f64| scaled_input(b, &mut rng, dtype, n, std);
        let mut ids = Rng::new(seed ^ 0xABCD);
        let tokens: Vec<u32> = (0..rows)
            .map(|_| ids.below(self.vocab as u64) as u32)
            .collect();
        Ok(match self.op {
            GptOp::EmbeddingForward => {
                let (wte, wpe) = (
                    rand(act, self.vocab * c, 0.02)?,
                    rand(act, s.seq * c, 0.02)?,
                );
                let mut out = poisoned(b, act, rows * c)?;
                b.embedding_forward(out.all_mut(), &tokens, wte.all(), wpe.all(), s)?;
                b.download(out.all())?
            }
            GptOp::EmbeddingBackward => {
                let (mut dwte, dout) =
                    (rand(f32t, self.vocab * c, 1.0)?, rand(act, rows * c, 1.0)?);
                b.embedding_backward(dwte.all_mut(), dout.all(), &tokens, c)?;
                b.download(dwte.all())?
            }
            GptOp::LayernormForward
            | GptOp::LayernormBackwardInput
            | GptOp::LayernormBackwardParams => {
                let (inp, wb) = (rand(act, rows * c, 1.0)?, rand(act, 2 * c, 1.0)?);
                let (mut out, mut mean, mut rstd) = (
                    poisoned(b, act, rows * c)?,
                    poisoned(b, f32t, rows)?,
                    poisoned(b, f32t, rows)?,
                );
                b.layernorm_forward(
                    out.all_mut(),
                    mean.all_mut(),
                    rstd.all_mut(),
                    inp.all(),
                    wb.all(),
                    m,
                )?;
                if self.op == GptOp::LayernormForward {
                    return Ok([
                        b.download(out.all())?,
                        b.download(mean.all())?,
                        b.download(rstd.all())?,
                    ]
                    .concat());
                }
                let (mut dinp, mut dwb, dout) = (
                    rand(act, rows * c, 1.0)?,
                    rand(f32t, 2 * c, 1.0)?,
                    rand(act, rows * c, 1.0)?,
                );
                // The input-gradient case runs without the parameter gradient (frozen weights,
                // as in LoRA); the parameter case forms both.
                let input_only = self.op == GptOp::LayernormBackwardInput;
                b.layernorm_backward(
                    dinp.all_mut(),
                    (!input_only).then(|| dwb.all_mut()),
                    dout.all(),
                    inp.all(),
                    wb.all(),
                    mean.all(),
                    rstd.all(),
                    m,
                )?;
                b.download(if self.op == GptOp::LayernormBackwardInput {
                    dinp.all()
                } else {
                    dwb.all()
                })?
            }
            GptOp::Add => {
                let (mut out, x) = (rand(act, rows * c, 1.0)?, rand(act, rows * c, 1.0)?);
                b.add(out.all_mut(), x.all())?;
                b.download(out.all())?
            }
            GptOp::AddBias => {
                let (mut out, bias) = (rand(act, rows * c, 1.0)?, rand(act, c, 1.0)?);
                b.add_bias(out.all_mut(), bias.all(), m)?;
                b.download(out.all())?
            }
            GptOp::ColumnSums => {
                let (mut dst, src) = (rand(f32t, c, 1.0)?, rand(act, rows * c, 1.0)?);
                b.add_column_sums(dst.all_mut(), src.all(), m)?;
                b.download(dst.all())?
            }
            GptOp::GeluForward => {
                let (inp, mut out) = (rand(act, rows * c, 2.0)?, poisoned(b, act, rows * c)?);
                b.gelu_forward(out.all_mut(), inp.all())?;
                b.download(out.all())?
            }
            GptOp::GeluBackward => {
                let (inp, mut d) = (rand(act, rows * c, 2.0)?, rand(act, rows * c, 1.0)?);
                b.gelu_backward(d.all_mut(), inp.all())?;
                b.download(d.all())?
            }
            GptOp::Sub => {
                let (mut out, x) = (rand(act, rows * c, 1.0)?, rand(act, rows * c, 1.0)?);
                b.sub(out.all_mut(), x.all())?;
                b.download(out.all())?
            }
            GptOp::ReluForward => {
                let (inp, mut out) = (rand(act, rows * c, 1.0)?, poisoned(b, act, rows * c)?);
                b.relu_forward(out.all_mut(), inp.all())?;
                b.download(out.all())?
            }
            GptOp::ReluBackward => {
                let (inp, mut d) = (rand(act, rows * c, 1.0)?, rand(act, rows * c, 1.0)?);
                b.relu_backward(d.all_mut(), inp.all())?;
                b.download(d.all())?
            }
            GptOp::AttentionForwardOut | GptOp::AttentionForwardAtt | GptOp::AttentionBackward => {
                let saved = b.attention_saved(c / self.heads, act);
                let (att_dtype, att_len) = (saved.dtype(act), saved.len(s, self.heads));
                let qkv = rand(act, 3 * rows * c, 1.0)?;
                let mut out = poisoned(b, act, rows * c)?;
                let mut att = poisoned(b, att_dtype, att_len)?;
                b.attention_forward(out.all_mut(), att.all_mut(), qkv.all(), s, self.heads)?;
                match self.op {
                    GptOp::AttentionForwardOut => b.download(out.all())?,
                    GptOp::AttentionForwardAtt => b.download(att.all())?,
                    _ => {
                        let (dout, mut dqkv) =
                            (rand(act, rows * c, 1.0)?, poisoned(b, act, 3 * rows * c)?);
                        b.attention_backward(
                            dqkv.all_mut(),
                            dout.all(),
                            qkv.all(),
                            out.all(),
                            att.all(),
                            s,
                            self.heads,
                        )?;
                        b.download(dqkv.all())?
                    }
                }
            }
            GptOp::AttentionCached { start } => {
                let qkv = rand(act, 3 * rows * c, 1.0)?;
                let new = MatShape::new(rows - start, c);
                let mut out = poisoned(b, act, new.len())?;
                b.attention_cached(out.all_mut(), qkv.all(), start, new, self.heads)?;
                b.download(out.all())?
            }
            GptOp::ClassifierLosses | GptOp::ClassifierGrads => {
                let cols = padded(self.vocab);
                let mut logits = rand(act, rows * cols, 2.0)?;
                let mut losses = poisoned(b, f32t, rows)?;
                b.fused_classifier(
                    logits.all_mut(),
                    losses.all_mut(),
                    &tokens,
                    MatShape::new(rows, cols),
                    self.vocab,
                    1.0 / rows as f32,
                )?;
                b.download(if self.op == GptOp::ClassifierLosses {
                    losses.all()
                } else {
                    logits.all()
                })?
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::Cpu;

    #[test]
    fn every_ragged_case_runs_on_the_cpu_and_fills_its_output() {
        for case in cases().into_iter().filter(|c| c.s.channels == 48) {
            let out = case.run(&Cpu, 3).unwrap();
            assert!(
                !out.is_empty() && out.iter().all(|x| x.is_finite()),
                "{}: poison left in the output",
                case.op()
            );
        }
        assert_eq!(cases()[0].op(), "embedding_forward");
        let cached = (cases().into_iter())
            .find(|c| matches!(c.op, GptOp::AttentionCached { .. }) && c.s.seq == 1024)
            .expect("a cached attention case at T 1024");
        assert_eq!(
            (cached.op(), cached.shape()),
            (
                "attention_cached".into(),
                "B1 T1024 C768 h12 from 1023".into()
            )
        );
    }
}

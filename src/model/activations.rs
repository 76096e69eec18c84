//! Activation buffers, planned once for (B, T): one buffer per activation kind covering all layers
//! (llm.c's ActivationTensors), in the backend's compute dtype; LayerNorm statistics and losses in f32.

use super::config::GptConfig;
use super::gpt::ActivationPlan;
use crate::backend::{Backend, Buffer, DType, Mut, Ref, SeqShape};
use anyhow::Result;

/// Everything the forward pass writes and the backward pass reads. Per-layer buffers hold
/// `n_layer` consecutive slices; `Activations::layer` picks one.
pub struct Activations<B: Backend> {
    /// (B, T, C) tokens, channels; heads and padded vocab for the other shapes.
    pub shape: SeqShape,
    pub heads: usize,
    pub padded_vocab: usize,
    /// Token + position embedding, the input of block 0.
    pub encoded: B::Buf,
    pub ln1: B::Buf,
    pub ln1_mean: B::Buf,
    pub ln1_rstd: B::Buf,
    /// (B, T, 3C) per layer.
    pub qkv: B::Buf,
    /// Attention output before its projection, (B, T, C) per layer.
    pub atty: B::Buf,
    /// What attention saves for its backward, per layer: the softmax probabilities (B, heads, T, T)
    /// or, with flash attention, the rows' log-sum-exp (B, heads, T; `Backend::attention_saved`).
    pub att: B::Buf,
    /// Residual stream after attention, (B, T, C) per layer.
    pub residual2: B::Buf,
    pub ln2: B::Buf,
    pub ln2_mean: B::Buf,
    pub ln2_rstd: B::Buf,
    /// MLP hidden layer before and after GELU, (B, T, 4C) per layer; with
    /// `ActivationPlan::recompute_gelu`, fch_gelu holds one layer's (the forward's, which the
    /// projection reads at once) and the backward forms each layer's again from fch (`gelu_slot`).
    pub fch: B::Buf,
    pub fch_gelu: B::Buf,
    /// Residual stream after the MLP, (B, T, C) per layer; the last one feeds ln_f.
    pub residual3: B::Buf,
    pub lnf: B::Buf,
    pub lnf_mean: B::Buf,
    pub lnf_rstd: B::Buf,
    /// (B·T × padded_vocab) logits; after a forward with targets, the loss gradient in their place.
    pub logits: B::Buf,
    /// Per-token cross-entropy, f32.
    pub losses: B::Buf,
}

impl<B: Backend> Activations<B> {
    /// The buffers for `plan`'s batches, with every layer's GELU output or, recomputing GELU,
    /// one layer's, the backward forming each layer's again from fch.
    pub fn new(b: &B, cfg: &GptConfig, plan: ActivationPlan) -> Result<Self> {
        let (shape, recompute_gelu) = (
            SeqShape::new(plan.batch, plan.seq, cfg.n_embd),
            plan.recompute_gelu,
        );
        let [encoded, ln1, ln1_mean, ln1_rstd, qkv, atty, att, residual2, ln2, ln2_mean, ln2_rstd, fch, fch_gelu, residual3, lnf, lnf_mean, lnf_rstd, logits, losses] =
            Self::sizes(b, cfg, shape, recompute_gelu);
        let alloc = |(dtype, len)| b.alloc(dtype, len);
        Ok(Activations {
            shape,
            heads: cfg.n_head,
            padded_vocab: cfg.padded_vocab,
            encoded: alloc(encoded)?,
            ln1: alloc(ln1)?,
            ln1_mean: alloc(ln1_mean)?,
            ln1_rstd: alloc(ln1_rstd)?,
            qkv: alloc(qkv)?,
            atty: alloc(atty)?,
            att: alloc(att)?,
            residual2: alloc(residual2)?,
            ln2: alloc(ln2)?,
            ln2_mean: alloc(ln2_mean)?,
            ln2_rstd: alloc(ln2_rstd)?,
            fch: alloc(fch)?,
            fch_gelu: alloc(fch_gelu)?,
            residual3: alloc(residual3)?,
            lnf: alloc(lnf)?,
            lnf_mean: alloc(lnf_mean)?,
            lnf_rstd: alloc(lnf_rstd)?,
            logits: alloc(logits)?,
            losses: alloc(losses)?,
        })
    }

    /// Each buffer's (dtype, length), in the fields' order: what `new` allocates and what
    /// `bytes_planned` counts before anything is.
    fn sizes(
        b: &B,
        cfg: &GptConfig,
        shape: SeqShape,
        recompute_gelu: bool,
    ) -> [(DType, usize); 19] {
        let (l, btc, bt) = (cfg.n_layer, shape.len(), shape.tokens());
        let dt = b.compute_dtype();
        let saved = b.attention_saved(cfg.head_size(), dt);
        let gelu_layers = if recompute_gelu { 1 } else { l };
        let f32 = DType::F32;
        [
            (dt, btc),
            (dt, l * btc),
            (f32, l * bt),
            (f32, l * bt),
            (dt, l * 3 * btc),
            (dt, l * btc),
            (saved.dtype(dt), l * saved.len(shape, cfg.n_head)),
            (dt, l * btc),
            (dt, l * btc),
            (f32, l * bt),
            (f32, l * bt),
            (dt, l * 4 * btc),
            (dt, gelu_layers * 4 * btc),
            (dt, l * btc),
            (dt, btc),
            (f32, bt),
            (f32, bt),
            (dt, bt * cfg.padded_vocab),
            (f32, bt),
        ]
    }

    /// Bytes `new` would allocate for `plan`, and `ActivationGrads::new` beside them.
    pub fn bytes_planned(b: &B, cfg: &GptConfig, plan: ActivationPlan) -> usize {
        let shape = SeqShape::new(plan.batch, plan.seq, cfg.n_embd);
        let grads = ActivationGrads::<B>::sizes(b, shape, plan.recompute_gelu);
        (Self::sizes(b, cfg, shape, plan.recompute_gelu)
            .iter()
            .chain(&grads))
        .map(|&(dtype, len)| b.stored_bytes(dtype, len))
        .sum()
    }

    /// Bytes held, as allocated (`bytes_planned` counts them before).
    pub fn bytes(&self, b: &B) -> usize {
        [
            &self.encoded,
            &self.ln1,
            &self.ln1_mean,
            &self.ln1_rstd,
            &self.qkv,
            &self.atty,
            &self.att,
            &self.residual2,
            &self.ln2,
            &self.ln2_mean,
            &self.ln2_rstd,
            &self.fch,
            &self.fch_gelu,
            &self.residual3,
            &self.lnf,
            &self.lnf_mean,
            &self.lnf_rstd,
            &self.logits,
            &self.losses,
        ]
        .iter()
        .map(|x| b.stored_bytes(x.dtype(), x.len()))
        .sum()
    }

    /// (slices, index) of layer `l`'s GELU(fch) in `fch_gelu`, for `layer`: its own slice, or
    /// the only one when the backward recomputes them.
    pub fn gelu_slot(&self, l: usize) -> (usize, usize) {
        match self.fch_gelu.len() / (4 * self.shape.len()) {
            1 => (1, 0),
            layers => (layers, l),
        }
    }
}

/// Gradients of activations: one running residual-stream gradient and scratch reused by every
/// layer (the backward pass needs no per-layer activation gradients; dlogits live in `logits`).
pub struct ActivationGrads<B: Backend> {
    /// ∂loss/∂(residual stream) at the current layer boundary, (B, T, C).
    pub dresidual: B::Buf,
    /// (B, T, C) scratch: the gradient into a LayerNorm's output or the attention output.
    pub dbtc: B::Buf,
    /// (B, T, 3C): the gradient of qkv.
    pub dqkv: B::Buf,
    /// (B, T, 4C): the gradient of the MLP hidden layer.
    pub dfch: B::Buf,
    /// (B, T, 4C): a layer's GELU(fch) formed again for the backward, when the forward kept only
    /// one layer's (`ActivationPlan::recompute_gelu`).
    pub gelu: Option<B::Buf>,
}

impl<B: Backend> ActivationGrads<B> {
    pub fn new(b: &B, shape: SeqShape, recompute_gelu: bool) -> Result<Self> {
        let [dresidual, dbtc, dqkv, dfch, gelu] = Self::sizes(b, shape, recompute_gelu);
        let alloc = |(dtype, len)| b.alloc(dtype, len);
        Ok(ActivationGrads {
            dresidual: alloc(dresidual)?,
            dbtc: alloc(dbtc)?,
            dqkv: alloc(dqkv)?,
            dfch: alloc(dfch)?,
            gelu: recompute_gelu.then(|| alloc(gelu)).transpose()?,
        })
    }

    pub fn bytes(&self, b: &B) -> usize {
        [&self.dresidual, &self.dbtc, &self.dqkv, &self.dfch]
            .into_iter()
            .chain(&self.gelu)
            .map(|x| b.stored_bytes(x.dtype(), x.len()))
            .sum()
    }

    /// (dtype, length) of each buffer, in the fields' order; the last (`gelu`) is allocated only
    /// when recomputing GELU, and is empty otherwise.
    fn sizes(b: &B, shape: SeqShape, recompute_gelu: bool) -> [(DType, usize); 5] {
        let (dt, btc) = (b.compute_dtype(), shape.len());
        let gelu = if recompute_gelu { 4 * btc } else { 0 };
        [
            (dt, btc),
            (dt, btc),
            (dt, 3 * btc),
            (dt, 4 * btc),
            (dt, gelu),
        ]
    }
}

/// Layer `l`'s slice of a per-layer buffer (which holds `n_layer` equal slices).
pub fn layer<T: Buffer>(buf: &T, n_layer: usize, l: usize) -> Ref<'_, T> {
    let per = buf.len() / n_layer;
    buf.at(l * per, per)
}

/// Layer `l`'s slice of a per-layer buffer, writable.
pub fn layer_mut<T: Buffer>(buf: &mut T, n_layer: usize, l: usize) -> Mut<'_, T> {
    let per = buf.len() / n_layer;
    buf.at_mut(l * per, per)
}

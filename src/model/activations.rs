//! Activation buffers, planned once for (B, T): one buffer per activation kind covering all layers
//! (llm.c's ActivationTensors), in the backend's compute dtype; LayerNorm statistics and losses in f32.

use super::config::GptConfig;
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
    /// MLP hidden layer before and after GELU, (B, T, 4C) per layer; after
    /// `set_recompute_gelu`, fch_gelu holds one layer's (the forward's, which the projection reads
    /// at once) and the backward forms each layer's again from fch (`gelu_slot`).
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
    pub fn new(b: &B, cfg: &GptConfig, batch: usize, seq: usize) -> Result<Self> {
        let shape = SeqShape::new(batch, seq, cfg.n_embd);
        let (l, btc, bt) = (cfg.n_layer, shape.len(), shape.tokens());
        let dt = b.compute_dtype();
        let saved = b.attention_saved(cfg.head_size(), dt);
        let (att_dtype, att) = (saved.dtype(dt), saved.len(shape, cfg.n_head));
        let alloc = |dtype, len| b.alloc(dtype, len);
        Ok(Activations {
            shape,
            heads: cfg.n_head,
            padded_vocab: cfg.padded_vocab,
            encoded: alloc(dt, btc)?,
            ln1: alloc(dt, l * btc)?,
            ln1_mean: alloc(DType::F32, l * bt)?,
            ln1_rstd: alloc(DType::F32, l * bt)?,
            qkv: alloc(dt, l * 3 * btc)?,
            atty: alloc(dt, l * btc)?,
            att: alloc(att_dtype, l * att)?,
            residual2: alloc(dt, l * btc)?,
            ln2: alloc(dt, l * btc)?,
            ln2_mean: alloc(DType::F32, l * bt)?,
            ln2_rstd: alloc(DType::F32, l * bt)?,
            fch: alloc(dt, l * 4 * btc)?,
            fch_gelu: alloc(dt, l * 4 * btc)?,
            residual3: alloc(dt, l * btc)?,
            lnf: alloc(dt, btc)?,
            lnf_mean: alloc(DType::F32, bt)?,
            lnf_rstd: alloc(DType::F32, bt)?,
            logits: alloc(dt, bt * cfg.padded_vocab)?,
            losses: alloc(DType::F32, bt)?,
        })
    }

    /// (slices, index) of layer `l`'s GELU(fch) in `fch_gelu`, for `layer`: its own slice, or
    /// the only one when the backward recomputes them.
    pub fn gelu_slot(&self, l: usize) -> (usize, usize) {
        match self.fch_gelu.len() / (4 * self.shape.len()) {
            1 => (1, 0),
            layers => (layers, l),
        }
    }

    /// Keeps one layer's GELU(fch) instead of every layer's (`on`), or every layer's again: the
    /// buffer is allocated anew, so set it before a forward, not between a forward and its
    /// backward.
    pub fn set_recompute_gelu(&mut self, b: &B, on: bool) -> Result<()> {
        let layers = match on {
            true => 1,
            false => self.fch.len() / (4 * self.shape.len()),
        };
        self.fch_gelu = b.alloc(self.fch.dtype(), layers * 4 * self.shape.len())?;
        Ok(())
    }

    /// Bytes held, for the start-up banner.
    pub fn bytes(&self) -> usize {
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
        .map(|b| b.len() * b.dtype().size_bytes())
        .sum()
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
    /// one layer's (`Activations::set_recompute_gelu`).
    pub gelu: Option<B::Buf>,
}

impl<B: Backend> ActivationGrads<B> {
    pub fn new(b: &B, shape: SeqShape) -> Result<Self> {
        let (dt, btc) = (b.compute_dtype(), shape.len());
        Ok(ActivationGrads {
            dresidual: b.alloc(dt, btc)?,
            dbtc: b.alloc(dt, btc)?,
            dqkv: b.alloc(dt, 3 * btc)?,
            dfch: b.alloc(dt, 4 * btc)?,
            gelu: None,
        })
    }

    pub fn bytes(&self) -> usize {
        [&self.dresidual, &self.dbtc, &self.dqkv, &self.dfch]
            .into_iter()
            .chain(&self.gelu)
            .map(|b| b.len() * b.dtype().size_bytes())
            .sum()
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

//! Activation buffers, planned once for (B, T): one buffer per activation kind covering all layers
//! (llm.c's ActivationTensors), in the backend's compute dtype; LayerNorm statistics and losses in
//! f32. A model that never runs a backward keeps one layer's of each, every layer's forward
//! writing over the last's, and to decode every layer's qkv (`Keep`).

use super::config::GptConfig;
use super::gpt::{ActivationPlan, Keep};
use crate::backend::{Backend, Buffer, DType, Mut, Ref, SeqShape};
use anyhow::Result;

/// A buffer of per-layer slices: every layer's, or fewer that the layers take in turn (one: each
/// layer's forward overwrites the last's).
pub struct PerLayer<T> {
    buf: T,
    slices: usize,
}

impl<T: Buffer> PerLayer<T> {
    /// Layer `l`'s slice.
    pub fn layer(&self, l: usize) -> Ref<'_, T> {
        let (offset, len) = self.slice(l);
        self.buf.at(offset, len)
    }
    pub fn layer_mut(&mut self, l: usize) -> Mut<'_, T> {
        let (offset, len) = self.slice(l);
        self.buf.at_mut(offset, len)
    }
    /// Where layer `l`'s slice lies: its own, or the one every layer takes in turn. A layer past
    /// the slices of a buffer holding several would wrap onto another's: a bug, checked in every
    /// build (a comparison a layer).
    fn slice(&self, l: usize) -> (usize, usize) {
        assert!(
            self.slices == 1 || l < self.slices,
            "layer {l} of {}",
            self.slices
        );
        let per = self.buf.len() / self.slices;
        (l % self.slices * per, per)
    }
    /// Whether it holds every one of `n_layer` layers' slices.
    pub fn holds_every_layer(&self, n_layer: usize) -> bool {
        self.slices == n_layer
    }
}

/// Everything the forward pass writes and the backward pass reads. Per-layer buffers hold
/// `n_layer` consecutive slices, or one (`Keep`); `PerLayer::layer` picks a layer's.
pub struct Activations<B: Backend> {
    /// (B, T, C) tokens, channels; heads and padded vocab for the other shapes.
    pub shape: SeqShape,
    pub heads: usize,
    pub n_layer: usize,
    pub padded_vocab: usize,
    /// Token + position embedding, the input of block 0.
    pub encoded: B::Buf,
    pub ln1: PerLayer<B::Buf>,
    pub ln1_mean: PerLayer<B::Buf>,
    pub ln1_rstd: PerLayer<B::Buf>,
    /// (B, T, 3C) per layer; every layer's when decoding, whose later tokens attend to the keys
    /// and values of the earlier ones' rows.
    pub qkv: PerLayer<B::Buf>,
    /// Attention output before its projection, (B, T, C) per layer.
    pub atty: PerLayer<B::Buf>,
    /// What attention saves for its backward, per layer: the softmax probabilities (B, heads, T, T)
    /// or, with flash attention, the rows' log-sum-exp (B, heads, T; `Backend::attention_saved`).
    pub att: PerLayer<B::Buf>,
    /// Residual stream after attention, (B, T, C) per layer.
    pub residual2: PerLayer<B::Buf>,
    pub ln2: PerLayer<B::Buf>,
    pub ln2_mean: PerLayer<B::Buf>,
    pub ln2_rstd: PerLayer<B::Buf>,
    /// MLP hidden layer before and after GELU, (B, T, 4C) per layer; recomputing GELU
    /// (`Keep::Backward`), fch_gelu holds one layer's (the forward's, which the projection reads
    /// at once) and the backward forms each layer's again from fch.
    pub fch: PerLayer<B::Buf>,
    pub fch_gelu: PerLayer<B::Buf>,
    /// Residual stream after the MLP, (B, T, C) per layer; the last one feeds ln_f.
    pub residual3: PerLayer<B::Buf>,
    pub lnf: B::Buf,
    pub lnf_mean: B::Buf,
    pub lnf_rstd: B::Buf,
    /// (B·T × padded_vocab) logits; after a forward with targets, the loss gradient in their place.
    pub logits: B::Buf,
    /// Per-token cross-entropy, f32.
    pub losses: B::Buf,
}

/// A buffer's dtype, the length of one slice and how many slices it holds (one for a buffer
/// that is not per layer).
type Size = (DType, usize, usize);

impl<B: Backend> Activations<B> {
    /// The buffers for `plan`'s batches, with as many layers' as `plan.keep` needs.
    pub fn new(b: &B, cfg: &GptConfig, plan: ActivationPlan) -> Result<Self> {
        let shape = SeqShape::new(plan.batch, plan.seq, cfg.n_embd);
        let [encoded, ln1, ln1_mean, ln1_rstd, qkv, atty, att, residual2, ln2, ln2_mean, ln2_rstd, fch, fch_gelu, residual3, lnf, lnf_mean, lnf_rstd, logits, losses] =
            Self::sizes(b, cfg, shape, plan.keep);
        let alloc = |(dtype, len, slices)| b.alloc(dtype, len * slices);
        let per_layer = |size: Size| -> Result<PerLayer<B::Buf>> {
            Ok(PerLayer {
                buf: alloc(size)?,
                slices: size.2,
            })
        };
        Ok(Activations {
            shape,
            heads: cfg.n_head,
            n_layer: cfg.n_layer,
            padded_vocab: cfg.padded_vocab,
            encoded: alloc(encoded)?,
            ln1: per_layer(ln1)?,
            ln1_mean: per_layer(ln1_mean)?,
            ln1_rstd: per_layer(ln1_rstd)?,
            qkv: per_layer(qkv)?,
            atty: per_layer(atty)?,
            att: per_layer(att)?,
            residual2: per_layer(residual2)?,
            ln2: per_layer(ln2)?,
            ln2_mean: per_layer(ln2_mean)?,
            ln2_rstd: per_layer(ln2_rstd)?,
            fch: per_layer(fch)?,
            fch_gelu: per_layer(fch_gelu)?,
            residual3: per_layer(residual3)?,
            lnf: alloc(lnf)?,
            lnf_mean: alloc(lnf_mean)?,
            lnf_rstd: alloc(lnf_rstd)?,
            logits: alloc(logits)?,
            losses: alloc(losses)?,
        })
    }

    /// Each buffer's size, in the fields' order: what `new` allocates and what `bytes_planned`
    /// counts before anything is.
    fn sizes(b: &B, cfg: &GptConfig, shape: SeqShape, keep: Keep) -> [Size; 19] {
        let (btc, bt) = (shape.len(), shape.tokens());
        let dt = b.compute_dtype();
        let saved = b.attention_saved(cfg.head_size(), dt);
        let every = cfg.n_layer;
        let (layers, qkv_layers, gelu_layers) = match keep {
            Keep::Backward { recompute_gelu } => {
                (every, every, [every, 1][recompute_gelu as usize])
            }
            Keep::KvCache => (1, every, 1),
            Keep::Nothing => (1, 1, 1),
        };
        let f32 = DType::F32;
        [
            (dt, btc, 1),
            (dt, btc, layers),
            (f32, bt, layers),
            (f32, bt, layers),
            (dt, 3 * btc, qkv_layers),
            (dt, btc, layers),
            (saved.dtype(dt), saved.len(shape, cfg.n_head), layers),
            (dt, btc, layers),
            (dt, btc, layers),
            (f32, bt, layers),
            (f32, bt, layers),
            (dt, 4 * btc, layers),
            (dt, 4 * btc, gelu_layers),
            (dt, btc, layers),
            (dt, btc, 1),
            (f32, bt, 1),
            (f32, bt, 1),
            (dt, bt * cfg.padded_vocab, 1),
            (f32, bt, 1),
        ]
    }

    /// Bytes `new` would allocate for `plan`, and `ActivationGrads::new` beside them when the
    /// plan keeps the activations for a backward.
    pub fn bytes_planned(b: &B, cfg: &GptConfig, plan: ActivationPlan) -> usize {
        let shape = SeqShape::new(plan.batch, plan.seq, cfg.n_embd);
        let grads = match plan.keep {
            Keep::Backward { recompute_gelu } => {
                ActivationGrads::<B>::sizes(b, shape, recompute_gelu)
                    .map(|(dtype, len)| b.stored_bytes(dtype, len))
                    .iter()
                    .sum()
            }
            Keep::KvCache | Keep::Nothing => 0,
        };
        let acts: usize = (Self::sizes(b, cfg, shape, plan.keep).iter())
            .map(|&(dtype, len, slices)| b.stored_bytes(dtype, len * slices))
            .sum();
        acts + grads
    }

    /// Bytes held, as allocated (`bytes_planned` counts them before).
    pub fn bytes(&self, b: &B) -> usize {
        let per_layer = [
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
        ]
        .map(|p| &p.buf);
        let whole = [
            &self.encoded,
            &self.lnf,
            &self.lnf_mean,
            &self.lnf_rstd,
            &self.logits,
            &self.losses,
        ];
        (per_layer.iter().chain(&whole))
            .map(|x| b.stored_bytes(x.dtype(), x.len()))
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
    /// one layer's (`Keep::Backward`'s `recompute_gelu`).
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

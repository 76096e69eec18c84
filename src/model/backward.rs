//! The backward pass, the forward's blocks in reverse: gradients of the parameters ACCUMULATE into
//! `PackedParams` (addressed by the parameters' offsets); activation gradients live in a few reused
//! buffers.

use super::activations::{ActivationGrads, Activations, PerLayer};
use super::forward::{block_input, rows, view};
use super::gpt::Trained;
use super::linear::{self, Pair};
use super::params::{BlockTensor, ParamLayout, TensorView};
use crate::backend::{Backend, Buffer, DenseGrads, Gemm, MatShape, Mut, Ref};
use crate::lowrank::LowRankRuntime;
use crate::optim::PackedParams;
use anyhow::Result;

/// The model state the backward pass reads: layout, compute-dtype weights, activations, inputs.
pub(super) struct Saved<'a, B: Backend> {
    pub layout: &'a ParamLayout,
    pub w: &'a B::Buf,
    pub a: &'a Activations<B>,
    pub inputs: &'a [u32],
    /// What trains: the backward skips the GEMMs and sums that would form any other gradient
    /// (LoRA's frozen base) and leaves those gradients zero.
    pub trained: Trained,
}

/// For y = x·W + bias: dx = dy·Wᵀ (written; times GELU′(u) when the layer's input was GELU(u)
/// for the given u) and, given `grads`, dW += xᵀ·dy and dbias += Σ_rows dy.
pub(super) fn linear_backward<B: Backend>(
    b: &B,
    (dx, gelu_input): (Mut<B::Buf>, Option<Ref<B::Buf>>),
    grads: Option<&mut PackedParams<B>>,
    x: Ref<B::Buf>,
    dy: Ref<B::Buf>,
    w: &B::Buf,
    (weight, bias): (&TensorView, &TensorView),
) -> Result<()> {
    let (n_in, n_out) = (weight.shape[0], weight.shape[1]);
    let rows = x.len / n_in;
    if let Some(grads) = grads {
        let dw = grads.offset(weight.offset, weight.len());
        let db = grads.offset(bias.offset, bias.len());
        let buf = grads.buf_mut();
        b.linear_param_grads(x, dy, (n_in, n_out), DenseGrads { buf, dw, db })?;
    }
    let g = Gemm::new(rows, n_in, n_out).trans_b();
    match gelu_input {
        Some(u) => b.gemm_gelu_backward(&g, dy, view(w, weight), u, dx),
        None => b.gemm(&g, dy, view(w, weight), dx),
    }
}

/// A tensor's gradient.
fn grad_of<'a, B: Backend>(grads: &'a mut PackedParams<B>, t: &TensorView) -> Mut<'a, B::Buf> {
    grads.at_mut(t.offset, t.len())
}

/// Gradients of `loss_scale` · (the mean loss whose dlogits the forward's classifier left in
/// `a.logits`), accumulated into `grads`.
pub(super) fn backward<B: Backend>(
    b: &B,
    m: &Saved<B>,
    lr: &mut LowRankRuntime<B>,
    grads: &mut PackedParams<B>,
    d: &mut ActivationGrads<B>,
    loss_scale: f32,
) -> Result<()> {
    let (a, layout, s) = (m.a, m.layout, m.a.shape);
    let n_layer = a.n_layer;
    b.fill(d.dresidual.all_mut(), 0.0)?;

    // The tied LM head. The classifier's dlogits hold 1/(B·T); alpha applies the loss scale.
    let (wte, vp) = (layout.wte(), a.padded_vocab);
    b.gemm(
        &Gemm::new(s.tokens(), s.channels, vp).alpha(loss_scale),
        a.logits.all(),
        view(m.w, wte),
        d.dbtc.all_mut(),
    )?;
    if m.trained.embeddings() {
        let dwte = Gemm::new(vp, s.channels, s.tokens())
            .trans_a()
            .beta(1.0)
            .alpha(loss_scale);
        b.gemm(&dwte, a.logits.all(), a.lnf.all(), grad_of(grads, wte))?;
    }
    let last = a.residual3.layer(n_layer - 1);
    let stats = (a.lnf_mean.all(), a.lnf_rstd.all());
    ln_backward(b, m, grads, d, layout.ln_f(), last, stats)?;

    for l in (0..n_layer).rev() {
        let _range = crate::util::profile::range(|| format!("block {l} backward"));
        block_backward(b, m, lr, grads, d, l)?;
    }

    if !m.trained.embeddings() {
        return Ok(());
    }
    b.embedding_backward(grad_of(grads, wte), d.dresidual.all(), m.inputs, s.channels)?;
    let dwpe = grads.at_mut(layout.wpe().offset, s.seq * s.channels);
    b.add_column_sums(
        dwpe,
        d.dresidual.all(),
        MatShape::new(s.batch, s.seq * s.channels),
    )
}

/// LayerNorm backward with d.dbtc as the output gradient, accumulating into d.dresidual; the
/// (weight, bias) `window`'s gradient accumulates into `grads`, or is zeroed again after the op
/// (which always forms it) when the base is frozen.
fn ln_backward<B: Backend>(
    b: &B,
    m: &Saved<B>,
    grads: &mut PackedParams<B>,
    d: &mut ActivationGrads<B>,
    (off, len): (usize, usize),
    x: Ref<B::Buf>,
    (mean, rstd): (Ref<B::Buf>, Ref<B::Buf>),
) -> Result<()> {
    b.layernorm_backward(
        d.dresidual.all_mut(),
        m.trained.base().then(|| grads.at_mut(off, len)),
        d.dbtc.all(),
        x,
        m.w.at(off, len),
        mean,
        rstd,
        rows(m.a),
    )
}

/// One block in reverse. On entry `d.dresidual` is ∂/∂(block output); on exit ∂/∂(block input).
fn block_backward<B: Backend>(
    b: &B,
    m: &Saved<B>,
    lr: &mut LowRankRuntime<B>,
    grads: &mut PackedParams<B>,
    d: &mut ActivationGrads<B>,
    l: usize,
) -> Result<()> {
    let mut blk = Block { m, lr, l };
    mlp_part(b, &mut blk, grads, d)?;
    attention_part(b, &mut blk, grads, d)
}

/// A linear layer's input x, output gradient dy and input gradient dx (written).
type LinearIo<'a, B> = (
    Ref<'a, <B as Backend>::Buf>,
    Ref<'a, <B as Backend>::Buf>,
    Mut<'a, <B as Backend>::Buf>,
);

/// Block `l` of the saved forward pass.
struct Block<'a, 'm, B: Backend> {
    m: &'a Saved<'m, B>,
    lr: &'a mut LowRankRuntime<B>,
    l: usize,
}

impl<B: Backend> Block<'_, '_, B> {
    fn lay<'b>(&self, buf: &'b PerLayer<B::Buf>) -> Ref<'b, B::Buf> {
        buf.layer(self.l)
    }
    /// Layer `pair`'s backward: dx written, its parameter gradients accumulated.
    fn linear(
        &mut self,
        b: &B,
        grads: &mut PackedParams<B>,
        pair: Pair,
        (x, dy, dx): LinearIo<B>,
        gelu_input: Option<Ref<B::Buf>>,
    ) -> Result<()> {
        linear::backward(
            b, self.m, self.lr, grads, self.l, pair, x, dy, dx, gelu_input,
        )
    }
    /// The block LayerNorm `weight`'s backward (see [`ln_backward`]).
    fn ln_backward(
        &self,
        b: &B,
        grads: &mut PackedParams<B>,
        d: &mut ActivationGrads<B>,
        weight: BlockTensor,
        x: Ref<B::Buf>,
        stats: (&PerLayer<B::Buf>, &PerLayer<B::Buf>),
    ) -> Result<()> {
        let window = self.m.layout.block_ln(self.l, weight);
        let stats = (self.lay(stats.0), self.lay(stats.1));
        ln_backward(b, self.m, grads, d, window, x, stats)
    }
}

/// residual3 = residual2 + fch_gelu·W + b, so the projection's dy is dresidual itself.
fn mlp_part<B: Backend>(
    b: &B,
    blk: &mut Block<B>,
    grads: &mut PackedParams<B>,
    d: &mut ActivationGrads<B>,
) -> Result<()> {
    use BlockTensor::*;
    let a = blk.m.a;
    // The projection's input GELU(fch): kept by the forward, or formed again here.
    let x = match &mut d.gelu {
        Some(gelu) => {
            b.gelu_forward(gelu.all_mut(), blk.lay(&a.fch))?;
            gelu.all()
        }
        None => blk.lay(&a.fch_gelu),
    };
    // dfch = (dresidual·Wprojᵀ)·GELU′(fch): the GELU's backward rides on the projection's dx.
    let io = (x, d.dresidual.all(), d.dfch.all_mut());
    let fch = Some(blk.lay(&a.fch));
    blk.linear(b, grads, (FcProjWeight, FcProjBias), io, fch)?;
    let io = (blk.lay(&a.ln2), d.dfch.all(), d.dbtc.all_mut());
    blk.linear(b, grads, (FcWeight, FcBias), io, None)?;
    blk.ln_backward(
        b,
        grads,
        d,
        Ln2Weight,
        blk.lay(&a.residual2),
        (&a.ln2_mean, &a.ln2_rstd),
    )
}

/// residual2 = x + atty·W + b, atty = attention(ln1(x) · Wqkv + bqkv).
fn attention_part<B: Backend>(
    b: &B,
    blk: &mut Block<B>,
    grads: &mut PackedParams<B>,
    d: &mut ActivationGrads<B>,
) -> Result<()> {
    use BlockTensor::*;
    let a = blk.m.a;
    let io = (blk.lay(&a.atty), d.dresidual.all(), d.dbtc.all_mut());
    blk.linear(b, grads, (AttnProjWeight, AttnProjBias), io, None)?;
    let (qkv, out, att) = (blk.lay(&a.qkv), blk.lay(&a.atty), blk.lay(&a.att));
    let dqkv = d.dqkv.all_mut();
    b.attention_backward(dqkv, d.dbtc.all(), qkv, out, att, a.shape, a.heads)?;
    let io = (blk.lay(&a.ln1), d.dqkv.all(), d.dbtc.all_mut());
    blk.linear(b, grads, (QkvWeight, QkvBias), io, None)?;
    let x = block_input(&a.encoded, &a.residual3, blk.l);
    blk.ln_backward(b, grads, d, Ln1Weight, x, (&a.ln1_mean, &a.ln1_rstd))
}

//! The backward pass, the forward's blocks in reverse: gradients of the parameters ACCUMULATE into
//! a buffer with the parameters' layout; activation gradients live in a few reused buffers.

use super::activations::{layer, ActivationGrads, Activations};
use super::forward::{block_input, rows, view};
use super::params::{BlockTensor, ParamLayout, TensorView};
use crate::backend::{Backend, Buffer, Gemm, MatShape, Mut, Ref};
use anyhow::Result;

/// The model state the backward pass reads: layout, compute-dtype weights, activations, inputs.
pub(super) struct Saved<'a, B: Backend> {
    pub layout: &'a ParamLayout,
    pub w: &'a B::Buf,
    pub a: &'a Activations<B>,
    pub inputs: &'a [u32],
}

/// For y = x·W + bias: dW += xᵀ·dy, dbias += Σ_rows dy, and dx = dy·Wᵀ (written).
fn linear_backward<B: Backend>(
    b: &B,
    dx: Mut<B::Buf>,
    grads: &mut B::Buf,
    x: Ref<B::Buf>,
    dy: Ref<B::Buf>,
    w: &B::Buf,
    (weight, bias): (&TensorView, &TensorView),
) -> Result<()> {
    let (n_in, n_out) = (weight.shape[0], weight.shape[1]);
    let rows = x.len / n_in;
    b.gemm(
        &Gemm::new(n_in, n_out, rows).trans_a().beta(1.0),
        x,
        dy,
        grad_of(grads, weight),
    )?;
    b.add_column_sums(grad_of(grads, bias), dy, MatShape::new(rows, n_out))?;
    b.gemm(
        &Gemm::new(rows, n_in, n_out).trans_b(),
        dy,
        view(w, weight),
        dx,
    )
}

/// A tensor's window in the gradient buffer.
fn grad_of<'a, T: Buffer>(grads: &'a mut T, t: &TensorView) -> Mut<'a, T> {
    grads.at_mut(t.offset, t.len())
}

/// Gradients of `loss_scale` · (the mean loss whose dlogits the forward's classifier left in
/// `a.logits`), accumulated into `grads`.
pub(super) fn backward<B: Backend>(
    b: &B,
    m: &Saved<B>,
    grads: &mut B::Buf,
    d: &mut ActivationGrads<B>,
    loss_scale: f32,
) -> Result<()> {
    let (a, layout, s) = (m.a, m.layout, m.a.shape);
    let n_layer = a.ln1.len() / s.len();
    b.fill(d.dresidual.all_mut(), 0.0)?;

    // The tied LM head. The classifier's dlogits hold 1/(B·T); alpha applies the loss scale.
    let (wte, vp) = (layout.wte(), a.padded_vocab);
    b.gemm(
        &Gemm::new(s.tokens(), s.channels, vp).alpha(loss_scale),
        a.logits.all(),
        view(m.w, wte),
        d.dbtc.all_mut(),
    )?;
    let dwte = Gemm::new(vp, s.channels, s.tokens())
        .trans_a()
        .beta(1.0)
        .alpha(loss_scale);
    b.gemm(&dwte, a.logits.all(), a.lnf.all(), grad_of(grads, wte))?;
    let (off, len) = layout.ln_f();
    let last = layer(&a.residual3, n_layer, n_layer - 1);
    let (lnf_w, dlnf_w) = (m.w.at(off, len), grads.at_mut(off, len));
    b.layernorm_backward(
        d.dresidual.all_mut(),
        dlnf_w,
        d.dbtc.all(),
        last,
        lnf_w,
        a.lnf_mean.all(),
        a.lnf_rstd.all(),
        rows(a),
    )?;

    for l in (0..n_layer).rev() {
        block_backward(b, m, grads, d, n_layer, l)?;
    }

    b.embedding_backward(grad_of(grads, wte), d.dresidual.all(), m.inputs, s.channels)?;
    let dwpe = grads.at_mut(layout.wpe().offset, s.seq * s.channels);
    b.add_column_sums(
        dwpe,
        d.dresidual.all(),
        MatShape::new(s.batch, s.seq * s.channels),
    )
}

/// One block in reverse. On entry `d.dresidual` is ∂/∂(block output); on exit ∂/∂(block input).
fn block_backward<B: Backend>(
    b: &B,
    m: &Saved<B>,
    grads: &mut B::Buf,
    d: &mut ActivationGrads<B>,
    n_layer: usize,
    l: usize,
) -> Result<()> {
    use BlockTensor::*;
    let (a, w, shape) = (m.a, m.w, rows(m.a));
    let t = |kind| m.layout.block(l, kind);
    let lay = |buf| layer(buf, n_layer, l);
    let ln_backward = |grads: &mut B::Buf, d: &mut ActivationGrads<B>, weight, x, mean, rstd| {
        let (off, len) = m.layout.block_ln(l, weight);
        let (lw, dlw) = (w.at(off, len), grads.at_mut(off, len));
        b.layernorm_backward(
            d.dresidual.all_mut(),
            dlw,
            d.dbtc.all(),
            x,
            lw,
            lay(mean),
            lay(rstd),
            shape,
        )
    };

    // MLP: residual3 = residual2 + fch_gelu·W + b, so the projection's dy is dresidual itself.
    linear_backward(
        b,
        d.dfch.all_mut(),
        grads,
        lay(&a.fch_gelu),
        d.dresidual.all(),
        w,
        (t(FcProjWeight), t(FcProjBias)),
    )?;
    b.gelu_backward(d.dfch.all_mut(), lay(&a.fch))?;
    linear_backward(
        b,
        d.dbtc.all_mut(),
        grads,
        lay(&a.ln2),
        d.dfch.all(),
        w,
        (t(FcWeight), t(FcBias)),
    )?;
    ln_backward(
        grads,
        d,
        Ln2Weight,
        lay(&a.residual2),
        &a.ln2_mean,
        &a.ln2_rstd,
    )?;

    // Attention: residual2 = x + atty·W + b.
    linear_backward(
        b,
        d.dbtc.all_mut(),
        grads,
        lay(&a.atty),
        d.dresidual.all(),
        w,
        (t(AttnProjWeight), t(AttnProjBias)),
    )?;
    b.attention_backward(
        d.dqkv.all_mut(),
        d.dbtc.all(),
        lay(&a.qkv),
        lay(&a.att),
        a.shape,
        a.heads,
    )?;
    linear_backward(
        b,
        d.dbtc.all_mut(),
        grads,
        lay(&a.ln1),
        d.dqkv.all(),
        w,
        (t(QkvWeight), t(QkvBias)),
    )?;
    ln_backward(
        grads,
        d,
        Ln1Weight,
        block_input(&a.encoded, &a.residual3, n_layer, l),
        &a.ln1_mean,
        &a.ln1_rstd,
    )
}

//! A block's linear layer, dense (GEMM + bias) or low-rank (the Backend's fused op), chosen per
//! layer by the parameter layout.

use super::backward::{linear_backward, Saved};
use super::forward::linear_forward;
use super::params::{BlockTensor, ParamLayout};
use crate::backend::{Backend, LinearEpilogue, Mut, Ref};
use crate::lowrank::runtime::LayerViews;
use crate::lowrank::LowRankRuntime;
use crate::optim::PackedParams;
use anyhow::Result;

/// Block `l`'s (weight, bias) pair, e.g. (FcWeight, FcBias).
pub(super) type Pair = (BlockTensor, BlockTensor);

/// y = x·W + bias for block `l`'s layer `pair`, then `epi` (the MLP's fc: GELU(y) too; a
/// projection: y += the residual; in the GEMM's epilogue on CUDA).
#[allow(clippy::too_many_arguments)]
pub(super) fn forward<B: Backend>(
    b: &B,
    layout: &ParamLayout,
    w: &B::Buf,
    lr: &mut LowRankRuntime<B>,
    l: usize,
    (weight, bias): Pair,
    x: Ref<B::Buf>,
    y: Mut<B::Buf>,
    epi: LinearEpilogue<B::Buf>,
) -> Result<()> {
    match layout.lowrank_index(l, weight) {
        None => {
            let (weight, bias) = (layout.block(l, weight), layout.block(l, bias));
            linear_forward(b, y, epi, x, w, weight, bias)
        }
        Some(i) => lr.forward(b, i, &views(layout, i, l, bias, true), w, x, y, epi),
    }
}

/// dx = dy·Wᵀ (written; with `gelu_input` u, the layer's input was GELU(u) and dx is scaled by
/// GELU′(u), in the GEMM's epilogue on CUDA); the layer's parameter gradients accumulate into
/// `grads`, except those of a frozen base (LoRA's dense layers and biases get none).
#[allow(clippy::too_many_arguments)]
pub(super) fn backward<B: Backend>(
    b: &B,
    m: &Saved<B>,
    lr: &mut LowRankRuntime<B>,
    grads: &mut PackedParams<B>,
    l: usize,
    (weight, bias): Pair,
    x: Ref<B::Buf>,
    dy: Ref<B::Buf>,
    dx: Mut<B::Buf>,
    gelu_input: Option<Ref<B::Buf>>,
) -> Result<()> {
    let (layout, w) = (m.layout, m.w);
    match layout.lowrank_index(l, weight) {
        None => {
            let pair = (layout.block(l, weight), layout.block(l, bias));
            let grads = m.trained.base().then_some(grads);
            linear_backward(b, (dx, gelu_input), grads, x, dy, w, pair)
        }
        Some(i) => {
            let v = views(layout, i, l, bias, m.trained.base());
            lr.backward(b, i, &v, w, grads, x, dy, dx, gelu_input)
        }
    }
}

fn views(
    layout: &ParamLayout,
    i: usize,
    l: usize,
    bias: BlockTensor,
    bias_grad: bool,
) -> LayerViews<'_> {
    let lt = &layout.lowrank()[i];
    let t = |idx: usize| &layout.tensors()[idx];
    LayerViews {
        ut: t(lt.ut),
        vt: t(lt.vt),
        w0: lt.w0.map(t),
        mid: lt.mid.map(t),
        bias: layout.block(l, bias),
        bias_grad,
    }
}

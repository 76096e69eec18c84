//! The forward pass, written once against `Backend`: embedding → blocks → ln_f → logits.

use super::activations::{layer, layer_mut, Activations};
use super::linear;
use super::params::{BlockTensor, ParamLayout, TensorView};
use crate::backend::{Backend, Buffer, Gemm, LinearEpilogue, MatShape, Mut, Ref, SeqShape};
use crate::lowrank::LowRankRuntime;
use anyhow::Result;

/// y = x·W + bias over the rows of x, W stored (n_in × n_out), then `epi`.
pub(super) fn linear_forward<B: Backend>(
    b: &B,
    y: Mut<B::Buf>,
    epi: LinearEpilogue<B::Buf>,
    x: Ref<B::Buf>,
    w: &B::Buf,
    weight: &TensorView,
    bias: &TensorView,
) -> Result<()> {
    let (n_in, n_out) = (weight.shape[0], weight.shape[1]);
    let g = Gemm::new(x.len / n_in, n_out, n_in);
    let (w, bias) = (view(w, weight), view(w, bias));
    match epi {
        LinearEpilogue::None => b.gemm_bias(&g, x, w, bias, y),
        LinearEpilogue::Gelu(gelu) => b.gemm_bias_gelu(&g, x, w, bias, y, gelu),
        LinearEpilogue::Residual(r) => b.gemm_bias_residual(&g, x, w, bias, r, y),
    }
}

/// A tensor's window in a buffer with the parameters' layout.
pub(super) fn view<'a, T: Buffer>(buf: &'a T, t: &TensorView) -> Ref<'a, T> {
    buf.at(t.offset, t.len())
}

/// The token rows of the planned (B, T) activations a forward computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Rows {
    /// All B·T, saving what the backward reads (training, evaluation).
    All,
    /// Positions `start`..`start + n` of sequence 0, whose earlier positions a previous forward
    /// computed for the same tokens: decoding, where attention reads their k and v from qkv.
    Next { start: usize, n: usize },
}

/// `Rows` as windows: each buffer of `planned` token rows (per layer) is cut to the span's rows.
#[derive(Clone, Copy)]
struct Span {
    rows: Rows,
    /// The span's first row and its row count.
    first: usize,
    len: usize,
    planned: usize,
}

impl Span {
    fn new(rows: Rows, planned: usize) -> Self {
        let (first, len) = match rows {
            Rows::All => (0, planned),
            Rows::Next { start, n } => (start, n),
        };
        assert!(first + len <= planned, "rows {first}+{len} of {planned}");
        Span {
            rows,
            first,
            len,
            planned,
        }
    }
    /// The span's rows of a window of `planned` rows (of any width).
    fn of<'a, T: Buffer>(&self, r: Ref<'a, T>) -> Ref<'a, T> {
        let width = r.len / self.planned;
        r.buf.at(r.off + self.first * width, self.len * width)
    }
    fn of_mut<'a, T: Buffer>(&self, r: Mut<'a, T>) -> Mut<'a, T> {
        let width = r.len / self.planned;
        r.buf.at_mut(r.off + self.first * width, self.len * width)
    }
    /// The span's rows × `cols`.
    fn matrix(&self, cols: usize) -> MatShape {
        MatShape::new(self.len, cols)
    }
}

/// Runs embedding, every block and ln_f, then the logits (rows × padded_vocab) into `a.logits`,
/// over the `rows` of the planned activations; `inputs` are those rows' token ids.
pub(super) fn forward<B: Backend>(
    b: &B,
    layout: &ParamLayout,
    w: &B::Buf,
    lr: &mut LowRankRuntime<B>,
    a: &mut Activations<B>,
    inputs: &[u32],
    rows: Rows,
) -> Result<()> {
    let s = a.shape;
    let sp = Span::new(rows, s.tokens());
    // Sequences of the span and their positions: the batch, or positions start.. of sequence 0.
    let (seqs, positions) = match rows {
        Rows::All => (s, 0),
        Rows::Next { start, n } => (SeqShape::new(1, n, s.channels), start),
    };
    let wpe = layout.wpe();
    b.embedding_forward(
        sp.of_mut(a.encoded.all_mut()),
        inputs,
        view(w, layout.wte()),
        w.at(wpe.offset + positions * s.channels, seqs.seq * s.channels),
        seqs,
    )?;
    let n_layer = a.ln1.len() / s.len();
    for l in 0..n_layer {
        let _range = crate::util::profile::range(|| format!("block {l} forward"));
        block_forward(b, layout, w, lr, a, sp, n_layer, l)?;
    }
    let (off, len) = layout.ln_f();
    let last = sp.of(layer(&a.residual3, n_layer, n_layer - 1));
    b.layernorm_forward(
        sp.of_mut(a.lnf.all_mut()),
        sp.of_mut(a.lnf_mean.all_mut()),
        sp.of_mut(a.lnf_rstd.all_mut()),
        last,
        w.at(off, len),
        sp.matrix(s.channels),
    )?;
    // The tied LM head: logits = lnf · wteᵀ.
    let head = Gemm::new(sp.len, a.padded_vocab, s.channels).trans_b();
    b.gemm(
        &head,
        sp.of(a.lnf.all()),
        view(w, layout.wte()),
        sp.of_mut(a.logits.all_mut()),
    )
}

/// (B·T × C): the shape of the residual stream as rows of tokens.
pub(super) fn rows<B: Backend>(a: &Activations<B>) -> MatShape {
    MatShape::new(a.shape.tokens(), a.shape.channels)
}

/// The input of block `l`: the embeddings, or the previous block's output.
pub(super) fn block_input<'a, T: Buffer>(
    encoded: &'a T,
    residual3: &'a T,
    n_layer: usize,
    l: usize,
) -> Ref<'a, T> {
    if l == 0 {
        encoded.all()
    } else {
        layer(residual3, n_layer, l - 1)
    }
}

/// Where block `l`'s weights and per-layer activation slices live.
struct Block<'a, T> {
    layout: &'a ParamLayout,
    w: &'a T,
    n_layer: usize,
    l: usize,
}

impl<'a, T: Buffer> Block<'a, T> {
    /// A LayerNorm's weight-then-bias window.
    fn ln(&self, weight: BlockTensor) -> Ref<'a, T> {
        let (off, len) = self.layout.block_ln(self.l, weight);
        self.w.at(off, len)
    }
}

#[allow(clippy::too_many_arguments)]
fn block_forward<B: Backend>(
    b: &B,
    layout: &ParamLayout,
    w: &B::Buf,
    lr: &mut LowRankRuntime<B>,
    a: &mut Activations<B>,
    sp: Span,
    n_layer: usize,
    l: usize,
) -> Result<()> {
    let blk = Block {
        layout,
        w,
        n_layer,
        l,
    };
    attention_part(b, &blk, lr, a, sp)?;
    mlp_part(b, &blk, lr, a, sp)
}

/// residual2 = x + proj(attention(ln1(x))).
fn attention_part<B: Backend>(
    b: &B,
    blk: &Block<B::Buf>,
    lr: &mut LowRankRuntime<B>,
    a: &mut Activations<B>,
    sp: Span,
) -> Result<()> {
    use BlockTensor::*;
    let (n_layer, l, shape) = (blk.n_layer, blk.l, sp.matrix(a.shape.channels));
    let x = sp.of(block_input(&a.encoded, &a.residual3, n_layer, l));
    let (ln1, mean, rstd) = (&mut a.ln1, &mut a.ln1_mean, &mut a.ln1_rstd);
    let (mean, rstd) = (layer_mut(mean, n_layer, l), layer_mut(rstd, n_layer, l));
    b.layernorm_forward(
        sp.of_mut(layer_mut(ln1, n_layer, l)),
        sp.of_mut(mean),
        sp.of_mut(rstd),
        x,
        blk.ln(Ln1Weight),
        shape,
    )?;
    let (lay, w) = (blk.layout, blk.w);
    let qkv = sp.of_mut(layer_mut(&mut a.qkv, n_layer, l));
    let x = sp.of(layer(&a.ln1, n_layer, l));
    linear::forward(
        b,
        lay,
        w,
        lr,
        l,
        (QkvWeight, QkvBias),
        x,
        qkv,
        LinearEpilogue::None,
    )?;
    let (atty, qkv) = (
        layer_mut(&mut a.atty, n_layer, l),
        layer(&a.qkv, n_layer, l),
    );
    match sp.rows {
        Rows::All => {
            let att = layer_mut(&mut a.att, n_layer, l);
            b.attention_forward(atty, att, qkv, a.shape, a.heads)?;
        }
        Rows::Next { start, n } => {
            // The new rows' queries against every row's keys so far: qkv's rows 0..start + n.
            let cache = qkv.buf.at(qkv.off, (start + n) * 3 * a.shape.channels);
            b.attention_cached(sp.of_mut(atty), cache, start, shape, a.heads)?;
        }
    }
    let (y, x) = (
        sp.of_mut(layer_mut(&mut a.residual2, n_layer, l)),
        sp.of(layer(&a.atty, n_layer, l)),
    );
    let pair = (AttnProjWeight, AttnProjBias);
    let residual = sp.of(block_input(&a.encoded, &a.residual3, n_layer, l));
    let epi = LinearEpilogue::Residual(residual);
    linear::forward(b, lay, w, lr, l, pair, x, y, epi)
}

/// residual3 = residual2 + proj(gelu(fc(ln2(residual2)))).
fn mlp_part<B: Backend>(
    b: &B,
    blk: &Block<B::Buf>,
    lr: &mut LowRankRuntime<B>,
    a: &mut Activations<B>,
    sp: Span,
) -> Result<()> {
    use BlockTensor::*;
    let (n_layer, l, shape) = (blk.n_layer, blk.l, sp.matrix(a.shape.channels));
    let lay = |buf| sp.of(layer(buf, n_layer, l));
    let (ln2, mean, rstd) = (&mut a.ln2, &mut a.ln2_mean, &mut a.ln2_rstd);
    let (mean, rstd) = (layer_mut(mean, n_layer, l), layer_mut(rstd, n_layer, l));
    b.layernorm_forward(
        sp.of_mut(layer_mut(ln2, n_layer, l)),
        sp.of_mut(mean),
        sp.of_mut(rstd),
        lay(&a.residual2),
        blk.ln(Ln2Weight),
        shape,
    )?;
    let (layout, w) = (blk.layout, blk.w);
    let (slots, slot) = a.gelu_slot(l);
    let fch = sp.of_mut(layer_mut(&mut a.fch, n_layer, l));
    let fch_gelu = LinearEpilogue::Gelu(sp.of_mut(layer_mut(&mut a.fch_gelu, slots, slot)));
    let (fc, x) = ((FcWeight, FcBias), lay(&a.ln2));
    linear::forward(b, layout, w, lr, l, fc, x, fch, fch_gelu)?;
    let y = sp.of_mut(layer_mut(&mut a.residual3, n_layer, l));
    let (proj, x) = (
        (FcProjWeight, FcProjBias),
        sp.of(layer(&a.fch_gelu, slots, slot)),
    );
    let residual = LinearEpilogue::Residual(lay(&a.residual2));
    linear::forward(b, layout, w, lr, l, proj, x, y, residual)
}

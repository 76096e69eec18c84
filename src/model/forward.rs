//! The forward pass, written once against `Backend`: embedding → blocks → ln_f → logits.

use super::activations::{Activations, PerLayer};
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
    /// All B·T, leaving what the backward reads where the model keeps it (`Keep`).
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
    let n_layer = a.n_layer;
    for l in 0..n_layer {
        let _range = crate::util::profile::range(|| format!("block {l} forward"));
        block_forward(b, layout, w, lr, a, sp, l)?;
    }
    let (off, len) = layout.ln_f();
    let last = sp.of(a.residual3.layer(n_layer - 1));
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
    residual3: &'a PerLayer<T>,
    l: usize,
) -> Ref<'a, T> {
    if l == 0 {
        encoded.all()
    } else {
        residual3.layer(l - 1)
    }
}

/// Where block `l`'s weights live.
struct Block<'a, T> {
    layout: &'a ParamLayout,
    w: &'a T,
    l: usize,
}

impl<'a, T: Buffer> Block<'a, T> {
    /// A LayerNorm's weight-then-bias window.
    fn ln(&self, weight: BlockTensor) -> Ref<'a, T> {
        let (off, len) = self.layout.block_ln(self.l, weight);
        self.w.at(off, len)
    }
}

fn block_forward<B: Backend>(
    b: &B,
    layout: &ParamLayout,
    w: &B::Buf,
    lr: &mut LowRankRuntime<B>,
    a: &mut Activations<B>,
    sp: Span,
    l: usize,
) -> Result<()> {
    let blk = Block { layout, w, l };
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
    let (l, shape) = (blk.l, sp.matrix(a.shape.channels));
    let x = sp.of(block_input(&a.encoded, &a.residual3, l));
    b.layernorm_forward(
        sp.of_mut(a.ln1.layer_mut(l)),
        sp.of_mut(a.ln1_mean.layer_mut(l)),
        sp.of_mut(a.ln1_rstd.layer_mut(l)),
        x,
        blk.ln(Ln1Weight),
        shape,
    )?;
    let (lay, w) = (blk.layout, blk.w);
    let qkv = sp.of_mut(a.qkv.layer_mut(l));
    let x = sp.of(a.ln1.layer(l));
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
    let (atty, qkv) = (a.atty.layer_mut(l), a.qkv.layer(l));
    match sp.rows {
        Rows::All => {
            let att = a.att.layer_mut(l);
            b.attention_forward(atty, att, qkv, a.shape, a.heads)?;
        }
        Rows::Next { start, n } => {
            // The new rows' queries against every row's keys so far: qkv's rows 0..start + n.
            let cache = qkv.buf.at(qkv.off, (start + n) * 3 * a.shape.channels);
            b.attention_cached(sp.of_mut(atty), cache, start, shape, a.heads)?;
        }
    }
    let (y, x) = (sp.of_mut(a.residual2.layer_mut(l)), sp.of(a.atty.layer(l)));
    let pair = (AttnProjWeight, AttnProjBias);
    let residual = sp.of(block_input(&a.encoded, &a.residual3, l));
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
    let (l, shape) = (blk.l, sp.matrix(a.shape.channels));
    b.layernorm_forward(
        sp.of_mut(a.ln2.layer_mut(l)),
        sp.of_mut(a.ln2_mean.layer_mut(l)),
        sp.of_mut(a.ln2_rstd.layer_mut(l)),
        sp.of(a.residual2.layer(l)),
        blk.ln(Ln2Weight),
        shape,
    )?;
    let (layout, w) = (blk.layout, blk.w);
    let fch = sp.of_mut(a.fch.layer_mut(l));
    let fch_gelu = LinearEpilogue::Gelu(sp.of_mut(a.fch_gelu.layer_mut(l)));
    let (fc, x) = ((FcWeight, FcBias), sp.of(a.ln2.layer(l)));
    linear::forward(b, layout, w, lr, l, fc, x, fch, fch_gelu)?;
    let y = sp.of_mut(a.residual3.layer_mut(l));
    let (proj, x) = ((FcProjWeight, FcProjBias), sp.of(a.fch_gelu.layer(l)));
    let residual = LinearEpilogue::Residual(sp.of(a.residual2.layer(l)));
    linear::forward(b, layout, w, lr, l, proj, x, y, residual)
}

//! The live state of a model's low-rank layers: each layer's rank and width (a view into the
//! capacity allocated once) and the scratch its forward and backward use, with the two calls that
//! run a layer through the Backend's fused low-rank op.

use super::layer::LowRankLayer;
use crate::backend::{
    Backend, Buffer, DType, Gemm, LinearEpilogue, LowRankGrads, LowRankShape, LowRankWeights, Mut,
    Ref,
};
use crate::model::TensorView;
use crate::optim::PackedParams;
use anyhow::{anyhow, Result};

/// A layer's live rank r and width k (the rows of Ut and Vt the op reads: r plus the buffer while
/// growing, r after truncation).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LiveRank {
    pub rank: usize,
    pub width: usize,
}

/// Where a low-rank layer's tensors are in the parameter layout.
pub struct LayerViews<'a> {
    pub ut: &'a TensorView,
    pub vt: &'a TensorView,
    pub w0: Option<&'a TensorView>,
    /// The trained middle factor M of a compressed block (dln).
    pub mid: Option<&'a TensorView>,
    pub bias: &'a TensorView,
    /// Whether the backward accumulates the bias's gradient (not when LoRA holds the base fixed).
    pub bias_grad: bool,
}

/// A middle factor M between the two: W = W0 + Utᵀ·M·Vt. LoRA's M is the constant (α/r)·I, a
/// compressed deep linear block's (dln) is the layer's trained `lowrank_mid`. The fused op runs on
/// Vt_eff = M·Vt, formed by a GEMM before each forward; its dUt and dx are exact through Vt_eff,
/// and the chain rule gives dVt = Mᵀ·dVt_eff and dM = dVt_eff·Vtᵀ. Only models with a middle
/// carry this state.
struct Middle<B: Backend> {
    kind: MiddleKind<B>,
    /// Per layer: Vt_eff = M·Vt in the compute dtype.
    vt_eff: Vec<B::Buf>,
    /// The op's gradients, f32, before they reach the gradient buffer: dUt, dVt_eff (which the
    /// chain rule turns into dVt and dM) and db, back to back (`ScratchGrads`).
    grads: B::Buf,
}

/// Where dUt, dVt_eff and db lie in `Middle::grads` for a layer of width k.
struct ScratchGrads {
    dut: usize,
    dvt: usize,
    db: usize,
    len: usize,
}

impl ScratchGrads {
    fn new(k: usize, n_in: usize, n_out: usize) -> Self {
        ScratchGrads {
            dut: 0,
            dvt: k * n_in,
            db: k * (n_in + n_out),
            len: k * (n_in + n_out) + n_out,
        }
    }
}

enum MiddleKind<B: Backend> {
    /// LoRA's constant M = scale·I: I in the compute dtype and in f32, with the scale applied as
    /// the GEMMs' alpha so it keeps f32 precision.
    Fixed {
        eye: B::Buf,
        eye_f32: B::Buf,
        scale: f32,
    },
    /// Each layer's `lowrank_mid` tensor, with scratch for f32 copies of M and Vt, the backward
    /// GEMMs' operands beside f32 gradients.
    Trained { m_f32: B::Buf, vt_f32: B::Buf },
}

impl<B: Backend> MiddleKind<B> {
    /// Layer `i`'s M (in the compute dtype) and the alpha its GEMMs take.
    fn operand<'a>(
        &'a self,
        i: usize,
        v: &LayerViews,
        w: &'a B::Buf,
    ) -> Result<(Ref<'a, B::Buf>, f32)> {
        match self {
            MiddleKind::Fixed { eye, scale, .. } => Ok((eye.all(), *scale)),
            // The live k × k block, stored contiguously at the tensor's start.
            MiddleKind::Trained { .. } => Ok((view(w, trained_mid(i, v)?), 1.0)),
        }
    }
}

/// The `lowrank_mid` tensor of a layer whose middle factor is trained.
fn trained_mid<'a>(i: usize, v: &LayerViews<'a>) -> Result<&'a TensorView> {
    v.mid.ok_or_else(|| {
        anyhow!("low-rank layer {i} has a trained middle factor but its parameters hold no lowrank_mid tensor (a layout and runtime of different modes)")
    })
}

pub struct LowRankRuntime<B: Backend> {
    pub layers: Vec<LowRankLayer>,
    pub live: Vec<LiveRank>,
    /// Stage 2 has truncated the factors: ranks are fixed.
    pub truncated: bool,
    /// Per layer: t = x·U saved by the forward for the backward (n rows of the capacity's stride).
    t: Vec<B::Buf>,
    /// Shared by the layers' backward passes: s = dy·V.
    s: B::Buf,
    middle: Option<Middle<B>>,
}

impl<B: Backend> LowRankRuntime<B> {
    /// Scratch for `rows` tokens per call; every layer starts at `rank_init` (the capacity for
    /// fixed-width layers). `lora_scale` makes LoRA's constant middle (α/r)·I.
    pub fn new(
        b: &B,
        layers: Vec<LowRankLayer>,
        rows: usize,
        rank_init: usize,
        lora_scale: Option<f32>,
    ) -> Result<Self> {
        let dt = b.compute_dtype();
        let sizes = ScratchSizes::new(&layers, rows, rank_init, lora_scale.is_some());
        let t = (sizes.t.iter())
            .map(|&len| b.alloc(dt, len))
            .collect::<Result<_>>()?;
        let kind = match (lora_scale, sizes.middle) {
            (Some(scale), Some(MiddleSizes::Fixed { rank })) => Some(MiddleKind::Fixed {
                eye: identity(b, dt, rank)?,
                eye_f32: identity(b, DType::F32, rank)?,
                scale,
            }),
            (None, Some(MiddleSizes::Trained { m, vt })) => Some(MiddleKind::Trained {
                m_f32: b.alloc(DType::F32, m)?,
                vt_f32: b.alloc(DType::F32, vt)?,
            }),
            _ => None,
        };
        let middle = match kind {
            Some(kind) => Some(Middle {
                kind,
                vt_eff: (sizes.vt_eff.iter())
                    .map(|&len| b.alloc(dt, len))
                    .collect::<Result<_>>()?,
                grads: b.alloc(DType::F32, sizes.grads)?,
            }),
            None => None,
        };
        let live = layers
            .iter()
            .map(|l| {
                let rank = l.start_rank(rank_init);
                LiveRank {
                    rank,
                    width: l.width(rank),
                }
            })
            .collect();
        Ok(LowRankRuntime {
            s: b.alloc(dt, sizes.s)?,
            t,
            middle,
            live,
            layers,
            truncated: false,
        })
    }

    /// Bytes of scratch held, as allocated (`bytes_planned` counts them before).
    pub fn bytes(&self, b: &B) -> usize {
        let middle = self.middle.iter().flat_map(|m| {
            let own = match &m.kind {
                MiddleKind::Fixed { eye, eye_f32, .. } => [eye, eye_f32],
                MiddleKind::Trained { m_f32, vt_f32 } => [m_f32, vt_f32],
            };
            m.vt_eff.iter().chain(own).chain([&m.grads])
        });
        (self.t.iter().chain([&self.s]).chain(middle))
            .map(|x| b.stored_bytes(x.dtype(), x.len()))
            .sum()
    }

    /// Bytes `new` would allocate, counted before anything is.
    pub fn bytes_planned(
        b: &B,
        layers: &[LowRankLayer],
        rows: usize,
        rank_init: usize,
        lora: bool,
    ) -> usize {
        ScratchSizes::new(layers, rows, rank_init, lora).bytes(b)
    }

    /// y = x·W0 + (x·U)·Vᵀ + b through the fused op, at the layer's live width, then `epi`.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &mut self,
        b: &B,
        i: usize,
        v: &LayerViews,
        w: &B::Buf,
        x: Ref<B::Buf>,
        y: Mut<B::Buf>,
        epi: LinearEpilogue<B::Buf>,
    ) -> Result<()> {
        let sh = self.shape(i, x.len);
        if let Some(mid) = &mut self.middle {
            let k = sh.rank;
            let (m, scale) = mid.kind.operand(i, v, w)?;
            let vt = w.at(v.vt.offset, k * sh.n_out);
            let vt_eff = mid.vt_eff[i].at_mut(0, k * sh.n_out);
            b.gemm(&Gemm::new(k, sh.n_out, k).alpha(scale), m, vt, vt_eff)?;
        }
        let weights = weights(self.middle.as_ref().map(|m| &m.vt_eff[i]), v, w);
        let t = self.t[i].at_mut(0, sh.scratch_len());
        b.lowrank_linear_forward(&sh, x, weights, Some(view(w, v.bias)), t, y, epi)
    }

    /// dx = dy·Wᵀ (written; scaled by GELU′(u) given the `gelu_input` u); dUt, dVt (live rows)
    /// and, if `v.bias_grad`, the bias gradient added into `grads`. Without a middle factor the
    /// op accumulates straight into the gradient buffer; with one, into scratch first, for the
    /// chain rule through Vt_eff = M·Vt.
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &mut self,
        b: &B,
        i: usize,
        v: &LayerViews,
        w: &B::Buf,
        grads: &mut PackedParams<B>,
        x: Ref<B::Buf>,
        dy: Ref<B::Buf>,
        dx: Mut<B::Buf>,
        gelu_input: Option<Ref<B::Buf>>,
    ) -> Result<()> {
        let sh = self.shape(i, x.len);
        let (t, s) = (
            self.t[i].at(0, sh.scratch_len()),
            self.s.at_mut(0, sh.scratch_len()),
        );
        let Some(mid) = &mut self.middle else {
            let weights = weights(None, v, w);
            let (k, n_in, n_out) = (sh.rank, sh.n_in, sh.n_out);
            let g = LowRankGrads {
                dut: grads.offset(v.ut.offset, k * n_in),
                dvt: grads.offset(v.vt.offset, k * n_out),
                dbias: (v.bias_grad).then(|| grads.offset(v.bias.offset, n_out)),
                buf: grads.buf_mut(),
            };
            return b.lowrank_linear_backward(&sh, x, weights, t, dy, s, dx, gelu_input, g);
        };
        let (k, n_in, n_out) = (sh.rank, sh.n_in, sh.n_out);
        let Middle {
            kind,
            vt_eff,
            grads: scratch,
        } = mid;
        let at = ScratchGrads::new(k, n_in, n_out);
        b.fill(scratch.at_mut(0, at.len), 0.0)?;
        let g = LowRankGrads {
            buf: &mut *scratch,
            dut: at.dut,
            dvt: at.dvt,
            dbias: v.bias_grad.then_some(at.db),
        };
        let weights = weights(Some(&vt_eff[i]), v, w);
        b.lowrank_linear_backward(&sh, x, weights, t, dy, s, dx, gelu_input, g)?;
        b.add(
            grads.at_mut(v.ut.offset, k * n_in),
            scratch.at(at.dut, k * n_in),
        )?;
        if v.bias_grad {
            b.add(grads.at_mut(v.bias.offset, n_out), scratch.at(at.db, n_out))?;
        }
        let dvt_eff = scratch.at(at.dvt, k * n_out);
        let (m, scale) = match kind {
            MiddleKind::Fixed { eye_f32, scale, .. } => (eye_f32.all(), *scale),
            MiddleKind::Trained { m_f32, vt_f32 } => {
                // dM += dVt_eff·Vtᵀ, with M and Vt in f32 beside the f32 gradients.
                let t = trained_mid(i, v)?;
                b.cast(w.at(t.offset, k * k), m_f32.at_mut(0, k * k))?;
                b.cast(w.at(v.vt.offset, k * n_out), vt_f32.at_mut(0, k * n_out))?;
                let dm = Gemm::new(k, k, n_out).trans_b().beta(1.0);
                let vt = vt_f32.at(0, k * n_out);
                b.gemm(&dm, dvt_eff, vt, grads.at_mut(t.offset, k * k))?;
                (m_f32.at(0, k * k), 1.0)
            }
        };
        let dvt = Gemm::new(k, n_out, k).trans_a().alpha(scale).beta(1.0);
        b.gemm(&dvt, m, dvt_eff, grads.at_mut(v.vt.offset, k * n_out))
    }

    fn shape(&self, i: usize, x_len: usize) -> LowRankShape {
        let l = &self.layers[i];
        LowRankShape {
            n: x_len / l.n_in,
            n_in: l.n_in,
            n_out: l.n_out,
            rank: self.live[i].width,
        }
    }

    /// LoRA's constant middle factor's scale α/r (None outside LoRA).
    pub fn lora_scale(&self) -> Option<f32> {
        match self.middle.as_ref().map(|m| &m.kind) {
            Some(MiddleKind::Fixed { scale, .. }) => Some(*scale),
            _ => None,
        }
    }
}

/// A layer's operands: W0 and Ut from the weights, Vt from them or, with a middle factor, the
/// layer's Vt_eff = M·Vt.
fn weights<'a, T: Buffer>(
    vt_eff: Option<&'a T>,
    v: &LayerViews,
    w: &'a T,
) -> LowRankWeights<'a, T> {
    LowRankWeights {
        w0: v.w0.map(|t| view(w, t)),
        ut: view(w, v.ut),
        vt: match vt_eff {
            Some(vt) => vt.all(),
            None => view(w, v.vt),
        },
    }
}

/// The lengths of `LowRankRuntime`'s buffers: what `new` allocates and `bytes_planned` counts.
struct ScratchSizes {
    /// Per layer, t = x·U (compute dtype).
    t: Vec<usize>,
    /// s = dy·V, shared (compute dtype).
    s: usize,
    middle: Option<MiddleSizes>,
    /// With a middle: per layer Vt_eff (compute dtype), and the f32 gradients shared.
    vt_eff: Vec<usize>,
    grads: usize,
}

enum MiddleSizes {
    /// LoRA's r × r identity, in the compute dtype and in f32.
    Fixed { rank: usize },
    /// f32 copies of the widest M and Vt.
    Trained { m: usize, vt: usize },
}

impl ScratchSizes {
    fn new(layers: &[LowRankLayer], rows: usize, rank_init: usize, lora: bool) -> Self {
        let scratch = |l: &LowRankLayer| capacity_shape(l, rows).scratch_len();
        let max = |f: &dyn Fn(&LowRankLayer) -> usize| layers.iter().map(f).max().unwrap_or(0);
        let middle = match lora {
            true => Some(MiddleSizes::Fixed { rank: rank_init }),
            false if layers.iter().any(|l| l.has_mid) => Some(MiddleSizes::Trained {
                m: max(&|l| l.capacity * l.capacity),
                vt: max(&|l| l.capacity * l.n_out),
            }),
            false => None,
        };
        let (vt_eff, grads) = match middle {
            Some(_) => (
                layers.iter().map(|l| l.capacity * l.n_out).collect(),
                max(&|l| ScratchGrads::new(l.capacity, l.n_in, l.n_out).len),
            ),
            None => (Vec::new(), 0),
        };
        ScratchSizes {
            t: layers.iter().map(scratch).collect(),
            s: max(&scratch).max(1),
            middle,
            vt_eff,
            grads,
        }
    }

    fn bytes<B: Backend>(&self, b: &B) -> usize {
        let mut compute = self.t.iter().chain(&self.vt_eff).sum::<usize>() + self.s;
        let mut f32s = self.grads;
        match self.middle {
            Some(MiddleSizes::Fixed { rank }) => {
                (compute, f32s) = (compute + rank * rank, f32s + rank * rank)
            }
            Some(MiddleSizes::Trained { m, vt }) => f32s += m + vt,
            None => {}
        }
        b.stored_bytes(b.compute_dtype(), compute) + b.stored_bytes(DType::F32, f32s)
    }
}

/// The op's shape at full capacity (sizes the scratch once).
fn capacity_shape(l: &LowRankLayer, rows: usize) -> LowRankShape {
    LowRankShape {
        n: rows,
        n_in: l.n_in,
        n_out: l.n_out,
        rank: l.capacity,
    }
}

fn view<'a, T: Buffer>(buf: &'a T, t: &TensorView) -> Ref<'a, T> {
    buf.at(t.offset, t.len())
}

fn identity<B: Backend>(b: &B, dtype: DType, n: usize) -> Result<B::Buf> {
    let mut eye = vec![0.0f32; n * n];
    eye.iter_mut().step_by(n + 1).for_each(|x| *x = 1.0);
    let mut buf = b.alloc(dtype, n * n)?;
    b.upload(&eye, buf.all_mut())?;
    Ok(buf)
}

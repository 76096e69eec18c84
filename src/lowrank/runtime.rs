//! The live state of a model's low-rank layers: each layer's rank and width (a view into the
//! capacity allocated once) and the scratch its forward and backward use, with the two calls that
//! run a layer through the Backend's fused low-rank op.

use super::layer::LowRankLayer;
use crate::backend::{
    Backend, Buffer, DType, Gemm, LowRankGrads, LowRankShape, LowRankWeights, MatShape, Mut, Ref,
};
use crate::model::TensorView;
use anyhow::Result;

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
    pub bias: &'a TensorView,
}

/// LoRA's scale α/r enters as Vt_scaled = (α/r)·Vt, formed by a GEMM with an R×R identity (so every
/// backend runs it), and the gradient of Vt as (α/r)·(the op's dVt). dUt and dx are exact through
/// Vt_scaled.
struct LoraScale<B: Backend> {
    scale: f32,
    /// R×R identity in the compute dtype and in f32.
    eye: B::Buf,
    eye_f32: B::Buf,
    vt_scaled: Vec<B::Buf>,
}

pub struct LowRankRuntime<B: Backend> {
    pub layers: Vec<LowRankLayer>,
    pub live: Vec<LiveRank>,
    /// Stage 2 has truncated the factors: ranks are fixed.
    pub truncated: bool,
    /// Per layer: t = x·U saved by the forward for the backward (n rows of the capacity's stride).
    t: Vec<B::Buf>,
    /// Shared by the layers' backward passes: s = dy·V, and f32 dUt, dVt before they are added
    /// into the gradient buffer (the op writes three gradient windows at once; the flat gradient
    /// buffer can lend only one).
    s: B::Buf,
    dut: B::Buf,
    dvt: B::Buf,
    lora: Option<LoraScale<B>>,
}

impl<B: Backend> LowRankRuntime<B> {
    /// Scratch for `rows` tokens per call; every layer starts at `rank_init` (capacity for LoRA).
    pub fn new(
        b: &B,
        layers: Vec<LowRankLayer>,
        rows: usize,
        rank_init: usize,
        lora_scale: Option<f32>,
    ) -> Result<Self> {
        let dt = b.compute_dtype();
        let scratch = |l: &LowRankLayer| capacity_shape(l, rows).scratch_len();
        let max = |f: &dyn Fn(&LowRankLayer) -> usize| layers.iter().map(f).max().unwrap_or(0);
        let t = layers
            .iter()
            .map(|l| b.alloc(dt, scratch(l)))
            .collect::<Result<_>>()?;
        let lora = match lora_scale {
            Some(scale) => Some(LoraScale {
                scale,
                eye: identity(b, dt, rank_init)?,
                eye_f32: identity(b, DType::F32, rank_init)?,
                vt_scaled: layers
                    .iter()
                    .map(|l| b.alloc(dt, l.capacity * l.n_out))
                    .collect::<Result<_>>()?,
            }),
            None => None,
        };
        let live = layers
            .iter()
            .map(|l| {
                let rank = rank_init.min(l.capacity);
                LiveRank {
                    rank,
                    width: l.width(rank),
                }
            })
            .collect();
        Ok(LowRankRuntime {
            s: b.alloc(dt, max(&scratch).max(1))?,
            dut: b.alloc(DType::F32, max(&|l| l.capacity * l.n_in).max(1))?,
            dvt: b.alloc(DType::F32, max(&|l| l.capacity * l.n_out).max(1))?,
            t,
            lora,
            live,
            layers,
            truncated: false,
        })
    }

    /// y = x·W0 + (x·U)·Vᵀ + b through the fused op, at the layer's live width.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &mut self,
        b: &B,
        i: usize,
        v: &LayerViews,
        w: &B::Buf,
        x: Ref<B::Buf>,
        y: Mut<B::Buf>,
    ) -> Result<()> {
        let sh = self.shape(i, x.len);
        if let Some(lora) = &mut self.lora {
            let g = Gemm::new(sh.rank, sh.n_out, sh.rank).alpha(lora.scale);
            b.gemm(
                &g,
                lora.eye.all(),
                view(w, v.vt),
                lora.vt_scaled[i].all_mut(),
            )?;
        }
        let weights = weights(&self.lora, i, v, w);
        let t = self.t[i].at_mut(0, sh.scratch_len());
        b.lowrank_linear_forward(&sh, x, weights, Some(view(w, v.bias)), t, y)
    }

    /// dx = dy·Wᵀ (written); dUt, dVt (live rows) and the bias gradient added into `grads`.
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &mut self,
        b: &B,
        i: usize,
        v: &LayerViews,
        w: &B::Buf,
        grads: &mut B::Buf,
        x: Ref<B::Buf>,
        dy: Ref<B::Buf>,
        dx: Mut<B::Buf>,
    ) -> Result<()> {
        let sh = self.shape(i, x.len);
        let (k, n_in, n_out) = (sh.rank, sh.n_in, sh.n_out);
        b.fill(self.dut.at_mut(0, k * n_in), 0.0)?;
        b.fill(self.dvt.at_mut(0, k * n_out), 0.0)?;
        let weights = weights(&self.lora, i, v, w);
        let (t, s) = (
            self.t[i].at(0, sh.scratch_len()),
            self.s.at_mut(0, sh.scratch_len()),
        );
        let g = LowRankGrads {
            dut: self.dut.at_mut(0, k * n_in),
            dvt: self.dvt.at_mut(0, k * n_out),
            dbias: None,
        };
        b.lowrank_linear_backward(&sh, x, weights, t, dy, s, dx, g)?;
        b.add(
            grads.at_mut(v.ut.offset, k * n_in),
            self.dut.at(0, k * n_in),
        )?;
        let dvt = grads.at_mut(v.vt.offset, k * n_out);
        match &self.lora {
            Some(lora) => {
                let g = Gemm::new(k, n_out, k).alpha(lora.scale).beta(1.0);
                b.gemm(&g, lora.eye_f32.all(), self.dvt.at(0, k * n_out), dvt)?;
            }
            None => b.add(dvt, self.dvt.at(0, k * n_out))?,
        }
        let db = grads.at_mut(v.bias.offset, n_out);
        b.add_column_sums(db, dy, MatShape::new(sh.n, n_out))
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

    /// Bytes of scratch held.
    pub fn bytes(&self) -> usize {
        let lora = self.lora.iter().flat_map(|l| l.vt_scaled.iter());
        self.t
            .iter()
            .chain([&self.s, &self.dut, &self.dvt])
            .chain(lora)
            .map(|x| x.len() * x.dtype().size_bytes())
            .sum()
    }
}

/// The operands of layer `i`: W0 and Ut from the weights, Vt from them or LoRA's scaled copy.
fn weights<'a, B: Backend>(
    lora: &'a Option<LoraScale<B>>,
    i: usize,
    v: &LayerViews,
    w: &'a B::Buf,
) -> LowRankWeights<'a, B::Buf> {
    LowRankWeights {
        w0: v.w0.map(|t| view(w, t)),
        ut: view(w, v.ut),
        vt: match lora {
            Some(lora) => lora.vt_scaled[i].all(),
            None => view(w, v.vt),
        },
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

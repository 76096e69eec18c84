//! The `function` init (the authors' method): from a warm start, minimise the mean over Gaussian
//! inputs of ‖σ(x·W) − σ(x·U·Vᵀ)‖² over (U, V) with Adam.
//!
//! Everything runs through the Backend in f32 (GEMMs, the activation and its derivative, a
//! difference, AdamW), so the fit runs on the GPU as on the CPU. The gradient is written by hand:
//! with a = x·Utᵀ (n × r), z = a·Vt, D = σ(z) − σ(x·W) and L = (1/n)·Σ‖D_row‖²,
//! ∂L/∂z = (2/n)·D ⊙ σ′(z) =: G, ∂L/∂Vt = aᵀ·G, ∂L/∂a = G·Vtᵀ, ∂L/∂Ut = (∂L/∂a)ᵀ·x.
//!
//! Three project choices depart from the authors' recipe (a fixed pool of 1000 inputs, the
//! spectral start, constant lr 5e-3), each because the recipe loses to the spectral init at GPT-2
//! widths (results/init-study/): a pool of 1000 is overfitted when n_in ≈ 1000, so by default
//! every step draws fresh inputs (the expected error itself is minimised); the default start is
//! `function-closed`, already below spectral; and the learning rate decays to zero on a cosine, so
//! the fit settles instead of hovering at the noise floor of its step. Each is a setting, so the
//! authors' recipe remains one configuration away (`FitConfig::authors`).

use super::{Activation, DenseLayer, Factors};
use crate::backend::{AdamW, Backend, Buffer, DType, Gemm, Ref};
use crate::util::rng::Rng;
use anyhow::{ensure, Result};

/// Where the fit starts.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FitStart {
    /// The truncated SVD (the authors' warm start).
    Spectral,
    /// The spectral factors with each column at its optimal norm under σ (`function-closed`).
    Closed,
}

/// Settings of the fit.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct FitConfig {
    /// Gaussian inputs drawn once and fitted on (a pool); 0 draws fresh inputs every step.
    pub samples: usize,
    /// Rows per Adam step (at most `samples` when a pool is used).
    pub batch: usize,
    /// Adam steps; 0 returns the start unchanged.
    pub steps: usize,
    /// Peak Adam learning rate (β = 0.9, 0.999, ε = 1e-8, no weight decay: PyTorch's Adam defaults).
    pub lr: f32,
    /// Decay the learning rate to zero on a cosine over the steps (else constant).
    pub cosine: bool,
    pub start: FitStart,
}

impl Default for FitConfig {
    fn default() -> Self {
        FitConfig {
            samples: 0,
            batch: 512,
            steps: 770,
            lr: 1e-3,
            cosine: true,
            start: FitStart::Closed,
        }
    }
}

impl FitConfig {
    /// The authors' recipe: a pool of 1000 inputs, batch 512, constant lr 5e-3 for about 770
    /// steps, from the spectral start.
    pub fn authors() -> Self {
        FitConfig {
            samples: 1000,
            batch: 512,
            steps: 770,
            lr: 5e-3,
            cosine: false,
            start: FitStart::Spectral,
        }
    }

    /// Checks the settings, naming the bad one.
    pub fn check(&self) -> Result<()> {
        ensure!(
            self.batch >= 1,
            "function init: batch ({}) must be positive",
            self.batch
        );
        ensure!(
            self.samples == 0 || self.batch <= self.samples,
            "function init: batch {} must be at most the pool of {} samples (or use fresh samples: 0)",
            self.batch,
            self.samples
        );
        ensure!(
            self.lr.is_finite() && self.lr > 0.0,
            "function init: learning rate {} must be positive",
            self.lr
        );
        Ok(())
    }

    /// The learning rate of 0-based step `step`.
    fn lr_at(&self, step: usize) -> f32 {
        if !self.cosine {
            return self.lr;
        }
        let t = step as f64 / self.steps as f64;
        (self.lr as f64 * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())) as f32
    }
}

/// Shapes of one loss evaluation: `rows` inputs through a rank-`rank` n_in × n_out layer.
#[derive(Clone, Copy, Debug)]
pub(super) struct FitDims {
    pub rows: usize,
    pub n_in: usize,
    pub n_out: usize,
    pub rank: usize,
}

/// Activations of one loss evaluation, sized for `rows`: a = x·Utᵀ and its gradient (rows × r),
/// z = a·Vt and σ(z) − target, turned in place into ∂L/∂z (rows × n_out).
pub(super) struct Scratch<B: Backend> {
    a: B::Buf,
    da: B::Buf,
    z: B::Buf,
    diff: B::Buf,
}

impl<B: Backend> Scratch<B> {
    pub fn new(b: &B, d: &FitDims) -> Result<Self> {
        Ok(Scratch {
            a: b.alloc(DType::F32, d.rows * d.rank)?,
            da: b.alloc(DType::F32, d.rows * d.rank)?,
            z: b.alloc(DType::F32, d.rows * d.n_out)?,
            diff: b.alloc(DType::F32, d.rows * d.n_out)?,
        })
    }
}

/// L = (1/rows)·Σ‖σ(x·Utᵀ·Vt) − target‖² and its gradient. `params` is [Ut | Vt] (rank·(n_in +
/// n_out) f32); `grads` (same layout) is overwritten; x (rows × n_in) and target (rows × n_out) are
/// windows of f32 buffers. Returns L (one host sync).
#[allow(clippy::too_many_arguments)]
pub(super) fn loss_and_grads<B: Backend>(
    b: &B,
    d: &FitDims,
    act: Activation,
    x: Ref<B::Buf>,
    target: Ref<B::Buf>,
    params: &B::Buf,
    grads: &mut B::Buf,
    s: &mut Scratch<B>,
) -> Result<f64> {
    let (n, i, o, r) = (d.rows, d.n_in, d.n_out, d.rank);
    let (ut, vt) = (params.at(0, r * i), params.at(r * i, r * o));
    let (a, z) = (s.a.at_mut(0, n * r), s.z.at_mut(0, n * o));
    b.gemm(&Gemm::new(n, r, i).trans_b(), x, ut, a)?;
    b.gemm(&Gemm::new(n, o, r), s.a.at(0, n * r), vt, z)?;
    act.forward(b, s.diff.at_mut(0, n * o), s.z.at(0, n * o))?;
    b.sub(s.diff.at_mut(0, n * o), target)?;
    let loss = b.sum_squares(&[s.diff.at(0, n * o)])? / n as f64;
    act.backward(b, s.diff.at_mut(0, n * o), s.z.at(0, n * o))?;
    // s.diff now holds D ⊙ σ′(z) = (n/2)·∂L/∂z; the factor 2/n rides on the GEMMs' alpha.
    let scale = 2.0 / n as f32;
    let g = s.diff.at(0, n * o);
    let dvt = Gemm::new(r, o, n).trans_a().alpha(scale);
    b.gemm(&dvt, s.a.at(0, n * r), g, grads.at_mut(r * i, r * o))?;
    let da = Gemm::new(n, r, o).trans_b().alpha(scale);
    b.gemm(&da, g, vt, s.da.at_mut(0, n * r))?;
    b.gemm(
        &Gemm::new(r, i, n).trans_a(),
        s.da.at(0, n * r),
        x,
        grads.at_mut(0, r * i),
    )?;
    Ok(loss)
}

/// The inputs and targets σ(x·W) the fit steps on.
///
/// With a pool, `samples` inputs and their targets are drawn once and stored twice back to back,
/// so that the batch starting at any row is one contiguous window; batches walk the pool
/// cyclically (start = step·batch mod samples), so every sample is used equally often. Fresh
/// inputs are drawn for every step instead, and their targets computed through W on the device.
struct Inputs<B: Backend> {
    source: Source<B>,
    x: B::Buf,
    target: B::Buf,
}

/// Where a step's inputs come from.
enum Source<B: Backend> {
    /// A pool of this many samples (x and target hold it twice).
    Pool(usize),
    /// Fresh inputs each step (x and target hold one batch), mapped through W into the
    /// pre-activation x·W.
    Fresh { w: B::Buf, pre: B::Buf },
}

impl<B: Backend> Inputs<B> {
    fn new(
        b: &B,
        layer: &DenseLayer,
        act: Activation,
        cfg: &FitConfig,
        rng: &mut Rng,
    ) -> Result<Self> {
        let (i, o) = (layer.n_in, layer.n_out);
        let mut w = b.alloc(DType::F32, i * o)?;
        b.upload(layer.w, w.all_mut())?;
        if cfg.samples == 0 {
            return Ok(Inputs {
                source: Source::Fresh {
                    w,
                    pre: b.alloc(DType::F32, cfg.batch * o)?,
                },
                x: b.alloc(DType::F32, cfg.batch * i)?,
                target: b.alloc(DType::F32, cfg.batch * o)?,
            });
        }
        let samples = cfg.samples;
        let x_host = rng.normal_vec(samples * i, 1.0);
        let mut x = b.alloc(DType::F32, 2 * samples * i)?;
        b.upload(&x_host, x.at_mut(0, samples * i))?;
        b.upload(&x_host, x.at_mut(samples * i, samples * i))?;
        let mut pre = b.alloc(DType::F32, samples * o)?;
        b.gemm(
            &Gemm::new(samples, o, i),
            x.at(0, samples * i),
            w.all(),
            pre.all_mut(),
        )?;
        let mut once = b.alloc(DType::F32, samples * o)?;
        act.forward(b, once.all_mut(), pre.all())?;
        let mut target = b.alloc(DType::F32, 2 * samples * o)?;
        b.cast(once.all(), target.at_mut(0, samples * o))?;
        b.cast(once.all(), target.at_mut(samples * o, samples * o))?;
        Ok(Inputs {
            source: Source::Pool(samples),
            x,
            target,
        })
    }

    /// The (x, target) windows of 0-based step `step`, `rows` rows each.
    #[allow(clippy::type_complexity)]
    fn batch(
        &mut self,
        b: &B,
        act: Activation,
        layer: &DenseLayer,
        step: usize,
        rows: usize,
        rng: &mut Rng,
    ) -> Result<(Ref<'_, B::Buf>, Ref<'_, B::Buf>)> {
        let (i, o) = (layer.n_in, layer.n_out);
        let start = match &mut self.source {
            Source::Pool(samples) => (step * rows) % *samples,
            Source::Fresh { w, pre } => {
                b.upload(&rng.normal_vec(rows * i, 1.0), self.x.all_mut())?;
                b.gemm(&Gemm::new(rows, o, i), self.x.all(), w.all(), pre.all_mut())?;
                act.forward(b, self.target.all_mut(), pre.all())?;
                0
            }
        };
        Ok((
            self.x.at(start * i, rows * i),
            self.target.at(start * o, rows * o),
        ))
    }
}

/// Refines `start` by `cfg.steps` Adam steps on the layer's function error under `act`.
pub(super) fn refine<B: Backend>(
    b: &B,
    layer: &DenseLayer,
    start: Factors,
    act: Activation,
    cfg: &FitConfig,
    rng: &mut Rng,
) -> Result<Factors> {
    cfg.check()?;
    if cfg.steps == 0 {
        return Ok(start);
    }
    let (i, o, r) = (layer.n_in, layer.n_out, start.rank);
    let mut inputs = Inputs::new(b, layer, act, cfg, rng)?;
    let n_params = r * (i + o);
    let mut params = b.alloc(DType::F32, n_params)?;
    b.upload(&start.ut, params.at_mut(0, r * i))?;
    b.upload(&start.vt, params.at_mut(r * i, r * o))?;
    let mut grads = b.alloc(DType::F32, n_params)?;
    let (mut m, mut v) = (
        b.alloc(DType::F32, n_params)?,
        b.alloc(DType::F32, n_params)?,
    );
    let d = FitDims {
        rows: cfg.batch,
        n_in: i,
        n_out: o,
        rank: r,
    };
    let mut scratch = Scratch::new(b, &d)?;
    for step in 0..cfg.steps {
        let (x, target) = inputs.batch(b, act, layer, step, cfg.batch, rng)?;
        loss_and_grads(b, &d, act, x, target, &params, &mut grads, &mut scratch)?;
        let hp = adam(cfg.lr_at(step), step as u32 + 1);
        b.adamw(
            &hp,
            params.all_mut(),
            grads.all(),
            m.all_mut(),
            v.all_mut(),
            None,
        )?;
    }
    let all = b.download(params.all())?;
    let (ut, vt) = all.split_at(r * i);
    Ok(Factors {
        rank: r,
        ut: ut.to_vec(),
        vt: vt.to_vec(),
    })
}

/// Adam with PyTorch's defaults (the authors' optimiser) at 1-based `step`.
fn adam(lr: f32, step: u32) -> AdamW {
    AdamW {
        lr,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.0,
        step,
        grad_scale: 1.0,
    }
}

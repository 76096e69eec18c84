//! Initialisation of low-rank factors W ≈ U·Vᵀ from a full-rank W drawn from the ordinary init
//! (SCIENCE.md §2).
//!
//! Four kinds, selected per run by `--lowrank-init`:
//! - `random`: both factors drawn like ordinary layers, scaled so U·Vᵀ has W's entrywise variance.
//! - `spectral`: the truncated SVD of W, U = U_r·√Σ_r, V = V_r·√Σ_r (the best *parameter* fit).
//! - `function-closed`: the spectral Ŵ with each output column rescaled to the norm that minimises
//!   its function error given its direction (closed form for ReLU, quadrature for GELU; see
//!   [`closed`]).
//! - `function`: the authors' method: from the spectral start, Adam on Gaussian inputs minimising
//!   the layer's function error E‖σ(xW) − σ(xUVᵀ)‖² (see [`fit`]), through the Backend.
//!
//! Layout: factors come back as the model stores them (backend/lowrank.rs), transposed and
//! row-major f32: Ut (rank × n_in) and Vt (rank × n_out), with W ≈ Utᵀ·Vt.

mod closed;
mod eval;
mod fit;
mod quadrature;
pub mod sample;
mod spectral;
#[cfg(test)]
mod tests;

pub use closed::{optimal_column_norm, relu_kernel};
pub use eval::{FunctionError, FunctionErrorProbe};
pub use fit::{FitConfig, FitStart};
pub use quadrature::GaussHermite;
pub use sample::{draw_dense, truncated_normal, TRUNCATED_STD_RATIO};
pub use spectral::ThinSvd;

use crate::backend::{Backend, Mut, Ref};
use crate::util::rng::Rng;
use anyhow::{ensure, Result};

/// How to initialise the factors of a low-rank layer (`--lowrank-init`).
#[derive(
    clap::ValueEnum,
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum LowRankInit {
    #[default]
    Random,
    Spectral,
    Function,
    FunctionClosed,
}

/// The nonlinearity after the layer, whose function error the function-aware inits minimise.
/// GPT-2's MLP uses the tanh GELU (`fc` is followed by it); ReLU is the case with a closed form.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Activation {
    Relu,
    Gelu,
}

impl Activation {
    pub fn name(self) -> &'static str {
        match self {
            Activation::Relu => "relu",
            Activation::Gelu => "gelu",
        }
    }

    /// σ(z) in f64, the same function the backend's op computes (GPT-2's tanh GELU).
    pub fn eval(self, z: f64) -> f64 {
        match self {
            Activation::Relu => z.max(0.0),
            Activation::Gelu => {
                let sqrt_2_over_pi = (2.0 / std::f64::consts::PI).sqrt();
                0.5 * z * (1.0 + (sqrt_2_over_pi * (z + 0.044715 * z.powi(3))).tanh())
            }
        }
    }

    /// out = σ(inp) on the backend.
    pub fn forward<B: Backend>(self, b: &B, out: Mut<B::Buf>, inp: Ref<B::Buf>) -> Result<()> {
        match self {
            Activation::Relu => b.relu_forward(out, inp),
            Activation::Gelu => b.gelu_forward(out, inp),
        }
    }

    /// d ← d · σ′(inp) on the backend.
    pub fn backward<B: Backend>(self, b: &B, d: Mut<B::Buf>, inp: Ref<B::Buf>) -> Result<()> {
        match self {
            Activation::Relu => b.relu_backward(d, inp),
            Activation::Gelu => b.gelu_backward(d, inp),
        }
    }
}

/// A full-rank layer y = x·W to approximate: W is n_in × n_out, row-major.
#[derive(Clone, Copy, Debug)]
pub struct DenseLayer<'a> {
    pub w: &'a [f32],
    pub n_in: usize,
    pub n_out: usize,
}

impl DenseLayer<'_> {
    /// Checks that W has the stated shape and finite entries and that `rank` is in 1..=min(n_in, n_out).
    pub fn check(&self, rank: usize) -> Result<()> {
        let (n_in, n_out) = (self.n_in, self.n_out);
        ensure!(
            n_in >= 1 && n_out >= 1,
            "low-rank init: layer {n_in}x{n_out} has an empty side"
        );
        ensure!(
            self.w.len() == n_in * n_out,
            "low-rank init: W has {} entries, a {n_in}x{n_out} layer needs {}",
            self.w.len(),
            n_in * n_out
        );
        let max_rank = n_in.min(n_out);
        ensure!(
            (1..=max_rank).contains(&rank),
            "low-rank init: rank {rank} is outside 1..={max_rank} for a {n_in}x{n_out} layer \
             (a rank must be at least 1 and at most min(n_in, n_out))"
        );
        ensure!(
            self.w.iter().all(|v| v.is_finite()),
            "low-rank init: W of the {n_in}x{n_out} layer has a non-finite entry"
        );
        Ok(())
    }
}

/// Factors of a rank-`rank` layer in the model's layout: Ut (rank × n_in), Vt (rank × n_out),
/// row-major, W ≈ Utᵀ·Vt.
#[derive(Clone, Debug, PartialEq)]
pub struct Factors {
    pub rank: usize,
    pub ut: Vec<f32>,
    pub vt: Vec<f32>,
}

impl Factors {
    /// The dense product Ŵ = Utᵀ·Vt (n_in × n_out), in f64: for tests and diagnostics.
    pub fn product(&self, n_in: usize, n_out: usize) -> Vec<f64> {
        let mut w = vec![0.0f64; n_in * n_out];
        for k in 0..self.rank {
            let (u, v) = (
                &self.ut[k * n_in..(k + 1) * n_in],
                &self.vt[k * n_out..(k + 1) * n_out],
            );
            for (i, &ui) in u.iter().enumerate() {
                let row = &mut w[i * n_out..(i + 1) * n_out];
                row.iter_mut()
                    .zip(v)
                    .for_each(|(w, &vj)| *w += ui as f64 * vj as f64);
            }
        }
        w
    }
}

/// What the function-aware inits need besides the layer: the nonlinearity after it and the
/// settings of the `function` fit.
#[derive(Clone, Debug, PartialEq)]
pub struct InitOptions {
    pub activation: Activation,
    pub fit: FitConfig,
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions {
            activation: Activation::Gelu,
            fit: FitConfig::default(),
        }
    }
}

/// Rank-`rank` factors of `layer` by `kind`. `random` ignores W's values (only its shape and init
/// scale matter); the others start from W's SVD. `rng` draws the random factors or the `function`
/// fit's Gaussian inputs. Errors on a bad shape or rank before any work.
pub fn init_factors<B: Backend>(
    b: &B,
    kind: LowRankInit,
    layer: &DenseLayer,
    rank: usize,
    opts: &InitOptions,
    rng: &mut Rng,
) -> Result<Factors> {
    layer.check(rank)?;
    if kind == LowRankInit::Random {
        return Ok(random_factors(layer.n_in, layer.n_out, rank, rng));
    }
    let svd = ThinSvd::new(layer)?;
    init_from_svd(b, kind, layer, &svd, rank, opts, rng)
}

/// [`init_factors`] for a batch of layers (all MLP layers of a model), each at `rank`. Every
/// layer is checked before any is initialised, so a bad one fails fast.
pub fn init_layers<B: Backend>(
    b: &B,
    kind: LowRankInit,
    layers: &[DenseLayer],
    rank: usize,
    opts: &InitOptions,
    rng: &mut Rng,
) -> Result<Vec<Factors>> {
    for layer in layers {
        layer.check(rank)?;
    }
    layers
        .iter()
        .map(|layer| init_factors(b, kind, layer, rank, opts, rng))
        .collect()
}

/// The SVD-based inits from a precomputed SVD of `layer.w` (so a study can share one SVD across
/// ranks and kinds). `kind` must not be `random`.
#[allow(clippy::too_many_arguments)]
pub fn init_from_svd<B: Backend>(
    b: &B,
    kind: LowRankInit,
    layer: &DenseLayer,
    svd: &ThinSvd,
    rank: usize,
    opts: &InitOptions,
    rng: &mut Rng,
) -> Result<Factors> {
    layer.check(rank)?;
    let spectral = svd.spectral_factors(rank)?;
    match kind {
        LowRankInit::Spectral => Ok(spectral),
        LowRankInit::FunctionClosed => {
            closed::rescale_columns(spectral, svd, layer, opts.activation)
        }
        LowRankInit::Function => {
            let start = match opts.fit.start {
                FitStart::Spectral => spectral,
                FitStart::Closed => closed::rescale_columns(spectral, svd, layer, opts.activation)?,
            };
            fit::refine(b, layer, start, opts.activation, &opts.fit, rng)
        }
        LowRankInit::Random => {
            anyhow::bail!("low-rank init: `random` does not start from an SVD; call init_factors")
        }
    }
}

/// Both factors drawn as ordinary layers of their own fan-in, truncated normal std 1/√fan_in:
/// U's fan-in is n_in, so x·U has the scale of any layer's output; V's fan-in is `rank`, widened
/// by 1/[`TRUNCATED_STD_RATIO`] so that each entry of U·Vᵀ (a sum of `rank` products) has the
/// variance W's entries have, TRUNCATED_STD_RATIO²/n_in.
pub fn random_factors(n_in: usize, n_out: usize, rank: usize, rng: &mut Rng) -> Factors {
    let ut = truncated_normal(rng, rank * n_in, 1.0 / (n_in as f64).sqrt());
    let v_std = 1.0 / ((rank as f64).sqrt() * TRUNCATED_STD_RATIO);
    let vt = truncated_normal(rng, rank * n_out, v_std);
    Factors { rank, ut, vt }
}

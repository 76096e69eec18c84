//! How a low-rank layer's factors start (`--lowrank-init`). `Random` is implemented here; the
//! spectral and function-aware inits of SCIENCE.md §2 extend `LowRankInit` and `start_factors`.

use super::config::LowRankMode;
use super::layer::LowRankLayer;
use crate::util::rng::Rng;
use anyhow::Result;
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LowRankInit {
    /// Independent Gaussian factors (see `start_factors`).
    #[default]
    Random,
}

/// The starting Ut (R × n_in) and Vt (R × n_out) of a layer, row-major, for a live width of
/// `width` rows. Rows beyond the width have U random and V zero in every mode, so a row that
/// becomes live when the rank grows leaves W unchanged (SCIENCE.md §1, project choice).
pub fn start_factors(
    init: LowRankInit,
    mode: LowRankMode,
    layer: &LowRankLayer,
    width: usize,
    rng: &mut Rng,
) -> Result<(Vec<f32>, Vec<f32>)> {
    let (r, n_in, n_out) = (layer.capacity, layer.n_in, layer.n_out);
    match init {
        LowRankInit::Random => {
            let mut vt = vec![0.0f32; r * n_out];
            let ut = if mode == LowRankMode::Efficient {
                // W = U·Vᵀ with U, V ~ N(0, σ²) has entries of variance width·σ⁴: match the
                // dense layer's init std.
                let sigma = (layer.dense_std / (width as f64).sqrt()).sqrt();
                let ut = rng.normal_vec(r * n_in, sigma);
                let live = rng.normal_vec(width * n_out, sigma);
                vt[..width * n_out].copy_from_slice(&live);
                ut
            } else {
                // With a base W0 the update U·Vᵀ starts at zero: U small random (the dense init's
                // std), V zero, as LoRA does.
                rng.normal_vec(r * n_in, layer.dense_std)
            };
            Ok((ut, vt))
        }
    }
}

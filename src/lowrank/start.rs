//! How a low-rank layer's factors start (`--lowrank-init`, SCIENCE.md §1–§2).
//!
//! `random`: independent Gaussian factors scaled so U·Vᵀ has the dense layer's init std
//! (efficient), or U small and V zero so the update starts at zero (inrank, lora). `spectral`,
//! `function-closed` and `function` (efficient only) draw the dense layer's W from its init
//! distribution and factor it with `init::init_factors` at the live width. The function-aware
//! kinds target the nonlinearity after the layer: GELU after `mlp.c_fc`; a layer followed by no
//! nonlinearity (c_proj, attention) has function error = parameter error, so it gets spectral.

use super::config::LowRankMode;
use super::init::{self, sample::truncated_normal, DenseLayer, InitOptions, LowRankInit};
use super::layer::LowRankLayer;
use crate::backend::cpu::Cpu;
use crate::util::rng::Rng;
use anyhow::{bail, Context, Result};

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
    let mut vt = vec![0.0f32; r * n_out];
    match (init, mode) {
        (LowRankInit::Random, LowRankMode::Efficient) => {
            // W = U·Vᵀ with U, V ~ N(0, σ²) has entries of variance width·σ⁴: match the dense
            // layer's init std.
            let sigma = (layer.dense_std / (width as f64).sqrt()).sqrt();
            let ut = rng.normal_vec(r * n_in, sigma);
            vt[..width * n_out].copy_from_slice(&rng.normal_vec(width * n_out, sigma));
            Ok((ut, vt))
        }
        // With a base W0 the update U·Vᵀ starts at zero: U small random (the dense init's std),
        // V zero, as LoRA does.
        (LowRankInit::Random, _) => Ok((rng.normal_vec(r * n_in, layer.dense_std), vt)),
        (kind, LowRankMode::Efficient) => {
            let w = truncated_normal(rng, n_in * n_out, layer.dense_std);
            let followed_by_gelu = layer.prefix.ends_with("mlp.c_fc");
            let kind = if followed_by_gelu { kind } else { LowRankInit::Spectral };
            let f = init::init_factors(&Cpu, kind, &DenseLayer { w: &w, n_in, n_out }, width, &InitOptions::default(), rng)
                .with_context(|| format!("--lowrank-init for {}", layer.prefix))?;
            let mut ut = rng.normal_vec(r * n_in, layer.dense_std);
            ut[..width * n_in].copy_from_slice(&f.ut);
            vt[..width * n_out].copy_from_slice(&f.vt);
            Ok((ut, vt))
        }
        (kind, _) => bail!(
            "--lowrank-init {} factors a dense initialisation, so it applies to --lowrank efficient; with a frozen base (inrank, lora) the update starts at zero: use --lowrank-init random",
            clap::ValueEnum::to_possible_value(&kind).map(|v| v.get_name().to_string()).unwrap_or_default()
        ),
    }
}

//! How a low-rank layer's factors start (`--lowrank-init`, SCIENCE.md §1–§2).
//!
//! `random`: independent Gaussian factors scaled so U·Vᵀ has the dense layer's init std
//! (efficient), or U small and V zero so the update starts at zero (inrank, lora). `spectral`,
//! `function-closed` and `function` (efficient only) draw the dense layer's W from its init
//! distribution and factor it with `init::init_factors` at the live width. The function-aware
//! kinds target the nonlinearity after the layer: GELU after `mlp.c_fc`; a layer followed by no
//! nonlinearity (c_proj, attention) has function error = parameter error, so it gets spectral.
//!
//! `dln` (a compressed deep linear block, SCIENCE.md §4) has its own init: the layer's surrogate is
//! the dense weight its init would draw (a GPT has no target to take it from); with Û, V̂ its top
//! 2r singular vectors, Ut = ε·Ûᵀ, M = ε·I, Vt = ε·V̂ᵀ, so W = ε³·Û·V̂ᵀ.
//!
//! `dlra` (SCIENCE.md §3) starts from the same dense draw's rank-r truncation in DLRA's form:
//! orthonormal Ut = U_rᵀ, Vt = V_rᵀ and S = Σ_r, diagonal (a window's start needs it so).

use super::config::{LowRankConfig, LowRankMode};
use super::init::{self, sample::truncated_normal, DenseLayer, InitOptions, LowRankInit, ThinSvd};
use super::layer::LowRankLayer;
use crate::backend::cpu::Cpu;
use crate::util::rng::Rng;
use anyhow::{bail, Context, Result};

/// A layer's starting factors, row-major: Ut (R × n_in), Vt (R × n_out) and, for a compressed
/// block, M (R × R).
pub struct StartFactors {
    pub ut: Vec<f32>,
    pub vt: Vec<f32>,
    pub mid: Option<Vec<f32>>,
}

/// The starting factors of a layer for a live width of `width` rows. Rows beyond the width have
/// U random and V zero in every mode, so a row that becomes live when the rank grows leaves W
/// unchanged (SCIENCE.md §1, project choice).
pub fn start_factors(
    cfg: &LowRankConfig,
    layer: &LowRankLayer,
    width: usize,
    rng: &mut Rng,
) -> Result<StartFactors> {
    let (ut, vt) = match cfg.mode {
        LowRankMode::Dln => return compressed_block(cfg, layer, rng),
        LowRankMode::Dlra => return dlra_factors(cfg, layer, rng),
        mode => two_factors(cfg.init, mode, layer, width, rng)?,
    };
    Ok(StartFactors { ut, vt, mid: None })
}

/// The SVD of a dense draw of the layer from its init distribution.
fn dense_draw_svd(layer: &LowRankLayer, rng: &mut Rng) -> Result<ThinSvd> {
    let (n_in, n_out) = (layer.n_in, layer.n_out);
    let w = truncated_normal(rng, n_in * n_out, layer.dense_std);
    ThinSvd::new(&DenseLayer { w: &w, n_in, n_out })
        .with_context(|| format!("the dense init of {}", layer.prefix))
}

/// Ut = U_rᵀ, Vt = V_rᵀ (orthonormal rows) and S = Σ_r stored r × r at the start of the middle
/// tensor, r = the layer's rank; the other R − r rows of the bases are filled by augmentation.
fn dlra_factors(cfg: &LowRankConfig, layer: &LowRankLayer, rng: &mut Rng) -> Result<StartFactors> {
    debug_assert!(cfg.init == LowRankInit::Random, "refused by validate");
    let (cap, r) = (layer.capacity, layer.max_rank);
    let svd = dense_draw_svd(layer, rng)?;
    let f = svd.scaled_factors(r, |_| 1.0)?;
    let (mut ut, mut vt) = (f.ut, f.vt);
    ut.resize(cap * layer.n_in, 0.0);
    vt.resize(cap * layer.n_out, 0.0);
    let mut mid = vec![0.0f32; cap * cap];
    for (k, &s) in svd.singular_values()[..r].iter().enumerate() {
        mid[k * r + k] = s as f32;
    }
    Ok(StartFactors {
        ut,
        vt,
        mid: Some(mid),
    })
}

/// Ut = ε·Ûᵀ, M = ε·I, Vt = ε·V̂ᵀ from the top R singular vectors of a dense draw of the layer.
fn compressed_block(
    cfg: &LowRankConfig,
    layer: &LowRankLayer,
    rng: &mut Rng,
) -> Result<StartFactors> {
    if cfg.init != LowRankInit::Random {
        bail!("--lowrank dln starts from its surrogate's singular vectors (SCIENCE.md §4); --lowrank-init does not apply to it");
    }
    let r = layer.capacity;
    let svd = dense_draw_svd(layer, rng)?;
    let eps = match cfg.dln_eps {
        Some(e) => e as f64,
        None => (svd.singular_values()[..r].iter().sum::<f64>() / r as f64).cbrt(),
    };
    let f = svd.scaled_factors(r, |_| eps)?;
    let mut mid = vec![0.0f32; r * r];
    mid.iter_mut().step_by(r + 1).for_each(|m| *m = eps as f32);
    Ok(StartFactors {
        ut: f.ut,
        vt: f.vt,
        mid: Some(mid),
    })
}

fn two_factors(
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

//! The `function-closed` init: the spectral Ŵ with each output column rescaled to the norm that
//! minimises its function error over Gaussian inputs, given its direction.
//!
//! Setting. For x ~ N(0, I), a = w·x and u = ŵ·x/‖ŵ‖ are jointly Gaussian, a ~ N(0, ‖w‖²),
//! u ~ N(0, 1), with correlation ρ = cos(w, ŵ). Giving the column norm c, its error is
//! e(c) = E[σ(a)²] − 2E[σ(a)σ(c·u)] + E[σ(c·u)²]; columns do not interact, so each is minimised
//! alone, and only c moves: the direction stays the spectral one.
//!
//! ReLU (closed form). ReLU is positively homogeneous, so E[ReLU(a)ReLU(c·u)] = ‖w‖·c·κ(ρ), with κ
//! the degree-1 arc-cosine kernel (Cho & Saul, 2009): κ(ρ) = (√(1−ρ²) + (π − arccos ρ)·ρ) / (2π),
//! κ(1) = ½. Then e(c) = ½‖w‖² + ½c² − 2‖w‖·c·κ(ρ), a parabola with minimum at c* = 2κ(ρ)‖w‖.
//!
//! GELU (quadrature). Not homogeneous, so no kernel formula: e(c) is evaluated with an n-point
//! Gauss–Hermite rule in both variables, a = ‖w‖(ρ·u + √(1−ρ²)·v) with u, v independent standard
//! normals, and minimised over c by golden-section search. The ReLU rescaling, used for GELU before,
//! is off at low ρ because GELU is nearly linear at the small scale of a low-rank column's output.
//!
//! The spectral column is the projection of w onto the top-r left singular subspace, so its cosine
//! with w is ρ = ‖ŵ‖/‖w‖ and its norm is ρ‖w‖; it is multiplied by c*/(ρ‖w‖). Since y = x·W,
//! output column j of Ŵ = Utᵀ·Vt is scaled by scaling column j of Vt: O(n_out·r) after the SVD.
//! This is the exact optimum *given the spectral directions*, not the joint optimum over
//! directions, which the `function` fit seeks.

use super::quadrature::{golden_section_min, GaussHermite};
use super::{Activation, DenseLayer, Factors, ThinSvd};
use anyhow::Result;
use rayon::prelude::*;
use std::f64::consts::PI;

/// Below this cosine a spectral column is (numerically) zero: its direction is undefined, so it
/// is left as it is rather than divided by ≈ 0.
const MIN_COSINE: f64 = 1e-9;

/// Points of the Gauss–Hermite rule for GELU. Against a 240-point rule, the optimal norm is off by
/// < 1e-7 relative for ‖w‖ ≤ 0.9 (the usual inits) and by up to 1.3e-3 at ‖w‖ = 2–5, where GELU's
/// bend is sharp on the rule's scale; the error at the optimum is flat in c, so that costs ~1e-6.
const QUADRATURE_POINTS: usize = 64;

/// κ(ρ) = E[ReLU(a)·ReLU(b)] for unit-variance jointly Gaussian a, b of correlation ρ ∈ [−1, 1].
pub fn relu_kernel(rho: f64) -> f64 {
    let rho = rho.clamp(-1.0, 1.0);
    ((1.0 - rho * rho).sqrt() + (PI - rho.acos()) * rho) / (2.0 * PI)
}

/// The norm c* of a column in a fixed direction of cosine `rho` with the original column of norm
/// `norm_w` that minimises E[(σ(w·x) − σ(ŵ·x))²] over Gaussian x (see the module docs).
pub fn optimal_column_norm(act: Activation, norm_w: f64, rho: f64, rule: &GaussHermite) -> f64 {
    let rho = rho.clamp(-1.0, 1.0);
    match act {
        Activation::Relu => 2.0 * relu_kernel(rho) * norm_w,
        Activation::Gelu => {
            let perp = (1.0 - rho * rho).sqrt();
            // E[σ(a) | u = t] at every node t.
            let conditional: Vec<f64> = rule
                .nodes
                .iter()
                .map(|&t| rule.expect(|v| act.eval(norm_w * (rho * t + perp * v))))
                .collect();
            // e(c) − E[σ(a)²], the part that depends on c.
            let error = |c: f64| -> f64 {
                rule.nodes
                    .iter()
                    .zip(&rule.weights)
                    .zip(&conditional)
                    .map(|((&t, &w), &g)| {
                        let s = act.eval(c * t);
                        w * (s * s - 2.0 * g * s)
                    })
                    .sum()
            };
            // c* ≤ ‖w‖ wherever it was measured (ρ in [0.01, 0.95], ‖w‖ in [0.1, 5]): the bracket
            // leaves 4× room.
            golden_section_min(error, 0.0, 4.0 * norm_w, 1e-7 * norm_w)
        }
    }
}

/// Rescales output column j of the spectral factors to its optimal norm under `act`.
pub(super) fn rescale_columns(
    mut f: Factors,
    svd: &ThinSvd,
    layer: &DenseLayer,
    act: Activation,
) -> Result<Factors> {
    let n_out = layer.n_out;
    let rule = GaussHermite::new(QUADRATURE_POINTS)?;
    let truncated = svd.truncated_column_norms_sq(f.rank);
    let mut full = vec![0.0f64; n_out];
    for row in layer.w.chunks(n_out) {
        full.iter_mut()
            .zip(row)
            .for_each(|(s, &w)| *s += (w as f64).powi(2));
    }
    let scales: Vec<f64> = truncated
        .par_iter()
        .zip(&full)
        .map(|(&t, &w)| {
            let rho = (t / w).sqrt();
            if rho > MIN_COSINE {
                optimal_column_norm(act, w.sqrt(), rho, &rule) / t.sqrt()
            } else {
                1.0
            }
        })
        .collect();
    for row in f.vt.chunks_mut(n_out) {
        row.iter_mut()
            .zip(&scales)
            .for_each(|(v, &s)| *v = (*v as f64 * s) as f32);
    }
    Ok(f)
}

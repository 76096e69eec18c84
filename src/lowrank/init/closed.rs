//! The `function-closed` init: the spectral Ŵ with each output column rescaled to the norm that
//! minimises its ReLU function error over Gaussian inputs.
//!
//! Derivation. For x ~ N(0, I), a = w·x and b = ŵ·x are jointly Gaussian with standard deviations
//! ‖w‖, ‖ŵ‖ and correlation ρ = cos(w, ŵ). ReLU is positively homogeneous, so
//! E[ReLU(a)ReLU(b)] = ‖w‖‖ŵ‖·κ(ρ), with κ the degree-1 arc-cosine kernel (Cho & Saul, 2009):
//! κ(ρ) = (√(1−ρ²) + (π − arccos ρ)·ρ) / (2π); κ(1) = ½ gives E[ReLU(a)²] = ½‖w‖². A column's error
//! is then e(c) = ½‖w‖² + ½c² − 2‖w‖·c·κ(ρ) for ŵ of norm c in a fixed direction, a parabola in c
//! with minimum at c* = 2κ(ρ)‖w‖. The spectral column is the projection of w onto the top-r left
//! singular subspace, so its cosine with w is ρ = ‖ŵ‖/‖w‖ and its norm is ρ‖w‖; multiplying it by
//! 2κ(ρ)/ρ ≥ 1 gives c*. Since y = x·W, output column j of Ŵ = Utᵀ·Vt is scaled by scaling
//! column j of Vt: O(n_out·r) after the SVD.
//!
//! Exactness: for ReLU and Gaussian inputs the rescaled norm is the exact optimum *given the
//! spectral direction* (not the joint optimum over directions, which the `function` fit seeks).
//! For GELU (not homogeneous, and negative below zero) the same rescaling is a heuristic: GELU
//! tends to ReLU for large |z|, and the study measures how much of the gap it closes.

use super::{DenseLayer, Factors, ThinSvd};
use std::f64::consts::PI;

/// Below this cosine a spectral column is (numerically) zero: its direction is undefined, so it
/// is left as it is rather than divided by ≈ 0.
const MIN_COSINE: f64 = 1e-9;

/// κ(ρ) = E[ReLU(a)·ReLU(b)] for unit-variance jointly Gaussian a, b of correlation ρ ∈ [−1, 1].
pub fn relu_kernel(rho: f64) -> f64 {
    let rho = rho.clamp(-1.0, 1.0);
    ((1.0 - rho * rho).sqrt() + (PI - rho.acos()) * rho) / (2.0 * PI)
}

/// Rescales output column j of the spectral factors by 2κ(ρ_j)/ρ_j, ρ_j = ‖ŵ_j‖/‖w_j‖.
pub(super) fn rescale_columns(mut f: Factors, svd: &ThinSvd, layer: &DenseLayer) -> Factors {
    let n_out = layer.n_out;
    let truncated = svd.truncated_column_norms_sq(f.rank);
    let mut full = vec![0.0f64; n_out];
    for row in layer.w.chunks(n_out) {
        full.iter_mut()
            .zip(row)
            .for_each(|(s, &w)| *s += (w as f64).powi(2));
    }
    let scales: Vec<f64> = truncated
        .iter()
        .zip(&full)
        .map(|(&t, &w)| {
            let rho = (t / w).sqrt();
            if rho > MIN_COSINE {
                2.0 * relu_kernel(rho) / rho
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
    f
}

//! The thin SVD of a dense weight (checked faer, in f64) and the spectral init built from it:
//! U = U_r·√Σ_r, V = V_r·√Σ_r, the best rank-r approximation of W in Frobenius norm (Eckart–Young).

use super::{DenseLayer, Factors};
use crate::linalg::svd::svd;
use anyhow::{ensure, Context, Result};
use faer::Mat;

/// W = U·diag(s)·Vᵀ with U (n_in × m), V (n_out × m), m = min(n_in, n_out), s non-increasing.
/// Computed once per weight; every rank's spectral and closed-form init is read off it.
pub struct ThinSvd {
    n_in: usize,
    n_out: usize,
    u: Mat<f64>,
    s: Vec<f64>,
    v: Mat<f64>,
}

impl ThinSvd {
    pub fn new(layer: &DenseLayer) -> Result<ThinSvd> {
        let (n_in, n_out) = (layer.n_in, layer.n_out);
        layer.check(1)?;
        let w = Mat::<f64>::from_fn(n_in, n_out, |i, j| layer.w[i * n_out + j] as f64);
        let svd = svd(w.as_ref()).with_context(|| format!("SVD of the {n_in}x{n_out} weight"))?;
        Ok(ThinSvd {
            n_in,
            n_out,
            u: svd.u,
            s: svd.s,
            v: svd.v,
        })
    }

    /// All min(n_in, n_out) singular values, largest first.
    pub fn singular_values(&self) -> &[f64] {
        &self.s
    }

    /// Spectral factors of rank `rank`: Ut[k, :] = √s_k·U[:, k]ᵀ, Vt[k, :] = √s_k·V[:, k]ᵀ.
    pub fn spectral_factors(&self, rank: usize) -> Result<Factors> {
        self.scaled_factors(rank, f64::sqrt)
    }

    /// The top `rank` singular vectors as factors, each pair scaled by `scale(s_k)`:
    /// Ut[k, :] = scale(s_k)·U[:, k]ᵀ, Vt[k, :] = scale(s_k)·V[:, k]ᵀ.
    pub fn scaled_factors(&self, rank: usize, scale: impl Fn(f64) -> f64) -> Result<Factors> {
        ensure!(
            (1..=self.s.len()).contains(&rank),
            "spectral init: rank {rank} is outside 1..={} for a {}x{} layer",
            self.s.len(),
            self.n_in,
            self.n_out
        );
        let mut ut = Vec::with_capacity(rank * self.n_in);
        let mut vt = Vec::with_capacity(rank * self.n_out);
        for k in 0..rank {
            let root = scale(self.s[k]);
            ut.extend((0..self.n_in).map(|i| (self.u[(i, k)] * root) as f32));
            vt.extend((0..self.n_out).map(|j| (self.v[(j, k)] * root) as f32));
        }
        Ok(Factors { rank, ut, vt })
    }

    /// ‖ŵ_j‖² for every output column j of the rank-`rank` truncation Ŵ: Σ_{k<rank} s_k²·V[j, k]²
    /// (U's columns are orthonormal).
    pub fn truncated_column_norms_sq(&self, rank: usize) -> Vec<f64> {
        (0..self.n_out)
            .map(|j| {
                (0..rank)
                    .map(|k| (self.s[k] * self.v[(j, k)]).powi(2))
                    .sum()
            })
            .collect()
    }
}

//! Gauss–Hermite quadrature for expectations over a standard normal, E[f(z)], z ~ N(0, 1): the
//! exact function error of a column under a smooth nonlinearity, where no closed form exists.

use anyhow::{anyhow, Result};
use faer::{Mat, Side};

/// Nodes t_i and weights w_i (Σ w_i = 1) with Σ w_i·f(t_i) = E[f(z)] exactly for polynomials f of
/// degree < 2n (the probabilists' Hermite rule).
pub struct GaussHermite {
    pub nodes: Vec<f64>,
    pub weights: Vec<f64>,
}

impl GaussHermite {
    /// The n-point rule by Golub–Welsch: the nodes are the eigenvalues of the Jacobi matrix of the
    /// monic probabilists' Hermite recurrence (zero diagonal, off-diagonal √k), the weights the
    /// squared first components of its unit eigenvectors (the moment μ0 of N(0, 1) is 1).
    pub fn new(n: usize) -> Result<GaussHermite> {
        let jacobi = Mat::<f64>::from_fn(n, n, |i, j| {
            if i.abs_diff(j) == 1 {
                (i.max(j) as f64).sqrt()
            } else {
                0.0
            }
        });
        let eigen = jacobi
            .self_adjoint_eigen(Side::Lower)
            .map_err(|e| anyhow!("Gauss–Hermite rule of {n} points: eigensolver failed: {e:?}"))?;
        let values = eigen.S().column_vector();
        let vectors = eigen.U();
        Ok(GaussHermite {
            nodes: (0..n).map(|k| values[k]).collect(),
            weights: (0..n).map(|k| vectors[(0, k)].powi(2)).collect(),
        })
    }

    /// E[f(z)], z ~ N(0, 1).
    pub fn expect(&self, f: impl Fn(f64) -> f64) -> f64 {
        self.nodes
            .iter()
            .zip(&self.weights)
            .map(|(&t, &w)| w * f(t))
            .sum()
    }
}

/// The minimiser of a unimodal f on [lo, hi] by golden-section search, to within `tol`.
pub fn golden_section_min(f: impl Fn(f64) -> f64, mut lo: f64, mut hi: f64, tol: f64) -> f64 {
    let inv_phi = (5f64.sqrt() - 1.0) / 2.0;
    let mut a = hi - inv_phi * (hi - lo);
    let mut b = lo + inv_phi * (hi - lo);
    let (mut fa, mut fb) = (f(a), f(b));
    while hi - lo > tol {
        if fa < fb {
            hi = b;
            (b, fb) = (a, fa);
            a = hi - inv_phi * (hi - lo);
            fa = f(a);
        } else {
            lo = a;
            (a, fa) = (b, fb);
            b = lo + inv_phi * (hi - lo);
            fb = f(b);
        }
    }
    0.5 * (lo + hi)
}

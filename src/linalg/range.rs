//! Randomized range finding (Halko, Martinsson & Tropp 2011) for the explained-variance rank of a
//! dense matrix without its full SVD: sketch Y = D·Ω, a few power iterations, Q = orth(Y), then the
//! SVD of the small Qᵀ·D. The sketch grows until it holds more than α of ‖D‖_F².

use super::explained_rank;
use super::factor::thin_qr;
use crate::util::rng::Rng;
use anyhow::{Context, Result};
use faer::{Mat, MatRef};

/// Power iterations per sketch: each squares the spectrum's decay seen by the sketch.
const POWER_ITERATIONS: usize = 2;

/// Smallest j with Σ_{i≤j} s_i² > α·‖D‖_F², from sketches of `first_sketch` columns, doubled until
/// they explain enough (at the full dimension the sketch spans D's range, so the answer is exact
/// up to rounding). Sketched singular values never exceed the true ones, so the estimate is never
/// below the true rank.
pub fn randomized_explained_rank(
    d: MatRef<f64>,
    alpha: f64,
    first_sketch: usize,
    rng: &mut Rng,
) -> Result<usize> {
    let full = d.nrows().min(d.ncols());
    let total: f64 = d.squared_norm_l2();
    let mut l = first_sketch.clamp(1, full.max(1));
    loop {
        let s = sketch_singular_values(d, l, rng)?;
        if let Some(r) = explained_rank(&s, total, alpha, 1) {
            return Ok(r);
        }
        if l >= full {
            // Rounding kept the full sketch a hair below α: every direction is needed.
            return Ok(full);
        }
        l = (2 * l).min(full);
    }
}

/// Singular values of Qᵀ·D where Q (rows × l) spans the power-iterated sketch of D's range.
fn sketch_singular_values(d: MatRef<f64>, l: usize, rng: &mut Rng) -> Result<Vec<f64>> {
    let omega = Mat::from_fn(d.ncols(), l, |_, _| rng.normal());
    let (mut q, _) = thin_qr((d * &omega).as_ref());
    for _ in 0..POWER_ITERATIONS {
        let (z, _) = thin_qr((d.transpose() * &q).as_ref());
        (q, _) = thin_qr((d * &z).as_ref());
    }
    (q.transpose() * d)
        .singular_values()
        .map_err(|e| anyhow::anyhow!("{e:?}"))
        .context("SVD of the range sketch did not converge")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linalg::factor::thin_qr;

    /// D = Q1·diag(s)·Q2ᵀ with random orthonormal Q1, Q2: its spectrum is `s` by construction.
    fn with_spectrum(rows: usize, cols: usize, s: &[f64], rng: &mut Rng) -> Mat<f64> {
        let k = s.len();
        let (q1, _) = thin_qr(Mat::from_fn(rows, k, |_, _| rng.normal()).as_ref());
        let (q2, _) = thin_qr(Mat::from_fn(cols, k, |_, _| rng.normal()).as_ref());
        let sd = Mat::from_fn(k, k, |i, j| if i == j { s[i] } else { 0.0 });
        q1 * sd * q2.transpose()
    }

    #[test]
    fn finds_the_closed_form_r90_of_a_known_spectrum() {
        let mut rng = Rng::new(5);
        // s_i = 0.8^i over 60 values: r90 is the smallest j with 1 − 0.64^j > 0.9·(1 − 0.64^60),
        // i.e. j = 6 (0.64^5 = 0.107, 0.64^6 = 0.069).
        let s: Vec<f64> = (0..60).map(|i| 0.8f64.powi(i)).collect();
        let d = with_spectrum(96, 80, &s, &mut rng);
        assert_eq!(
            randomized_explained_rank(d.as_ref(), 0.9, 4, &mut rng).unwrap(),
            6
        );
        // A flat spectrum of 30 needs 26 directions at α = 0.85 (25/30 = 0.833, 26/30 = 0.867):
        // the sketch must grow from 4 past 26.
        let flat = with_spectrum(64, 70, &[1.0; 30], &mut rng);
        assert_eq!(
            randomized_explained_rank(flat.as_ref(), 0.85, 4, &mut rng).unwrap(),
            26
        );
        assert_eq!(
            randomized_explained_rank(Mat::<f64>::zeros(5, 7).as_ref(), 0.9, 2, &mut rng).unwrap(),
            1
        );
    }
}

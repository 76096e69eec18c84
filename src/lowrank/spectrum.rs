//! The singular values of each low-rank layer's live product W = Uᵀ_t·M·V_t (M = I for plain
//! factors) from two k × k Gram matrices formed on the backend, where the factors live: with
//! A = Ut·Utᵀ = UᵀU and B = Vt·Vtᵀ = VᵀV, the squared singular values of U·M·Vᵀ are the
//! eigenvalues of A^½·M·B·Mᵀ·A^½ (k × k, symmetric). Only the Gram matrices and M travel to the
//! host, where the small eigensolves run in parallel over layers: the growth checks and the rank
//! log no longer download every factor (k × 4096 each) nor QR it on the host.
//!
//! Squaring costs precision: singular values below about √ε_f32 ≈ 3e-4 of the largest are not
//! resolved (they come out as rounding). The explained-energy ranks read Σ s², to which those
//! contribute less than k·1e-7 of the total.

use crate::backend::{Backend, Buffer, DType, Gemm};
use crate::model::Gpt;
use anyhow::{anyhow, Result};
use faer::{Mat, MatRef, Side};
use rayon::prelude::*;

/// One layer's Gram matrices (and middle factor) on the host.
struct Grams {
    a: Mat<f64>,
    b: Mat<f64>,
    m: Option<Mat<f64>>,
}

/// Each low-rank layer's live singular values, descending (k of them at live width k).
pub fn live_spectra<B: Backend>(b: &B, model: &Gpt<B>) -> Result<Vec<Vec<f64>>> {
    let lowrank = model.layout().lowrank();
    let cap = lowrank
        .iter()
        .map(|lt| lt.layer.capacity)
        .max()
        .unwrap_or(0);
    let mut work = b.alloc(DType::F32, cap * cap)?;
    let mut grams = Vec::with_capacity(lowrank.len());
    for (lt, live) in lowrank.iter().zip(&model.lowrank().live) {
        let k = live.width;
        let offset = |t: usize| model.layout().tensors()[t].offset;
        let mut gram = |t: usize, n: usize| -> Result<Mat<f64>> {
            let rows = model.params().at(offset(t), k * n);
            b.gemm(
                &Gemm::new(k, k, n).trans_b(),
                rows,
                rows,
                work.at_mut(0, k * k),
            )?;
            Ok(host(&b.download(work.at(0, k * k))?, k))
        };
        let (a, g_b) = (gram(lt.ut, lt.layer.n_in)?, gram(lt.vt, lt.layer.n_out)?);
        let m = match lt.mid {
            Some(t) => Some(host(&b.download(model.params().at(offset(t), k * k))?, k)),
            None => None,
        };
        grams.push(Grams { a, b: g_b, m });
    }
    grams
        .into_par_iter()
        .map(|g| product_spectrum(g.a.as_ref(), g.b.as_ref(), g.m.as_ref().map(|m| m.as_ref())))
        .collect()
}

fn host(x: &[f32], k: usize) -> Mat<f64> {
    Mat::from_fn(k, k, |i, j| x[i * k + j] as f64)
}

/// Singular values (descending) of U·M·Vᵀ from A = UᵀU, B = VᵀV and M (None: the identity).
pub fn product_spectrum(
    a: MatRef<f64>,
    b: MatRef<f64>,
    m: Option<MatRef<f64>>,
) -> Result<Vec<f64>> {
    let half = psd_sqrt(a)?;
    let mbm = match m {
        Some(m) => m * b * m.transpose(),
        None => b.to_owned(),
    };
    let c = &half * mbm * &half;
    let mut s: Vec<f64> = symmetric(c.as_ref())
        .self_adjoint_eigenvalues(Side::Lower)
        .map_err(|e| anyhow!("eigensolve of a low-rank core failed: {e:?}"))?
        .into_iter()
        .map(|e| e.max(0.0).sqrt())
        .collect();
    s.sort_by(|x, y| y.total_cmp(x));
    Ok(s)
}

/// The PSD square root of a symmetric positive semi-definite matrix (rounding's negative
/// eigenvalues clamped to zero).
fn psd_sqrt(a: MatRef<f64>) -> Result<Mat<f64>> {
    let evd = symmetric(a)
        .self_adjoint_eigen(Side::Lower)
        .map_err(|e| anyhow!("eigensolve of a Gram matrix failed: {e:?}"))?;
    let (q, lambda) = (evd.U(), evd.S().column_vector());
    let n = a.nrows();
    let root = Mat::from_fn(n, n, |i, j| match i == j {
        true => lambda[i].max(0.0).sqrt(),
        false => 0.0,
    });
    Ok(q * root * q.transpose())
}

/// (x + xᵀ) / 2: GEMM rounding leaves the two triangles of a Gram matrix slightly apart.
fn symmetric(x: MatRef<f64>) -> Mat<f64> {
    Mat::from_fn(x.nrows(), x.ncols(), |i, j| 0.5 * (x[(i, j)] + x[(j, i)]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linalg::factor::tests::jacobi_singular_values;
    use crate::util::rng::Rng;

    /// With a dead factor column (a buffer row whose V is still zero) and a full middle factor,
    /// the spectrum from the Gram matrices equals the dense product's, computed by Jacobi.
    #[test]
    fn gram_spectrum_matches_the_dense_products() {
        let mut rng = Rng::new(21);
        let (n_in, n_out, k) = (40, 30, 6);
        let mut gauss = |r, c| Mat::from_fn(r, c, |_, _| rng.normal());
        let u = gauss(n_in, k);
        let mut v = gauss(n_out, k);
        let m = gauss(k, k);
        for i in 0..n_out {
            v[(i, k - 1)] = 0.0;
        }
        for mid in [None, Some(m.as_ref())] {
            let w = match mid {
                Some(m) => &u * m * v.transpose(),
                None => &u * v.transpose(),
            };
            let rows = (0..w.nrows()).map(|i| (0..w.ncols()).map(|j| w[(i, j)]).collect());
            let want = jacobi_singular_values(rows.collect());
            let got = product_spectrum(
                (u.transpose() * &u).as_ref(),
                (v.transpose() * &v).as_ref(),
                mid,
            )
            .unwrap();
            let top = want[0];
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() < 1e-6 * top, "{got:?} vs {want:?}");
            }
        }
    }
}

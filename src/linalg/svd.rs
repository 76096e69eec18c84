//! A checked thin SVD. faer 0.24.4's `svd` and `thin_svd` can return NaN singular vectors with
//! no error: on the 128 × 128 coefficients S of a DLRA layer at r = 64 (64 singular values near
//! 0.5, 64 within 1e-4 of zero after one Adam step) 15232 of U's 16384 entries came back NaN,
//! and a run's truncation turned them into NaN bases. The transpose of the same matrix
//! decomposes cleanly. So every decomposition is checked: faer on A, else faer on Aᵀ, else an
//! eigendecomposition of the smaller Gram matrix with U from a QR of A·V, which is slower and
//! resolves small singular values only to about √ε·σ₁ but cannot return NaN for a finite A.

use anyhow::{anyhow, ensure, Result};
use faer::{Mat, MatRef, Side};

/// A = U·diag(s)·Vᵀ with s descending, U (m × p) and V (n × p), p = min(m, n).
pub struct Svd {
    pub u: Mat<f64>,
    pub s: Vec<f64>,
    pub v: Mat<f64>,
}

impl Svd {
    fn transposed(self) -> Svd {
        Svd {
            u: self.v,
            s: self.s,
            v: self.u,
        }
    }

    fn is_finite(&self) -> bool {
        finite(self.u.as_ref()) && finite(self.v.as_ref()) && self.s.iter().all(|x| x.is_finite())
    }
}

fn finite(a: MatRef<f64>) -> bool {
    (0..a.ncols()).all(|j| (0..a.nrows()).all(|i| a[(i, j)].is_finite()))
}

/// The thin SVD of a finite matrix, checked (see the module's note).
pub fn svd(a: MatRef<f64>) -> Result<Svd> {
    ensure!(finite(a), "SVD of a matrix with non-finite entries");
    if let Some(d) = faer_svd(a).filter(Svd::is_finite) {
        return Ok(d);
    }
    if let Some(d) = faer_svd(a.transpose()).filter(Svd::is_finite) {
        return Ok(d.transposed());
    }
    let d = gram_svd(a)?;
    ensure!(d.is_finite(), "SVD failed on every path");
    Ok(d)
}

fn faer_svd(a: MatRef<f64>) -> Option<Svd> {
    let d = a.thin_svd().ok()?;
    Some(Svd {
        u: d.U().to_owned(),
        s: d.S().column_vector().iter().copied().collect(),
        v: d.V().to_owned(),
    })
}

/// V from the eigenvectors of AᵀA (descending), U and s from the QR of A·V with R's diagonal
/// made non-negative; wide matrices through their transpose.
fn gram_svd(a: MatRef<f64>) -> Result<Svd> {
    if a.nrows() < a.ncols() {
        return gram_svd(a.transpose()).map(Svd::transposed);
    }
    let n = a.ncols();
    let evd = (a.transpose() * a)
        .self_adjoint_eigen(Side::Lower)
        .map_err(|e| anyhow!("eigensolve of AᵀA failed: {e:?}"))?;
    // faer sorts eigenvalues ascending: reverse the columns.
    let v = Mat::from_fn(n, n, |i, j| evd.U()[(i, n - 1 - j)]);
    let qr = (a * &v).qr();
    let (q, r) = (qr.compute_thin_Q(), qr.thin_R().to_owned());
    let sign: Vec<f64> = (0..n)
        .map(|j| if r[(j, j)] < 0.0 { -1.0 } else { 1.0 })
        .collect();
    Ok(Svd {
        u: Mat::from_fn(a.nrows(), n, |i, j| q[(i, j)] * sign[j]),
        s: (0..n).map(|j| r[(j, j)].abs()).collect(),
        v,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::rng::Rng;

    /// ‖A − U·diag(s)·Vᵀ‖_max and the worst deviation of UᵀU and VᵀV from I, by plain loops.
    fn errors(a: MatRef<f64>, d: &Svd) -> (f64, f64) {
        let (m, n, p) = (a.nrows(), a.ncols(), d.s.len());
        let mut rec = 0.0f64;
        for i in 0..m {
            for j in 0..n {
                let x: f64 = (0..p).map(|k| d.u[(i, k)] * d.s[k] * d.v[(j, k)]).sum();
                rec = rec.max((x - a[(i, j)]).abs());
            }
        }
        let mut orth = 0.0f64;
        for f in [&d.u, &d.v] {
            for k in 0..p {
                for l in 0..p {
                    let dot: f64 = (0..f.nrows()).map(|i| f[(i, k)] * f[(i, l)]).sum();
                    orth = orth.max((dot - f64::from(k == l)).abs());
                }
            }
        }
        (rec, orth)
    }

    /// S as one DLRA step leaves it: Σ (64 values in [0.38, 0.6]) plus Adam-step-sized entries in
    /// the top-left block, smaller ones in the off-diagonal blocks, and an exactly zero lower-right
    /// block (its tangent gradient is zero).
    fn dlra_like(seed: u64) -> Mat<f64> {
        let mut rng = Rng::new(seed);
        let mut noise = |scale: f64| scale * (2.0 * rng.uniform() - 1.0);
        let mut s = Mat::from_fn(128, 128, |i, j| match (i < 64, j < 64) {
            (true, true) => noise(5e-5),
            (false, false) => 0.0,
            _ => noise(2e-5),
        });
        for j in 0..64 {
            s[(j, j)] += 0.6 - 0.22 * j as f64 / 63.0;
        }
        s
    }

    /// The S on which faer's SVD returned NaN vectors (a DLRA run at r = 64, tiny model, step 4;
    /// 128 × 128 little-endian f32): faer still fails on it, the checked SVD does not.
    #[test]
    fn checked_svd_survives_the_matrix_faer_returns_nan_for() {
        let bytes = include_bytes!("testdata/dlra_s_128.f32");
        let x: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let a = Mat::from_fn(128, 128, |i, j| x[i * 128 + j] as f64);
        assert!(
            !faer_svd(a.as_ref()).unwrap().is_finite(),
            "faer was fixed: revisit svd.rs"
        );
        let d = svd(a.as_ref()).unwrap();
        let (rec, orth) = errors(a.as_ref(), &d);
        assert!(rec < 1e-12 && orth < 1e-12, "{rec:e}, {orth:e}");
    }

    /// Both paths on Gaussian matrices of three shapes and on S-like matrices (the Gram path
    /// reconstructs inside the tiny cluster only to about ε·σ₁²/σ_small).
    #[test]
    fn checked_and_gram_svds_decompose() {
        let mut rng = Rng::new(3);
        let mut cases: Vec<Mat<f64>> = (1..=2).map(dlra_like).collect();
        for (m, n) in [(7, 3), (3, 7), (20, 20)] {
            cases.push(Mat::from_fn(m, n, |_, _| rng.normal()));
        }
        for a in &cases {
            for (d, tol) in [
                (svd(a.as_ref()).unwrap(), 1e-12),
                (gram_svd(a.as_ref()).unwrap(), 1e-8),
            ] {
                let (rec, orth) = errors(a.as_ref(), &d);
                let shape = (a.nrows(), a.ncols());
                assert!(rec < tol && orth < 1e-12, "{shape:?}: {rec:e}, {orth:e}");
                assert!(d.s.windows(2).all(|w| w[0] >= w[1] - tol), "{:?}", d.s);
            }
        }
    }
}

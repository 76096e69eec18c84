//! The spectrum of a low-rank product U·Vᵀ without forming it: U = Qu·Ru and V = Qv·Rv (thin QR),
//! so U·Vᵀ = Qu·(Ru·Rvᵀ)·Qvᵀ and the singular values of the k×k core are those of the product.
//! Truncating the core's SVD P·Σ·Qᵀ to r gives the balanced factors U' = Qu·P_r·√Σ_r and
//! V' = Qv·Q_r·√Σ_r (SCIENCE.md §1, stage 2).

use anyhow::{ensure, Context, Result};
use faer::{Mat, MatRef};

/// U (n × k) from its transposed storage Ut (k × n, row-major).
pub fn from_transposed(t: &[f32], k: usize, n: usize) -> Mat<f64> {
    Mat::from_fn(n, k, |i, j| t[j * n + i] as f64)
}

/// The transposed storage (k × n row-major, f32) of a factor U (n × k).
pub fn to_transposed(u: MatRef<f64>) -> Vec<f32> {
    let (n, k) = (u.nrows(), u.ncols());
    (0..k)
        .flat_map(|j| (0..n).map(move |i| u[(i, j)] as f32))
        .collect()
}

/// Thin QR of both factors and the SVD of their core.
pub struct CoreSvd {
    pub qu: Mat<f64>,
    pub ru: Mat<f64>,
    pub qv: Mat<f64>,
    pub rv: Mat<f64>,
    /// Core = P·diag(s)·Qᵀ, s descending.
    pub p: Mat<f64>,
    pub q: Mat<f64>,
    pub s: Vec<f64>,
}

impl CoreSvd {
    /// From the transposed factors' first `k` rows: Ut (k × n_in), Vt (k × n_out).
    pub fn of_transposed(ut: &[f32], vt: &[f32], k: usize) -> Result<Self> {
        ensure!(k >= 1, "a low-rank product needs rank at least 1");
        let (n_in, n_out) = (ut.len() / k, vt.len() / k);
        ensure!(
            ut.len() == k * n_in && vt.len() == k * n_out && k <= n_in && k <= n_out,
            "factors of {} and {} elements are not rank {k} with k ≤ both dimensions",
            ut.len(),
            vt.len()
        );
        Self::of_factors(
            from_transposed(ut, k, n_in).as_ref(),
            from_transposed(vt, k, n_out).as_ref(),
        )
    }

    /// From U (n_in × k) and V (n_out × k).
    pub fn of_factors(u: MatRef<f64>, v: MatRef<f64>) -> Result<Self> {
        let (qu, ru) = thin_qr(u);
        let (qv, rv) = thin_qr(v);
        let core = &ru * rv.transpose();
        let svd = super::svd::svd(core.as_ref()).context("SVD of the low-rank core")?;
        Ok(CoreSvd {
            qu,
            ru,
            qv,
            rv,
            p: svd.u,
            q: svd.v,
            s: svd.s,
        })
    }

    /// Σ s²: the squared Frobenius norm of the product.
    pub fn energy(&self) -> f64 {
        self.s.iter().map(|x| x * x).sum()
    }

    /// The rank-r truncation and the maps that carry factor gradients into its basis.
    pub fn truncate(&self, r: usize) -> Truncation {
        let r = r.min(self.s.len());
        let sqrt_s = Mat::from_fn(r, r, |i, j| if i == j { self.s[i].sqrt() } else { 0.0 });
        let pr = self.p.get(.., ..r) * &sqrt_s;
        let qr = self.q.get(.., ..r) * &sqrt_s;
        Truncation {
            u: &self.qu * &pr,
            v: &self.qv * &qr,
            grad_map_u: pinv(self.rv.as_ref()) * &qr,
            grad_map_v: pinv(self.ru.as_ref()) * &pr,
        }
    }
}

/// A truncated low-rank layer: the new factors and the gradient maps. With U = Qu·Ru, V = Qv·Rv,
/// the gradient of the loss with respect to U' is ∂L/∂W·V' = ∂L/∂W·V·(Rv⁺·Q_r·√Σ_r), so a gradient
/// (and any average of gradients: Adam's first moment) of U maps to U' by right-multiplication with
/// `grad_map_u` (k × r); symmetrically for V with `grad_map_v` = Ru⁺·P_r·√Σ_r.
pub struct Truncation {
    pub u: Mat<f64>,
    pub v: Mat<f64>,
    pub grad_map_u: Mat<f64>,
    pub grad_map_v: Mat<f64>,
}

/// A random n × k matrix with orthonormal columns (Q of a Gaussian matrix's thin QR), n ≥ k.
pub fn random_orthonormal(n: usize, k: usize, rng: &mut crate::util::rng::Rng) -> Mat<f64> {
    thin_qr(Mat::from_fn(n, k, |_, _| rng.normal()).as_ref()).0
}

/// Thin QR: Q (n × k) with orthonormal columns and upper-triangular R (k × k), n ≥ k.
pub fn thin_qr(a: MatRef<f64>) -> (Mat<f64>, Mat<f64>) {
    let qr = a.qr();
    (qr.compute_thin_Q(), qr.thin_R().to_owned())
}

/// Moore–Penrose pseudo-inverse of a small square matrix, dropping singular values below 1e-10
/// of the largest: a buffer column whose other factor is still zero has no gradient to carry.
fn pinv(a: MatRef<f64>) -> Mat<f64> {
    let n = a.nrows();
    let Ok(svd) = super::svd::svd(a) else {
        return Mat::zeros(n, n);
    };
    let s = svd.s;
    let cutoff = s.first().copied().unwrap_or(0.0) * 1e-10;
    let inv = Mat::from_fn(n, n, |i, j| {
        if i == j && s[i] > cutoff {
            1.0 / s[i]
        } else {
            0.0
        }
    });
    svd.v * inv * svd.u.transpose()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::util::rng::Rng;

    /// One-sided Jacobi SVD of a dense matrix (rows × cols), written independently of faer: the
    /// singular values are the column norms once all column pairs are orthogonal.
    pub(crate) fn jacobi_singular_values(mut a: Vec<Vec<f64>>) -> Vec<f64> {
        let cols = a[0].len();
        for _sweep in 0..60 {
            let mut off = 0.0f64;
            for p in 0..cols {
                for q in p + 1..cols {
                    let (mut alpha, mut beta, mut gamma) = (0.0, 0.0, 0.0);
                    for row in &a {
                        alpha += row[p] * row[p];
                        beta += row[q] * row[q];
                        gamma += row[p] * row[q];
                    }
                    if gamma.abs() < 1e-300 {
                        continue;
                    }
                    off = off.max(gamma.abs() / (alpha * beta).sqrt());
                    let zeta = (beta - alpha) / (2.0 * gamma);
                    let t = zeta.signum() / (zeta.abs() + (1.0 + zeta * zeta).sqrt());
                    let c = 1.0 / (1.0 + t * t).sqrt();
                    for row in a.iter_mut() {
                        let (x, y) = (row[p], row[q]);
                        row[p] = c * x - c * t * y;
                        row[q] = c * t * x + c * y;
                    }
                }
            }
            if off < 1e-15 {
                break;
            }
        }
        let mut s: Vec<f64> = (0..cols)
            .map(|j| a.iter().map(|r| r[j] * r[j]).sum::<f64>().sqrt())
            .collect();
        s.sort_by(|x, y| y.total_cmp(x));
        s
    }

    fn random_factors(k: usize, n_in: usize, n_out: usize, seed: u64) -> (Vec<f32>, Vec<f32>) {
        let mut rng = Rng::new(seed);
        (
            rng.normal_vec(k * n_in, 1.0),
            rng.normal_vec(k * n_out, 1.0),
        )
    }

    /// The dense product U·Vᵀ (n_in × n_out) in plain f64 loops, from the transposed storage.
    fn dense_product(ut: &[f32], vt: &[f32], k: usize) -> Vec<Vec<f64>> {
        let (n_in, n_out) = (ut.len() / k, vt.len() / k);
        (0..n_in)
            .map(|i| {
                (0..n_out)
                    .map(|o| {
                        (0..k)
                            .map(|j| ut[j * n_in + i] as f64 * vt[j * n_out + o] as f64)
                            .sum()
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn core_singular_values_equal_those_of_the_dense_product() {
        // Square, tall, wide, ragged (odd, prime) shapes and a rank-deficient product.
        for (seed, &(k, n_in, n_out)) in [
            (4, 16, 16),
            (7, 31, 13),
            (5, 9, 40),
            (13, 53, 29),
            (1, 17, 3),
            (12, 12, 12),
        ]
        .iter()
        .enumerate()
        {
            let (ut, vt) = random_factors(k, n_in, n_out, seed as u64 + 1);
            let got = CoreSvd::of_transposed(&ut, &vt, k).unwrap().s;
            let dense = dense_product(&ut, &vt, k);
            // Jacobi on the side with fewer columns (the product's rank is at most k ≤ both).
            let want = if n_out <= n_in {
                jacobi_singular_values(dense)
            } else {
                let t = (0..n_out)
                    .map(|o| dense.iter().map(|r| r[o]).collect())
                    .collect();
                jacobi_singular_values(t)
            };
            assert_eq!(got.len(), k);
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (g - w).abs() <= 1e-5 * want[0],
                    "shape {k}:{n_in}x{n_out} σ{i}: core {g} vs dense {w}"
                );
            }
            // Everything past k is zero in the dense product: the core missed nothing.
            assert!(want[k..].iter().all(|&w| w <= 1e-9 * want[0]), "{want:?}");
        }
    }

    #[test]
    fn truncation_keeps_the_best_rank_r_product_and_balances_the_factors() {
        let (k, n_in, n_out, r) = (6, 20, 15, 3);
        let (ut, vt) = random_factors(k, n_in, n_out, 9);
        let core = CoreSvd::of_transposed(&ut, &vt, k).unwrap();
        let t = core.truncate(r);
        let dense = dense_product(&ut, &vt, k);
        let approx = &t.u * t.v.transpose();
        // Eckart–Young: ‖W − W_r‖_F² = Σ_{i>r} s_i².
        let err2: f64 = (0..n_in)
            .flat_map(|i| (0..n_out).map(move |o| (i, o)))
            .map(|(i, o)| (dense[i][o] - approx[(i, o)]).powi(2))
            .sum();
        let tail: f64 = core.s[r..].iter().map(|s| s * s).sum();
        assert!(
            (err2 - tail).abs() < 1e-8 * core.energy(),
            "{err2} vs {tail}"
        );
        // Balanced: UᵀU = VᵀV = Σ_r.
        let (gu, gv) = (t.u.transpose() * &t.u, t.v.transpose() * &t.v);
        for i in 0..r {
            for j in 0..r {
                let want = if i == j { core.s[i] } else { 0.0 };
                assert!((gu[(i, j)] - want).abs() < 1e-9 * core.s[0]);
                assert!((gv[(i, j)] - want).abs() < 1e-9 * core.s[0]);
            }
        }
    }

    #[test]
    fn gradient_maps_carry_factor_gradients_into_the_new_basis() {
        // For any G = ∂L/∂W: the gradient of U is G·V and of U' it is G·V'; likewise Gᵀ·U, Gᵀ·U'.
        let (k, n_in, n_out, r) = (5, 14, 11, 3);
        let (ut, vt) = random_factors(k, n_in, n_out, 21);
        let (u, v) = (
            from_transposed(&ut, k, n_in),
            from_transposed(&vt, k, n_out),
        );
        let core = CoreSvd::of_factors(u.as_ref(), v.as_ref()).unwrap();
        let t = core.truncate(r);
        let mut rng = Rng::new(22);
        let g = Mat::from_fn(n_in, n_out, |_, _| rng.normal());
        let max_err = |a: Mat<f64>, b: Mat<f64>| {
            (0..a.nrows())
                .flat_map(|i| (0..a.ncols()).map(move |j| (i, j)))
                .map(|(i, j)| (a[(i, j)] - b[(i, j)]).abs())
                .fold(0.0, f64::max)
        };
        assert!(max_err(&g * &v * &t.grad_map_u, &g * &t.v) < 1e-9);
        assert!(max_err(g.transpose() * &u * &t.grad_map_v, g.transpose() * &t.u) < 1e-9);
    }
}

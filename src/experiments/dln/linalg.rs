//! Dense float64 linear algebra for the deep-linear-network experiment: a row-major matrix, GEMM
//! through the `gemm` crate (optionally split over two threads by output rows), a random orthogonal
//! matrix and a one-sided Jacobi SVD. Sizes here are at most a few hundred, so the SVD favours
//! accuracy and simplicity over speed; the GEMM is the hot loop of training.

use crate::util::rng::Rng;
use gemm::Parallelism;

/// A row-major float64 matrix.
#[derive(Clone, Debug, PartialEq)]
pub struct Mat {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f64>,
}

impl Mat {
    pub fn zeros(rows: usize, cols: usize) -> Self {
        Mat {
            rows,
            cols,
            data: vec![0.0; rows * cols],
        }
    }

    pub fn from_fn(rows: usize, cols: usize, mut f: impl FnMut(usize, usize) -> f64) -> Self {
        let data = (0..rows * cols).map(|i| f(i / cols, i % cols)).collect();
        Mat { rows, cols, data }
    }

    pub fn identity(n: usize) -> Self {
        Mat::from_fn(n, n, |i, j| if i == j { 1.0 } else { 0.0 })
    }

    pub fn gaussian(rows: usize, cols: usize, rng: &mut Rng) -> Self {
        Mat::from_fn(rows, cols, |_, _| rng.normal())
    }

    pub fn at(&self, i: usize, j: usize) -> f64 {
        self.data[i * self.cols + j]
    }

    pub fn transpose(&self) -> Mat {
        Mat::from_fn(self.cols, self.rows, |i, j| self.at(j, i))
    }

    pub fn scaled(mut self, s: f64) -> Mat {
        self.data.iter_mut().for_each(|x| *x *= s);
        self
    }

    pub fn frobenius(&self) -> f64 {
        self.data.iter().map(|x| x * x).sum::<f64>().sqrt()
    }

    /// The first `n` columns.
    pub fn left_columns(&self, n: usize) -> Mat {
        Mat::from_fn(self.rows, n, |i, j| self.at(i, j))
    }

    /// The first `n` rows.
    pub fn top_rows(&self, n: usize) -> Mat {
        Mat {
            rows: n,
            cols: self.cols,
            data: self.data[..n * self.cols].to_vec(),
        }
    }

    /// ‖self − other‖_F.
    pub fn distance(&self, other: &Mat) -> f64 {
        self.data
            .iter()
            .zip(&other.data)
            .map(|(a, b)| (a - b) * (a - b))
            .sum::<f64>()
            .sqrt()
    }
}

/// `a` or its transpose, as the left or right operand of a product.
#[derive(Clone, Copy)]
pub struct Op<'a> {
    pub m: &'a Mat,
    pub t: bool,
}

pub fn n(m: &Mat) -> Op<'_> {
    Op { m, t: false }
}

pub fn t(m: &Mat) -> Op<'_> {
    Op { m, t: true }
}

impl Op<'_> {
    fn rows(&self) -> usize {
        if self.t {
            self.m.cols
        } else {
            self.m.rows
        }
    }
    fn cols(&self) -> usize {
        if self.t {
            self.m.rows
        } else {
            self.m.cols
        }
    }
    /// (column stride, row stride) of the operand as stored.
    fn strides(&self) -> (isize, isize) {
        if self.t {
            (self.m.cols as isize, 1)
        } else {
            (1, self.m.cols as isize)
        }
    }
}

/// out = a·b, single-threaded when `threads` is 1, else split by output rows over two rayon tasks.
pub fn matmul(out: &mut Mat, a: Op, b: Op, threads: usize) {
    assert_eq!(a.cols(), b.rows(), "inner dimensions of a product");
    assert_eq!(
        (out.rows, out.cols),
        (a.rows(), b.cols()),
        "output shape of a product"
    );
    if threads < 2 || out.rows < 2 {
        gemm_rows(&mut out.data, 0, out.rows, a, b);
        return;
    }
    let half = out.rows / 2;
    let (top, bottom) = out.data.split_at_mut(half * out.cols);
    rayon::join(
        || gemm_rows(top, 0, half, a, b),
        || gemm_rows(bottom, half, out.rows, a, b),
    );
}

/// Rows `[r0, r1)` of a·b into `out` (which holds exactly those rows).
fn gemm_rows(out: &mut [f64], r0: usize, r1: usize, a: Op, b: Op) {
    let (m, n, k) = (r1 - r0, b.cols(), a.cols());
    assert_eq!(out.len(), m * n);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        out.fill(0.0);
        return;
    }
    let (a_cs, a_rs) = a.strides();
    let (b_cs, b_rs) = b.strides();
    // SAFETY: op(a) is (a.rows() × k) with the strides above, so rows r0..r1 start r0·a_rs elements
    // in and stay inside a.m.data; op(b) is (k × n) inside b.m.data; out holds m·n elements.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.m.data.as_ptr().offset(r0 as isize * a_rs),
            a_cs,
            a_rs,
            b.m.data.as_ptr(),
            b_cs,
            b_rs,
            0.0,
            1.0,
            false,
            false,
            false,
            Parallelism::None,
        );
    }
}

/// The product of two matrices, allocated (for set-up code, not the training loop).
pub fn product(a: Op, b: Op) -> Mat {
    let mut out = Mat::zeros(a.rows(), b.cols());
    matmul(&mut out, a, b, 1);
    out
}

/// A Haar-random orthogonal n×n matrix: Gram–Schmidt (twice, for accuracy) on Gaussian columns,
/// which is the Q of a QR with positive diagonal R.
pub fn random_orthogonal(n: usize, rng: &mut Rng) -> Mat {
    // Work on rows of the transpose so each vector is contiguous; transpose back at the end.
    let mut q = Mat::gaussian(n, n, rng);
    for i in 0..n {
        for _pass in 0..2 {
            for j in 0..i {
                let dot: f64 = (0..n).map(|c| q.at(i, c) * q.at(j, c)).sum();
                for c in 0..n {
                    q.data[i * n + c] -= dot * q.data[j * n + c];
                }
            }
        }
        let norm = q.data[i * n..(i + 1) * n]
            .iter()
            .map(|x| x * x)
            .sum::<f64>()
            .sqrt();
        q.data[i * n..(i + 1) * n]
            .iter_mut()
            .for_each(|x| *x /= norm);
    }
    q.transpose()
}

/// A = U·diag(s)·Vᵀ with singular values in decreasing order; U (rows × k), V (cols × k),
/// k = min(rows, cols).
pub struct Svd {
    pub u: Mat,
    pub s: Vec<f64>,
    pub v: Mat,
}

/// One-sided Jacobi SVD (Hestenes): rotate pairs of columns of A·V until all are orthogonal; then
/// the column norms are the singular values. Accurate to working precision for any matrix.
pub fn svd(a: &Mat) -> Svd {
    if a.rows < a.cols {
        let Svd { u, s, v } = svd(&a.transpose());
        return Svd { u: v, s, v: u };
    }
    let (m, n) = (a.rows, a.cols);
    // Columns of A·V and of V stored as rows, so each rotation touches contiguous memory.
    let mut w = a.transpose();
    let mut v = Mat::identity(n);
    for _sweep in 0..60 {
        let mut rotated = false;
        for p in 0..n {
            for q in p + 1..n {
                let (wp, wq) = (&w.data[p * m..(p + 1) * m], &w.data[q * m..(q + 1) * m]);
                let alpha: f64 = wp.iter().map(|x| x * x).sum();
                let beta: f64 = wq.iter().map(|x| x * x).sum();
                let gamma: f64 = wp.iter().zip(wq).map(|(x, y)| x * y).sum();
                if gamma.abs() <= 1e-15 * (alpha * beta).sqrt() || gamma == 0.0 {
                    continue;
                }
                rotated = true;
                let zeta = (beta - alpha) / (2.0 * gamma);
                let tan = zeta.signum() / (zeta.abs() + (1.0 + zeta * zeta).sqrt());
                let cos = 1.0 / (1.0 + tan * tan).sqrt();
                rotate_rows(&mut w.data, m, p, q, cos, cos * tan);
                rotate_rows(&mut v.data, n, p, q, cos, cos * tan);
            }
        }
        if !rotated {
            break;
        }
    }
    let norms: Vec<f64> = (0..n)
        .map(|j| {
            w.data[j * m..(j + 1) * m]
                .iter()
                .map(|x| x * x)
                .sum::<f64>()
                .sqrt()
        })
        .collect();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&i, &j| norms[j].total_cmp(&norms[i]));
    let s: Vec<f64> = order.iter().map(|&j| norms[j]).collect();
    let u = Mat::from_fn(m, n, |i, k| {
        let j = order[k];
        if norms[j] > 0.0 {
            w.at(j, i) / norms[j]
        } else {
            0.0
        }
    });
    let v = Mat::from_fn(n, n, |i, k| v.at(order[k], i));
    Svd { u, s, v }
}

/// Givens rotation of rows p and q (each `len` long) of a row-major buffer.
fn rotate_rows(data: &mut [f64], len: usize, p: usize, q: usize, cos: f64, sin: f64) {
    let (head, tail) = data.split_at_mut(q * len);
    let (rp, rq) = (&mut head[p * len..(p + 1) * len], &mut tail[..len]);
    for (x, y) in rp.iter_mut().zip(rq.iter_mut()) {
        let (a, b) = (*x, *y);
        *x = cos * a - sin * b;
        *y = sin * a + cos * b;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: &Mat, b: &Mat) -> Mat {
        Mat::from_fn(a.rows, b.cols, |i, j| {
            (0..a.cols).map(|k| a.at(i, k) * b.at(k, j)).sum()
        })
    }

    #[test]
    fn matmul_matches_naive_loops_for_every_transpose_and_split() {
        let mut rng = Rng::new(1);
        let (a, b) = (Mat::gaussian(7, 5, &mut rng), Mat::gaussian(5, 9, &mut rng));
        let reference = naive(&a, &b);
        let (at, bt) = (a.transpose(), b.transpose());
        for threads in [1, 2] {
            for (x, y) in [
                (n(&a), n(&b)),
                (t(&at), n(&b)),
                (n(&a), t(&bt)),
                (t(&at), t(&bt)),
            ] {
                let mut out = Mat::zeros(7, 9);
                matmul(&mut out, x, y, threads);
                assert!(out.distance(&reference) < 1e-12, "threads {threads}");
            }
        }
    }

    #[test]
    fn random_orthogonal_is_orthogonal() {
        let q = random_orthogonal(30, &mut Rng::new(2));
        assert!(product(t(&q), n(&q)).distance(&Mat::identity(30)) < 1e-12);
    }

    #[test]
    fn svd_reconstructs_and_orders_a_known_spectrum() {
        let mut rng = Rng::new(3);
        let (p, q) = (
            random_orthogonal(12, &mut rng),
            random_orthogonal(8, &mut rng),
        );
        let s = [9.0, 7.5, 5.0, 3.0, 2.0, 1.0, 0.5, 0.1];
        // A = P[:, :8]·diag(s)·Qᵀ with a known spectrum, then check s, orthonormality and A = U·S·Vᵀ.
        let a = Mat::from_fn(12, 8, |i, j| {
            (0..8).map(|k| p.at(i, k) * s[k] * q.at(j, k)).sum()
        });
        for m in [a.clone(), a.transpose()] {
            let d = svd(&m);
            for (got, want) in d.s.iter().zip(s) {
                assert!((got - want).abs() < 1e-12, "{got} vs {want}");
            }
            assert!(product(t(&d.u), n(&d.u)).distance(&Mat::identity(8)) < 1e-12);
            assert!(product(t(&d.v), n(&d.v)).distance(&Mat::identity(8)) < 1e-12);
            let us = Mat::from_fn(d.u.rows, 8, |i, k| d.u.at(i, k) * d.s[k]);
            assert!(product(n(&us), t(&d.v)).distance(&m) < 1e-11);
        }
    }
}

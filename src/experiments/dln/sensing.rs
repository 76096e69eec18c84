//! Gaussian matrix sensing: y_i = ⟨A_i, Φ⟩ for m measurement matrices A_i with iid N(0, 1/m²)
//! entries (the reference code's scaling, which the paper's step size η = 20 assumes).
//!
//! Each iteration reads all m·d² measurement entries twice (once for the residuals, once for the
//! gradient), so this is bound by memory bandwidth: the entries are stored as f32 values of m·A_i
//! (the problem is *defined* by those f32-representable values; all arithmetic is f64), and the two
//! passes are fused per block of a few measurements so the second read hits cache.

use super::linalg::Mat;
use crate::util::rng::Rng;

/// Measurements per fused block: 4 rows of a 200×200 problem (640 KB of f32) stay in L2/L3 between
/// the residual pass and the gradient pass.
const BLOCK: usize = 4;

pub struct Sensing {
    m: usize,
    /// Row i holds m·A_i, row-major, d² entries.
    scaled: Vec<f32>,
    labels: Vec<f64>,
    /// The second thread's gradient accumulator, added into the first's at the end.
    partial: Vec<f64>,
}

impl Sensing {
    pub fn gaussian(target: &Mat, m: usize, rng: &mut Rng) -> Sensing {
        let scaled = (0..m * target.data.len())
            .map(|_| rng.normal() as f32)
            .collect();
        Sensing::new(target, scaled)
    }

    /// From the entries of m·A_i (row i of `scaled`), with labels y_i = ⟨A_i, Φ⟩.
    pub fn new(target: &Mat, scaled: Vec<f32>) -> Sensing {
        let len = target.data.len();
        assert_eq!(scaled.len() % len, 0, "measurement matrices must be d×d");
        let m = scaled.len() / len;
        let labels = scaled
            .chunks_exact(len)
            .map(|a| dot(a, &target.data) / m as f64)
            .collect();
        Sensing {
            m,
            scaled,
            labels,
            partial: vec![0.0; len],
        }
    }

    /// A*(y)/m = (1/m)·Σ y_i·A_i.
    pub fn surrogate(&self, d: usize) -> Mat {
        let mut s = Mat::zeros(d, d);
        let inv_m2 = 1.0 / (self.m as f64 * self.m as f64);
        for (a, y) in self.scaled.chunks_exact(d * d).zip(&self.labels) {
            s.data
                .iter_mut()
                .zip(a)
                .for_each(|(x, &ai)| *x += y * inv_m2 * ai as f64);
        }
        s
    }

    /// ½·Σ_i r_i² with r_i = ⟨A_i, W⟩ − y_i; grad = Σ_i r_i·A_i. The measurements are split in two
    /// halves over two threads, each with its own accumulator.
    pub fn loss_and_grad(&mut self, w: &Mat, grad: &mut Mat) -> f64 {
        let len = w.data.len();
        let half = (self.m / 2).div_ceil(BLOCK) * BLOCK;
        let (a0, a1) = self.scaled.split_at(half.min(self.m) * len);
        let (y0, y1) = self.labels.split_at(half.min(self.m));
        let inv_m = 1.0 / self.m as f64;
        let partial = &mut self.partial;
        let (l0, l1) = rayon::join(
            || accumulate(a0, y0, inv_m, &w.data, &mut grad.data),
            || accumulate(a1, y1, inv_m, &w.data, partial),
        );
        grad.data
            .iter_mut()
            .zip(partial.iter())
            .for_each(|(g, p)| *g += p);
        l0 + l1
    }
}

/// Over the measurements in `a` (rows of m·A_i) and their labels: returns ½·Σ r_i² and writes
/// Σ r_i·A_i into `grad`.
fn accumulate(a: &[f32], labels: &[f64], inv_m: f64, w: &[f64], grad: &mut [f64]) -> f64 {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has the features the function is compiled for.
        return unsafe { accumulate_avx2(a, labels, inv_m, w, grad) };
    }
    accumulate_portable(a, labels, inv_m, w, grad)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn accumulate_avx2(
    a: &[f32],
    labels: &[f64],
    inv_m: f64,
    w: &[f64],
    grad: &mut [f64],
) -> f64 {
    accumulate_portable(a, labels, inv_m, w, grad)
}

#[inline(always)]
fn accumulate_portable(a: &[f32], labels: &[f64], inv_m: f64, w: &[f64], grad: &mut [f64]) -> f64 {
    let len = w.len();
    grad.fill(0.0);
    let mut loss = 0.0;
    for (rows, ys) in a.chunks(BLOCK * len).zip(labels.chunks(BLOCK)) {
        let mut coef = [0.0; BLOCK];
        for (k, (row, y)) in rows.chunks_exact(len).zip(ys).enumerate() {
            let r = dot(row, w) * inv_m - y;
            loss += 0.5 * r * r;
            coef[k] = r * inv_m;
        }
        if ys.len() == BLOCK {
            let (r0, rest) = rows.split_at(len);
            let (r1, rest) = rest.split_at(len);
            let (r2, r3) = rest.split_at(len);
            for (j, g) in grad.iter_mut().enumerate() {
                let s = (r0[j] as f64).mul_add(coef[0], (r1[j] as f64) * coef[1]);
                *g += (r2[j] as f64).mul_add(coef[2], (r3[j] as f64).mul_add(coef[3], s));
            }
        } else {
            for (row, c) in rows.chunks_exact(len).zip(coef) {
                grad.iter_mut()
                    .zip(row)
                    .for_each(|(g, &x)| *g = (x as f64).mul_add(c, *g));
            }
        }
    }
    loss
}

/// Σ a_j·w_j with eight independent accumulators, so the compiler can keep a vector of partial sums.
#[inline(always)]
fn dot(a: &[f32], w: &[f64]) -> f64 {
    let mut acc = [0.0f64; 8];
    let (ac, wc) = (a.chunks_exact(8), w.chunks_exact(8));
    let tail: f64 = ac
        .remainder()
        .iter()
        .zip(wc.remainder())
        .map(|(&x, y)| x as f64 * y)
        .sum();
    for (x, y) in ac.zip(wc) {
        for k in 0..8 {
            acc[k] = (x[k] as f64).mul_add(y[k], acc[k]);
        }
    }
    acc.iter().sum::<f64>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fused_blocks_match_naive_loss_and_gradient() {
        // m = 11 exercises a full block and a partial one in each half.
        let (d, m) = (5, 11);
        let mut rng = Rng::new(9);
        let target = Mat::gaussian(d, d, &mut rng);
        let w = Mat::gaussian(d, d, &mut rng);
        let scaled: Vec<f32> = (0..m * d * d).map(|_| rng.normal() as f32).collect();
        let mut s = Sensing::new(&target, scaled.clone());
        let mut grad = Mat::zeros(d, d);
        let loss = s.loss_and_grad(&w, &mut grad);

        let a = |i: usize, j: usize| scaled[i * d * d + j] as f64 / m as f64;
        let (mut want_loss, mut want_grad) = (0.0, vec![0.0; d * d]);
        for i in 0..m {
            let r: f64 = (0..d * d)
                .map(|j| a(i, j) * (w.data[j] - target.data[j]))
                .sum();
            want_loss += 0.5 * r * r;
            (0..d * d).for_each(|j| want_grad[j] += r * a(i, j));
        }
        assert!((loss - want_loss).abs() < 1e-12 * want_loss);
        let err: f64 = grad
            .data
            .iter()
            .zip(&want_grad)
            .map(|(g, h)| (g - h).abs())
            .fold(0.0, f64::max);
        assert!(err < 1e-13, "{err}");
    }
}

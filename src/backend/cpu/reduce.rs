//! Reductions (CPU twin of kernels/reduce.cu).

use super::simd::vectorized;
use rayon::prelude::*;

/// Σ x² in f64. Chunk sums are collected in order and added sequentially: rayon's own `sum`
/// reduces in an order that depends on work stealing, and a gradient norm that changed from run to
/// run would break bit-exact resumption.
pub fn sum_squares(x: &[f32]) -> f64 {
    let partials: Vec<f64> = x
        .par_chunks(1 << 14)
        .map(|c| vectorized!(chunk_sum_squares(c)))
        .collect();
    partials.iter().sum()
}

/// Σ x² of one chunk.
#[inline(always)]
fn chunk_sum_squares(x: &[f32]) -> f64 {
    lane_sum(x, |v| v as f64 * v as f64)
}

/// Σ x in f64.
#[inline(always)]
pub fn sum_f64(x: &[f32]) -> f64 {
    lane_sum(x, |v| v as f64)
}

/// Σ f(xᵢ) in LANES interleaved f64 sums, added in a fixed order at the end: one running sum waits
/// on each addition's latency and keeps the loop from vectorising (a quarter of the speed on the
/// gradient norm of every step; most of a softmax row's time).
#[inline(always)]
fn lane_sum(x: &[f32], f: impl Fn(f32) -> f64) -> f64 {
    const LANES: usize = 8;
    let mut acc = [0.0f64; LANES];
    let blocks = x.chunks_exact(LANES);
    let tail: f64 = blocks.remainder().iter().map(|&v| f(v)).sum();
    for block in blocks {
        for (a, &v) in acc.iter_mut().zip(block) {
            *a += f(v);
        }
    }
    acc.iter().sum::<f64>() + tail
}

/// Σ aᵢ·bᵢ in f64, in lanes as `lane_sum`.
#[inline(always)]
pub fn dot_f64(a: &[f32], b: &[f32]) -> f64 {
    const LANES: usize = 8;
    assert_eq!(a.len(), b.len(), "dot_f64 of unequal lengths");
    let mut acc = [0.0f64; LANES];
    let (a_blocks, b_blocks) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f64 = (a_blocks.remainder().iter().zip(b_blocks.remainder()))
        .map(|(&x, &y)| x as f64 * y as f64)
        .sum();
    for (x, y) in a_blocks.zip(b_blocks) {
        for ((a, &x), &y) in acc.iter_mut().zip(x).zip(y) {
            *a += x as f64 * y as f64;
        }
    }
    acc.iter().sum::<f64>() + tail
}

#[cfg(test)]
mod tests {
    use crate::backend::{cpu::Cpu, Backend, Buffer, DType};

    #[test]
    fn sum_squares_closed_form() {
        // Σ_{i=1}^{n} i² = n(n+1)(2n+1)/6, over a length that spans several parallel chunks.
        let n = 100_003usize;
        let xs: Vec<f32> = (1..=n).map(|i| i as f32).collect();
        let mut b = Cpu.alloc(DType::F32, n).unwrap();
        Cpu.upload(&xs, b.all_mut()).unwrap();
        let want = (n * (n + 1) * (2 * n + 1)) as f64 / 6.0;
        assert_eq!(Cpu.sum_squares(&[b.all()]).unwrap(), want);
        assert_eq!(Cpu.sum_squares(&[b.at(0, 3)]).unwrap(), 14.0);
        // Windows [0, 3) and [5, 7): 1 + 4 + 9 + 36 + 49, the gap's 16 + 25 left out.
        assert_eq!(Cpu.sum_squares(&[b.at(0, 3), b.at(5, 2)]).unwrap(), 99.0);
        assert_eq!(Cpu.sum_squares(&[]).unwrap(), 0.0);
    }

    /// The lanes' sums on lengths with and without a tail: integers, so every partial sum is exact
    /// in f64 and the closed forms hold to the bit.
    #[test]
    fn sum_and_dot_closed_forms() {
        for n in [0usize, 1, 7, 8, 9, 1001] {
            let xs: Vec<f32> = (1..=n).map(|i| i as f32).collect();
            let ones = vec![1.0f32; n];
            assert_eq!(super::sum_f64(&xs), (n * (n + 1) / 2) as f64, "n = {n}");
            let dot = super::dot_f64(&xs, &ones) + super::dot_f64(&xs, &xs);
            assert_eq!(
                dot,
                (n * (n + 1) / 2 + n * (n + 1) * (2 * n + 1) / 6) as f64,
                "n = {n}"
            );
        }
    }
}

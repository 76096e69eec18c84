//! Reductions (CPU twin of kernels/reduce.cu).

use rayon::prelude::*;

/// Σ x² in f64. Chunk sums are collected in order and added sequentially: rayon's own `sum`
/// reduces in an order that depends on work stealing, and a gradient norm that changed from run to
/// run would break bit-exact resumption.
pub fn sum_squares(x: &[f32]) -> f64 {
    let partials: Vec<f64> = x.par_chunks(1 << 14).map(chunk_sum_squares).collect();
    partials.iter().sum()
}

/// Σ x² of one chunk in LANES interleaved f64 sums, added in a fixed order at the end: one running
/// sum waits on each addition's latency (a quarter of the speed on the gradient norm of every step).
fn chunk_sum_squares(x: &[f32]) -> f64 {
    const LANES: usize = 8;
    let mut acc = [0.0f64; LANES];
    let blocks = x.chunks_exact(LANES);
    let tail: f64 = blocks
        .remainder()
        .iter()
        .map(|&v| (v as f64) * (v as f64))
        .sum();
    for block in blocks {
        for (a, &v) in acc.iter_mut().zip(block) {
            *a += (v as f64) * (v as f64);
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
        assert_eq!(Cpu.sum_squares(b.all()).unwrap(), want);
        assert_eq!(Cpu.sum_squares(b.at(0, 3)).unwrap(), 14.0);
    }
}

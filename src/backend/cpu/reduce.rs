//! Reductions (CPU twin of kernels/reduce.cu).

use rayon::prelude::*;

/// Σ x² in f64. Chunk sums are collected in order and added sequentially: rayon's own `sum`
/// reduces in an order that depends on work stealing, and a gradient norm that changed from run to
/// run would break bit-exact resumption.
pub fn sum_squares(x: &[f32]) -> f64 {
    let partials: Vec<f64> = x
        .par_chunks(1 << 14)
        .map(|c| c.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>())
        .collect();
    partials.iter().sum()
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

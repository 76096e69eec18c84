//! Reductions (CPU twin of kernels/reduce.cu).

use rayon::prelude::*;

/// Σ x² in f64.
pub fn sum_squares(x: &[f32]) -> f64 {
    x.par_chunks(1 << 14).map(|c| c.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>()).sum()
}

//! Rounding to bf16 (CPU twin of kernels/cast.cu).

use half::bf16;
use rayon::prelude::*;

/// Rounds every value to the nearest bf16 (ties to even), in place.
pub fn round_bf16(x: &mut [f32]) {
    x.par_chunks_mut(1 << 14).for_each(|c| c.iter_mut().for_each(|v| *v = bf16::from_f32(*v).to_f32()));
}

//! Rounding to bf16 (CPU twin of kernels/cast.cu).

use super::simd::vectorized;
use half::bf16;
use rayon::prelude::*;

/// Rounds every value to the nearest bf16 (ties to even), in place.
pub fn round_bf16(x: &mut [f32]) {
    x.par_chunks_mut(1 << 14)
        .for_each(|c| vectorized!(c.iter_mut().for_each(|v| *v = bf16::from_f32(*v).to_f32())));
}

#[cfg(test)]
mod tests {
    use crate::backend::{cpu::Cpu, Backend, Buffer, DType};

    #[test]
    fn bf16_rounds_to_nearest_even() {
        // bf16 keeps 8 significant bits: near 1 its spacing is 2⁻⁷.
        let e = 2f32.powi(-7);
        let src = [1.0 + e / 2.0, 1.0 + 1.5 * e, 1.0 + 0.75 * e, -3.0, 1e-3];
        let mut a = Cpu.alloc(DType::F32, 5).unwrap();
        Cpu.upload(&src, a.all_mut()).unwrap();
        let mut b = Cpu.alloc(DType::BF16, 5).unwrap();
        Cpu.cast(a.all(), b.all_mut()).unwrap();
        // Ties go to the even mantissa: 1 + e/2 → 1, 1 + 1.5e → 1 + 2e; 0.75e rounds up to 1 + e.
        assert_eq!(&b.as_slice()[..4], &[1.0, 1.0 + 2.0 * e, 1.0 + e, -3.0]);
        assert!((b.as_slice()[4] - 1e-3).abs() < 1e-3 * 2f32.powi(-8));
    }

    #[test]
    fn fill_and_window_lengths() {
        let mut a = Cpu.alloc(DType::F32, 4).unwrap();
        Cpu.fill(a.at_mut(1, 2), 7.0).unwrap();
        assert_eq!(a.as_slice(), &[0.0, 7.0, 7.0, 0.0]);
        let b = Cpu.alloc(DType::F32, 3).unwrap();
        assert!(Cpu.cast(b.all(), a.all_mut()).is_err());
    }
}

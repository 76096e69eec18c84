//! Rounding to bf16 (CPU twin of kernels/cast.cu).

use super::simd::vectorized;
use half::bf16;
use rayon::prelude::*;

/// Values a task converts (64 KB of f32).
const TASK: usize = 1 << 14;

/// Rounds every value to the nearest bf16 (ties to even), in place.
pub fn round_bf16(x: &mut [f32]) {
    x.par_chunks_mut(TASK)
        .for_each(|c| vectorized!(c.iter_mut().for_each(|v| *v = bf16::from_f32(*v).to_f32())));
}

/// `dst[i]` = `src[i]` rounded to the nearest bf16 (ties to even), on every core: what a device's
/// bf16 upload stages (GPT-2 medium's token embedding is 51 M values).
pub fn to_bf16(src: &[f32], dst: &mut [bf16]) {
    assert_eq!(src.len(), dst.len(), "to_bf16 lengths");
    (dst.par_chunks_mut(TASK).zip(src.par_chunks(TASK))).for_each(|(d, s)| {
        vectorized!(d
            .iter_mut()
            .zip(s)
            .for_each(|(d, &s)| *d = bf16::from_f32(s)))
    });
}

/// `dst[i]` = `src[i]` as f32 (exact), on every core: a device's bf16 download.
pub fn from_bf16(src: &[bf16], dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len(), "from_bf16 lengths");
    (dst.par_chunks_mut(TASK).zip(src.par_chunks(TASK)))
        .for_each(|(d, s)| vectorized!(d.iter_mut().zip(s).for_each(|(d, s)| *d = s.to_f32())));
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

    /// The nearer of the two bf16 values around `x` (ties to the even one), from its bits: the
    /// value cut to bf16 (toward zero) and the next one away from zero, whose exponent may
    /// overflow into infinity (then 2¹²⁸ is the distance's other end).
    fn nearest_bf16(x: f32) -> f32 {
        if x.is_infinite() {
            return x;
        }
        let cut = x.to_bits() & 0xFFFF_0000;
        let next = cut + 0x1_0000;
        let (lo, hi) = (f32::from_bits(cut), f32::from_bits(next));
        let hi_far = match hi.is_infinite() {
            true => hi.signum() as f64 * 2f64.powi(128),
            false => hi as f64,
        };
        let (below, above) = ((x as f64 - lo as f64).abs(), (hi_far - x as f64).abs());
        match below.partial_cmp(&above).unwrap() {
            std::cmp::Ordering::Less => lo,
            std::cmp::Ordering::Greater => hi,
            std::cmp::Ordering::Equal if (cut >> 16) & 1 == 0 => lo,
            std::cmp::Ordering::Equal => hi,
        }
    }

    /// A device's host-side conversions, on ragged lengths across the tasks: every bit pattern
    /// class (subnormals, ties, values that round up to infinity, infinities, NaN) rounds to the
    /// nearest bf16 and back exactly.
    #[test]
    fn host_conversions_round_to_nearest_and_back_exactly() {
        let mut rng = crate::util::rng::Rng::new(3);
        let e = 2f32.powi(-7);
        let mut xs = vec![1.0 + e / 2.0, 1.0 + 1.5 * e, -0.0, f32::MAX, f32::INFINITY];
        xs.push(f32::from_bits(0x7F7F_8000)); // halfway from bf16's largest to 2¹²⁸: infinity
        xs.push(f32::from_bits(0x0000_8001)); // a subnormal just past a tie
        xs.push(f32::from_bits(0x0000_8000)); // subnormal ties: down to 0, and 0x18000 up to 0x20000
        xs.push(f32::from_bits(0x0001_8000));
        xs.push(-(1.0 + 1.5 * e)); // a negative tie, away from zero to the even
        xs.extend((0..3 * super::TASK + 5).map(|_| f32::from_bits(rng.next_u64() as u32)));
        let n = xs.len();
        let mut halves = vec![half::bf16::ZERO; n];
        super::to_bf16(&xs, &mut halves);
        let mut back = vec![0.0; n];
        super::from_bf16(&halves, &mut back);
        let mut nans = 0;
        for (i, (&x, &y)) in xs.iter().zip(&back).enumerate() {
            if x.is_nan() {
                // Quieted, its payload's top bits kept.
                let want = (x.to_bits() | 0x0040_0000) & 0xFFFF_0000;
                assert_eq!(y.to_bits(), want, "NaN {i} became {y}");
                nans += 1;
                continue;
            }
            assert_eq!(
                y.to_bits(),
                nearest_bf16(x).to_bits(),
                "{i}: {x:e} became {y:e}"
            );
        }
        assert!(nans > 0 && back[5] == f32::INFINITY && back[0] == 1.0 && back[1] == 1.0 + 2.0 * e);
        assert_eq!(
            back[7..10],
            [0.0, f32::from_bits(0x0002_0000), -(1.0 + 2.0 * e)]
        );
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

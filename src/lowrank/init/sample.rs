//! The init distribution of SCIENCE.md §2: a normal of std 1/√fan_in, redrawn beyond 2 std
//! (PyTorch's `trunc_normal_(std=s, a=-2s, b=2s)`).

use crate::util::rng::Rng;

/// Draws beyond this many standard deviations are redrawn.
const TRUNCATE_AT: f64 = 2.0;

/// The standard deviation of a unit normal truncated at ±2: √(1 − 4φ(2)/(Φ(2) − Φ(−2))). A
/// truncated-normal draw of parameter `std` has actual standard deviation `std · this`.
pub const TRUNCATED_STD_RATIO: f64 = 0.879_625_661_034_239_8;

/// `n` draws of a normal of parameter `std`, each redrawn until it lies within ±2·std.
pub fn truncated_normal(rng: &mut Rng, n: usize, std: f64) -> Vec<f32> {
    (0..n)
        .map(|_| loop {
            let z = rng.normal();
            if z.abs() <= TRUNCATE_AT {
                break (z * std) as f32;
            }
        })
        .collect()
}

/// A full-rank n_in × n_out weight from the init distribution (std 1/√n_in).
pub fn draw_dense(n_in: usize, n_out: usize, rng: &mut Rng) -> Vec<f32> {
    truncated_normal(rng, n_in * n_out, 1.0 / (n_in as f64).sqrt())
}

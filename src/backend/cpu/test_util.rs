//! Helpers shared by the CPU op tests: seeded random inputs and comparison with f64 references.

use super::{Cpu, CpuBuf};
use crate::backend::{Backend, Buffer, DType};
use crate::util::rng::Rng;

/// `n` values from N(0, 1), reproducible by seed.
pub fn random(n: usize, seed: u64) -> Vec<f32> {
    Rng::new(seed).normal_vec(n, 1.0)
}

/// An f32 CPU buffer holding `x`.
pub fn upload(cpu: &Cpu, x: &[f32]) -> CpuBuf {
    let mut buf = cpu.alloc(DType::F32, x.len()).unwrap();
    cpu.upload(x, buf.all_mut()).unwrap();
    buf
}

/// Asserts |got − want| ≤ tol·max(1, |want|) elementwise, reporting the worst element.
pub fn assert_close(what: &str, got: &[f32], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let (worst, err) = got
        .iter()
        .zip(want)
        .map(|(&g, &w)| (g as f64 - w).abs() / w.abs().max(1.0))
        .enumerate()
        .fold((0, 0.0f64), |acc, (i, e)| {
            if e > acc.1 || e.is_nan() {
                (i, e)
            } else {
                acc
            }
        });
    assert!(
        err <= tol,
        "{what}: element {worst} is {} but the reference is {} (scaled error {err:e} > {tol:e})",
        got[worst],
        want[worst]
    );
}

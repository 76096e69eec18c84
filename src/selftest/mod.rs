//! The selftest: every CUDA op against its CPU twin on the same fresh random inputs, with outputs
//! poisoned (NaN) before the launch so an unwritten element fails the check.

mod cases;

pub use cases::{all_cases, Case};

use crate::backend::Backend;
use anyhow::Result;

/// The result of one case.
#[derive(Debug, serde::Serialize)]
pub struct Outcome {
    pub op: String,
    pub shape: String,
    /// ‖out − ref‖₂ / ‖ref‖₂ (∞ when the output holds a non-finite value the reference does not).
    pub rel_err: f64,
    pub bound: f64,
    pub pass: bool,
    pub error: Option<String>,
}

/// ‖out − ref‖₂ / ‖ref‖₂, or the absolute norm when the reference is zero. A NaN or infinity in the
/// output where the reference is finite gives infinity.
pub fn rel_err(out: &[f64], reference: &[f64]) -> f64 {
    if out.len() != reference.len() {
        return f64::INFINITY;
    }
    let (mut diff, mut norm) = (0.0, 0.0);
    for (&o, &r) in out.iter().zip(reference) {
        if !o.is_finite() && r.is_finite() {
            return f64::INFINITY;
        }
        diff += (o - r) * (o - r);
        norm += r * r;
    }
    if norm == 0.0 {
        diff.sqrt()
    } else {
        (diff / norm).sqrt()
    }
}

/// Runs one case on `test` and on the reference backend with the same seed and compares.
pub fn check<T: Backend, R: Backend>(case: &Case, test: &T, reference: &R, seed: u64) -> Outcome {
    let result: Result<(Vec<f64>, Vec<f64>)> =
        (|| Ok((case.run(test, seed)?, case.run(reference, seed)?)))();
    let (rel_err, error) = match result {
        Ok((out, want)) => (rel_err(&out, &want), None),
        Err(e) => (f64::INFINITY, Some(format!("{e:#}"))),
    };
    let bound = case.bound();
    Outcome {
        op: case.op(),
        shape: case.shape(),
        rel_err,
        bound,
        pass: error.is_none() && rel_err <= bound,
        error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rel_err_matches_hand_computation() {
        // ‖(1, 2) − (1, 0)‖ / ‖(1, 0)‖ = 2
        assert_eq!(rel_err(&[1.0, 2.0], &[1.0, 0.0]), 2.0);
        assert_eq!(rel_err(&[3.0, 4.0], &[0.0, 0.0]), 5.0);
    }

    #[test]
    fn poison_left_in_output_fails() {
        assert_eq!(rel_err(&[1.0, f64::NAN], &[1.0, 2.0]), f64::INFINITY);
        assert_eq!(rel_err(&[1.0], &[1.0, 2.0]), f64::INFINITY);
    }
}

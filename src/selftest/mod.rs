//! The selftest: every CUDA op against its CPU twin on the same fresh random inputs, with outputs
//! poisoned (NaN) before the launch so an unwritten element fails the check.

mod cases;
mod draws;

pub use cases::{all_cases, Case};

use crate::backend::Backend;
use anyhow::Result;

/// The result of one case.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Outcome {
    pub op: String,
    pub shape: String,
    /// ‖out − ref‖₂ / ‖ref‖₂ (∞ when the output holds a non-finite value the reference does not).
    /// JSON has no infinity: it is written as null and read back as ∞.
    #[serde(deserialize_with = "null_is_infinite")]
    pub rel_err: f64,
    pub bound: f64,
    pub pass: bool,
    pub error: Option<String>,
    /// Where a failure lies, to tell a layout bug (whole blocks off) from rounding (scattered).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mismatch: Option<Mismatch>,
    /// The kernels of ours the case launched on the device under test (none on a CPU backend), so
    /// a GPU run tells which kernels its passing cases verified (scripts/kernel-status.py).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kernels: Vec<String>,
}

fn null_is_infinite<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    use serde::Deserialize;
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::INFINITY))
}

/// The pattern of a failing output: its worst element and how many elements are off.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Mismatch {
    /// Flat index of the largest |out − ref| (row-major; the case's shape gives the width).
    pub worst_index: usize,
    pub worst_out: f64,
    pub worst_ref: f64,
    /// Fraction of elements with |out − ref| above 1 % of max |ref| (or non-finite).
    pub frac_off: f64,
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "worst at element {}: {:.4e} vs {:.4e}; {:.1}% of elements off",
            self.worst_index,
            self.worst_out,
            self.worst_ref,
            100.0 * self.frac_off
        )
    }
}

/// The mismatch pattern of `out` against `reference` (same lengths).
pub fn mismatch(out: &[f64], reference: &[f64]) -> Mismatch {
    let scale = reference.iter().fold(0.0f64, |m, r| m.max(r.abs()));
    let (mut worst_index, mut worst, mut off) = (0, -1.0f64, 0usize);
    for (i, (&o, &r)) in out.iter().zip(reference).enumerate() {
        let e = if o.is_finite() {
            (o - r).abs()
        } else {
            f64::INFINITY
        };
        if e > worst {
            (worst_index, worst) = (i, e);
        }
        if e > 0.01 * scale {
            off += 1;
        }
    }
    Mismatch {
        worst_index,
        worst_out: out.get(worst_index).copied().unwrap_or(f64::NAN),
        worst_ref: reference.get(worst_index).copied().unwrap_or(f64::NAN),
        frac_off: off as f64 / out.len().max(1) as f64,
    }
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
    // Both runs draw the same inputs: the second is handed the first's draws.
    let result: Result<(Vec<f64>, Vec<f64>)> =
        draws::shared(|| Ok((case.run(test, seed)?, case.run(reference, seed)?)));
    let bound = case.bound();
    let (rel_err, error, mismatch) = match result {
        Ok((out, want)) => {
            let e = rel_err(&out, &want);
            let m = (e > bound && out.len() == want.len()).then(|| mismatch(&out, &want));
            (e, None, m)
        }
        Err(e) => (f64::INFINITY, Some(format!("{e:#}")), None),
    };
    Outcome {
        op: case.op(),
        shape: case.shape(),
        rel_err,
        bound,
        pass: error.is_none() && rel_err <= bound,
        error,
        mismatch,
        kernels: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The basic cases (GEMMs, casts, optimiser updates, reductions, DLRA's basis extension) run on
    /// the CPU backend and leave no poison in their outputs: a harness bug fails here before a GPU
    /// run. (The layer and GPT cases take a minute here; their ops have their own CPU tests.)
    #[test]
    fn basic_cases_run_on_the_cpu_and_fill_their_outputs() {
        let basic = |c: &Case| !matches!(c, Case::LowRank(_) | Case::Gpt(_) | Case::Model(_));
        for case in all_cases().into_iter().filter(basic) {
            let out = case.run(&crate::backend::cpu::Cpu, 1).unwrap();
            assert!(!out.is_empty(), "{} {}", case.op(), case.shape());
            assert!(
                out.iter().all(|x| x.is_finite()),
                "{} {}: poison left in the output",
                case.op(),
                case.shape()
            );
        }
    }

    /// The whole-step cases hold f32 against bf16 within their bounds (so two bf16 computations
    /// on two devices can meet them), and the bf16 side does round.
    #[test]
    fn model_cases_hold_f32_against_bf16_within_their_bounds() {
        use crate::backend::cpu::{Cpu, CpuBf16};
        let model = all_cases()
            .into_iter()
            .filter(|c| matches!(c, Case::Model(_)));
        let outcomes: Vec<Outcome> = model.map(|c| check(&c, &CpuBf16, &Cpu, 7)).collect();
        assert_eq!(
            outcomes.len(),
            20,
            "six parameterisations, loss, gradients and decoding; two with GELU recomputed"
        );
        for o in &outcomes {
            assert!(o.pass && o.rel_err > 0.0, "{o:?}");
        }
    }

    /// A selftest process after a lost context hands its outcomes back as JSON: an error's
    /// infinite relative error (null in JSON), a mismatch and the kernels launched survive the trip.
    #[test]
    fn outcomes_survive_the_json_round_trip() {
        let failed = Outcome {
            op: "gemm".into(),
            shape: "3x4".into(),
            rel_err: f64::INFINITY,
            bound: 1e-2,
            pass: false,
            error: Some("CUDA_ERROR_ILLEGAL_ADDRESS".into()),
            mismatch: None,
            kernels: vec!["lowrank_y_tma256_bf16".into()],
        };
        let off = Outcome {
            rel_err: 0.5,
            error: None,
            mismatch: Some(mismatch(&[1.0, 3.0], &[1.0, 1.0])),
            ..failed.clone()
        };
        let doc = serde_json::json!({ "cases": [&failed, &off] });
        let text = serde_json::to_string(&doc).unwrap();
        let back: Vec<Outcome> = serde_json::from_value(
            serde_json::from_str::<serde_json::Value>(&text).unwrap()["cases"].clone(),
        )
        .unwrap();
        assert_eq!(back, [failed, off]);
    }

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

    #[test]
    fn mismatch_finds_the_worst_element_and_counts_the_ones_off() {
        let reference = [1.0, -2.0, 4.0, 0.5];
        // Off by 0.01 (below 1 % of max |ref| = 0.04), 3.0 (the worst) and 0.05.
        let out = [1.01, 1.0, 4.0, 0.55];
        let m = mismatch(&out, &reference);
        assert_eq!(m.worst_index, 1);
        assert_eq!((m.worst_out, m.worst_ref), (1.0, -2.0));
        assert_eq!(m.frac_off, 0.5);
        // A NaN is the worst of all.
        assert_eq!(mismatch(&[1.0, f64::NAN], &[1.0, 1.0]).worst_index, 1);
    }
}

//! Monte Carlo function error of a low-rank approximation on fresh Gaussian inputs:
//! E‖σ(x·W) − σ(x·Ŵ)‖² / E‖σ(x·W)‖², x ~ N(0, I), through the Backend.

use super::{Activation, DenseLayer, Factors};
use crate::backend::{Backend, Buffer, DType, Gemm};
use crate::util::rng::Rng;
use anyhow::{ensure, Result};

/// Rows per batch mean: the standard error comes from the spread of the per-batch sums.
const ROWS_PER_BATCH: usize = 256;

/// A relative function error and its Monte Carlo standard error.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct FunctionError {
    pub relative: f64,
    pub stderr: f64,
}

/// Fresh inputs x and the dense layer's outputs σ(x·W), drawn once and kept on the device, so
/// every candidate Ŵ of the same layer is scored on the same samples (paired comparisons).
pub struct FunctionErrorProbe<B: Backend> {
    n_in: usize,
    n_out: usize,
    samples: usize,
    act: Activation,
    x: B::Buf,
    reference: B::Buf,
}

impl<B: Backend> FunctionErrorProbe<B> {
    /// Draws `samples` (a positive multiple of 256, for the batch means) fresh inputs from `rng`.
    pub fn new(
        b: &B,
        layer: &DenseLayer,
        act: Activation,
        samples: usize,
        rng: &mut Rng,
    ) -> Result<Self> {
        ensure!(
            samples >= 2 * ROWS_PER_BATCH && samples.is_multiple_of(ROWS_PER_BATCH),
            "function error: {samples} samples; use a multiple of {ROWS_PER_BATCH}, at least {}",
            2 * ROWS_PER_BATCH
        );
        layer.check(1)?;
        let (i, o) = (layer.n_in, layer.n_out);
        let mut x = b.alloc(DType::F32, samples * i)?;
        b.upload(&rng.normal_vec(samples * i, 1.0), x.all_mut())?;
        let mut w = b.alloc(DType::F32, i * o)?;
        b.upload(layer.w, w.all_mut())?;
        let mut pre = b.alloc(DType::F32, samples * o)?;
        b.gemm(&Gemm::new(samples, o, i), x.all(), w.all(), pre.all_mut())?;
        let mut reference = b.alloc(DType::F32, samples * o)?;
        act.forward(b, reference.all_mut(), pre.all())?;
        Ok(FunctionErrorProbe {
            n_in: i,
            n_out: o,
            samples,
            act,
            x,
            reference,
        })
    }

    /// The relative function error of Ŵ = Utᵀ·Vt on the probe's samples, with its standard error
    /// (ratio estimator over batches of 256 rows: √(Σ(e_b − R·q_b)² / (B(B−1))) / mean q_b).
    pub fn error(&self, b: &B, f: &Factors) -> Result<FunctionError> {
        let (n, i, o, r) = (self.samples, self.n_in, self.n_out, f.rank);
        ensure!(
            f.ut.len() == r * i && f.vt.len() == r * o,
            "function error: factors of rank {r} do not fit a {i}x{o} layer"
        );
        let (mut ut, mut vt) = (b.alloc(DType::F32, r * i)?, b.alloc(DType::F32, r * o)?);
        b.upload(&f.ut, ut.all_mut())?;
        b.upload(&f.vt, vt.all_mut())?;
        let mut a = b.alloc(DType::F32, n * r)?;
        b.gemm(
            &Gemm::new(n, r, i).trans_b(),
            self.x.all(),
            ut.all(),
            a.all_mut(),
        )?;
        let mut pre = b.alloc(DType::F32, n * o)?;
        b.gemm(&Gemm::new(n, o, r), a.all(), vt.all(), pre.all_mut())?;
        let mut diff = b.alloc(DType::F32, n * o)?;
        self.act.forward(b, diff.all_mut(), pre.all())?;
        b.sub(diff.all_mut(), self.reference.all())?;
        let len = ROWS_PER_BATCH * o;
        let (mut errs, mut norms) = (Vec::new(), Vec::new());
        for off in (0..n * o).step_by(len) {
            errs.push(b.sum_squares(&[diff.at(off, len)])?);
            norms.push(b.sum_squares(&[self.reference.at(off, len)])?);
        }
        Ok(ratio_with_stderr(&errs, &norms))
    }
}

/// R = Σe/Σq and the ratio estimator's standard error over the batch sums.
fn ratio_with_stderr(errs: &[f64], norms: &[f64]) -> FunctionError {
    let batches = errs.len() as f64;
    let relative = errs.iter().sum::<f64>() / norms.iter().sum::<f64>();
    let spread: f64 = errs
        .iter()
        .zip(norms)
        .map(|(e, q)| (e - relative * q).powi(2))
        .sum();
    let mean_norm = norms.iter().sum::<f64>() / batches;
    FunctionError {
        relative,
        stderr: (spread / (batches * (batches - 1.0))).sqrt() / mean_norm,
    }
}

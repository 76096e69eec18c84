//! Optimiser steps' hyperparameters and the operand checks every backend runs before an update.

use super::{Buffer, DType, Mut, Ref};
use anyhow::{ensure, Result};

/// Hyperparameters of one AdamW step (decoupled weight decay, bias-corrected moments).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamW {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// 1-based step count, for bias correction.
    pub step: u32,
    /// Multiplies every gradient before use (clipping by global norm, or 1/accumulation).
    pub grad_scale: f32,
}

impl AdamW {
    pub fn bias_corrections(&self) -> (f32, f32) {
        (
            1.0 - self.beta1.powi(self.step as i32),
            1.0 - self.beta2.powi(self.step as i32),
        )
    }
}

/// Hyperparameters of one heavy-ball step in friction form (SCIENCE.md §3, DLRA heavy ball):
/// z ← (1 − γ)·z − h·g, then θ ← θ + h·z − h·wd·θ.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HeavyBall {
    /// The step h.
    pub h: f32,
    /// The friction γ in [0, 1].
    pub friction: f32,
    pub weight_decay: f32,
    /// Multiplies every gradient before use (clipping by global norm).
    pub grad_scale: f32,
}

/// Checks an optimiser update's operands (`op` names it): f32 master params, gradients and
/// state windows (name, window) of equal lengths, and a compute copy of the same length.
pub(crate) fn check_update<T: Buffer>(
    op: &str,
    params: &Mut<T>,
    grads: &Ref<T>,
    state: &[(&str, &Mut<T>)],
    copy: &Option<Mut<T>>,
) -> Result<()> {
    let n = params.len;
    let state = state.iter().map(|(what, w)| (*what, w.len, w.dtype()));
    for (what, len, dtype) in [("grads", grads.len, grads.dtype())]
        .into_iter()
        .chain(state)
    {
        ensure!(len == n, "{op}: {what} has {len} elements, params {n}");
        ensure!(
            dtype == DType::F32,
            "{op}: {what} must be f32, is {dtype:?}"
        );
    }
    ensure!(
        params.dtype() == DType::F32,
        "{op}: master params must be f32"
    );
    if let Some(c) = copy {
        ensure!(
            c.len == n,
            "{op}: compute copy has {} elements, params {n}",
            c.len
        );
    }
    Ok(())
}

//! The study's baselines: heavy ball and Adam on the factors of W = U·Vᵀ, independently.

use crate::lowrank::dlra::{apply, Moments, Rule};
use faer::{Mat, MatRef};

/// W = U·Vᵀ with the optimiser acting on U and V independently (the baselines).
#[derive(Clone, Debug)]
pub struct Factors {
    pub u: Mat<f64>,
    pub v: Mat<f64>,
    pub state_u: Moments,
    pub state_v: Moments,
}

impl Factors {
    pub fn w(&self) -> Mat<f64> {
        &self.u * self.v.transpose()
    }

    /// One step with gradient `g` of the loss at W: ∂L/∂U = G·V, ∂L/∂V = Gᵀ·U.
    pub fn step(&mut self, g: MatRef<f64>, rule: Rule, h: f64, t: u64) {
        let gu = g * &self.v;
        let gv = g.transpose() * &self.u;
        apply(rule, h, t, &mut self.u, gu.as_ref(), &mut self.state_u);
        apply(rule, h, t, &mut self.v, gv.as_ref(), &mut self.state_v);
    }
}

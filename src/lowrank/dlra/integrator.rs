//! The DLRA integrator (SCIENCE.md §3) on W = U·S·Vᵀ in float64, and the update rules it steps the
//! coefficients with. `lowrank dlra` runs it on a matrix problem whose gradient G = ∂L/∂W is at hand;
//! GPT training (`--lowrank dlra`) runs the same augmentation and truncation on each layer, fed with
//! G·V and Gᵀ·U from the layer's backward pass instead of G.
//!
//! DLRA, the parallel (augment-and-truncate-every-step) integrator: with G_U = G·V and G_V = Gᵀ·U,
//! the bases grow to Û = [U, Ũ], V̂ = [V, Ṽ] where Ũ, Ṽ span the parts of G_U, G_V orthogonal to U,
//! V; the optimiser steps the 2r × 2r coefficients Ŝ = [[S, 0], [0, 0]] along Ĝ = Ûᵀ·G·V̂ with its
//! lower-right block zeroed (so Û·Ĝ·V̂ᵀ is exactly the tangent-space projection of G), and an SVD
//! of Ŝ truncates back to rank r. The optimiser state lives in S coordinates and is carried along
//! each basis change: into the augmented basis it is padded with zeros (ÛᵀU = [I; 0]), through the
//! truncation P·Σ·Qᵀ it maps m ← P_rᵀ·m·Q_r, v ← (P_rᵀ·√v·Q_r)².

use crate::linalg::factor::thin_qr;
use crate::linalg::svd::svd;
use anyhow::{Context, Result};
use faer::{Mat, MatRef};

/// The update rule applied to the coordinates (S for DLRA, U and V for factors).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Rule {
    /// θ ← θ − h·g.
    Sgd,
    /// Heavy ball in friction form: z ← (1 − γ)·z − h·g, θ ← θ + h·z.
    HeavyBall { gamma: f64 },
    /// Adam (β1, β2, ε) with bias correction.
    Adam { beta1: f64, beta2: f64, eps: f64 },
}

/// Per-coordinate optimiser state: the first moment (or the velocity) and the second moment.
#[derive(Clone, Debug)]
pub struct Moments {
    pub m: Mat<f64>,
    pub v: Mat<f64>,
}

impl Moments {
    pub fn zeros(rows: usize, cols: usize) -> Self {
        Moments {
            m: Mat::zeros(rows, cols),
            v: Mat::zeros(rows, cols),
        }
    }
}

/// θ ← rule(θ, g) at step t (1-based, for Adam's bias correction), updating the moments.
pub fn apply(rule: Rule, h: f64, t: u64, theta: &mut Mat<f64>, g: MatRef<f64>, st: &mut Moments) {
    match rule {
        Rule::Sgd => *theta -= h * g,
        Rule::HeavyBall { gamma } => {
            st.m = (1.0 - gamma) * &st.m - h * g;
            *theta += h * &st.m;
        }
        Rule::Adam { beta1, beta2, eps } => {
            let (bc1, bc2) = (1.0 - beta1.powi(t as i32), 1.0 - beta2.powi(t as i32));
            for j in 0..theta.ncols() {
                for i in 0..theta.nrows() {
                    let gi = g[(i, j)];
                    let m = beta1 * st.m[(i, j)] + (1.0 - beta1) * gi;
                    let v = beta2 * st.v[(i, j)] + (1.0 - beta2) * gi * gi;
                    st.m[(i, j)] = m;
                    st.v[(i, j)] = v;
                    theta[(i, j)] -= h * (m / bc1) / ((v / bc2).sqrt() + eps);
                }
            }
        }
    }
}

/// What Adam's second moment starts at in the directions an augmentation adds.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum FreshMoment {
    /// Zero, as the change of basis [I; 0] carries it (the brief's transport): Adam's first step
    /// there is a full-size ±h whatever the gradient's size.
    #[default]
    Zero,
    /// The mean of the transported second moment: new directions are normalised on the scale of
    /// the old ones.
    Mean,
}

/// W = U·S·Vᵀ with orthonormal U, V, and its optimiser state in S coordinates.
#[derive(Clone, Debug)]
pub struct Dlra {
    pub u: Mat<f64>,
    pub s: Mat<f64>,
    pub v: Mat<f64>,
    pub state: Moments,
}

/// How far the truncation keeps: a fixed rank, or the smallest r with ‖σ_{r+1:}‖ ≤ τ·‖σ‖, clamped.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Keep {
    Rank(usize),
    Tolerance { tau: f64, min: usize, max: usize },
}

impl Keep {
    /// The rank kept from singular values `s` (descending).
    pub fn rank(self, s: &[f64]) -> usize {
        match self {
            Keep::Rank(r) => r.min(s.len()),
            Keep::Tolerance { tau, min, max } => {
                let total: f64 = s.iter().map(|x| x * x).sum();
                let mut tail = total;
                let mut r = 0;
                // Drop from the top until what is left is within τ of the whole.
                while r < s.len() && tail.sqrt() > tau * total.sqrt() {
                    tail -= s[r] * s[r];
                    r += 1;
                }
                r.clamp(min.min(s.len()), max.min(s.len()))
            }
        }
    }
}

impl Dlra {
    pub fn w(&self) -> Mat<f64> {
        &self.u * &self.s * self.v.transpose()
    }

    pub fn rank(&self) -> usize {
        self.s.nrows()
    }

    /// One step of the parallel integrator with gradient `g` (d_in × d_out) of the loss at W:
    /// augment, step the coefficients along the tangent part of G, truncate.
    pub fn step(
        &mut self,
        g: MatRef<f64>,
        rule: Rule,
        h: f64,
        t: u64,
        keep: Keep,
        fresh: FreshMoment,
    ) -> Result<()> {
        // G·V and Gᵀ·U in the old bases serve both the augmentation and the tangent gradient.
        let (gu, gv) = (g * &self.v, g.transpose() * &self.u);
        self.augment_with(gu.as_ref(), gv.as_ref(), fresh);
        let gs = self.tangent_gradient(gu.as_ref(), gv.as_ref());
        apply(rule, h, t, &mut self.s, gs.as_ref(), &mut self.state);
        self.truncate(keep)
    }

    /// Û = [U, Ũ], V̂ = [V, Ṽ] with Ũ, Ṽ spanning the parts of G·V, Gᵀ·U outside span(U), span(V);
    /// S and the first moment padded with zeros (the change of basis ÛᵀU is [I; 0]), the second
    /// moment as `fresh` says.
    pub fn augment(&mut self, g: MatRef<f64>, fresh: FreshMoment) {
        let (gu, gv) = (g * &self.v, g.transpose() * &self.u);
        self.augment_with(gu.as_ref(), gv.as_ref(), fresh);
    }

    /// `augment` given G·V (d_in × r) and Gᵀ·U (d_out × r) rather than G.
    pub fn augment_with(&mut self, gu: MatRef<f64>, gv: MatRef<f64>, fresh: FreshMoment) {
        let r = self.rank();
        self.u = augment(self.u.as_ref(), gu);
        self.v = augment(self.v.as_ref(), gv);
        self.s = pad(self.s.as_ref(), 2 * r);
        self.state = self.state.augmented(fresh);
    }

    /// S ← rule(S, Uᵀ·G·V) in the current bases: the whole Galerkin gradient (steps inside a
    /// window of frozen augmented bases).
    pub fn coefficient_step(&mut self, g: MatRef<f64>, rule: Rule, h: f64, t: u64) {
        let gs = self.u.transpose() * g * &self.v;
        apply(rule, h, t, &mut self.s, gs.as_ref(), &mut self.state);
    }

    /// Ûᵀ·G·V̂ with its lower-right block zeroed, in augmented bases Û = [U, Ũ], V̂ = [V, Ṽ] whose
    /// first r columns are the bases G·V (`gu`, d_in × r) and Gᵀ·U (`gv`, d_out × r) were taken
    /// in: every block but ŨᵀGṼ is a product of G with an old basis, so G itself is not needed.
    pub fn tangent_gradient(&self, gu: MatRef<f64>, gv: MatRef<f64>) -> Mat<f64> {
        let left = self.u.transpose() * gu; // Ûᵀ·G·V: the first r columns
        let top = gv.transpose() * &self.v; // Uᵀ·G·V̂: the first r rows
        tangent_from_blocks(left.as_ref(), top.as_ref())
    }

    /// SVD S = P·Σ·Qᵀ, kept to the rank `keep` gives: U ← U·P_r, V ← V·Q_r, S ← Σ_r, and the state
    /// carried along (see [`Cut`]).
    pub fn truncate(&mut self, keep: Keep) -> Result<()> {
        let cut = Cut::of(self.s.as_ref(), &self.state, keep)?;
        self.u = &self.u * &cut.p;
        self.v = &self.v * &cut.q;
        self.s = cut.s();
        self.state = cut.state;
        Ok(())
    }
}

impl Moments {
    /// The state in bases augmented from r to 2r: the first moment padded with zeros (the change
    /// of basis ÛᵀU is [I; 0]), the second moment as `fresh` says.
    pub fn augmented(&self, fresh: FreshMoment) -> Moments {
        let r = self.m.nrows();
        let fill = match fresh {
            FreshMoment::Zero => 0.0,
            FreshMoment::Mean => self.v.sum() / (r * r) as f64,
        };
        let old = self.v.as_ref();
        let v = Mat::from_fn(2 * r, 2 * r, |i, j| match i < r && j < r {
            true => old[(i, j)],
            false => fill,
        });
        Moments {
            m: pad(self.m.as_ref(), 2 * r),
            v,
        }
    }
}

/// A truncation of the coefficients: S = P·Σ·Qᵀ kept to k columns of P and Q, and S's state
/// carried along, m ← P_kᵀ·m·Q_k, v ← (P_kᵀ·√v·Q_k)². The bases follow as U·P_k and V·Q_k.
pub struct Cut {
    pub p: Mat<f64>,
    pub q: Mat<f64>,
    pub sigma: Vec<f64>,
    pub state: Moments,
}

impl Cut {
    pub fn of(s: MatRef<f64>, state: &Moments, keep: Keep) -> Result<Cut> {
        let n = s.nrows();
        let svd = svd(s).context("SVD of the coefficients")?;
        let sigma = svd.s;
        let k = keep.rank(&sigma).max(1);
        let (p, q) = (svd.u.get(.., ..k), svd.v.get(.., ..k));
        let sqrt_v = Mat::from_fn(n, n, |i, j| state.v[(i, j)].sqrt());
        let root = p.transpose() * sqrt_v * q;
        Ok(Cut {
            p: p.to_owned(),
            q: q.to_owned(),
            sigma: sigma[..k].to_vec(),
            state: Moments {
                m: p.transpose() * &state.m * q,
                v: Mat::from_fn(k, k, |i, j| root[(i, j)] * root[(i, j)]),
            },
        })
    }

    /// The kept rank.
    pub fn rank(&self) -> usize {
        self.sigma.len()
    }

    /// The new coefficients Σ_k.
    pub fn s(&self) -> Mat<f64> {
        let k = self.rank();
        Mat::from_fn(k, k, |i, j| if i == j { self.sigma[i] } else { 0.0 })
    }
}

/// The tangent gradient (2r × 2r) from its two computable blocks: `left` = Ûᵀ·G·V (2r × r, the
/// first r columns) and `top` = Uᵀ·G·V̂ (r × 2r, the first r rows); the block ŨᵀGṼ is zero.
pub fn tangent_from_blocks(left: MatRef<f64>, top: MatRef<f64>) -> Mat<f64> {
    let r = left.ncols();
    Mat::from_fn(left.nrows(), top.ncols(), |i, j| match (i < r, j < r) {
        (_, true) => left[(i, j)],
        (true, false) => top[(i, j)],
        (false, false) => 0.0,
    })
}

/// [B | B̃]: the orthonormal basis B (n × r) followed by r orthonormal columns orthogonal to it that
/// span the part of `dir` outside span(B) (completed arbitrarily, still orthogonal to B, when that
/// part has rank below r). From the Householder QR of [B | dir], whose first r columns are B up to
/// signs; B itself is kept so the coefficients S stay valid.
fn augment(b: MatRef<f64>, dir: MatRef<f64>) -> Mat<f64> {
    let r = b.ncols();
    let q = thin_qr(concat(b, dir).as_ref()).0;
    concat(b, q.get(.., r..2 * r))
}

/// [a | b] side by side.
fn concat(a: MatRef<f64>, b: MatRef<f64>) -> Mat<f64> {
    Mat::from_fn(a.nrows(), a.ncols() + b.ncols(), |i, j| {
        if j < a.ncols() {
            a[(i, j)]
        } else {
            b[(i, j - a.ncols())]
        }
    })
}

/// `a` in the top-left corner of an n × n zero matrix.
fn pad(a: MatRef<f64>, n: usize) -> Mat<f64> {
    Mat::from_fn(n, n, |i, j| {
        if i < a.nrows() && j < a.ncols() {
            a[(i, j)]
        } else {
            0.0
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linalg::factor::random_orthonormal;
    use crate::util::rng::Rng;

    fn gaussian(rows: usize, cols: usize, rng: &mut Rng) -> Mat<f64> {
        Mat::from_fn(rows, cols, |_, _| rng.normal())
    }

    fn max_abs_diff(a: MatRef<f64>, b: MatRef<f64>) -> f64 {
        let mut m = 0.0f64;
        for j in 0..a.ncols() {
            for i in 0..a.nrows() {
                m = m.max((a[(i, j)] - b[(i, j)]).abs());
            }
        }
        m
    }

    fn start(d_in: usize, d_out: usize, r: usize, rng: &mut Rng) -> Dlra {
        Dlra {
            u: random_orthonormal(d_in, r, rng),
            s: gaussian(r, r, rng),
            v: random_orthonormal(d_out, r, rng),
            state: Moments::zeros(r, r),
        }
    }

    /// Kept at rank 2r, a plain step is W − h·P_T(G) with the tangent projection
    /// P_T(G) = U·Uᵀ·G + G·V·Vᵀ − U·Uᵀ·G·V·Vᵀ, formed densely here.
    #[test]
    fn an_untruncated_sgd_step_is_the_tangent_projected_gradient_step() {
        let mut rng = Rng::new(3);
        let (d_in, d_out, r, h) = (12, 9, 3, 0.1);
        let mut x = start(d_in, d_out, r, &mut rng);
        let g = gaussian(d_in, d_out, &mut rng);
        let (pu, pv) = (&x.u * x.u.transpose(), &x.v * x.v.transpose());
        let tangent = &pu * &g + &g * &pv - &pu * &g * &pv;
        let want = x.w() - h * tangent;
        x.step(
            g.as_ref(),
            Rule::Sgd,
            h,
            1,
            Keep::Rank(2 * r),
            FreshMoment::Zero,
        )
        .unwrap();
        assert_eq!(x.rank(), 2 * r);
        assert!(max_abs_diff(x.w().as_ref(), want.as_ref()) < 1e-12);
        // The bases stay orthonormal.
        let eye = Mat::<f64>::identity(2 * r, 2 * r);
        assert!(max_abs_diff((x.u.transpose() * &x.u).as_ref(), eye.as_ref()) < 1e-12);
        assert!(max_abs_diff((x.v.transpose() * &x.v).as_ref(), eye.as_ref()) < 1e-12);
    }

    /// Heavy ball is linear in the coefficients, so with its velocity transported the trajectory
    /// of W must not depend on which orthonormal bases represent the same start: U·Qu, Quᵀ·S·Qv,
    /// V·Qv for random rotations Qu, Qv. (Adam's elementwise second moment breaks this symmetry.)
    #[test]
    fn heavy_ball_trajectories_do_not_depend_on_the_basis() {
        let mut rng = Rng::new(4);
        let (d_in, d_out, r) = (10, 8, 3);
        let a = start(d_in, d_out, r, &mut rng);
        let (qu, qv) = (
            random_orthonormal(r, r, &mut rng),
            random_orthonormal(r, r, &mut rng),
        );
        let mut b = Dlra {
            u: &a.u * &qu,
            s: qu.transpose() * &a.s * &qv,
            v: &a.v * &qv,
            state: Moments::zeros(r, r),
        };
        let mut a = a;
        // A fixed quadratic loss ½‖W − T‖²: G = W − T.
        let target = gaussian(d_in, d_out, &mut rng);
        let rule = Rule::HeavyBall { gamma: 0.2 };
        for t in 1..=6 {
            for x in [&mut a, &mut b] {
                let g = x.w() - &target;
                x.step(g.as_ref(), rule, 0.3, t, Keep::Rank(r), FreshMoment::Zero)
                    .unwrap();
            }
        }
        assert!(max_abs_diff(a.w().as_ref(), b.w().as_ref()) < 1e-10);
    }

    #[test]
    fn augmentation_pads_the_moments_as_asked() {
        let mut rng = Rng::new(6);
        let (d, r) = (9, 2);
        let g = gaussian(d, d, &mut rng);
        let v0 = Mat::from_fn(r, r, |i, j| (1 + i + 2 * j) as f64); // 1, 3; 2, 4: mean 2.5
        for (fresh, fill) in [(FreshMoment::Zero, 0.0), (FreshMoment::Mean, 2.5)] {
            let mut x = start(d, d, r, &mut rng);
            x.state.v = v0.clone();
            x.state.m = v0.clone();
            x.augment(g.as_ref(), fresh);
            for i in 0..2 * r {
                for j in 0..2 * r {
                    let old = i < r && j < r;
                    let want_v = if old { v0[(i, j)] } else { fill };
                    let want_m = if old { v0[(i, j)] } else { 0.0 };
                    assert_eq!((x.state.v[(i, j)], x.state.m[(i, j)]), (want_v, want_m));
                }
            }
        }
    }

    #[test]
    fn tolerance_truncation_keeps_the_smallest_rank_within_tau() {
        // ‖σ‖² = 16 + 4 + 1 + 0.01 = 21.01; tails: 5.01, 1.01, 0.01, 0.
        let s = [4.0, 2.0, 1.0, 0.1];
        let keep = |tau: f64| {
            Keep::Tolerance {
                tau,
                min: 1,
                max: 4,
            }
            .rank(&s)
        };
        assert_eq!(keep(0.5), 1); // √5.01 = 2.24 ≤ 0.5·4.58 = 2.29
        assert_eq!(keep(0.2), 3); // √1.01 = 1.005 > 0.917, √0.01 = 0.1 ≤ 0.917
        assert_eq!(keep(0.01), 4); // √0.01 = 0.1 > 0.0458: all four
        assert_eq!(
            Keep::Tolerance {
                tau: 0.5,
                min: 2,
                max: 3
            }
            .rank(&s),
            2
        );
        assert_eq!(Keep::Rank(3).rank(&s), 3);
    }

    /// Adam's first moment is carried through the basis change as the matrix it represents.
    #[test]
    fn adam_moments_follow_the_coefficients_through_the_svd() {
        let mut rng = Rng::new(5);
        let (d, r) = (7, 2);
        let mut x = start(d, d, r, &mut rng);
        // G inside span(U)·span(V): nothing to add to the bases (they are completed arbitrarily).
        let g = 0.5 * x.w();
        let rule = Rule::Adam {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        };
        x.step(g.as_ref(), rule, 0.01, 1, Keep::Rank(r), FreshMoment::Zero)
            .unwrap();
        // The first moment is (1 − β1)·G as a matrix, whatever the basis: in the new coordinates
        // U_newᵀ·(0.1·G)·V_new.
        let want = x.u.transpose() * (0.1 * &g) * &x.v;
        assert!(max_abs_diff(x.state.m.as_ref(), want.as_ref()) < 1e-12);
    }
}

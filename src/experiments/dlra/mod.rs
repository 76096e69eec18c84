//! The DLRA optimiser study (SCIENCE.md §3) on a matrix problem where the geometry is all there is:
//! minimise L(W) = ½·tr((W − W*)ᵀ·Σ·(W − W*)) over rank-r matrices W (d_in × d_out), with a rank-r*
//! target W* and an input covariance Σ of condition number κ (G = Σ·(W − W*)). Four optimisers at the
//! same parameter budget from the same start: Adam and heavy ball on the factors of W = U·Vᵀ, and
//! their DLRA versions on W = U·S·Vᵀ (parallel integrator, state transported at every basis change).
//! Each runs over a grid of step sizes; the best final loss per method is reported.

mod factors;

use crate::linalg::factor::random_orthonormal;
use crate::lowrank::dlra::{Dlra, FreshMoment, Keep, Moments, Rule};
use crate::util::rng::Rng;
use anyhow::{ensure, Context, Result};
use factors::Factors;
use faer::Mat;
use serde::Serialize;
use std::time::Instant;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
pub enum Method {
    /// Adam on U and V of W = U·Vᵀ
    FactorAdam,
    /// Heavy ball on U and V of W = U·Vᵀ
    FactorHb,
    /// DLRA with Adam on the coefficients S of W = U·S·Vᵀ
    DlraAdam,
    /// DLRA with heavy ball on S
    DlraHb,
}

impl Method {
    pub const ALL: [Method; 4] = [
        Method::FactorAdam,
        Method::FactorHb,
        Method::DlraAdam,
        Method::DlraHb,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Method::FactorAdam => "factor-adam",
            Method::FactorHb => "factor-hb",
            Method::DlraAdam => "dlra-adam",
            Method::DlraHb => "dlra-hb",
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct StudyConfig {
    pub d_in: usize,
    pub d_out: usize,
    /// Rank budget r of every method.
    pub rank: usize,
    pub target_rank: usize,
    /// Condition number κ of Σ (eigenvalues log-spaced from 1 down to 1/κ).
    pub cond: f64,
    pub steps: u64,
    pub lrs: Vec<f64>,
    /// Heavy ball's friction γ.
    pub gamma: f64,
    /// DLRA schedule: 1 augments and truncates every step (the parallel integrator, tangent
    /// steps); K > 1 augments on the first step of each window of K, takes Galerkin steps on the
    /// 2r × 2r coefficients with the bases frozen, and truncates to r on the last.
    pub window: u64,
    /// DLRA Adam's second moment in newly added directions.
    pub fresh_moment: FreshMoment,
    /// DLRA truncation: None keeps rank r; Some(τ) keeps the smallest rank with ‖σ_tail‖ ≤ τ·‖σ‖,
    /// between 1 and r.
    pub tau: Option<f64>,
    /// W0 = init_scale·U0·V0ᵀ for random orthonormal U0, V0.
    pub init_scale: f64,
    pub seed: u64,
    pub log_every: u64,
    pub methods: Vec<Method>,
}

/// The quadratic problem: Σ (d_in × d_in, SPD) and the target W*.
pub struct Problem {
    pub sigma: Mat<f64>,
    pub target: Mat<f64>,
}

impl Problem {
    pub fn new(cfg: &StudyConfig, rng: &mut Rng) -> Self {
        let q = random_orthonormal(cfg.d_in, cfg.d_in, rng);
        let n = cfg.d_in;
        let lambda = |i: usize| cfg.cond.powf(-(i as f64) / (n.max(2) - 1) as f64);
        let sigma = Mat::from_fn(n, n, |i, j| {
            (0..n).map(|k| q[(i, k)] * lambda(k) * q[(j, k)]).sum()
        });
        // Singular values spread over a decade, vectors random.
        let r = cfg.target_rank;
        let a = random_orthonormal(cfg.d_in, r, rng);
        let b = random_orthonormal(cfg.d_out, r, rng);
        let s = Mat::from_fn(r, r, |i, j| {
            if i == j {
                10f64.powf(-(i as f64) / (r.max(2) - 1) as f64)
            } else {
                0.0
            }
        });
        Problem {
            sigma,
            target: a * s * b.transpose(),
        }
    }

    /// (L(W), G = ∂L/∂W).
    pub fn loss_and_grad(&self, w: &Mat<f64>) -> (f64, Mat<f64>) {
        let e = w - &self.target;
        let g = &self.sigma * &e;
        let loss = 0.5
            * (0..e.ncols())
                .map(|j| (0..e.nrows()).map(|i| e[(i, j)] * g[(i, j)]).sum::<f64>())
                .sum::<f64>();
        (loss, g)
    }
}

/// One logged point of one run.
#[derive(Clone, Debug, Serialize)]
pub struct Point {
    pub method: &'static str,
    pub lr: f64,
    pub step: u64,
    /// L(W) / L(W0).
    pub rel_loss: f64,
}

/// One method's best step size.
#[derive(Clone, Debug, Serialize)]
pub struct Best {
    pub method: &'static str,
    pub lr: f64,
    pub final_rel_loss: f64,
    /// First logged step with L / L0 below 1e-2, 1e-4 and 1e-6 (None: never).
    pub steps_to: [Option<u64>; 3],
    pub ms_per_step: f64,
    /// Rank of W at the end (below r only for DLRA with τ).
    pub final_rank: usize,
    /// Step sizes of the grid whose run diverged (non-finite loss).
    pub diverged: Vec<f64>,
}

pub struct StudyResult {
    pub points: Vec<Point>,
    pub best: Vec<Best>,
}

enum Model {
    Factors(Factors),
    Dlra(Dlra),
}

impl Model {
    fn start(method: Method, cfg: &StudyConfig, rng: &mut Rng) -> Self {
        let r = cfg.rank;
        let u = random_orthonormal(cfg.d_in, r, rng);
        let v = random_orthonormal(cfg.d_out, r, rng);
        match method {
            Method::FactorAdam | Method::FactorHb => {
                // Balanced factors of the same W0: each carries √scale.
                let c = cfg.init_scale.sqrt();
                Model::Factors(Factors {
                    u: c * &u,
                    v: c * &v,
                    state_u: Moments::zeros(cfg.d_in, r),
                    state_v: Moments::zeros(cfg.d_out, r),
                })
            }
            Method::DlraAdam | Method::DlraHb => Model::Dlra(Dlra {
                u,
                s: cfg.init_scale * Mat::<f64>::identity(r, r),
                v,
                state: Moments::zeros(r, r),
            }),
        }
    }

    fn w(&self) -> Mat<f64> {
        match self {
            Model::Factors(f) => f.w(),
            Model::Dlra(d) => d.w(),
        }
    }

    fn rank(&self) -> usize {
        match self {
            Model::Factors(f) => f.u.ncols(),
            Model::Dlra(d) => d.rank(),
        }
    }
}

/// One step size's run of one method.
#[derive(Clone)]
struct Run {
    lr: f64,
    curve: Vec<(u64, f64)>,
    final_rel_loss: f64,
    ms_per_step: f64,
    final_rank: usize,
}

fn rule(method: Method, gamma: f64) -> Rule {
    match method {
        Method::FactorAdam | Method::DlraAdam => Rule::Adam {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        },
        Method::FactorHb | Method::DlraHb => Rule::HeavyBall { gamma },
    }
}

/// Every method at every step size from the same start (the same seed draws the problem and W0).
pub fn run(cfg: &StudyConfig, mut progress: impl FnMut(&str)) -> Result<StudyResult> {
    ensure!(
        cfg.rank >= 1 && 2 * cfg.rank <= cfg.d_in.min(cfg.d_out),
        "--rank {} must be at least 1 and at most half the smaller dimension ({}): DLRA doubles the bases",
        cfg.rank,
        cfg.d_in.min(cfg.d_out)
    );
    ensure!(
        cfg.target_rank >= 1 && cfg.target_rank <= cfg.d_in.min(cfg.d_out),
        "--target-rank {} must lie in 1..={}",
        cfg.target_rank,
        cfg.d_in.min(cfg.d_out)
    );
    ensure!(cfg.cond >= 1.0, "--cond {} must be at least 1", cfg.cond);
    ensure!(
        !cfg.lrs.is_empty() && cfg.lrs.iter().all(|&h| h > 0.0),
        "--lrs needs positive step sizes"
    );
    ensure!(
        cfg.steps >= 1 && cfg.log_every >= 1,
        "--steps and --log-every must be at least 1"
    );
    if let Some(tau) = cfg.tau {
        ensure!((0.0..1.0).contains(&tau), "--tau {tau} must lie in [0, 1)");
    }
    let keep = match cfg.tau {
        Some(tau) => Keep::Tolerance {
            tau,
            min: 1,
            max: cfg.rank,
        },
        None => Keep::Rank(cfg.rank),
    };
    let problem = Problem::new(cfg, &mut Rng::new(cfg.seed));
    let mut points = Vec::new();
    let mut best = Vec::new();
    for &method in &cfg.methods {
        let mut runs = Vec::new();
        for &h in &cfg.lrs {
            progress(&format!("{} lr {h:e}", method.name()));
            // The same W0 for every method and step size.
            let mut model = Model::start(method, cfg, &mut Rng::new(cfg.seed ^ 0xD1_2A));
            let rule = rule(method, cfg.gamma);
            let (l0, _) = problem.loss_and_grad(&model.w());
            let mut curve = vec![(0, 1.0)];
            let started = Instant::now();
            let mut rel = 1.0;
            for t in 1..=cfg.steps {
                let (loss, g) = problem.loss_and_grad(&model.w());
                // Diverged: stop before the SVDs see overflowing coefficients.
                if loss.is_nan() || loss > DIVERGED * l0 {
                    rel = f64::INFINITY;
                    curve.push((t - 1, rel));
                    break;
                }
                match &mut model {
                    Model::Factors(f) => f.step(g.as_ref(), rule, h, t),
                    Model::Dlra(d) if cfg.window <= 1 => d
                        .step(g.as_ref(), rule, h, t, keep, cfg.fresh_moment)
                        .with_context(|| format!("{} at lr {h}, step {t}", method.name()))?,
                    Model::Dlra(d) => {
                        if (t - 1) % cfg.window == 0 {
                            d.augment(g.as_ref(), cfg.fresh_moment);
                        }
                        d.coefficient_step(g.as_ref(), rule, h, t);
                        if t % cfg.window == 0 {
                            d.truncate(keep).with_context(|| {
                                format!("{} at lr {h}, step {t}", method.name())
                            })?;
                        }
                    }
                }
                if t % cfg.log_every == 0 || t == cfg.steps {
                    rel = problem.loss_and_grad(&model.w()).0 / l0;
                    curve.push((t, rel));
                    if !rel.is_finite() {
                        break;
                    }
                }
            }
            runs.push(Run {
                lr: h,
                curve,
                final_rel_loss: rel,
                ms_per_step: 1e3 * started.elapsed().as_secs_f64() / cfg.steps as f64,
                final_rank: model.rank(),
            });
        }
        let diverged: Vec<f64> = runs
            .iter()
            .filter(|r| !r.final_rel_loss.is_finite())
            .map(|r| r.lr)
            .collect();
        let top = runs
            .iter()
            .min_by(|a, b| {
                finite_or_max(a.final_rel_loss).total_cmp(&finite_or_max(b.final_rel_loss))
            })
            .expect("at least one step size");
        let steps_to =
            [1e-2, 1e-4, 1e-6].map(|thr| top.curve.iter().find(|p| p.1 < thr).map(|p| p.0));
        best.push(Best {
            method: method.name(),
            lr: top.lr,
            final_rel_loss: top.final_rel_loss,
            steps_to,
            ms_per_step: top.ms_per_step,
            final_rank: top.final_rank,
            diverged,
        });
        for run in runs {
            points.extend(run.curve.into_iter().map(|(step, rel_loss)| Point {
                method: method.name(),
                lr: run.lr,
                step,
                rel_loss,
            }));
        }
    }
    Ok(StudyResult { points, best })
}

/// A run whose loss exceeds this multiple of its start has diverged.
const DIVERGED: f64 = 1e12;

fn finite_or_max(x: f64) -> f64 {
    if x.is_finite() {
        x
    } else {
        f64::MAX
    }
}

pub mod plot;

//! `lowrank init-study`: the Monte Carlo function error E‖σ(xW) − σ(xŴ)‖² / E‖σ(xW)‖² of the
//! spectral, function-closed and function inits (SCIENCE.md §2) per layer shape, rank and σ, on
//! fresh Gaussian inputs (never the fitting pool), with the time each init takes.

use crate::backend::Backend;
use crate::lowrank::init::{
    draw_dense, init_from_svd, Activation, DenseLayer, FitConfig, FunctionError,
    FunctionErrorProbe, InitOptions, LowRankInit, ThinSvd,
};
use crate::util::rng::Rng;
use anyhow::{ensure, Context, Result};
use serde::Serialize;
use std::time::Instant;

/// The inits compared, in table order.
pub const METHODS: [LowRankInit; 3] = [
    LowRankInit::Spectral,
    LowRankInit::FunctionClosed,
    LowRankInit::Function,
];

#[derive(Clone, Debug, Serialize)]
pub struct StudyConfig {
    /// (n_in, n_out) of each layer studied.
    pub shapes: Vec<(usize, usize)>,
    pub ranks: Vec<usize>,
    pub activations: Vec<Activation>,
    /// Fresh Gaussian inputs each error is measured on (a multiple of 256).
    pub samples: usize,
    pub fit: FitConfig,
    /// Multiplies the standard deviation W is drawn with (1: the usual 1/√n_in). Larger scales
    /// push σ's inputs into its nonlinear range.
    pub weight_scale: f64,
    pub seed: u64,
}

impl StudyConfig {
    /// Every rank must fit every shape: checked before any work starts.
    fn check(&self) -> Result<()> {
        ensure!(
            !self.shapes.is_empty() && !self.ranks.is_empty() && !self.activations.is_empty(),
            "init-study: give at least one shape, one rank and one activation"
        );
        for &(n_in, n_out) in &self.shapes {
            for &rank in &self.ranks {
                ensure!(
                    (1..=n_in.min(n_out)).contains(&rank),
                    "init-study: rank {rank} does not fit shape {n_in}x{n_out} (ranks must be in 1..=min(n_in, n_out))"
                );
            }
        }
        ensure!(
            self.weight_scale.is_finite() && self.weight_scale > 0.0,
            "init-study: weight scale {} must be positive",
            self.weight_scale
        );
        self.fit.check()
    }
}

/// One init of one layer at one rank under one σ.
#[derive(Clone, Debug, Serialize)]
pub struct StudyRow {
    pub n_in: usize,
    pub n_out: usize,
    pub activation: Activation,
    pub rank: usize,
    pub method: LowRankInit,
    pub error: FunctionError,
    /// Time of the init given the SVD (factor formation, rescaling or the Adam fit).
    pub method_seconds: f64,
    /// `method_seconds` plus the shape's SVD: the cost of the init from scratch.
    pub total_seconds: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct ShapeTiming {
    pub n_in: usize,
    pub n_out: usize,
    pub svd_seconds: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct StudyReport {
    pub backend: String,
    pub config: StudyConfig,
    pub shapes: Vec<ShapeTiming>,
    pub rows: Vec<StudyRow>,
    pub acceptance: Vec<Acceptance>,
}

/// The acceptance check for one (shape, σ): at every rank ≤ n_in/8 the function init's
/// error is below the spectral init's, and the gap (spectral − function) widens as rank falls.
#[derive(Clone, Debug, Serialize)]
pub struct Acceptance {
    pub n_in: usize,
    pub n_out: usize,
    pub activation: Activation,
    /// Ranks ≤ n_in/8, ascending, with spectral − function at each (absolute and relative to spectral).
    pub ranks: Vec<usize>,
    pub gap: Vec<f64>,
    pub relative_gap: Vec<f64>,
    pub function_below_spectral: bool,
    pub gap_widens_as_rank_falls: bool,
    pub relative_gap_widens_as_rank_falls: bool,
}

/// Runs the study; `progress` receives one line per finished (shape, σ, rank).
pub fn run<B: Backend>(
    b: &B,
    cfg: &StudyConfig,
    progress: &mut dyn FnMut(String),
) -> Result<StudyReport> {
    cfg.check()?;
    let mut rng = Rng::new(cfg.seed);
    let (mut shapes, mut rows) = (Vec::new(), Vec::new());
    let total = cfg.shapes.len() * cfg.activations.len() * cfg.ranks.len();
    let mut done = 0;
    for &(n_in, n_out) in &cfg.shapes {
        let mut w = draw_dense(n_in, n_out, &mut rng);
        w.iter_mut()
            .for_each(|v| *v = (*v as f64 * cfg.weight_scale) as f32);
        let layer = DenseLayer { w: &w, n_in, n_out };
        let clock = Instant::now();
        let svd = ThinSvd::new(&layer).with_context(|| format!("init-study {n_in}x{n_out}"))?;
        let svd_seconds = clock.elapsed().as_secs_f64();
        progress(format!(
            "init-study: {n_in}x{n_out}: SVD {svd_seconds:.2} s"
        ));
        shapes.push(ShapeTiming {
            n_in,
            n_out,
            svd_seconds,
        });
        for &act in &cfg.activations {
            let probe = FunctionErrorProbe::new(b, &layer, act, cfg.samples, &mut rng)?;
            let opts = InitOptions {
                activation: act,
                fit: cfg.fit.clone(),
            };
            for &rank in &cfg.ranks {
                let mut line = format!("{n_in}x{n_out} {} rank {rank}:", act.name());
                for method in METHODS {
                    let clock = Instant::now();
                    let f = init_from_svd(b, method, &layer, &svd, rank, &opts, &mut rng)?;
                    let method_seconds = clock.elapsed().as_secs_f64();
                    let error = probe.error(b, &f)?;
                    line += &format!(" {method:?} {:.4} ({method_seconds:.2} s)", error.relative);
                    rows.push(StudyRow {
                        n_in,
                        n_out,
                        activation: act,
                        rank,
                        method,
                        error,
                        method_seconds,
                        total_seconds: svd_seconds + method_seconds,
                    });
                }
                done += 1;
                progress(format!("init-study [{done}/{total}] {line}"));
            }
        }
    }
    let acceptance = acceptance(cfg, &rows);
    Ok(StudyReport {
        backend: b.name(),
        config: cfg.clone(),
        shapes,
        rows,
        acceptance,
    })
}

fn error_of(rows: &[StudyRow], key: (usize, usize, Activation, usize), m: LowRankInit) -> f64 {
    rows.iter()
        .find(|r| (r.n_in, r.n_out, r.activation, r.rank) == key && r.method == m)
        .map_or(f64::NAN, |r| r.error.relative)
}

fn acceptance(cfg: &StudyConfig, rows: &[StudyRow]) -> Vec<Acceptance> {
    let mut out = Vec::new();
    for &(n_in, n_out) in &cfg.shapes {
        for &act in &cfg.activations {
            let mut ranks: Vec<usize> = cfg
                .ranks
                .iter()
                .copied()
                .filter(|&r| r <= n_in / 8)
                .collect();
            ranks.sort_unstable();
            ranks.dedup();
            let pair = |r| {
                let key = (n_in, n_out, act, r);
                let s = error_of(rows, key, LowRankInit::Spectral);
                (s, error_of(rows, key, LowRankInit::Function))
            };
            let gap: Vec<f64> = ranks
                .iter()
                .map(|&r| {
                    let (s, f) = pair(r);
                    s - f
                })
                .collect();
            let relative_gap: Vec<f64> = ranks
                .iter()
                .map(|&r| {
                    let (s, f) = pair(r);
                    (s - f) / s
                })
                .collect();
            // Ascending ranks: the gap widens as rank falls when it never grows with rank.
            let shrinking = |g: &[f64]| g.windows(2).all(|w| w[1] <= w[0]);
            out.push(Acceptance {
                n_in,
                n_out,
                activation: act,
                function_below_spectral: gap.iter().all(|&g| g > 0.0),
                gap_widens_as_rank_falls: shrinking(&gap),
                relative_gap_widens_as_rank_falls: shrinking(&relative_gap),
                ranks,
                gap,
                relative_gap,
            });
        }
    }
    out
}

/// The results as a markdown table: one line per (shape, σ, rank), errors ± standard error and
/// each init's total time (SVD included).
pub fn markdown_table(report: &StudyReport) -> String {
    let mut s = String::from(
        "| shape | σ | rank | spectral | function-closed | function | gap (spec − fn) | spectral s | closed s | function s |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let mut keys: Vec<(usize, usize, Activation, usize)> = Vec::new();
    for r in &report.rows {
        let key = (r.n_in, r.n_out, r.activation, r.rank);
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    for key in keys {
        let row = |m| {
            report
                .rows
                .iter()
                .find(|r| (r.n_in, r.n_out, r.activation, r.rank) == key && r.method == m)
                .expect("every method ran for every key")
        };
        let [sp, cl, fun] = METHODS.map(row);
        let err = |r: &StudyRow| format!("{:.4} ± {:.4}", r.error.relative, r.error.stderr);
        s += &format!(
            "| {}x{} | {} | {} | {} | {} | {} | {:+.4} | {:.2} | {:.2} | {:.2} |\n",
            key.0,
            key.1,
            key.2.name(),
            key.3,
            err(sp),
            err(cl),
            err(fun),
            sp.error.relative - fun.error.relative,
            sp.total_seconds,
            cl.total_seconds,
            fun.total_seconds
        );
    }
    s
}

//! Compressing deep linear networks through their low-dimensional dynamics (SCIENCE.md §4): train
//! the original DLN and the compressed one on the same problem with the same step sizes, side by
//! side, and record iterations, wall-clock time and recovery error for both.
//!
//! float64 on the CPU throughout; the hot loop is the 3(L − 1) GEMMs per step in `network`.

pub mod linalg;
pub mod network;
pub mod plot;
pub mod problem;
pub mod sensing;
pub mod train;

use anyhow::{bail, Context, Result};
use network::{CompressedInit, Dln};
use problem::{Problem, ProblemSpec};
use serde::Serialize;
use std::io::Write;
use std::path::PathBuf;
use train::{LogPoint, RunSummary, TrainOptions};

#[derive(Clone, Debug, Serialize)]
pub struct ExperimentConfig {
    pub problem: ProblemSpec,
    pub depth: usize,
    pub eps: f64,
    pub lr: f64,
    /// Step multiplier for the compressed network's first and last layers.
    pub alpha: f64,
    /// Compressed width r̂ = width_factor·rank.
    pub width_factor: usize,
    pub compressed_init: CompressedInit,
    pub iters: u64,
    pub tol: f64,
    pub log_every: u64,
    pub threads_original: usize,
    pub threads_compressed: usize,
}

impl ExperimentConfig {
    fn validate(&self) -> Result<()> {
        self.problem.validate()?;
        if self.depth < 2 {
            bail!("--depth {} must be at least 2 (a deep linear network has a first and a last layer)", self.depth);
        }
        for (flag, v) in [
            ("--eps", self.eps),
            ("--lr", self.lr),
            ("--alpha", self.alpha),
            ("--tol", self.tol),
        ] {
            if !(v.is_finite() && v > 0.0) {
                bail!("{flag} {v} must be a positive finite number");
            }
        }
        let width = self.width_factor * self.problem.rank;
        if self.width_factor == 0 || width > self.problem.d {
            bail!("--width-factor {} gives compressed width {width}, which must be between 1 and d = {}", self.width_factor, self.problem.d);
        }
        if self.iters == 0 || self.log_every == 0 {
            bail!("--iters and --log-every must be positive");
        }
        for (flag, t) in [
            ("--threads-original", self.threads_original),
            ("--threads-compressed", self.threads_compressed),
        ] {
            if !(1..=2).contains(&t) {
                bail!("{flag} {t} must be 1 or 2");
            }
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub config: ExperimentConfig,
    pub original: RunSummary,
    pub compressed: RunSummary,
    /// seconds_to_tol(original) / seconds_to_tol(compressed), when both reached it.
    pub wall_clock_speedup: Option<f64>,
    /// Logged iterations (run by both) where the compressed recovery error exceeds the original's.
    pub iterations_where_compressed_is_worse: usize,
    pub logged_iterations_compared: usize,
    #[serde(skip)]
    pub curves: Vec<LogPoint>,
}

/// Builds the problem, trains the original then the compressed network on it, and compares them.
pub fn run(cfg: &ExperimentConfig) -> Result<Report> {
    cfg.validate()?;
    let mut problem = Problem::build(&cfg.problem)?;
    let opts = TrainOptions {
        iters: cfg.iters,
        tol: cfg.tol,
        log_every: cfg.log_every,
    };
    let mut rng = crate::util::rng::Rng::new(cfg.problem.seed ^ 0x5EED_D1A7);

    let mut original = Dln::original(cfg.problem.d, cfg.depth, cfg.eps, &mut rng);
    // The original network trains with the plain step everywhere, as in the reference code.
    original.set_steps(cfg.lr, 1.0);
    let (orig, orig_curve) = train::train(
        "original",
        &mut original,
        cfg.threads_original,
        &mut problem,
        &opts,
    )?;
    drop(original);

    let width = cfg.width_factor * cfg.problem.rank;
    let mut compressed = Dln::compressed(
        &problem.surrogate(),
        width,
        cfg.depth,
        cfg.eps,
        cfg.compressed_init,
        &mut rng,
    );
    compressed.set_steps(cfg.lr, cfg.alpha);
    let (comp, comp_curve) = train::train(
        "compressed",
        &mut compressed,
        cfg.threads_compressed,
        &mut problem,
        &opts,
    )?;

    let (worse, compared) = compare_curves(&orig_curve, &comp_curve);
    let wall_clock_speedup = orig
        .seconds_to_tol
        .zip(comp.seconds_to_tol)
        .map(|(o, c)| o / c);
    let curves = orig_curve.into_iter().chain(comp_curve).collect();
    Ok(Report {
        config: cfg.clone(),
        original: orig,
        compressed: comp,
        wall_clock_speedup,
        iterations_where_compressed_is_worse: worse,
        logged_iterations_compared: compared,
        curves,
    })
}

/// Over iterations logged for both: how many have the compressed error above the original's.
fn compare_curves(orig: &[LogPoint], comp: &[LogPoint]) -> (usize, usize) {
    let by_iter: std::collections::HashMap<u64, f64> =
        orig.iter().map(|p| (p.iter, p.recovery_error)).collect();
    let common: Vec<(f64, f64)> = comp
        .iter()
        .filter_map(|p| by_iter.get(&p.iter).map(|&o| (o, p.recovery_error)))
        .collect();
    (common.iter().filter(|(o, c)| c > o).count(), common.len())
}

/// Writes curves.jsonl, summary.json and curves.png into `dir`.
pub fn write_outputs(report: &Report, dir: &PathBuf) -> Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating output directory {}", dir.display()))?;
    let path = dir.join("curves.jsonl");
    let mut f = std::io::BufWriter::new(
        std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?,
    );
    for p in &report.curves {
        writeln!(f, "{}", serde_json::to_string(p)?)?;
    }
    f.flush()?;
    let summary = dir.join("summary.json");
    std::fs::write(&summary, serde_json::to_string_pretty(report)?)
        .with_context(|| format!("writing {}", summary.display()))?;
    let title = format!(
        "{:?}: d={}, r={}, L={}",
        report.config.problem.task,
        report.config.problem.d,
        report.config.problem.rank,
        report.config.depth
    );
    plot::plot_curves(&report.curves, &title, &dir.join("curves.png"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use problem::Task;

    type Edit = fn(&mut ExperimentConfig);

    fn small(task: Task) -> ExperimentConfig {
        ExperimentConfig {
            problem: ProblemSpec {
                task,
                d: 20,
                rank: 2,
                measurements: 400,
                observed: 0.5,
                seed: 1,
            },
            depth: 3,
            eps: 1e-2,
            lr: 5.0,
            alpha: 1.0,
            width_factor: 2,
            compressed_init: CompressedInit::Spectral,
            iters: 200_000,
            tol: 1e-10,
            log_every: 50,
            threads_original: 1,
            threads_compressed: 1,
        }
    }

    #[test]
    fn bad_depth_width_and_steps_are_refused_with_the_flag_named() {
        let cases: [(Edit, &str); 5] = [
            (|c| c.depth = 1, "--depth 1"),
            (|c| c.width_factor = 11, "--width-factor 11"),
            (|c| c.lr = -1.0, "--lr"),
            (|c| c.eps = f64::NAN, "--eps"),
            (|c| c.threads_original = 3, "--threads-original"),
        ];
        for (edit, needle) in cases {
            let mut c = small(Task::Factorization);
            edit(&mut c);
            let err = run(&c).expect_err("bad input accepted").to_string();
            assert!(err.contains(needle), "{err}");
        }
    }

    #[test]
    fn spectral_compression_reaches_tolerance_first_with_lower_error_on_small_factorization() {
        let r = run(&small(Task::Factorization)).unwrap();
        let (o, c) = (
            r.original.iters_to_tol.unwrap(),
            r.compressed.iters_to_tol.unwrap(),
        );
        assert!(c < o, "compressed {c} iterations vs original {o}");
        assert_eq!(r.iterations_where_compressed_is_worse, 0);
        assert!(r.logged_iterations_compared > 10);
        assert!(r.compressed.final_recovery_error < 1e-4);
    }
}

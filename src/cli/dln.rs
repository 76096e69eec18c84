//! `lowrank dln`: the deep-linear-network compression study (SCIENCE.md §4) on the CPU in float64.

use crate::experiments::dln::network::CompressedInit;
use crate::experiments::dln::problem::{ProblemSpec, Task};
use crate::experiments::dln::{self, ExperimentConfig};
use anyhow::Result;
use std::path::PathBuf;

/// Flags left unset take the paper's value for the chosen problem (shown per problem).
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Which problem: factorization (d=100, r=10, η=1, tol 1e-10), sensing (d=200, r=5, m=4000,
    /// η=20, tol 1e-12) or completion (d=100, r=5, 30% observed, η=10, α=5, tol 1e-12)
    #[arg(value_enum)]
    task: Task,
    /// Number of layers L (≥ 2)
    #[arg(long, default_value_t = 3)]
    depth: usize,
    /// Matrix dimension d
    #[arg(long)]
    d: Option<usize>,
    /// Rank r of the target (2·r ≤ d)
    #[arg(long)]
    rank: Option<usize>,
    /// Initial scale ε of every layer
    #[arg(long, default_value_t = 1e-2)]
    eps: f64,
    /// Step size η
    #[arg(long)]
    lr: Option<f64>,
    /// Step multiplier α of the compressed network's first and last layers
    #[arg(long)]
    alpha: Option<f64>,
    /// Iteration budget (training stops earlier at the tolerance)
    #[arg(long)]
    iters: Option<u64>,
    /// Stop once the training loss is below this
    #[arg(long)]
    tol: Option<f64>,
    /// Number of Gaussian measurements (sensing)
    #[arg(long, default_value_t = 4000)]
    measurements: usize,
    /// Fraction of entries observed, in (0, 1] (completion)
    #[arg(long, default_value_t = 0.3)]
    observed: f64,
    /// How the compressed network starts: spectral (the method) or random (the ablation)
    #[arg(long, value_enum, default_value_t = CompressedInit::Spectral)]
    compressed_init: CompressedInit,
    /// Compressed width r̂ = width-factor · r
    #[arg(long, default_value_t = 2)]
    width_factor: usize,
    /// Seed of the target, the measurements and the inits
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Log the curve every this many iterations
    #[arg(long, default_value_t = 100)]
    log_every: u64,
    /// Threads for the original network's products (1 or 2)
    #[arg(long, default_value_t = 2)]
    threads_original: usize,
    /// Threads for the compressed network's products (1 or 2)
    #[arg(long, default_value_t = 1)]
    threads_compressed: usize,
    /// Write curves.jsonl, summary.json and curves.png here
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

/// The paper's setup per problem: (d, rank, η, α, tolerance, iteration budget).
fn paper_defaults(task: Task) -> (usize, usize, f64, f64, f64, u64) {
    match task {
        Task::Factorization => (100, 10, 1.0, 1.0, 1e-10, 300_000),
        Task::Sensing => (200, 5, 20.0, 1.0, 1e-12, 25_000),
        Task::Completion => (100, 5, 10.0, 5.0, 1e-12, 100_000),
    }
}

pub fn run(args: Args) -> Result<()> {
    let (d, rank, lr, alpha, tol, iters) = paper_defaults(args.task);
    let cfg = ExperimentConfig {
        problem: ProblemSpec {
            task: args.task,
            d: args.d.unwrap_or(d),
            rank: args.rank.unwrap_or(rank),
            measurements: args.measurements,
            observed: args.observed,
            seed: args.seed,
        },
        depth: args.depth,
        eps: args.eps,
        lr: args.lr.unwrap_or(lr),
        alpha: args.alpha.unwrap_or(alpha),
        width_factor: args.width_factor,
        compressed_init: args.compressed_init,
        iters: args.iters.unwrap_or(iters),
        tol: args.tol.unwrap_or(tol),
        log_every: args.log_every,
        threads_original: args.threads_original,
        threads_compressed: args.threads_compressed,
    };
    let report = dln::run(&cfg)?;
    println!(
        "{:<11} {:>6} {:>8} {:>3} {:>12} {:>10} {:>10} {:>10} {:>10} {:>12}",
        "network",
        "width",
        "params",
        "thr",
        "iters→tol",
        "s→tol",
        "iters",
        "it/s",
        "cpu s",
        "final error"
    );
    for s in [&report.original, &report.compressed] {
        let it = s
            .iters_to_tol
            .map_or("not reached".into(), |i| i.to_string());
        let sec = s.seconds_to_tol.map_or("-".into(), |x| format!("{x:.2}"));
        let cpu = s.cpu_seconds_run.map_or("-".into(), |x| format!("{x:.2}"));
        println!(
            "{:<11} {:>6} {:>8} {:>3} {:>12} {:>10} {:>10} {:>10.0} {:>10} {:>12.3e}{}",
            s.network,
            s.width,
            s.parameters,
            s.threads,
            it,
            sec,
            s.iters_run,
            s.iters_per_second,
            cpu,
            s.final_recovery_error,
            if s.diverged { "  (diverged)" } else { "" }
        );
    }
    if let Some(x) = report.wall_clock_speedup {
        println!("wall-clock speed-up to tolerance: {x:.2}×");
    }
    println!(
        "logged iterations where the compressed error is above the original's: {} of {}",
        report.iterations_where_compressed_is_worse, report.logged_iterations_compared
    );
    if let Some(dir) = &args.out {
        dln::write_outputs(&report, dir)?;
        println!(
            "wrote {}/curves.jsonl, summary.json, curves.png",
            dir.display()
        );
    }
    Ok(())
}

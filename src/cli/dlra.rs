//! `lowrank dlra`: the geometry-aware low-rank optimiser study (SCIENCE.md §3) on the CPU in float64.

use crate::experiments::dlra::{self, plot::plot_curves, Method, StudyConfig};
use crate::lowrank::dlra::FreshMoment;
use anyhow::{Context, Result};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Rows of W
    #[arg(long, default_value_t = 100)]
    d_in: usize,
    /// Columns of W
    #[arg(long, default_value_t = 100)]
    d_out: usize,
    /// Rank budget r of every method (2·r ≤ both dimensions)
    #[arg(long, default_value_t = 5)]
    rank: usize,
    /// Rank r* of the target W*
    #[arg(long, default_value_t = 5)]
    target_rank: usize,
    /// Condition number κ of the input covariance Σ
    #[arg(long, default_value_t = 100.0)]
    cond: f64,
    /// Optimiser steps per run
    #[arg(long, default_value_t = 2000)]
    steps: u64,
    /// Step sizes tried for every method (comma-separated); the best final loss is reported
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "0.003,0.01,0.03,0.1,0.3,1"
    )]
    lrs: Vec<f64>,
    /// Heavy ball's friction γ (z ← (1 − γ)·z − h·g, θ ← θ + h·z)
    #[arg(long, default_value_t = 0.1)]
    gamma: f64,
    /// DLRA schedule: 1 = augment and truncate every step (parallel integrator); K > 1 = augment at
    /// the start of each window of K steps, coefficient steps with frozen bases, truncate at its end
    #[arg(long, default_value_t = 1)]
    window: u64,
    /// DLRA Adam's second moment in the directions each augmentation adds: zero (carried by the
    /// change of basis, as specified) or mean (the mean of the transported one)
    #[arg(long, value_enum, default_value_t = FreshMoment::Zero)]
    fresh_moment: FreshMoment,
    /// DLRA truncation by tolerance: keep the smallest rank (at most --rank) whose dropped singular
    /// values hold at most τ of ‖S‖ (the brief's τ ≈ 0.01–0.15) [default: always keep --rank]
    #[arg(long)]
    tau: Option<f64>,
    /// Scale of the start W0 = scale·U0·V0ᵀ (U0, V0 random orthonormal)
    #[arg(long, default_value_t = 1e-2)]
    init_scale: f64,
    /// Methods to run (comma-separated)
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = Method::ALL)]
    methods: Vec<Method>,
    /// Seed of the problem and the start
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Log the loss every this many steps
    #[arg(long, default_value_t = 10)]
    log_every: u64,
    /// Write curves.jsonl, summary.json and curves.png here
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

pub fn run(a: Args) -> Result<()> {
    let cfg = StudyConfig {
        d_in: a.d_in,
        d_out: a.d_out,
        rank: a.rank,
        target_rank: a.target_rank,
        cond: a.cond,
        steps: a.steps,
        lrs: a.lrs,
        gamma: a.gamma,
        window: a.window,
        fresh_moment: a.fresh_moment,
        tau: a.tau,
        init_scale: a.init_scale,
        seed: a.seed,
        log_every: a.log_every,
        methods: a.methods,
    };
    let result = dlra::run(&cfg, |what| eprintln!("running {what}"))?;
    println!(
        "{:<12} {:>8} {:>14} {:>10} {:>10} {:>10} {:>9} {:>5}  diverged at",
        "method", "best lr", "final L/L0", "→1e-2", "→1e-4", "→1e-6", "ms/step", "rank"
    );
    for b in &result.best {
        let at = |i: usize| b.steps_to[i].map_or("-".into(), |s| s.to_string());
        println!(
            "{:<12} {:>8} {:>14.3e} {:>10} {:>10} {:>10} {:>9.3} {:>5}  {:?}",
            b.method,
            format!("{:e}", b.lr),
            b.final_rel_loss,
            at(0),
            at(1),
            at(2),
            b.ms_per_step,
            b.final_rank,
            b.diverged
        );
    }
    if let Some(dir) = &a.out {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let lines: Vec<String> = result
            .points
            .iter()
            .map(serde_json::to_string)
            .collect::<Result<_, _>>()?;
        std::fs::write(dir.join("curves.jsonl"), lines.join("\n") + "\n")?;
        let summary = serde_json::json!({"config": cfg, "best": result.best});
        std::fs::write(
            dir.join("summary.json"),
            serde_json::to_string_pretty(&summary)?,
        )?;
        let title = format!(
            "rank {} of {}×{}, target rank {}, κ = {}, DLRA window {}",
            cfg.rank, cfg.d_in, cfg.d_out, cfg.target_rank, cfg.cond, cfg.window
        );
        plot_curves(
            &result.points,
            &result.best,
            &title,
            &dir.join("curves.png"),
        )?;
        println!(
            "wrote {}/curves.jsonl, summary.json, curves.png",
            dir.display()
        );
    }
    Ok(())
}

//! `lowrank init-study`: function error of the spectral, function-closed and function low-rank
//! inits per layer shape, rank and nonlinearity (SCIENCE.md §2), as a table and JSON.

use crate::cli::train::Device;
use crate::experiments::init_study::{self, StudyConfig, StudyReport};
use crate::lowrank::init::{Activation, FitConfig, FitStart};
use anyhow::{bail, Context, Result};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Layer shapes n_in x n_out, comma-separated (GPT-2 small's fc is 768x3072)
    #[arg(long, value_delimiter = ',', value_parser = parse_shape, default_value = "768x3072,1024x4096")]
    shapes: Vec<(usize, usize)>,
    /// Ranks, comma-separated; each must be at most min(n_in, n_out) of every shape
    #[arg(long, value_delimiter = ',', default_value = "16,32,64,128,256")]
    ranks: Vec<usize>,
    /// Nonlinearities after the layer, comma-separated
    #[arg(long, value_enum, value_delimiter = ',', default_value = "relu,gelu")]
    activations: Vec<Activation>,
    /// Fresh Gaussian inputs each error is measured on (a multiple of 256, at least 512)
    #[arg(long, default_value_t = 4096)]
    samples: usize,
    /// Gaussian inputs the `function` init fits on as a fixed pool (the authors use 1000); 0 draws
    /// fresh inputs every step
    #[arg(long, default_value_t = 0)]
    fit_samples: usize,
    /// Rows per Adam step of the `function` init
    #[arg(long, default_value_t = 512)]
    fit_batch: usize,
    /// Adam steps of the `function` init (0: no fit, `function` is its start)
    #[arg(long, default_value_t = 770)]
    fit_steps: usize,
    /// Peak Adam learning rate of the `function` init (the authors use 5e-3, constant)
    #[arg(long, default_value_t = 1e-3)]
    fit_lr: f32,
    /// Keep the `function` init's learning rate constant instead of decaying it on a cosine
    #[arg(long)]
    fit_constant_lr: bool,
    /// Where the `function` init's fit starts (the authors start from spectral)
    #[arg(long, value_enum, default_value_t = FitStart::Closed)]
    fit_start: FitStart,
    /// The authors' recipe for the `function` init: a pool of 1000, constant lr 5e-3, spectral
    /// start (overrides the other --fit-* settings but --fit-steps and --fit-batch)
    #[arg(long)]
    fit_authors: bool,
    /// Multiplies the std W is drawn with (1 is the usual 1/√n_in); larger values push σ's
    /// inputs into its nonlinear range
    #[arg(long, default_value_t = 1.0)]
    weight_scale: f64,
    /// Seed of the weights, the fitting pools and the fresh samples
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Also write the report as JSON to this file
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Backend: cpu (f32 reference) or cuda (not yet verified on a GPU)
    #[arg(long, value_enum, default_value_t = Device::Cpu)]
    device: Device,
}

/// "768x3072" → (768, 3072).
fn parse_shape(s: &str) -> Result<(usize, usize)> {
    let parsed = s
        .split_once(['x', 'X'])
        .and_then(|(a, b)| Some((a.trim().parse().ok()?, b.trim().parse().ok()?)));
    match parsed {
        Some((n_in, n_out)) if n_in > 0 && n_out > 0 => Ok((n_in, n_out)),
        _ => bail!("shape {s:?} is not N_INxN_OUT with positive sizes (e.g. 768x3072)"),
    }
}

pub fn run(a: Args) -> Result<()> {
    let cfg = StudyConfig {
        shapes: a.shapes,
        ranks: a.ranks,
        activations: a.activations,
        samples: a.samples,
        fit: if a.fit_authors {
            FitConfig {
                batch: a.fit_batch,
                steps: a.fit_steps,
                ..FitConfig::authors()
            }
        } else {
            FitConfig {
                samples: a.fit_samples,
                batch: a.fit_batch,
                steps: a.fit_steps,
                lr: a.fit_lr,
                cosine: !a.fit_constant_lr,
                start: a.fit_start,
            }
        },
        weight_scale: a.weight_scale,
        seed: a.seed,
    };
    let mut progress = |line: String| eprintln!("{line}");
    let report = on_device!(a.device, b => init_study::run(b, &cfg, &mut progress)?);
    print_report(&report);
    if let Some(path) = &a.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

fn print_report(report: &StudyReport) {
    println!("backend: {}", report.backend);
    for s in &report.shapes {
        println!("SVD of {}x{}: {:.2} s", s.n_in, s.n_out, s.svd_seconds);
    }
    println!("\nrelative function error E‖σ(xW) − σ(xŴ)‖² / E‖σ(xW)‖² on fresh samples (± standard error); times include the SVD\n");
    print!("{}", init_study::markdown_table(report));
    println!("\nacceptance (ranks ≤ n_in/8): function below spectral, gap widening as rank falls");
    for c in &report.acceptance {
        println!(
            "{}x{} {}: ranks {:?}, gap {:?}, relative gap {:?}: below {} widening {} (relative {})",
            c.n_in,
            c.n_out,
            c.activation.name(),
            c.ranks,
            c.gap.iter().map(|g| format!("{g:.4}")).collect::<Vec<_>>(),
            c.relative_gap
                .iter()
                .map(|g| format!("{g:.3}"))
                .collect::<Vec<_>>(),
            c.function_below_spectral,
            c.gap_widens_as_rank_falls,
            c.relative_gap_widens_as_rank_falls
        );
    }
}

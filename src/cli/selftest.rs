//! `lowrank selftest`: every CUDA op against its CPU twin (see src/selftest/).

use crate::backend::{cpu::Cpu, cuda::Cuda, Backend};
use crate::selftest::{all_cases, check, Outcome};
use anyhow::{bail, Context, Result};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Write every case's result as JSON to this file
    #[arg(long, value_name = "FILE")]
    json: Option<std::path::PathBuf>,
    /// Seed of the random inputs (each case draws its own stream from it)
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Run only cases whose op name contains this text
    #[arg(long)]
    filter: Option<String>,
}

pub fn run(args: Args) -> Result<()> {
    let gpu =
        Cuda::new().context("selftest compares CUDA ops with the CPU reference and needs a GPU")?;
    println!("selftest: {} against {}", gpu.name(), Cpu.name());
    println!(
        "{:<28} {:<16} {:>10} {:>8}  result",
        "op", "shape", "rel err", "bound"
    );
    let mut outcomes: Vec<Outcome> = Vec::new();
    for (i, case) in all_cases().iter().enumerate() {
        if args
            .filter
            .as_ref()
            .is_some_and(|f| !case.op().contains(f.as_str()))
        {
            continue;
        }
        let o = check(
            case,
            &gpu,
            &Cpu,
            args.seed.wrapping_mul(1_000_003).wrapping_add(i as u64),
        );
        println!(
            "{:<28} {:<16} {:>10.2e} {:>8.0e}  {}{}",
            o.op,
            o.shape,
            o.rel_err,
            o.bound,
            if o.pass { "pass" } else { "FAIL" },
            o.error
                .as_deref()
                .map(|e| format!(" ({e})"))
                .or_else(|| o.mismatch.as_ref().map(|m| format!(" ({m})")))
                .unwrap_or_default()
        );
        outcomes.push(o);
    }
    let failed = outcomes.iter().filter(|o| !o.pass).count();
    println!("{} passed, {} failed", outcomes.len() - failed, failed);
    if let Some(path) = &args.json {
        let doc = serde_json::json!({"device": gpu.info(), "seed": args.seed, "cases": outcomes});
        std::fs::write(path, serde_json::to_string_pretty(&doc)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if failed > 0 {
        bail!("{failed} selftest case(s) failed");
    }
    Ok(())
}

//! CPU forward+backward throughput of a GPT-2 preset:
//! `cargo run --release --example model_speed -- [preset] [batch] [seq] [steps]`
//! (defaults: tiny 8 64 5). Prints tokens/s and the achieved training FLOP rate.

use anyhow::{Context, Result};
use lowrank::backend::cpu::Cpu;
use lowrank::backend::Backend;
use lowrank::model::{Gpt, GptConfig};
use lowrank::util::rng::Rng;
use std::time::Instant;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, default: &str| args.get(i).cloned().unwrap_or_else(|| default.to_string());
    let config = GptConfig::preset(&arg(0, "tiny"))?;
    let batch: usize = arg(1, "8").parse().context("batch must be a number")?;
    let seq: usize = arg(2, "64").parse().context("seq must be a number")?;
    let steps: usize = arg(3, "5").parse().context("steps must be a number")?;
    let cpu = Cpu;
    let mut gpt = Gpt::new(&cpu, config, batch, seq, 0)?;
    let mut rng = Rng::new(1);
    let mut tokens = || {
        (0..batch * seq)
            .map(|_| rng.below(config.vocab_size as u64) as u32)
            .collect::<Vec<_>>()
    };
    let (inputs, targets) = (tokens(), tokens());
    gpt.zero_grads(&cpu)?;
    gpt.forward(&cpu, &inputs, Some(&targets))?; // warm-up: page in every buffer
    gpt.backward(&cpu, 1.0)?;
    let start = Instant::now();
    for _ in 0..steps {
        gpt.forward(&cpu, &inputs, Some(&targets))?;
        gpt.backward(&cpu, 1.0)?;
    }
    let secs = start.elapsed().as_secs_f64();
    let tok_s = (steps * batch * seq) as f64 / secs;
    println!(
        "{} B={batch} T={seq}: {:.1} ms/step, {tok_s:.0} tokens/s, {:.1} GFLOP/s ({})",
        arg(0, "tiny"),
        1e3 * secs / steps as f64,
        tok_s * gpt.training_flops_per_token() / 1e9,
        cpu.name()
    );
    Ok(())
}

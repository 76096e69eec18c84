//! `lowrank bench-train`: training-step throughput (forward, backward, AdamW) on random tokens, one
//! JSON line per model, in the format of scripts/peer-train.py so the two compare side by side
//! (scripts/cpu-train-bench.sh runs both). With `--lowrank`, the step includes the low-rank
//! schedule's work (growth checks, DLRA's augmentation and truncation) as `train` runs it; the
//! mean beside the median shows what a window's edges cost.

use crate::backend::{AttentionSaved, Backend};
use crate::cli::train::{Device, LowRankArgs};
use crate::lowrank::{LowRankConfig, LowRankMode};
use crate::model::memory::{self, Proposal, Purpose};
use crate::model::{ActivationPlan, Gpt, GptConfig, Keep};
use crate::optim::{AdamWConfig, AdamWOptimizer};
use crate::train::ranks::RankSchedule;
use crate::util::rng::Rng;
use anyhow::Result;
use std::time::Instant;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Model presets to time (repeatable)
    #[arg(long = "model", default_values_t = ["tiny".to_string(), "gpt2".to_string()])]
    models: Vec<String>,
    #[arg(long, default_value_t = 4)]
    batch: usize,
    #[arg(long, default_value_t = 64)]
    seq: usize,
    /// Timed steps (after two warm-up steps); the median is reported
    #[arg(long, default_value_t = 10)]
    steps: usize,
    #[arg(long, value_enum, default_value_t = Device::Cpu)]
    device: Device,
    /// Keep one layer's GELU output and form each again in the backward (`train --recompute-gelu`)
    #[arg(long)]
    recompute_gelu: bool,
    /// The low-rank settings of `train` (rank logging is left off: it is not part of a step;
    /// LoRA's frozen base is the random init, see the command's help)
    #[command(flatten)]
    lowrank: LowRankArgs,
}

pub fn run(a: Args) -> Result<()> {
    on_device!(a.device, b => bench(b, &a))
}

fn bench<B: Backend>(b: &B, a: &Args) -> Result<()> {
    for name in &a.models {
        let mut lowrank = LowRankConfig {
            rank_log_every: 0,
            ..a.lowrank.config(name)
        };
        if lowrank.mode == LowRankMode::Lora {
            if let Some(base) = &lowrank.lora_base {
                eprintln!("bench-train: --lora-base {base} is not read; the frozen base is the random init (the step's time does not depend on its values)");
            }
            lowrank.lora_base = Some("the random init".into());
        }
        let lowrank = &lowrank;
        let config = GptConfig::preset(name)?;
        let plan = ActivationPlan {
            batch: a.batch,
            seq: a.seq,
            keep: Keep::Backward {
                recompute_gelu: a.recompute_gelu,
            },
        };
        let proposal = Proposal {
            model: name,
            config: &config,
            lr: lowrank,
            plan,
            purpose: Purpose::Training {
                checkpoints: false,
                accum: None,
            },
        };
        let memory = memory::check(b, &proposal)?.plan;
        let mut model = Gpt::with_plan(b, config, lowrank, plan, 0)?;
        let mut opt = AdamWOptimizer::new(
            b,
            AdamWConfig::default(),
            model.layout().trainable_len(),
            &model.param_groups(lowrank),
        )?;
        let mut ranks = RankSchedule::new(lowrank, b, &model, None)?;
        let mut rng = Rng::new(0);
        let tokens: Vec<u32> = (0..a.batch * (a.seq + 1))
            .map(|_| rng.below(50257) as u32)
            .collect();
        let (mut inputs, mut targets) = (Vec::new(), Vec::new());
        crate::train::run::split_windows(&tokens, a.batch, a.seq, &mut inputs, &mut targets);
        let mut times = Vec::new();
        let mut loss = 0.0;
        let last = (a.steps + 2) as u32;
        for step in 1..=last {
            let t0 = Instant::now();
            model.zero_grads(b)?;
            loss = model
                .forward(b, &inputs, Some(&targets))?
                .unwrap_or(f32::NAN);
            model.backward(b, 1.0)?;
            ranks.before_step(b, &mut model, &mut opt, step)?;
            let bufs = model.optimizer_buffers()?;
            opt.step(b, 1e-4, bufs.params, bufs.grads, bufs.compute_copy)?;
            ranks.after_step(b, &mut model, &mut opt, step)?;
            b.synchronize()?;
            times.push(t0.elapsed().as_secs_f64());
        }
        let mut timed = times[2..].to_vec();
        let mean = timed.iter().sum::<f64>() / timed.len() as f64;
        timed.sort_by(f64::total_cmp);
        let med = timed[timed.len() / 2];
        let tok_per_s = (a.batch * a.seq) as f64 / med;
        let tflops = tok_per_s * model.training_flops_per_token() / 1e12;
        let attention = match b.attention_saved(config.head_size(), b.compute_dtype()) {
            AttentionSaved::LogSumExp => "flash",
            AttentionSaved::Probabilities => "materialized",
        };
        let line = serde_json::json!({
            "peer": "lowrank", "backend": b.name(), "model": name, "batch": a.batch, "seq": a.seq,
            "lowrank": lowrank.mode, "rank_init": lowrank.rank_init, "attention": attention,
            "threads": rayon::current_num_threads(), "median_step_s": med, "mean_step_s": mean,
            "tok_per_s": tok_per_s, "tflops": tflops, "mfu": b.peak_tflops().map(|p| tflops / p),
            "params": model.num_params(), "activation_bytes": model.activation_bytes(b),
            "memory_bytes": memory.device(), "loss": loss,
            "recompute_gelu": a.recompute_gelu,
            "settings": b.settings().into_iter().collect::<std::collections::BTreeMap<_, _>>(),
        });
        println!("{line}");
    }
    Ok(())
}

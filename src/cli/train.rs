//! `lowrank train`: pre-train a GPT-2-class model (with no --data: the tiny model on the corpus
//! built into the binary).

use crate::backend::{cpu::Cpu, cuda::Cuda};
use crate::optim::Decay;
use crate::train::{self, RunOptions, TrainConfig};
use anyhow::{Context, Result};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Model preset: tiny, gpt2, gpt2-medium, gpt2-large
    #[arg(long, default_value = "tiny")]
    model: String,
    /// Training shards: a file or a pattern with `*` (llm.c format, see `lowrank tokenize`);
    /// without it, the corpus built into the binary
    #[arg(long, value_name = "GLOB")]
    data: Option<String>,
    /// Validation shards [default: --data with `_train_` replaced by `_val_`]
    #[arg(long, value_name = "GLOB")]
    val_data: Option<String>,
    /// Sequences per micro-batch
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Tokens per sequence (context length)
    #[arg(long, default_value_t = 64)]
    seq: usize,
    /// Micro-batches accumulated per optimiser step
    #[arg(long, default_value_t = 1)]
    accum: usize,
    /// Peak learning rate
    #[arg(long, default_value_t = 3e-3)]
    lr: f32,
    /// Learning rate at the last step, as a fraction of the peak
    #[arg(long, default_value_t = 0.1)]
    final_lr_frac: f32,
    /// Linear warm-up steps
    #[arg(long, default_value_t = 10)]
    warmup: u32,
    /// Optimiser steps
    #[arg(long, default_value_t = 100)]
    steps: u32,
    /// Learning-rate decay after warm-up
    #[arg(long, value_enum, default_value_t = Decay::Cosine)]
    decay: Decay,
    /// AdamW weight decay (matrices only)
    #[arg(long, default_value_t = 0.1)]
    weight_decay: f32,
    /// Clip the global gradient norm to this (0: no clipping)
    #[arg(long, default_value_t = 1.0)]
    clip: f32,
    /// Evaluate on the validation split every K steps (0: never)
    #[arg(long, default_value_t = 25)]
    eval_every: u32,
    /// Validation batches per evaluation
    #[arg(long, default_value_t = 8)]
    eval_batches: usize,
    /// Write a checkpoint every K steps (0: only at the end or on interruption)
    #[arg(long, default_value_t = 50)]
    checkpoint_every: u32,
    /// Seed of the initialisation and the data order
    #[arg(long, default_value_t = 1337)]
    seed: u64,
    /// Output directory: config.json, metrics.jsonl, checkpoints
    #[arg(long, default_value = "runs/train")]
    out: PathBuf,
    /// Continue the run in this directory from its latest checkpoint (same settings required)
    #[arg(long, value_name = "DIR")]
    resume: Option<PathBuf>,
    /// Stop after this step with a checkpoint, as an interruption would
    #[arg(long, value_name = "STEP")]
    stop_at: Option<u32>,
    /// Backend: cpu (f32 reference) or cuda (bf16; not yet verified on a GPU)
    #[arg(long, value_enum, default_value_t = Device::Cpu)]
    device: Device,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq)]
pub enum Device {
    Cpu,
    Cuda,
}

pub fn run(a: Args) -> Result<()> {
    let cfg = TrainConfig {
        model: a.model,
        data: a.data,
        val_data: a.val_data,
        batch: a.batch,
        seq: a.seq,
        accum: a.accum,
        lr: a.lr,
        final_lr_frac: a.final_lr_frac,
        warmup: a.warmup,
        steps: a.steps,
        decay: a.decay,
        weight_decay: a.weight_decay,
        clip: a.clip,
        eval_every: a.eval_every,
        eval_batches: a.eval_batches,
        checkpoint_every: a.checkpoint_every,
        seed: a.seed,
    };
    let out = a.resume.clone().unwrap_or(a.out);
    let interrupted = Arc::new(AtomicBool::new(false));
    let flag = interrupted.clone();
    ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            eprintln!("second interrupt: exiting without a checkpoint");
            std::process::exit(130);
        }
        eprintln!("interrupt: finishing the current step, then writing a checkpoint (Ctrl-C again to abort)");
    })
    .context("cannot install the Ctrl-C handler")?;
    let opts = RunOptions {
        out: out.clone(),
        resume: a.resume,
        stop_at: a.stop_at,
        interrupted,
    };
    let summary = match a.device {
        Device::Cpu => train::run(&Cpu, cfg, opts)?,
        Device::Cuda => train::run(
            &Cuda::new().context("--device cuda needs a GPU")?,
            cfg,
            opts,
        )?,
    };
    if !summary.interrupted {
        let val = summary
            .last_val_loss
            .map(|v| format!(", validation loss {v:.4} (ppl {:.2})", v.exp()))
            .unwrap_or_default();
        println!(
            "done: {} steps, final training loss {:.4}{val}; metrics in {}, plot with `lowrank plot {}`",
            summary.step,
            summary.last_train_loss.unwrap_or(f32::NAN),
            out.join("metrics.jsonl").display(),
            out.display()
        );
    }
    Ok(())
}

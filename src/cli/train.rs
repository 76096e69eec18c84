//! `lowrank train`: pre-train a GPT-2-class model (with no --data: the tiny model on the corpus
//! built into the binary).

use crate::lowrank::config::absolute_path;
use crate::lowrank::dlra::FreshMoment;
use crate::lowrank::{
    DlraRule, LowRankConfig, LowRankInit, LowRankLayers, LowRankMode, MomentTransport,
};
use crate::optim::Decay;
pub use crate::train::config::Device;
use crate::train::config::{default_lr, default_warmup};
use crate::train::{self, checkpoint, RunOptions, SampleEvery, TrainConfig};
use crate::util::profile::CaptureWindow;
use anyhow::{bail, Result};
use clap::ArgMatches;
use resume::on_command_line;
use std::path::{Path, PathBuf};

mod resume;

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
    /// Keep the MLP's GELU output of one layer, not of every layer, and form each again in the
    /// backward (llm.c's `-r 1`): (layers − 2) × batch × seq × 4·channels activations fewer (GPT-2
    /// small at batch 8 × 1024: 0.5 GB of bf16) for a GELU pass per layer; the same gradients
    #[arg(long)]
    recompute_gelu: bool,
    /// Peak learning rate [default: by --model: tiny 3e-3; gpt2 6e-4, gpt2-medium 3e-4,
    /// gpt2-large 2.5e-4, GPT-3's for those sizes; a resumed run keeps its own]
    #[arg(long)]
    lr: Option<f32>,
    /// Learning rate at the last step, as a fraction of the peak
    #[arg(long, default_value_t = 0.1)]
    final_lr_frac: f32,
    /// Linear warm-up steps (low-rank runs want a long one: 300 of 1500 steps removed their
    /// end-of-warm-up loss spike in results/inrank) [default: 30 % of --steps, at most 700;
    /// a resumed run keeps its own]
    #[arg(long)]
    warmup: Option<u32>,
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
    /// Write a checkpoint every K steps (0: only at the end or on interruption); training pauses to copy the step's tensors off the device, and the files are written behind the next steps (a checkpoint due before the last is written waits for it; the run's end and a stop wait for their own)
    #[arg(long, default_value_t = 50)]
    checkpoint_every: u32,
    /// Seed of the initialisation and the data order
    #[arg(long, default_value_t = 1337)]
    seed: u64,
    /// Output directory: config.json, metrics.jsonl, checkpoints [default: runs/MODEL-YYYYMMDD-HHMMSS]
    #[arg(long)]
    out: Option<PathBuf>,
    /// Start from these weights instead of GPT-2's random init, e.g. to fine-tune: a run or
    /// checkpoint directory, a Hugging Face GPT-2 model directory, or a GPT-2 safetensors file;
    /// dense runs only (LoRA takes its base with --lora-base)
    #[arg(long, value_name = "CKPT")]
    init_from: Option<String>,
    /// Continue the run in this directory from its latest checkpoint, with its settings: a flag
    /// given beside it changes the schedule (--steps, --lr, --eval-every, ...), while those that
    /// define the model and its data (--model, --data, --batch, --lowrank, ...) must be the run's
    #[arg(long, value_name = "DIR")]
    resume: Option<PathBuf>,
    /// Stop after this step with a checkpoint, as an interruption would
    #[arg(long, value_name = "STEP")]
    stop_at: Option<u32>,
    /// Run steps FIRST..=LAST under the CUDA profiler's capture, for
    /// `nsys profile --capture-range=cudaProfilerApi`; NVTX ranges name each step's phases and blocks
    #[arg(long, value_name = "FIRST:LAST")]
    profile_steps: Option<CaptureWindow>,
    /// Print a sample of the model every K steps (0: never): --sample-tokens tokens from a
    /// document's start, top-40 at temperature 1, seeded by the step (training is unaffected)
    #[arg(long, default_value_t = 0, value_name = "K")]
    sample_every: u32,
    /// Tokens per --sample-every sample
    #[arg(long, default_value_t = 48)]
    sample_tokens: usize,
    /// Verify before each optimiser update and after each step (rank changes included) that the
    /// compute copy of the weights (bf16 on cuda and cpu-bf16) equals the f32 master weights (those
    /// of the trained tensors: a frozen tensor is kept in the copy alone), and stop
    /// with an error naming the first stale tensor (a debugging aid: one cast and two downloads of
    /// the weights per check)
    #[arg(long)]
    check_compute_copy: bool,
    /// Backend: cpu (f32 reference), cpu-bf16 (the CPU in the GPU's precision) or cuda (bf16; not
    /// yet verified on a GPU); a resumed run keeps its own unless given
    #[arg(long, value_enum, default_value_t = Device::Cpu)]
    device: Device,
    #[command(flatten)]
    lowrank: LowRankArgs,
}

/// Low-rank layers and rank growth (SCIENCE.md §1).
#[derive(clap::Args, Debug)]
pub struct LowRankArgs {
    /// Parameterisation of the selected layers: dense; inrank (W0 + U·Vᵀ, growing rank);
    /// efficient (U·Vᵀ with a rank buffer, growing rank); lora (the whole --lora-base frozen, only
    /// (α/r)·U·Vᵀ trained, and the embeddings with --lora-embeddings);
    /// dln (U·M·Vᵀ, a compressed deep linear block of width 2r); dlra (U·S·Vᵀ trained by the
    /// DLRA integrator, rank up to r)
    #[arg(long = "lowrank", value_enum, default_value_t = LowRankMode::Dense)]
    mode: LowRankMode,
    /// Factor each MLP matrix as a compressed deep linear block: short for --lowrank dln
    /// --lowrank-layers mlp (width 2r with r = --rank-init)
    #[arg(long, conflicts_with_all = ["mode", "lowrank_layers"])]
    mlp_dln: bool,
    /// Initial rank r0 (lora: the fixed rank r; dln: the block's width is 2r; dlra: the rank r, bases
    /// augmented to 2r inside a window)
    #[arg(long, default_value_t = 2)]
    rank_init: usize,
    /// Rank buffer b: rows trained beyond the rank while growing (clamped to ⌊R/4⌋ per layer)
    #[arg(long, default_value_t = 100)]
    rank_buffer: usize,
    /// Growth threshold α in (0, 1]: the rank explains more than α of Σ s²
    #[arg(long, default_value_t = 0.9)]
    rank_alpha: f64,
    /// First growth check after this many optimiser steps
    #[arg(long, default_value_t = 25)]
    rank_warmup: u32,
    /// Optimiser steps between growth checks
    #[arg(long, default_value_t = 3)]
    rank_gap: u32,
    /// Stage-1 length in optimiser steps; then truncation to the ranks and fixed-rank training
    #[arg(long, default_value_t = 130)]
    stage1_steps: u32,
    /// Which layers are low-rank: mlp (c_fc, c_proj), attn (c_attn, c_proj) or all
    #[arg(long, value_enum, default_value_t = LowRankLayers::Mlp)]
    lowrank_layers: LowRankLayers,
    /// AdamW moments at truncation: rotate (carried into the new basis) or slice (reference code)
    #[arg(long, value_enum, default_value_t = MomentTransport::Rotate)]
    moment_transport: MomentTransport,
    /// Initialisation of the low-rank factors
    #[arg(long, value_enum, default_value_t = LowRankInit::Random)]
    lowrank_init: LowRankInit,
    /// LoRA's frozen base: a run or checkpoint directory, a Hugging Face GPT-2 model directory, or
    /// a GPT-2 safetensors file. The run's checkpoints hold the trained tensors alone and read the
    /// base again from this path (recorded absolute), so leave it in place
    #[arg(long, value_name = "CKPT")]
    lora_base: Option<String>,
    /// LoRA's α: the update is scaled by α/r [default: 2r]
    #[arg(long)]
    lora_alpha: Option<f32>,
    /// LoRA also trains the token and position embeddings (the LM head is tied to them), as
    /// PEFT's modules_to_save: for a domain whose tokens the base rarely saw
    #[arg(long)]
    lora_embeddings: bool,
    /// Log each layer's rank and r90 to metrics.jsonl every K steps (0: never) [default: 10; 100
    /// for a dense run of a GPT-2 preset, where r90 of W − W0 costs a host eigensolve of a
    /// 768² to 1280² matrix per MLP matrix]
    #[arg(long)]
    rank_log_every: Option<u32>,
    /// Learning rate of the low-rank factors U and V as a multiple of --lr (other parameters: 1)
    #[arg(long, default_value_t = 1.0)]
    factor_lr_scale: f32,
    /// dln: scale ε of each factor at init, W = ε³·Û·V̂ᵀ [default: the cube root of the
    /// surrogate's mean top-2r singular value, so the block starts at the surrogate's scale]
    #[arg(long)]
    dln_eps: Option<f32>,
    /// dlra: optimiser steps per window. The bases are augmented to 2r at a window's first step,
    /// AdamW steps S inside it with the bases frozen, and an SVD of S truncates at its last step
    /// (1: augment and truncate every step, the parallel integrator)
    #[arg(long, default_value_t = 10)]
    dlra_window: u32,
    /// dlra: truncate to the smallest rank (at most --rank-init) whose dropped singular values hold
    /// at most τ of ‖S‖ (SCIENCE.md §3: 0.01–0.15) [default: always keep --rank-init]
    #[arg(long)]
    dlra_tau: Option<f64>,
    /// dlra: AdamW's second moment in the directions each augmentation adds: zero (carried by
    /// the change of basis, as specified) or mean (the mean of the transported one)
    #[arg(long, value_enum, default_value_t = FreshMoment::Zero)]
    dlra_fresh_moment: FreshMoment,
    /// dlra: what steps S: adam (AdamW, moments transported at every basis change) or heavy-ball
    /// (friction form z ← (1 − γ)·z − h·g, S ← S + h·z, with h = --lr × --factor-lr-scale:
    /// heavy ball's steps scale as h², so it wants a much larger --factor-lr-scale than 1)
    #[arg(long, value_enum, default_value_t = DlraRule::Adam)]
    dlra_rule: DlraRule,
    /// dlra heavy ball: the friction γ in [0, 1]
    #[arg(long, default_value_t = 0.1)]
    dlra_friction: f32,
}

impl LowRankArgs {
    /// The settings for a run of the `model` preset.
    pub(crate) fn config(&self, model: &str) -> LowRankConfig {
        let (mode, layers) = match self.mlp_dln {
            true => (LowRankMode::Dln, LowRankLayers::Mlp),
            false => (self.mode, self.lowrank_layers),
        };
        let dense_monitor_is_costly = mode == LowRankMode::Dense && model != "tiny";
        let rank_log_every =
            self.rank_log_every
                .unwrap_or(if dense_monitor_is_costly { 100 } else { 10 });
        LowRankConfig {
            mode,
            layers,
            rank_init: self.rank_init,
            rank_buffer: self.rank_buffer,
            rank_alpha: self.rank_alpha,
            rank_warmup: self.rank_warmup,
            rank_gap: self.rank_gap,
            stage1_steps: self.stage1_steps,
            moment_transport: self.moment_transport,
            init: self.lowrank_init,
            lora_base: self.lora_base.as_deref().map(absolute_path),
            lora_alpha: self.lora_alpha,
            lora_embeddings: self.lora_embeddings,
            rank_log_every,
            factor_lr_scale: self.factor_lr_scale,
            dln_eps: self.dln_eps,
            dlra_window: self.dlra_window,
            dlra_tau: self.dlra_tau,
            dlra_fresh_moment: self.dlra_fresh_moment,
            dlra_rule: self.dlra_rule,
            dlra_friction: self.dlra_friction,
        }
    }
}

/// The settings this command line asks for (defaults where a flag is not given).
pub(crate) fn config(a: &Args) -> TrainConfig {
    TrainConfig {
        model: a.model.clone(),
        data: a.data.clone(),
        val_data: a.val_data.clone(),
        batch: a.batch,
        seq: a.seq,
        accum: a.accum,
        lr: a.lr.unwrap_or_else(|| default_lr(&a.model)),
        final_lr_frac: a.final_lr_frac,
        warmup: a.warmup.unwrap_or_else(|| default_warmup(a.steps)),
        steps: a.steps,
        decay: a.decay,
        weight_decay: a.weight_decay,
        clip: a.clip,
        eval_every: a.eval_every,
        eval_batches: a.eval_batches,
        checkpoint_every: a.checkpoint_every,
        seed: a.seed,
        lowrank: a.lowrank.config(&a.model),
        init_from: a.init_from.clone(),
        recompute_gelu: a.recompute_gelu,
        device: a.device,
    }
}

/// `lowrank train`; `m` says which of `a`'s flags the command line gave (a resumed run keeps its
/// own settings for the others).
pub fn run(a: Args, m: &ArgMatches) -> Result<()> {
    let flags = config(&a);
    let (cfg, finished) = match &a.resume {
        None => (flags, None),
        Some(dir) => {
            if let Some(out) = a.out.as_deref().filter(|out| !same_dir(out, dir)) {
                bail!(
                    "--out {} and --resume {} name different directories: a resumed run goes on \
                     writing into its own (drop --out; --init-from starts a new run from a \
                     checkpoint's weights)",
                    out.display(),
                    dir.display()
                );
            }
            let state = checkpoint::load_state(dir)?;
            let cfg = resume::resumed_config(&flags, &state.config, on_command_line(m));
            // Settings the run cannot change are refused by train::run, finished or not.
            let done = state.step >= cfg.steps && cfg.resume_mismatch(&state.config).is_none();
            (cfg, done.then_some((dir, state.step)))
        }
    };
    // Resuming a finished run (a restart script run once more) does nothing, and says so.
    if let Some((dir, step)) = finished {
        println!(
            "nothing to train: the run in {} is at step {step} of its {} steps; --steps with a \
             larger number trains it further (the learning-rate schedule stretches to the new \
             length)",
            dir.display(),
            cfg.steps
        );
        return Ok(());
    }
    let fresh = || {
        PathBuf::from("runs").join(format!(
            "{}-{}",
            a.model,
            utc_stamp(std::time::SystemTime::now())
        ))
    };
    let out = a.resume.clone().or(a.out).unwrap_or_else(fresh);
    let interrupted = super::interrupt_flag(
        "interrupt: finishing the current step, then writing a checkpoint (Ctrl-C again to abort)",
        "second interrupt: exiting without a checkpoint",
    )?;
    let opts = RunOptions {
        out: out.clone(),
        resume: a.resume,
        stop_at: a.stop_at,
        interrupted,
        profile: a.profile_steps,
        samples: (a.sample_every > 0).then_some(SampleEvery {
            every: a.sample_every,
            tokens: a.sample_tokens,
        }),
        check_compute_copy: a.check_compute_copy,
    };
    let summary = on_device!(cfg.device, b => train::run(b, cfg, opts)?);
    if !summary.interrupted {
        let val = summary
            .last_val_loss
            .map(|v| format!(", validation loss {v:.4} (ppl {:.2})", v.exp()))
            .unwrap_or_default();
        let c = &summary.checkpoints;
        let checkpoints = match c.written {
            0 => String::new(),
            n => format!(
                "; {n} checkpoint{} ({:.1} s of writing: training paused {:.1} s for them, the end waited {:.1} s for the last)",
                if n == 1 { "" } else { "s" },
                c.writing.as_secs_f64(),
                c.paused.as_secs_f64(),
                c.last_wait.as_secs_f64()
            ),
        };
        let peak = crate::util::meminfo::peak_resident()
            .map(|b| format!("; peak host memory {}", crate::util::meminfo::gb(b)))
            .unwrap_or_default();
        println!(
            "done: {} steps, final training loss {:.4}{val}{checkpoints}{peak}; metrics in {}, plot with `lowrank plot {}`",
            summary.step,
            summary.last_train_loss.unwrap_or(f32::NAN),
            out.join("metrics.jsonl").display(),
            out.display()
        );
    }
    Ok(())
}

/// Whether two paths name one directory (a path that does not exist names none).
fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// "YYYYMMDD-HHMMSS" in UTC, for default run directories that never collide with an earlier run.
fn utc_stamp(t: std::time::SystemTime) -> String {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}-{:02}{:02}{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::LowRankArgs;
    use clap::Parser;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        lowrank: LowRankArgs,
    }

    /// Ranks are logged every 10 steps, except in dense runs of GPT-2 presets (every 100, their
    /// monitor being a host eigensolve per MLP matrix); an explicit flag always wins.
    #[test]
    fn rank_log_cadence_defaults_by_run_and_yields_to_the_flag() {
        let every = |args: &[&str], model: &str| {
            let flags = Flags::try_parse_from([&["train"], args].concat()).unwrap();
            flags.lowrank.config(model).rank_log_every
        };
        assert_eq!(every(&[], "tiny"), 10);
        assert_eq!(every(&[], "gpt2"), 100);
        assert_eq!(every(&[], "gpt2-medium"), 100);
        assert_eq!(every(&["--lowrank", "efficient"], "gpt2"), 10);
        assert_eq!(every(&["--mlp-dln"], "gpt2"), 10);
        assert_eq!(every(&["--rank-log-every", "5"], "gpt2"), 5);
        assert_eq!(every(&["--rank-log-every", "0"], "tiny"), 0);
    }

    #[test]
    fn utc_stamp_matches_known_dates() {
        let at = |s| std::time::UNIX_EPOCH + std::time::Duration::from_secs(s);
        assert_eq!(super::utc_stamp(at(0)), "19700101-000000");
        // 2000-02-29 12:34:56 UTC = 951827696 s; 2026-11-23 00:00:00 UTC = 1795392000 s.
        assert_eq!(super::utc_stamp(at(951_827_696)), "20000229-123456");
        assert_eq!(super::utc_stamp(at(1_795_392_000)), "20261123-000000");
    }
}

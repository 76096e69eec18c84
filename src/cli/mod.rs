//! The command line: one file per subcommand, each with its flags (and their help) and its `run`.

/// Evaluates `$body` with `$b` bound to the backend that `$device` (a `train::Device`) names; a
/// missing GPU is an error that says so.
macro_rules! on_device {
    ($device:expr, $b:ident => $body:expr) => {
        match $device {
            $crate::cli::train::Device::Cpu => {
                let $b = &$crate::backend::cpu::Cpu;
                $body
            }
            $crate::cli::train::Device::CpuBf16 => {
                let $b = &$crate::backend::cpu::CpuBf16;
                $body
            }
            $crate::cli::train::Device::Cuda => {
                let $b = &anyhow::Context::context(
                    $crate::backend::cuda::Cuda::new(),
                    "--device cuda needs a GPU",
                )?;
                $body
            }
        }
    };
}

pub mod bench;
pub mod bench_train;
pub mod dln;
pub mod dlra;
pub mod doctor;
pub mod eval;
pub mod export;
pub mod init_study;
pub mod plot;
pub mod sample;
pub mod selftest;
pub mod tokenize;
pub mod train;

use crate::backend::Backend;
use crate::model::hf::CheckpointSource;
use crate::model::{memory, ActivationPlan, Gpt};
use anyhow::Context;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "lowrank",
    args_override_self = true,
    version,
    about = "Low-rank pre-training of GPT-2-class language models (CPU reference, CUDA kernels)",
    long_about = "Low-rank pre-training of GPT-2-class language models.\n\n\
    Start with `lowrank doctor` to see what this machine and binary can do.\n\
    Environment: LOWRANK_DEVICE=N picks the GPU (default 0)."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Pre-train a GPT-2-class model (with no --data: the tiny model on the built-in corpus)
    ///
    /// Before anything is allocated the run's memory is planned from its shapes and printed; a
    /// run that would not fit the GPU's free memory (--device cuda) or the machine's available
    /// memory is refused with the batch that would fit at the same tokens a step
    /// (LOWRANK_MEMORY_CHECK=0 starts it anyway).
    Train(train::Args),
    /// Loss and perplexity of a checkpoint on a split
    Eval(eval::Args),
    /// Write a checkpoint as a dense GPT-2 model directory in Hugging Face's layout (low-rank
    /// layers merged), for transformers or any GPT-2 tool
    Export(export::Args),
    /// Continue a prompt with a checkpoint's model, printing the text as it is generated
    Sample(sample::Args),
    /// Draw DIR/loss.png from a training run's metrics.jsonl
    Plot(plot::Args),
    /// Build and machine facts: embedded kernels and their resources, the GPU, the CUDA libraries
    Doctor(doctor::Args),
    /// Compare every CUDA op with its CPU reference on fresh random inputs (needs a GPU)
    Selftest(selftest::Args),
    /// Time ops on the GPU with CUDA events and report them against the device's ceilings
    Bench(bench::Args),
    /// Tokenize text (WikiText-103 or any UTF-8 files) into GPT-2 token shards in llm.c's format
    Tokenize(tokenize::Args),
    /// Training-step throughput (forward, backward, AdamW) on random tokens, as JSON lines
    ///
    /// With `--lowrank lora` the frozen base is the random init: a step's time does not depend on
    /// the base's values, so no --lora-base is needed (one given is not read).
    BenchTrain(bench_train::Args),
    /// Deep linear networks: train the original and the compressed network side by side (CPU, f64)
    Dln(dln::Args),
    /// Geometry-aware low-rank optimisers (DLRA Adam and heavy ball) against Adam and heavy ball on
    /// the factors, on a rank-constrained quadratic (CPU, f64)
    Dlra(dlra::Args),
    /// Function error of the spectral, function-closed and function low-rank inits per shape and rank
    InitStudy(init_study::Args),
}

/// Parses the command line (clap's message and exit on a bad one) and runs the subcommand.
pub fn main() -> anyhow::Result<()> {
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    match cli.command {
        Command::Train(a) => {
            let m = matches.subcommand_matches("train");
            train::run(a, m.context("the train subcommand's arguments")?)
        }
        Command::Eval(a) => eval::run(a),
        Command::Export(a) => export::run(a),
        Command::Sample(a) => sample::run(a),
        Command::Plot(a) => plot::run(a),
        Command::BenchTrain(a) => bench_train::run(a),
        Command::Doctor(a) => doctor::run(a),
        Command::Selftest(a) => selftest::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Tokenize(a) => tokenize::run(a),
        Command::Dln(a) => dln::run(a),
        Command::Dlra(a) => dlra::run(a),
        Command::InitStudy(a) => init_study::run(a),
    }
}

/// The Ctrl-C handling of a long command: the first Ctrl-C sets the returned flag, which the
/// command polls to stop cleanly, and prints `stopping`; a second prints `exiting` and exits at
/// once with 130 (128 + SIGINT), as the signal would have.
fn interrupt_flag(
    stopping: &'static str,
    exiting: &'static str,
) -> anyhow::Result<std::sync::Arc<std::sync::atomic::AtomicBool>> {
    use std::sync::atomic::{AtomicBool, Ordering};
    let interrupted = std::sync::Arc::new(AtomicBool::new(false));
    let flag = interrupted.clone();
    ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            eprintln!("{exiting}");
            std::process::exit(130);
        }
        eprintln!("{stopping}");
    })
    .context("cannot install the Ctrl-C handler")?;
    Ok(interrupted)
}

/// The model a command that only runs it forward (eval, sample, export) builds from `ck`: its
/// memory checked first, from the checkpoint's header, and the plan printed on stderr (stdout
/// is the command's output).
fn checked_model<B: Backend>(
    b: &B,
    ck: CheckpointSource,
    plan: ActivationPlan,
) -> anyhow::Result<Gpt<B>> {
    let memory = memory::check_checkpoint(b, &ck, plan)?;
    eprintln!("{}", memory.describe());
    Gpt::from_source(b, ck, plan)
}

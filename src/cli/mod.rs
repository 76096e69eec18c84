//! The command line: one file per subcommand, each with its flags (and their help) and its `run`.

pub mod bench;
pub mod dln;
pub mod doctor;
pub mod selftest;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "lowrank", version, about = "Low-rank pre-training of GPT-2-class language models (CPU reference, CUDA kernels)",
    long_about = "Low-rank pre-training of GPT-2-class language models.\n\n\
    Start with `lowrank doctor` to see what this machine and binary can do.\n\
    Environment: LOWRANK_DEVICE=N picks the GPU (default 0).")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Build and machine facts: embedded kernels and their resources, the GPU, the CUDA libraries
    Doctor(doctor::Args),
    /// Compare every CUDA op with its CPU reference on fresh random inputs (needs a GPU)
    Selftest(selftest::Args),
    /// Time ops on the GPU with CUDA events and report them against the device's ceilings
    Bench(bench::Args),
    /// Deep linear networks: train the original and the compressed network side by side (CPU, f64)
    Dln(dln::Args),
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Doctor(a) => doctor::run(a),
        Command::Selftest(a) => selftest::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Dln(a) => dln::run(a),
    }
}

//! `lowrank eval`: loss and perplexity of a checkpoint on a split.

use crate::backend::Backend;
use crate::cli::train::Device;
use crate::data::{default_corpus, BatchShape, ShardSet};
use crate::model::{hf, Gpt};
use crate::train::evaluate;
use anyhow::{Context, Result};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A run or checkpoint directory, a Hugging Face GPT-2 model directory (as `export` writes), or a
    /// GPT-2 safetensors file
    #[arg(long, value_name = "PATH")]
    ckpt: PathBuf,
    /// Shards to evaluate on (a file or a pattern with `*`) [default: the validation split of the
    /// corpus built into the binary, which `train` uses without --data]
    #[arg(long, value_name = "GLOB")]
    data: Option<String>,
    /// Sequences per batch
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Tokens per sequence
    #[arg(long, default_value_t = 64)]
    seq: usize,
    /// Evaluate at most this many batches [default: the whole split]
    #[arg(long)]
    max_batches: Option<usize>,
    #[arg(long, value_enum, default_value_t = Device::Cpu)]
    device: Device,
}

pub fn run(a: Args) -> Result<()> {
    on_device!(a.device, b => eval(b, &a))
}

fn eval<B: Backend>(b: &B, a: &Args) -> Result<()> {
    let ck = hf::load_model_checkpoint(&a.ckpt)?;
    let set = match &a.data {
        Some(data) => ShardSet::open(data).with_context(|| format!("cannot open {data:?}"))?,
        None => default_corpus().val,
    };
    let mut model = Gpt::from_checkpoint(b, &ck, a.batch, a.seq)?;
    let shape = BatchShape {
        batch: a.batch,
        seq_len: a.seq,
    };
    let loss = evaluate::mean_loss(
        b,
        &mut model,
        &set,
        shape,
        a.max_batches.unwrap_or(usize::MAX),
    )?;
    println!(
        "{}: loss {loss:.4}, perplexity {:.3} on {}",
        a.ckpt.display(),
        loss.exp(),
        set.describe()
    );
    Ok(())
}

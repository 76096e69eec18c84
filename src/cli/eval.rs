//! `lowrank eval`: loss and perplexity of a checkpoint on a split.

use crate::backend::Backend;
use crate::cli::train::Device;
use crate::data::{default_corpus, BatchShape, ShardSet};
use crate::model::{hf, ActivationPlan, Keep};
use crate::train::{checkpoint, evaluate, TrainConfig};
use anyhow::{bail, Context, Result};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A run or checkpoint directory, a Hugging Face GPT-2 model directory (as `export` writes), or a
    /// GPT-2 safetensors file
    #[arg(long, value_name = "PATH")]
    ckpt: PathBuf,
    /// Shards to evaluate on (a file or a pattern with `*`) [default: a run's own validation
    /// split; for a model file, that of the corpus built into the binary (--builtin)]
    #[arg(long, value_name = "GLOB")]
    data: Option<String>,
    /// Evaluate on the validation split of the corpus built into the binary (what `train`
    /// without --data trains on), whatever the checkpoint's run trained on
    #[arg(long, conflicts_with = "data")]
    builtin: bool,
    /// Sequences per batch
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Tokens per sequence [default: a run's own; for a model file, its context (GPT-2: 1024)]
    #[arg(long)]
    seq: Option<usize>,
    /// Evaluate at most this many batches [default: the whole split]
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    max_batches: Option<u64>,
    /// Score every token of the split once, in windows of --seq tokens that start S tokens
    /// apart, each scoring only its tokens the window before did not: past a shard's first window
    /// a token has more than seq − S tokens of context (Hugging Face's sliding-window perplexity;
    /// S = --seq is the disjoint windows, each shard's tail included; a shard of --seq tokens or
    /// fewer is left out, with a warning). Without it: disjoint windows in whole batches, as
    /// training's validation loss
    #[arg(long, value_name = "S", value_parser = clap::value_parser!(u64).range(1..))]
    stride: Option<u64>,
    #[arg(long, value_enum, default_value_t = Device::Cpu)]
    device: Device,
}

pub fn run(a: Args) -> Result<()> {
    on_device!(a.device, b => eval(b, &a))
}

fn eval<B: Backend>(b: &B, a: &Args) -> Result<()> {
    let ck = hf::open_model_checkpoint(&a.ckpt)?;
    // A run's checkpoint (not a model file) says what it validated on.
    let run = match a.ckpt.is_dir() {
        true => checkpoint::load_state(&a.ckpt)
            .ok()
            .map(|state| state.config),
        false => None,
    };
    let set = match (&a.data, &run) {
        (Some(data), _) => ShardSet::open(data).with_context(|| format!("cannot open {data:?}"))?,
        (None, Some(cfg)) if !a.builtin => run_validation(cfg)?,
        (None, _) => default_corpus().val,
    };
    let seq = (a.seq)
        .or(run.as_ref().map(|cfg| cfg.seq))
        .unwrap_or(ck.config.max_seq);
    // Losses alone: one layer's activations, each layer's forward writing over the last's.
    let plan = ActivationPlan {
        batch: a.batch,
        seq,
        keep: Keep::Nothing,
    };
    let mut model = super::checked_model(b, ck, plan)?;
    let max_batches = a.max_batches.map_or(usize::MAX, |n| n as usize);
    let (scored, how) = match a.stride {
        Some(stride) => {
            let stride = stride as usize;
            let scored = evaluate::sliding_loss(b, &mut model, &set, stride, max_batches)?;
            (scored, format!("stride {stride}"))
        }
        None => {
            let shape = BatchShape {
                batch: a.batch,
                seq_len: seq,
            };
            let scored = evaluate::mean_loss(b, &mut model, &set, shape, max_batches, true)?;
            (scored, "disjoint".to_string())
        }
    };
    println!(
        "{}: loss {:.4}, perplexity {:.3} on {} tokens of {} ({} windows of {seq} tokens, {how})",
        a.ckpt.display(),
        scored.loss,
        scored.loss.exp(),
        scored.tokens,
        set.describe(),
        scored.windows,
    );
    Ok(())
}

/// The validation split a run evaluated on: its `--val-data`, its `--data` with `_train_` as
/// `_val_`, or the built-in corpus's.
fn run_validation(cfg: &TrainConfig) -> Result<ShardSet> {
    match (cfg.val_pattern(), &cfg.data) {
        (Some(val), _) => ShardSet::open(&val)
            .with_context(|| format!("cannot open the run's validation data {val:?}")),
        (None, None) => Ok(default_corpus().val),
        (None, Some(data)) => bail!(
            "the run trained on {data:?}, which names no validation split (no `_train_` in it, no \
             --val-data): pass --data"
        ),
    }
}

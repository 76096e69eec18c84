//! `lowrank tokenize`: text (WikiText-103 or any UTF-8 files) to llm.c-format GPT-2 token shards.

use crate::data::{tokenize_files, TokenizeConfig};
use anyhow::{Context, Result};
use std::path::PathBuf;
use std::sync::atomic::Ordering;

#[derive(clap::Args, Debug)]
#[command(
    long_about = "Tokenize text into GPT-2 token shards in llm.c's format.\n\n\
    Files named wiki.train.*, wiki.valid.*, wiki.test.* (WikiText as distributed) keep their split \
    (train, val, test shards); other files' documents go to val by --val-fraction. Article headers \
    ` = Title = ` separate documents; a file without them is one document. See datasets/README.md."
)]
pub struct Args {
    /// Text files or folders (walked recursively, hidden entries skipped)
    #[arg(required = true, value_name = "INPUT")]
    inputs: Vec<PathBuf>,
    /// Folder for the shards NAME_{train,val,test}_NNNNNN.bin
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Fraction of documents (from files not named wiki.{train,valid,test}.*) that go to val
    #[arg(long, default_value_t = 0.005, value_name = "F")]
    val_fraction: f64,
    /// Tokens per shard (llm.c uses 100M)
    #[arg(long, default_value_t = 100_000_000, value_name = "N",
        value_parser = clap::value_parser!(u32).range(1..=i32::MAX as i64))]
    shard_tokens: u32,
    /// Shard name prefix [default: the --out folder's name]
    #[arg(long)]
    name: Option<String>,
    /// Replace existing NAME_* shards in --out instead of refusing
    #[arg(long)]
    overwrite: bool,
}

pub fn run(args: Args) -> Result<()> {
    let name = match args.name {
        Some(name) => name,
        None => default_name(&args.out)?,
    };
    let interrupted = super::interrupt_flag(
        "interrupt: stopping, writing nothing (Ctrl-C again to exit at once)",
        "second interrupt: exiting now (the next run removes the staging folder)",
    )?;
    let config = TokenizeConfig {
        inputs: args.inputs,
        out_dir: args.out,
        name,
        val_fraction: args.val_fraction,
        shard_tokens: args.shard_tokens as usize,
        overwrite: args.overwrite,
        interrupted: interrupted.clone(),
    };
    match tokenize_files(&config) {
        Ok(summary) => println!("{}", summary.line(&config.out_dir)),
        // Interrupted, the run exits as a process killed by SIGINT would: 128 + 2.
        Err(e) if interrupted.load(Ordering::SeqCst) => {
            eprintln!("error: {e:#}");
            std::process::exit(130);
        }
        Err(e) => return Err(e),
    }
    Ok(())
}

fn default_name(out: &std::path::Path) -> Result<String> {
    let absolute =
        std::path::absolute(out).with_context(|| format!("resolving {}", out.display()))?;
    absolute
        .file_name()
        .and_then(|n| n.to_str())
        .map(str::to_string)
        .context("cannot name the shards after --out; pass --name")
}

//! `lowrank sample`: a checkpoint's model continues a prompt, printed as it is generated.

use crate::backend::Backend;
use crate::cli::train::Device;
use crate::data::{tokenizer, EOT_TOKEN};
use crate::model::generate::{generate, Sampling};
use crate::model::{hf, ActivationPlan, Keep};
use crate::util::rng::Rng;
use anyhow::{ensure, Result};
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A run or checkpoint directory, a Hugging Face GPT-2 model directory (as `export` writes), or a
    /// GPT-2 safetensors file
    #[arg(long, value_name = "PATH")]
    ckpt: PathBuf,
    /// Text to continue, as the start of a document (after <|endoftext|>, as training saw
    /// documents begin) [default: a document's start]
    #[arg(long, default_value = "", hide_default_value = true)]
    prompt: String,
    /// Tokens to generate (fewer if the model ends the document with <|endoftext|>)
    #[arg(long, default_value_t = 200)]
    tokens: usize,
    /// Softmax temperature; 0 takes the most likely token every time
    #[arg(long, default_value_t = 1.0)]
    temperature: f32,
    /// Draw among the k most likely tokens; 0 for the whole vocabulary
    #[arg(long, default_value_t = 40)]
    top_k: usize,
    /// Seed of the draws (the same seed, prompt and model give the same text)
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Tokens of context the model sees (the window; when it is full it restarts from its last
    /// half) [default: the model's context, at most prompt + --tokens]
    #[arg(long)]
    context: Option<usize>,
    /// Keep going after <|endoftext|> (a new document starts)
    #[arg(long)]
    no_stop: bool,
    #[arg(long, value_enum, default_value_t = Device::Cpu)]
    device: Device,
}

pub fn run(a: Args) -> Result<()> {
    ensure!(
        a.temperature.is_finite() && a.temperature >= 0.0,
        "--temperature must be 0 (greedy) or positive, not {}",
        a.temperature
    );
    on_device!(a.device, b => sample(b, &a))
}

fn sample<B: Backend>(b: &B, a: &Args) -> Result<()> {
    let ck = hf::open_model_checkpoint(&a.ckpt)?;
    let prompt: Vec<u32> = tokenizer::encode_document(&a.prompt)
        .into_iter()
        .map(u32::from)
        .collect();
    let max = ck.config.max_seq;
    let window = match a.context {
        Some(c) => {
            ensure!(
                (1..=max).contains(&c),
                "--context {c}: the model sees 1 to {max} tokens"
            );
            c
        }
        None => (prompt.len() + a.tokens).clamp(1, max),
    };
    let plan = ActivationPlan {
        batch: 1,
        seq: window,
        keep: Keep::KvCache,
    };
    let mut model = super::checked_model(b, ck, plan)?;
    let sampling = Sampling {
        temperature: a.temperature,
        top_k: a.top_k,
    };
    let mut out = std::io::stdout().lock();
    out.write_all(a.prompt.as_bytes())?;
    out.flush()?;
    let stop = |t: u32| !a.no_stop && t == u32::from(EOT_TOKEN);
    // Each token's bytes as they come: a character split across tokens completes on the terminal.
    let emit = |t: u32| -> Result<()> {
        let bytes = match t == u32::from(EOT_TOKEN) {
            true => b"\n<|endoftext|>\n".to_vec(),
            false => tokenizer::decode_bytes(&[t]).unwrap_or_default(),
        };
        out.write_all(&bytes)?;
        out.flush()?;
        Ok(())
    };
    let mut rng = Rng::new(a.seed);
    let started = Instant::now();
    let tokens = generate(
        b, &mut model, &prompt, a.tokens, sampling, &mut rng, stop, emit,
    )?;
    b.synchronize()?;
    let secs = started.elapsed().as_secs_f64();
    writeln!(out)?;
    // On stderr, so that stdout is the text alone.
    eprintln!(
        "{} tokens in {secs:.2} s with the prompt's {} ({:.1} tokens/s) on {}, a context of {window}",
        tokens.len(),
        prompt.len(),
        tokens.len() as f64 / secs,
        b.name()
    );
    Ok(())
}

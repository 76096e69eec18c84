//! `lowrank export`: a checkpoint as a Hugging Face GPT-2 model directory (low-rank layers merged):
//! `model.safetensors` and the `config.json` transformers' GPT2LMHeadModel reads.

use crate::backend::cpu::Cpu;
use crate::data::EOT_TOKEN;
use crate::lowrank::LowRankMode;
use crate::model::{hf, ActivationPlan, GptConfig, Keep};
use crate::train::atomic;
use crate::train::tensor_file::{self, Outgoing, Values};
use anyhow::{bail, ensure, Context, Result};
use std::collections::HashMap;
use std::fs;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A run or checkpoint directory, a Hugging Face GPT-2 model directory, or a safetensors file
    #[arg(long, value_name = "PATH")]
    ckpt: PathBuf,
    /// The directory to write: model.safetensors (Hugging Face GPT-2 names, f32) and config.json
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Replace a model already in --out
    #[arg(long)]
    overwrite: bool,
    /// A LoRA run's factors alone (and its embeddings, with --lora-embeddings, as PEFT's
    /// modules_to_save), as a PEFT adapter (adapter_model.safetensors and adapter_config.json)
    /// for its base: `PeftModel.from_pretrained(base, DIR)`
    #[arg(long)]
    adapter: bool,
}

/// Export reads the model's weights and runs nothing: the smallest activations there are.
const WEIGHTS_ONLY: ActivationPlan = ActivationPlan {
    batch: 1,
    seq: 1,
    keep: Keep::Nothing,
};

pub fn run(a: Args) -> Result<()> {
    let run_files = ["latest", "state.json", "metrics.jsonl"];
    ensure!(
        !run_files.iter().any(|f| a.out.join(f).exists()),
        "{} is a training run or checkpoint directory, whose config.json the export would replace: export into a directory of its own",
        a.out.display()
    );
    if a.adapter {
        return adapter(&a);
    }
    let file = fresh(&a, "model.safetensors")?;
    let ck = hf::open_model_checkpoint(&a.ckpt)?;
    // Products of the factors on the host (f32 GEMMs), whatever device trained the model: it
    // holds the model and one low-rank layer's product (within the plan's margin).
    let (preset, config) = (ck.preset.clone(), ck.config);
    let model = super::checked_model(&Cpu, ck, WEIGHTS_ONLY)?;
    let merged = model.layout().lowrank().len();
    let tensors = model.dense_tensors()?;
    let count = tensors.len();
    let params: usize = (tensors.iter())
        .map(|t| t.shape.iter().product::<usize>())
        .sum();
    let mut meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    if let Some(preset) = preset {
        // Our loaders read the shape from it (tiny's 32-wide heads are not GPT-2's 64).
        meta.insert("lowrank_model".to_string(), preset);
    }
    fs::create_dir_all(&a.out).with_context(|| format!("cannot create {}", a.out.display()))?;
    tensor_file::save_views(&file, tensors, meta)?;
    let config = serde_json::to_string_pretty(&hf_config(&config))?;
    atomic::write(&a.out.join("config.json"), config.as_bytes())?;
    println!(
        "wrote {}: a dense GPT-2 of {} tensors, {:.2}M parameters{}, in Hugging Face's GPT-2 layout (for GPT2LMHeadModel.from_pretrained)",
        a.out.display(),
        count,
        params as f64 / 1e6,
        match merged {
            0 => String::new(),
            n => format!(" ({n} low-rank layers merged at their live ranks)"),
        }
    );
    Ok(())
}

/// `--out`'s file `name`, which must not exist yet unless --overwrite.
fn fresh(a: &Args, name: &str) -> Result<PathBuf> {
    let file = a.out.join(name);
    ensure!(
        a.overwrite || !file.exists(),
        "{} exists: pass --overwrite to replace it",
        file.display()
    );
    Ok(file)
}

/// transformers' GPT2Config for this shape: GPT-2's tanh GELU, LayerNorm ε 1e-5, tied head,
/// `<|endoftext|>` as both ends, no dropout.
fn hf_config(c: &GptConfig) -> serde_json::Value {
    serde_json::json!({
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": c.vocab_size,
        "n_positions": c.max_seq,
        "n_ctx": c.max_seq,
        "n_embd": c.n_embd,
        "n_layer": c.n_layer,
        "n_head": c.n_head,
        "activation_function": "gelu_new",
        "layer_norm_epsilon": 1e-5,
        "tie_word_embeddings": true,
        "bos_token_id": EOT_TOKEN,
        "eos_token_id": EOT_TOKEN,
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
        "initializer_range": 0.02,
    })
}

/// `--adapter`: the factors of a LoRA run in PEFT's format.
fn adapter(a: &Args) -> Result<()> {
    let ck = hf::open_model_checkpoint(&a.ckpt)?;
    let lr = ck.lowrank.clone();
    ensure!(
        lr.mode == LowRankMode::Lora,
        "--adapter: {} is not a LoRA run; export the merged model (without --adapter)",
        a.ckpt.display()
    );
    let file = fresh(a, "adapter_model.safetensors")?;
    let model = super::checked_model(&Cpu, ck, WEIGHTS_ONLY)?;
    let (factors, targets) = model.lora_adapter_tensors()?;
    let mut tensors: Vec<Outgoing> = factors.iter().map(|t| t.view().into()).collect();
    // Trained embeddings travel as PEFT's modules_to_save: whole copies of wte and wpe, and of
    // lm_head too, since PEFT's copy of wte would no longer be tied to the head.
    let modules_to_save = lr.lora_embeddings.then_some(["wte", "wpe", "lm_head"]);
    if lr.lora_embeddings {
        // The two embeddings borrowed from the weights; wte again as the head.
        for t in model.dense_tensors()? {
            let head = match t.name.as_str() {
                "transformer.wte.weight" => true,
                "transformer.wpe.weight" => false,
                _ => continue,
            };
            let Values::Borrowed(values) = t.values else {
                bail!("{} is not one of the weights", t.name);
            };
            let named = |name: String| Outgoing {
                name,
                shape: t.shape.clone(),
                values: Values::Borrowed(values),
            };
            if head {
                tensors.push(named("base_model.model.lm_head.weight".into()));
            }
            tensors.push(named(format!("base_model.model.{}", t.name)));
        }
    }
    let params: usize = (tensors.iter())
        .map(|t| t.shape.iter().product::<usize>())
        .sum();
    let r = lr.rank_init;
    let config = serde_json::json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": lr.lora_base,
        "r": r,
        "lora_alpha": lr.lora_scale() * r as f32,
        "lora_dropout": 0.0,
        "target_modules": targets,
        "modules_to_save": modules_to_save,
        "fan_in_fan_out": true,
        "bias": "none",
        "inference_mode": true,
        "init_lora_weights": true,
    });
    fs::create_dir_all(&a.out).with_context(|| format!("cannot create {}", a.out.display()))?;
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    tensor_file::save_views(&file, tensors, meta)?;
    let text = serde_json::to_string_pretty(&config)?;
    atomic::write(&a.out.join("adapter_config.json"), text.as_bytes())?;
    println!(
        "wrote {}: a PEFT LoRA adapter of {} layers at r = {r}{} ({:.3}M parameters) for the base {}",
        a.out.display(),
        targets.len(),
        match modules_to_save {
            Some(_) => ", with the trained embeddings as modules_to_save",
            None => "",
        },
        params as f64 / 1e6,
        lr.lora_base.as_deref().unwrap_or("(unrecorded)")
    );
    Ok(())
}

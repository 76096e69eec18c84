//! Hugging Face GPT-2 tensors in and out: our checkpoints carry HF's names and shapes (wte without
//! the padding rows), so a user can load ours in transformers and we can load theirs.

use super::config::{GptConfig, GPT2_PADDED_VOCAB, GPT2_VOCAB};
use super::drawn_w0::DrawnW0;
use super::gpt::{ActivationPlan, Gpt, Trained};
use super::lora_base::{CompletedLora, LoraBase};
use super::params::{ParamLayout, SpanRole};
use crate::backend::Backend;
use crate::lowrank::{layer, LowRankConfig, LowRankMode};
use crate::optim::{GroupRule, ParamGroup};
use crate::train::checkpoint::{self, RankState, TrainState};
use crate::train::ranks::RankSchedule;
use crate::train::tensor_file::{self, FlatTensors, HostTensor, Span, TensorFile, TensorSource};
use anyhow::{bail, ensure, Context, Result};
use std::collections::HashMap;
use std::path::Path;

/// GPT-2 checkpoints from transformers may or may not prefix names with "transformer.".
pub(super) fn canonical(name: &str) -> &str {
    name.strip_prefix("transformer.").unwrap_or(name)
}

/// Tensors HF files carry that are not parameters: causal-mask buffers and the tied LM head.
fn ignorable(name: &str) -> bool {
    name.ends_with(".attn.bias") && !name.contains("c_attn")
        || name.ends_with(".attn.masked_bias")
        || name == "lm_head.weight"
}

/// The HF shape of a tensor: the token embedding without our padding rows.
fn hf_rows(name: &str, shape: &[usize], vocab: usize) -> Vec<usize> {
    let mut s = shape.to_vec();
    if canonical(name) == "wte.weight" {
        s[0] = vocab;
    }
    s
}

impl<B: Backend> Gpt<B> {
    /// The optimiser's parameter groups, one per trainable tensor (the optimiser merges
    /// neighbours alike): weight decay on matrices; the low-rank factors at `--factor-lr-scale`
    /// times the learning rate and by their rule (heavy ball for DLRA's S when asked); DLRA's
    /// bases, and in LoRA every tensor without a gradient, held fixed (learning-rate scale 0: the
    /// optimiser skips the group, and its clipped norm runs over the trained groups alone).
    pub fn param_groups(&self, lr: &LowRankConfig) -> Vec<ParamGroup> {
        param_groups(self.layout(), self.trained(), lr)
    }

    /// Every parameter tensor with its HF name and shape (f32, on the host).
    pub fn to_hf_tensors(&self, b: &B) -> Result<Vec<HostTensor>> {
        Ok(self.to_hf_flat(b, Vec::new())?.into_host_tensors())
    }

    /// Every parameter's HF name and shape (the token embedding without its padding rows) and
    /// where its values lie in the weights, in the layout's order.
    pub fn hf_spans(&self) -> Vec<Span> {
        let vocab = self.config().vocab_size;
        (self.layout().tensors().iter())
            .map(|t| Span {
                name: t.name.clone(),
                shape: hf_rows(&t.name, &t.shape, vocab),
                offset: t.offset,
            })
            .collect()
    }

    /// Every parameter with its HF name and shape, in the one buffer they come off the device in:
    /// `reuse`'s memory (a checkpoint's last snapshot's), grown if need be.
    pub fn to_hf_flat(&self, b: &B, reuse: Vec<f32>) -> Result<FlatTensors> {
        let (spans, mut values) = (self.hf_spans(), reuse);
        values.resize(self.layout().len(), 0.0);
        self.weights().download_into(b, 0, &mut values)?;
        Ok(FlatTensors { values, spans })
    }

    /// What a checkpoint stores: the trained tensors. That is every parameter in most runs; a
    /// LoRA checkpoint holds its factors (and the embeddings with --lora-embeddings) alone, as a
    /// PEFT adapter does (`CompletedLora` completes them from the base again), and an InRank
    /// checkpoint leaves out its frozen W0 (`DrawnW0` draws them again from the run's seed). Only
    /// those come off the device, one after the other in `reuse`'s memory (GPT-2 medium's LoRA
    /// factors at r = 8 take 7.9 MB where the whole model takes 1.4 GB).
    pub fn checkpoint_tensors(&self, b: &B, reuse: Vec<f32>) -> Result<FlatTensors> {
        let (layout, trained) = (self.layout(), self.trained());
        if trained.every_tensor(layout) {
            return self.to_hf_flat(b, reuse);
        }
        let packed = trained_spans(layout, trained, self.config().vocab_size);
        let mut values = reuse;
        values.resize(packed.iter().map(|(s, _)| s.elements()).sum(), 0.0);
        for (span, from) in &packed {
            let dst = &mut values[span.offset..span.offset + span.elements()];
            self.weights().download_into(b, *from, dst)?;
        }
        let spans = packed.into_iter().map(|(span, _)| span).collect();
        Ok(FlatTensors { values, spans })
    }

    /// Loads HF-named tensors into the parameters (padding rows zeroed), refreshing the compute copy.
    /// Every parameter must be present with its HF shape; names and shapes are checked before any
    /// tensor is written, then each is read into its parameter: a checkpoint file straight into
    /// the weights on a host backend (one tensor staged at a time on a device), tensors held in
    /// memory freed one by one; then the source `finish`es (a LoRA checkpoint's base is held
    /// against its recorded fingerprint). A read that fails midway (a disk error) or a source that
    /// fails to finish leaves the weights partly written: the caller discards the model.
    pub fn load_hf_tensors(&mut self, b: &B, tensors: impl TensorSource) -> Result<()> {
        self.load_tensors(b, tensors, |_| false)
    }

    /// LoRA's frozen base, from the dense GPT-2 checkpoint of this shape at `path`: every tensor
    /// but the factors, which keep their starting values, each low-rank layer's W0 from the
    /// base's `{prefix}.weight`; read into the weights tensor by tensor. Returns the base's
    /// fingerprint, which the run's checkpoints record.
    pub fn load_lora_base(&mut self, b: &B, path: &str) -> Result<String> {
        let factored: Vec<&str> = (self.layout().tensors().iter())
            .filter_map(|t| canonical(&t.name).strip_suffix(".lowrank_w0"))
            .collect();
        let mut base = LoraBase::open(path, &factored)?;
        let factor = |name: &str| name.ends_with(".lowrank_ut") || name.ends_with(".lowrank_vt");
        (self.load_tensors(b, &mut base, factor)).with_context(|| {
            format!("cannot load --lora-base {path} into this model (it must be a dense GPT-2 checkpoint of the model's shape)")
        })?;
        base.fingerprint()
    }

    /// `load_hf_tensors` of the parameters but those `keep` names, which keep their values.
    fn load_tensors(
        &mut self,
        b: &B,
        mut tensors: impl TensorSource,
        keep: impl Fn(&str) -> bool,
    ) -> Result<()> {
        let vocab = self.config().vocab_size;
        // Each tensor by its canonical name: its name in the source and its shape.
        let mut by_name: HashMap<String, (String, Vec<usize>)> = HashMap::new();
        for (name, shape) in tensors.listing()? {
            let key = canonical(&name).to_string();
            if let Some((twin, _)) = by_name.insert(key, (name, shape)) {
                bail!("the checkpoint holds tensor {twin} twice (with and without `transformer.`)");
            }
        }
        let mut slots = Vec::with_capacity(self.layout().tensors().len());
        for t in self.layout().tensors().iter().filter(|t| !keep(&t.name)) {
            let want = hf_rows(&t.name, &t.shape, vocab);
            let (name, shape) =
                by_name.remove(canonical(&t.name)).with_context(|| {
                    match canonical(&t.name).strip_suffix(".lowrank_w0") {
                        Some(p) => format!(
                            "the checkpoint lacks tensor {p}.lowrank_w0 (a LoRA base's {p}.weight; an InRank checkpoint that leaves its W0 out records `w0_seed` in its state.json, and a lowrank older than that checkpoint cannot read it)"
                        ),
                        None => format!("the checkpoint lacks tensor {}", t.name),
                    }
                })?;
            ensure!(
                shape == want,
                "checkpoint of another shape: tensor {} is {shape:?}, this model needs {want:?}",
                t.name,
            );
            slots.push((t.offset, t.len(), name, want.iter().product::<usize>()));
        }
        // What is left is not the model's: masks and a tied head may go, anything else may not.
        let mut extra: Vec<&String> = by_name.keys().filter(|n| !ignorable(n)).collect();
        extra.sort();
        if let Some(extra) = extra.first() {
            bail!("the checkpoint has tensor {extra}, which this model does not: is it a GPT-2 of this shape?");
        }
        for (name, _) in by_name.values() {
            tensors.skip(name);
        }
        // Into the masters, or a tensor without one into the compute copy (`Weights`).
        let weights = self.weights_mut();
        for (offset, len, name, hf_len) in slots {
            let mut read = |dst: &mut [f32]| tensors.read_into(&name, dst);
            b.upload_with(weights.window_mut(offset, hf_len), &mut read)?;
            if hf_len < len {
                // The embedding's padding rows, past the vocabulary.
                b.fill(weights.window_mut(offset + hf_len, len - hf_len), 0.0)?;
            }
        }
        tensors.finish()?;
        self.refresh_compute_copy(b)
    }
}

/// The tensors with a gradient (a LoRA checkpoint's), each with its HF name and shape at its
/// place packed one after the other, and its offset in the parameters.
pub(super) fn trained_spans(
    layout: &ParamLayout,
    trained: Trained,
    vocab: usize,
) -> Vec<(Span, usize)> {
    let mut end = 0;
    (layout.tensors().iter().enumerate())
        .filter(|&(i, _)| trained.has_gradient(layout, i))
        .map(|(_, t)| {
            let shape = hf_rows(&t.name, &t.shape, vocab);
            let span = Span {
                name: t.name.clone(),
                shape,
                offset: end,
            };
            end += span.elements();
            (span, t.offset)
        })
        .collect()
}

/// The configuration a set of HF tensors describes: width from wte, depth from the h.N blocks,
/// context from wpe, and GPT-2's 64-wide heads.
pub fn infer_config<'a>(shapes: impl Iterator<Item = (&'a str, &'a [usize])>) -> Result<GptConfig> {
    let shapes: Vec<(&str, &[usize])> = shapes.map(|(n, s)| (canonical(n), s)).collect();
    let find = |n: &str| {
        (shapes.iter())
            .find(|(name, _)| *name == n)
            .map(|(_, shape)| *shape)
            .with_context(|| format!("not a GPT-2 checkpoint: no {n}"))
    };
    let (wte, wpe) = (find("wte.weight")?, find("wpe.weight")?);
    ensure!(
        wte.len() == 2 && wpe.len() == 2,
        "not a GPT-2 checkpoint: embeddings are not matrices"
    );
    let n_layer = (shapes.iter())
        .filter_map(|(name, _)| {
            name.strip_prefix("h.")?
                .split('.')
                .next()?
                .parse::<usize>()
                .ok()
        })
        .max()
        .map_or(0, |l| l + 1);
    let n_embd = wte[1];
    ensure!(
        wte[0] == GPT2_VOCAB,
        "the checkpoint's vocabulary has {} tokens; GPT-2's has {GPT2_VOCAB}",
        wte[0]
    );
    let config = GptConfig {
        n_layer,
        n_head: (n_embd / 64).max(1),
        n_embd,
        vocab_size: GPT2_VOCAB,
        padded_vocab: GPT2_PADDED_VOCAB,
        max_seq: wpe[0],
    };
    config.validate()?;
    Ok(config)
}

/// What it takes to rebuild a trained model: its shape, its low-rank settings and live ranks (a
/// safetensors file is dense), and its tensors.
#[derive(Clone)]
pub struct ModelCheckpoint {
    /// The preset's name (`tiny`, `gpt2`, ...) where the checkpoint records it.
    pub preset: Option<String>,
    pub config: GptConfig,
    pub lowrank: LowRankConfig,
    pub ranks: Option<RankState>,
    pub tensors: Vec<HostTensor>,
}

/// A model's configuration, low-rank settings and tensors from a run directory, a checkpoint
/// directory, a Hugging Face model directory or a safetensors file, read into memory.
pub fn load_model_checkpoint(path: &Path) -> Result<ModelCheckpoint> {
    open_model_checkpoint(path)?.read()
}

/// A checkpoint whose shape and settings are known and whose tensors are not read yet: a command
/// checks the memory its model will take before `Gpt::from_source` reads any of it into the
/// weights (GPT-2 XL's tensors alone are 6.2 GB, and a machine without them would kill the
/// reading process without a word).
pub struct CheckpointSource {
    pub preset: Option<String>,
    pub config: GptConfig,
    pub lowrank: LowRankConfig,
    pub ranks: Option<RankState>,
    file: TensorFile,
    completion: Completion,
}

/// What completes a checkpoint's model file, as its training state records: a LoRA run's trained
/// tensors by its base, which must still have the fingerprint the run recorded, and an InRank
/// run's by its frozen W0, drawn again from the run's seed. A checkpoint written before they were
/// left out holds every tensor and records neither.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum Completion {
    #[default]
    Whole,
    LoraBase {
        path: String,
        fingerprint: String,
    },
    DrawnW0 {
        seed: u64,
    },
}

impl Completion {
    pub fn of(state: &TrainState) -> Self {
        let lora =
            (state.lora_base_fingerprint.clone()).zip(state.config.lowrank.lora_base.clone());
        match (lora, state.w0_seed) {
            (Some((fingerprint, path)), _) => Completion::LoraBase { path, fingerprint },
            (None, Some(seed)) => Completion::DrawnW0 { seed },
            (None, None) => Completion::Whole,
        }
    }

    /// `file`, the model file of a checkpoint of this shape and these low-rank settings,
    /// completed: read tensor by tensor, a LoRA base's too (its fingerprint checked once read).
    pub fn tensors(
        self,
        file: TensorFile,
        config: &GptConfig,
        lowrank: &LowRankConfig,
    ) -> Result<Box<dyn TensorSource>> {
        Ok(match self {
            Completion::Whole => Box::new(file),
            Completion::LoraBase { path, fingerprint } => {
                Box::new(CompletedLora::new(file, &path, fingerprint)?)
            }
            Completion::DrawnW0 { seed } => {
                let layout = ParamLayout::with_lowrank(config, &layer::plan(lowrank, config)?);
                Box::new(DrawnW0::new(file, layout, seed)?)
            }
        })
    }
}

/// Opens the checkpoint `path` names: a run or checkpoint directory, a Hugging Face model
/// directory (ours from `export`, or a hub snapshot), or a safetensors file.
pub fn open_model_checkpoint(path: &Path) -> Result<CheckpointSource> {
    let hf_dir = path.join("model.safetensors");
    let no_state = !path.join("state.json").exists() && !path.join("latest").exists();
    let path = match path.is_dir() && no_state && hf_dir.is_file() {
        true => hf_dir.as_path(),
        false => path,
    };
    if path.is_file() {
        let file = TensorFile::open(path)?;
        if let Some(base) = file.metadata.get(checkpoint::LORA_BASE_KEY) {
            bail!("{} holds a LoRA run's trained tensors alone, without its base {base}: pass its checkpoint directory, whose state.json says how to complete them", path.display());
        }
        let preset = file.metadata.get("lowrank_model").cloned();
        let config = match &preset {
            Some(name) => GptConfig::preset(name)?,
            None => infer_config(file.shapes())?,
        };
        return Ok(CheckpointSource {
            preset,
            config,
            lowrank: LowRankConfig::default(),
            ranks: None,
            file,
            completion: Completion::Whole,
        });
    }
    let ck = checkpoint::open_model(path)?;
    let state = ck.state;
    Ok(CheckpointSource {
        config: GptConfig::preset(&state.config.model)?,
        completion: Completion::of(&state),
        preset: Some(state.config.model),
        lowrank: state.config.lowrank,
        ranks: state.ranks,
        file: ck.model,
    })
}

impl CheckpointSource {
    /// Its tensors to load from: the file, read tensor by tensor into the weights, as its
    /// `Completion` completes it.
    pub fn into_tensors(self) -> Result<Box<dyn TensorSource>> {
        (self.completion).tensors(self.file, &self.config, &self.lowrank)
    }

    /// The tensors' values (completed as its `Completion` says), sorted by name.
    pub fn read(self) -> Result<ModelCheckpoint> {
        let (preset, config) = (self.preset.clone(), self.config);
        let (lowrank, ranks) = (self.lowrank.clone(), self.ranks.clone());
        let tensors = tensor_file::read_all(self.into_tensors()?)?;
        Ok(ModelCheckpoint {
            preset,
            config,
            lowrank,
            ranks,
            tensors,
        })
    }

    /// Its file, where it holds a dense model (LoRA's base must be one).
    pub fn dense_file(self) -> Result<TensorFile> {
        let mode = self.lowrank.mode;
        ensure!(
            mode == LowRankMode::Dense,
            "it is the checkpoint of a `--lowrank {}` run, whose layers are factors: LoRA's base must be a dense model (`lowrank export --ckpt RUN --out DIR` merges a run into one)",
            format!("{mode:?}").to_lowercase()
        );
        Ok(self.file)
    }
}

impl<B: Backend> Gpt<B> {
    /// The model a checkpoint holds, at its live ranks, with activations as `plan` says: its
    /// file read tensor by tensor into the weights (a LoRA run's tensors completed from its base,
    /// read tensor by tensor too).
    pub fn from_source(b: &B, src: CheckpointSource, plan: ActivationPlan) -> Result<Self> {
        let (config, lowrank, ranks) = (src.config, src.lowrank.clone(), src.ranks.clone());
        let tensors = src.into_tensors()?;
        Self::from_tensors(b, config, &lowrank, ranks.as_ref(), tensors, plan)
    }

    /// The model of this shape, low-rank settings and live ranks with `tensors`' values.
    pub fn from_tensors(
        b: &B,
        config: GptConfig,
        lowrank: &LowRankConfig,
        ranks: Option<&RankState>,
        tensors: impl TensorSource,
        plan: ActivationPlan,
    ) -> Result<Self> {
        // The checkpoint's tensors replace every parameter: no init to draw (for GPT-2 small,
        // 124M normal draws were most of `sample`'s start-up).
        let mut model = Gpt::unset(b, config, lowrank, plan)?;
        RankSchedule::restore(&mut model, ranks)?;
        model.load_hf_tensors(b, tensors)?;
        Ok(model)
    }
}

/// `Gpt::param_groups` of a model with this layout that trains `trained`, before one is built.
pub fn param_groups(layout: &ParamLayout, trained: Trained, lr: &LowRankConfig) -> Vec<ParamGroup> {
    let tensors = layout.tensors().iter().enumerate();
    tensors
        .filter(|(_, t)| t.trainable)
        .map(|(i, t)| {
            let role = layout.role(i);
            ParamGroup {
                offset: t.offset,
                len: t.len(),
                decay: t.weight_decay,
                lr_scale: match role {
                    // LoRA trains its factors (and the embeddings if asked) alone, as in Hu
                    // et al. and PEFT: attention, LayerNorms and biases keep the base's values.
                    SpanRole::Plain if trained.has_gradient(layout, i) => 1.0,
                    SpanRole::Plain => 0.0,
                    SpanRole::Factor => lr.factor_lr_scale,
                    SpanRole::Basis => 0.0,
                },
                rule: match role {
                    SpanRole::Factor => lr.factor_rule(),
                    _ => GroupRule::AdamW,
                },
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::Cpu;
    use crate::backend::Buffer;

    #[test]
    fn round_trip_through_hf_tensors_and_shape_errors() {
        let cfg = GptConfig::preset("tiny").unwrap();
        let a = Gpt::new(&Cpu, cfg, 1, 8, 1).unwrap();
        let ts = a.to_hf_tensors(&Cpu).unwrap();
        let wte = ts.iter().find(|t| t.name.ends_with("wte.weight")).unwrap();
        assert_eq!(
            wte.shape,
            vec![GPT2_VOCAB, 128],
            "HF's wte has no padding rows"
        );
        // Without our metadata, GPT-2's 64-wide heads are assumed: tiny's 128 channels → 2 heads.
        let shapes = ts.iter().map(|t| (t.name.as_str(), t.shape.as_slice()));
        assert_eq!(
            infer_config(shapes).unwrap(),
            GptConfig { n_head: 2, ..cfg }
        );
        let mut b = Gpt::new(&Cpu, cfg, 1, 8, 2).unwrap();
        assert_ne!(b.params().buf().as_slice(), a.params().buf().as_slice());
        // Unprefixed names, as in the files transformers publishes, load too.
        let unprefixed: Vec<HostTensor> = ts
            .iter()
            .map(|t| HostTensor {
                name: canonical(&t.name).to_string(),
                ..t.clone()
            })
            .collect();
        // Every value written over, the embedding's padding rows zeroed.
        Cpu.fill(b.params_mut().buf_mut().all_mut(), 7.0).unwrap();
        b.load_hf_tensors(&Cpu, unprefixed.clone()).unwrap();
        assert_eq!(b.params().buf().as_slice(), a.params().buf().as_slice());
        let padding = &b.params().buf().as_slice()[GPT2_VOCAB * 128..GPT2_PADDED_VOCAB * 128];
        assert!(padding.iter().all(|&x| x == 0.0));
        // The same from a file, read straight into the weights, a mask beside them skipped.
        let dir = std::env::temp_dir().join(format!("lowrank-hf-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("model.safetensors");
        let mut with_mask = unprefixed.clone();
        for name in ["h.0.attn.bias", "transformer.h.1.attn.masked_bias"] {
            with_mask.push(HostTensor {
                name: name.into(),
                shape: vec![1, 1, 4, 4],
                data: vec![1.0; 16],
            });
        }
        // From memory, the masks skipped (a source that holds them frees them then).
        Cpu.fill(b.params_mut().buf_mut().all_mut(), 7.0).unwrap();
        b.load_hf_tensors(&Cpu, with_mask.clone()).unwrap();
        assert_eq!(b.params().buf().as_slice(), a.params().buf().as_slice());
        tensor_file::save(&path, &with_mask, HashMap::new()).unwrap();
        Cpu.fill(b.params_mut().buf_mut().all_mut(), 7.0).unwrap();
        b.load_hf_tensors(&Cpu, TensorFile::open(&path).unwrap())
            .unwrap();
        assert_eq!(b.params().buf().as_slice(), a.params().buf().as_slice());
        std::fs::remove_dir_all(&dir).ok();
        // A checkpoint that does not fit is refused before anything is written.
        Cpu.fill(b.params_mut().buf_mut().all_mut(), 7.0).unwrap();
        let mut wrong = ts.clone();
        let matrix = wrong.iter().rposition(|t| t.shape.len() == 2).unwrap();
        wrong[matrix].shape = vec![wrong[matrix].data.len()];
        let e = b.load_hf_tensors(&Cpu, wrong).unwrap_err();
        assert!(e.to_string().contains("another shape"), "{e}");
        let mut torn = ts.clone();
        torn[matrix].data.pop();
        let e = b.load_hf_tensors(&Cpu, torn).unwrap_err();
        assert!(e.to_string().contains("values"), "{e}");
        let e = b.load_hf_tensors(&Cpu, ts[1..].to_vec()).unwrap_err();
        assert!(e.to_string().contains("lacks tensor"), "{e}");
        let mut extra = ts.clone();
        extra.push(HostTensor {
            name: "transformer.h.99.mlp.c_fc.weight".into(),
            ..ts[0].clone()
        });
        let e = b.load_hf_tensors(&Cpu, extra).unwrap_err();
        assert!(
            e.to_string().contains("has tensor h.99.mlp.c_fc.weight"),
            "{e}"
        );
        let mut twice = ts.clone();
        twice.push(unprefixed[0].clone());
        let e = b.load_hf_tensors(&Cpu, twice).unwrap_err();
        assert!(e.to_string().contains("twice"), "{e}");
        assert!(b.params().buf().as_slice().iter().all(|&x| x == 7.0));
    }
}

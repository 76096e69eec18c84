//! `Gpt`: the parameters, activations and (in a model that trains) gradients of a GPT-2, and its
//! forward and backward passes over a fixed (batch, seq).

use super::activations::{ActivationGrads, Activations};
use super::backward::{backward, Saved};
use super::config::GptConfig;
use super::forward::{forward, Rows};
use super::params::{ParamLayout, SpanRole};
use super::weights::{Start, Weights};
use crate::backend::{Backend, Buffer, MatShape, Ref};
use crate::lowrank::cost::{cost, Cost};
use crate::lowrank::{layer, LowRankConfig, LowRankLayer, LowRankMode, LowRankRuntime};
use crate::optim::PackedParams;
use anyhow::{bail, ensure, Context, Result};

/// A GPT-2 on a backend: its weights (f32 masters, and their compute-dtype copy: `Weights`),
/// activations planned for (batch, seq) and, in a model that trains, f32 gradients of the tensors
/// that have one (`PackedParams`).
pub struct Gpt<B: Backend> {
    config: GptConfig,
    layout: ParamLayout,
    weights: Weights<B>,
    acts: Activations<B>,
    /// None in a model that only runs forward (`ActivationPlan::trains`).
    gradients: Option<Gradients<B>>,
    /// Live ranks and scratch of the low-rank layers (none in a dense model).
    lowrank: LowRankRuntime<B>,
    /// The last forward's token ids, for the embedding backward.
    inputs: Vec<u32>,
    /// Set by a forward with targets, cleared by the backward that consumes its dlogits.
    has_loss_gradient: bool,
    /// Positions of the first sequence that `decode` calls computed since the last `forward` or
    /// change of the weights (their k and v are the cache later calls read).
    decoded: usize,
    /// Which parameters train: the backward forms no other gradient.
    trained: Trained,
}

/// What the optimiser trains, and so which gradients the backward forms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trained {
    /// Every parameter (DLRA's bases too take gradients: its integrator reads them).
    All,
    /// LoRA: the factors, and with `embeddings` the token and position embeddings (so the tied
    /// LM head); the base's LayerNorms, biases and dense matrices stay as they are.
    Lora { embeddings: bool },
}

impl Trained {
    pub fn of(lr: &LowRankConfig) -> Self {
        match lr.mode {
            LowRankMode::Lora => Trained::Lora {
                embeddings: lr.lora_embeddings,
            },
            _ => Trained::All,
        }
    }
    /// Whether the LayerNorms, biases and dense matrices train.
    pub fn base(self) -> bool {
        self == Trained::All
    }
    /// Whether the token and position embeddings (and the tied LM head) train.
    pub fn embeddings(self) -> bool {
        self != Trained::Lora { embeddings: false }
    }
    /// Whether the backward forms the gradient of `layout`'s tensor `index` (`Gpt::has_gradient`).
    pub fn has_gradient(self, layout: &ParamLayout, index: usize) -> bool {
        let t = &layout.tensors()[index];
        let embedding = t.offset == layout.wte().offset || t.offset == layout.wpe().offset;
        t.trainable
            && match layout.role(index) {
                SpanRole::Plain if embedding => self.embeddings(),
                SpanRole::Plain => self.base(),
                SpanRole::Factor | SpanRole::Basis => true,
            }
    }
    /// Whether the backward forms every tensor's gradient: `layout` has no frozen tensor (LoRA's
    /// base, InRank's W0), so a checkpoint stores every tensor (one with a frozen tensor stores
    /// them too where it resumed from a checkpoint written before they were left out).
    pub fn every_tensor(self, layout: &ParamLayout) -> bool {
        (0..layout.tensors().len()).all(|i| self.has_gradient(layout, i))
    }
    /// The tensors whose gradient the backward forms, as maximal contiguous (offset, len) runs
    /// of the parameters: a single run in a dense model (its frozen tensors, InRank's W0, lie
    /// past it), and few in LoRA, whose factors lie between the frozen matrices. Only these have
    /// gradient memory (`PackedParams`).
    pub fn gradient_spans(self, layout: &ParamLayout) -> Vec<(usize, usize)> {
        let mut spans: Vec<(usize, usize)> = Vec::new();
        for (i, t) in layout.tensors().iter().enumerate() {
            if !self.has_gradient(layout, i) {
                continue;
            }
            match spans.last_mut() {
                Some((offset, len)) if *offset + *len == t.offset => *len += t.len(),
                _ => spans.push((t.offset, t.len())),
            }
        }
        spans
    }
}

/// What a model's activations are allocated for: micro-batches of `batch` sequences of `seq`
/// tokens, kept for what `keep` says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ActivationPlan {
    pub batch: usize,
    pub seq: usize,
    pub keep: Keep,
}

/// What a model keeps its activations for past the forward that writes them, and so how many
/// layers' each buffer holds; only a model that keeps them for the backward has gradients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Keep {
    /// Every layer's, for the backward (training). With `recompute_gelu`, one layer's GELU output
    /// and the backward forms each layer's again from fch (llm.c's `-r 1`).
    Backward { recompute_gelu: bool },
    /// Every layer's qkv, whose keys and values the later tokens attend to when decoding
    /// (`Gpt::decode`), and one layer's of the rest, each layer's forward writing over the last's.
    KvCache,
    /// One layer's of everything: a forward's losses or logits alone (evaluation, export).
    Nothing,
}

impl ActivationPlan {
    /// A plan for training: every layer's activations kept, GELU's included.
    pub fn new(batch: usize, seq: usize) -> Self {
        ActivationPlan {
            batch,
            seq,
            keep: Keep::Backward {
                recompute_gelu: false,
            },
        }
    }

    /// Whether the backward forms GELU's output again (one layer's kept).
    pub fn recomputes_gelu(&self) -> bool {
        self.keep
            == Keep::Backward {
                recompute_gelu: true,
            }
    }

    /// Whether a model of this plan runs a backward, and so has gradients.
    pub fn trains(&self) -> bool {
        matches!(self.keep, Keep::Backward { .. })
    }

    /// The low-rank layers of a model of `config` with `lr`'s, after the checks that refuse a
    /// model before anything is allocated: the settings, the ranks, the batch and the context.
    pub fn check(&self, config: &GptConfig, lr: &LowRankConfig) -> Result<Vec<LowRankLayer>> {
        config.validate()?;
        lr.validate()?;
        let layers = layer::plan(lr, config)?;
        let (batch, seq) = (self.batch, self.seq);
        ensure!(
            batch > 0 && seq > 0,
            "batch ({batch}) and sequence length ({seq}) must be positive"
        );
        ensure!(
            seq <= config.max_seq,
            "sequence length {seq} exceeds the model's context of {} tokens; use --seq {} or less",
            config.max_seq,
            config.max_seq
        );
        Ok(layers)
    }
}

/// What a model that trains adds: the parameters' gradients and the backward's scratch.
struct Gradients<B: Backend> {
    /// f32, those of the tensors the backward forms a gradient for alone.
    params: PackedParams<B>,
    acts: ActivationGrads<B>,
}

/// The buffers one optimiser step updates, borrowed together.
pub struct OptimizerBuffers<'a, B: Backend> {
    /// The f32 masters: those of the tensors with a gradient at least.
    pub params: &'a mut PackedParams<B>,
    pub grads: &'a PackedParams<B>,
    /// Where the step writes the compute-dtype weights (None on a backend computing in f32).
    pub compute_copy: Option<&'a mut B::Buf>,
}

impl<B: Backend> Gpt<B> {
    /// A freshly initialised dense model (GPT-2 init, deterministic by `seed`) for batches of
    /// `batch` sequences of `seq` tokens.
    pub fn new(
        backend: &B,
        config: GptConfig,
        batch: usize,
        seq: usize,
        seed: u64,
    ) -> Result<Self> {
        Self::with_lowrank(backend, config, &LowRankConfig::default(), batch, seq, seed)
    }

    /// A freshly initialised model whose layers `lr` selects are low-rank (see `lowrank`); a
    /// rank that does not fit a layer is an error here, before anything is allocated.
    pub fn with_lowrank(
        backend: &B,
        config: GptConfig,
        lr: &LowRankConfig,
        batch: usize,
        seq: usize,
        seed: u64,
    ) -> Result<Self> {
        Self::with_plan(backend, config, lr, ActivationPlan::new(batch, seq), seed)
    }

    /// `with_lowrank`'s model with activations as `plan` says (`--recompute-gelu`'s keep one
    /// layer's GELU output from the start, never allocating every layer's).
    pub fn with_plan(
        backend: &B,
        config: GptConfig,
        lr: &LowRankConfig,
        plan: ActivationPlan,
        seed: u64,
    ) -> Result<Self> {
        Self::starting(backend, config, lr, plan, Start::Init(seed))
    }

    /// `with_plan`'s model with every parameter zero, for a checkpoint's tensors to replace.
    pub fn unset(
        backend: &B,
        config: GptConfig,
        lr: &LowRankConfig,
        plan: ActivationPlan,
    ) -> Result<Self> {
        Self::starting(backend, config, lr, plan, Start::Zero)
    }

    /// `with_plan`'s model, its parameters as `start` says.
    pub fn starting(
        backend: &B,
        config: GptConfig,
        lr: &LowRankConfig,
        plan: ActivationPlan,
        start: Start,
    ) -> Result<Self> {
        let layers = plan.check(&config, lr)?;
        let (batch, seq) = (plan.batch, plan.seq);
        let layout = ParamLayout::with_lowrank(&config, &layers);
        let trained = Trained::of(lr);
        let mut weights = Weights::new(backend, &layout, trained, plan.trains())?;
        weights.start(backend, &layout, lr, start)?;
        let acts = Activations::new(backend, &config, plan).with_context(|| {
            format!(
                "allocating the activations of {batch} sequences × {seq} tokens (they grow with \
                 both: a smaller --batch with a larger --accum keeps the tokens per step)"
            )
        })?;
        let gradients = match plan.keep {
            Keep::Backward { recompute_gelu } => Some(Gradients {
                params: PackedParams::new(backend, &trained.gradient_spans(&layout))
                    .context("allocating the gradients")?,
                acts: ActivationGrads::new(backend, acts.shape, recompute_gelu)
                    .context("allocating the activation gradients")?,
            }),
            Keep::KvCache | Keep::Nothing => None,
        };
        let lora_scale = (lr.mode == LowRankMode::Lora).then(|| lr.lora_scale());
        let lowrank = LowRankRuntime::new(backend, layers, batch * seq, lr.rank_init, lora_scale)
            .context("allocating the low-rank scratch")?;
        let mut gpt = Gpt {
            config,
            layout,
            weights,
            acts,
            gradients,
            lowrank,
            inputs: Vec::new(),
            has_loss_gradient: false,
            decoded: 0,
            trained,
        };
        gpt.refresh_compute_copy(backend)?;
        Ok(gpt)
    }

    /// Runs the network on `inputs` (batch·seq token ids, row-major). With `targets` (same
    /// shape), returns the mean cross-entropy over all B·T positions and leaves its gradient ready
    /// for `backward`; without, leaves the logits in `logits()`.
    pub fn forward(
        &mut self,
        b: &B,
        inputs: &[u32],
        targets: Option<&[u32]>,
    ) -> Result<Option<f32>> {
        let Some(targets) = targets else {
            self.forward_inputs(b, inputs)?;
            return Ok(None);
        };
        let losses = self.forward_losses(b, inputs, targets)?;
        let sum: f64 = losses.iter().map(|&x| x as f64).sum();
        Ok(Some((sum / losses.len() as f64) as f32))
    }

    /// `forward` with targets, returning each position's cross-entropy (B·T, row-major) instead of
    /// their mean: for an evaluation that scores some positions only.
    pub fn forward_losses(&mut self, b: &B, inputs: &[u32], targets: &[u32]) -> Result<Vec<f32>> {
        self.check_tokens("targets", targets)?;
        self.forward_inputs(b, inputs)?;
        let a = &mut self.acts;
        let (tokens, vocab) = (a.shape.tokens(), self.config.vocab_size);
        let shape = MatShape::new(tokens, a.padded_vocab);
        b.fused_classifier(
            a.logits.all_mut(),
            a.losses.all_mut(),
            targets,
            shape,
            vocab,
            1.0 / tokens as f32,
        )?;
        let losses = b.download(a.losses.all())?;
        self.has_loss_gradient = true;
        Ok(losses)
    }

    /// The forward of `inputs` up to the logits.
    fn forward_inputs(&mut self, b: &B, inputs: &[u32]) -> Result<()> {
        self.check_tokens("inputs", inputs)?;
        self.has_loss_gradient = false;
        self.inputs.clear();
        self.inputs.extend_from_slice(inputs);
        let w = self.weights.compute();
        self.decoded = 0;
        forward(
            b,
            &self.layout,
            w,
            &mut self.lowrank,
            &mut self.acts,
            inputs,
            Rows::All,
        )
    }

    /// Runs the network on positions `start`..`start + tokens.len()` of the batch's first
    /// sequence, whose earlier positions the calls since the last `forward` or change of the
    /// weights computed (start 0: a new sequence), leaving their logits in those rows of `logits()`. Decoding: attention
    /// reads the earlier positions' k and v where their forward left them, so a token costs one
    /// row's work instead of a whole window's. Saves nothing for a backward.
    pub fn decode(&mut self, b: &B, tokens: &[u32], start: usize) -> Result<()> {
        let (n, seq) = (tokens.len(), self.seq());
        ensure!(n > 0, "decode needs at least one token");
        ensure!(
            self.acts.qkv.holds_every_layer(self.config.n_layer),
            "decode needs every layer's keys and values, which a model built to evaluate does \
             not keep (build it with Keep::KvCache)"
        );
        ensure!(
            start <= self.decoded,
            "decode at position {start}: only positions 0..{} are computed",
            self.decoded
        );
        ensure!(
            start + n <= seq,
            "decode of positions {start}..{}: the model was built for {seq}",
            start + n
        );
        let vocab = self.config.vocab_size;
        if let Some(&t) = tokens.iter().find(|&&t| t as usize >= vocab) {
            bail!("token id {t} is outside the vocabulary of {vocab}");
        }
        self.has_loss_gradient = false;
        // Until the forward succeeds, positions from `start` on hold what a failed one left.
        self.decoded = start;
        let w = self.weights.compute();
        let rows = Rows::Next { start, n };
        let (lr, a) = (&mut self.lowrank, &mut self.acts);
        forward(b, &self.layout, w, lr, a, tokens, rows)?;
        self.decoded = start + n;
        Ok(())
    }

    /// Adds the gradient of `loss_scale` · (the last forward's mean loss) to `grads()`: call
    /// `zero_grads` before the first micro-batch of a step, and pass 1/steps to accumulate. The
    /// gradient of a tensor without [`Gpt::has_gradient`] stays zero.
    pub fn backward(&mut self, b: &B, loss_scale: f32) -> Result<()> {
        let g = (self.gradients.as_mut()).ok_or_else(only_forward)?;
        if !self.has_loss_gradient {
            bail!("backward needs a forward with targets first (each backward consumes one forward's loss gradient)");
        }
        self.has_loss_gradient = false;
        let w = self.weights.compute();
        let saved = Saved {
            layout: &self.layout,
            w,
            a: &self.acts,
            inputs: &self.inputs,
            trained: self.trained,
        };
        let (grads, d) = (&mut g.params, &mut g.acts);
        backward(b, &saved, &mut self.lowrank, grads, d, loss_scale)
    }

    /// Zeroes the gradients, before a step's first micro-batch: those the backward forms
    /// (`has_gradient`), the only ones there is memory for.
    pub fn zero_grads(&mut self, b: &B) -> Result<()> {
        b.fill(self.grads_mut()?.buf_mut().all_mut(), 0.0)
    }

    /// Copies the master weights into the compute dtype: call after changing `params_mut()`
    /// (an optimiser step given `compute_copy` does it itself).
    pub fn refresh_compute_copy(&mut self, b: &B) -> Result<()> {
        self.decoded = 0; // the weights a forward reads change
        self.weights.refresh(b)
    }

    /// The first parameter whose compute copy is not its master weight in the compute dtype, as
    /// (tensor name, index within it, master value, copy value); None when the copy is current
    /// (or there is none). A stale copy means a forward on old weights. A tensor without a master
    /// (a frozen one beside a copy: `Weights`) is in the copy alone, with nothing to differ from.
    pub fn stale_compute_copy(&self, b: &B) -> Result<Option<(String, usize, f32, f32)>> {
        // 4 Mi values at a time: tens of MB (the cast chunk, both chunks as f32 on the host, a
        // device's bf16 download staged), within the memory plan's margin, where the whole model
        // cast and both copies downloaded were not planned.
        self.first_stale(b, 1 << 22)
    }

    /// `stale_compute_copy`, `chunk` values at a time.
    pub(super) fn first_stale(
        &self,
        b: &B,
        chunk: usize,
    ) -> Result<Option<(String, usize, f32, f32)>> {
        let Some((i, want, have)) = self.weights.first_stale(b, chunk)? else {
            return Ok(None);
        };
        let (name, at) = (self.layout.tensors().iter())
            .find(|t| (t.offset..t.offset + t.len()).contains(&i))
            .map_or(("(padding)".to_string(), i), |t| {
                (t.name.clone(), i - t.offset)
            });
        Ok(Some((name, at, want, have)))
    }

    /// Logits (batch·seq × padded_vocab) of the last forward without targets; columns from
    /// vocab_size on are padding. After a forward with targets this holds the loss gradient.
    pub fn logits(&self) -> Ref<'_, B::Buf> {
        self.acts.logits.all()
    }

    /// The f32 master parameters, addressed by `layout()`'s offsets: every tensor's on a backend
    /// computing in f32, else those with a gradient alone, none in a model that only runs
    /// forward (`Weights`).
    pub fn params(&self) -> &PackedParams<B> {
        self.weights.masters()
    }
    pub fn params_mut(&mut self) -> &mut PackedParams<B> {
        self.decoded = 0; // new weights: the decoded positions' k and v are stale
        self.weights.masters_and_copy().0
    }
    /// The weights: the masters and the compute copy.
    pub fn weights(&self) -> &Weights<B> {
        &self.weights
    }
    pub fn weights_mut(&mut self) -> &mut Weights<B> {
        self.decoded = 0;
        &mut self.weights
    }
    /// The f32 gradients, addressed by the parameters' offsets; an error in a model built to run
    /// forward only.
    pub fn grads(&self) -> Result<&PackedParams<B>> {
        let g = self.gradients.as_ref().ok_or_else(only_forward)?;
        Ok(&g.params)
    }
    pub fn grads_mut(&mut self) -> Result<&mut PackedParams<B>> {
        let g = self.gradients.as_mut().ok_or_else(only_forward)?;
        Ok(&mut g.params)
    }
    /// Parameters, gradients and compute copy together, for an optimiser step.
    pub fn optimizer_buffers(&mut self) -> Result<OptimizerBuffers<'_, B>> {
        let g = self.gradients.as_ref().ok_or_else(only_forward)?;
        self.decoded = 0;
        let (params, compute_copy) = self.weights.masters_and_copy();
        Ok(OptimizerBuffers {
            params,
            grads: &g.params,
            compute_copy,
        })
    }
    pub fn layout(&self) -> &ParamLayout {
        &self.layout
    }
    /// Whether the backward forms the gradient of layout tensor `index`: not for a frozen base
    /// W0, and in LoRA only for the factors (and the embeddings if they train).
    pub fn has_gradient(&self, index: usize) -> bool {
        self.trained.has_gradient(&self.layout, index)
    }
    pub fn trained(&self) -> Trained {
        self.trained
    }
    pub fn config(&self) -> &GptConfig {
        &self.config
    }
    pub fn batch(&self) -> usize {
        self.acts.shape.batch
    }
    pub fn seq(&self) -> usize {
        self.acts.shape.seq
    }
    /// Trained parameters at the live ranks (without embedding padding, frozen bases or dormant
    /// factor rows; in LoRA the factors alone).
    pub fn num_params(&self) -> usize {
        self.cost().params
    }
    /// Training FLOPs (forward + backward) per token at this model's sequence length and live ranks.
    pub fn training_flops_per_token(&self) -> f64 {
        self.cost().flops_per_token
    }
    /// Parameters and FLOPs per token at the live ranks.
    pub fn cost(&self) -> Cost {
        let lr = &self.lowrank;
        cost(&self.config, self.seq(), &lr.layers, &lr.live, self.trained)
    }
    /// The low-rank layers' live ranks and scratch.
    pub fn lowrank(&self) -> &LowRankRuntime<B> {
        &self.lowrank
    }
    pub fn lowrank_mut(&mut self) -> &mut LowRankRuntime<B> {
        self.decoded = 0;
        &mut self.lowrank
    }

    /// Bytes of activations, activation gradients and low-rank scratch held, as allocated.
    pub fn activation_bytes(&self, b: &B) -> usize {
        let dacts = (self.gradients.as_ref()).map_or(0, |g| g.acts.bytes(b));
        self.acts.bytes(b) + dacts + self.lowrank.bytes(b)
    }

    fn check_tokens(&self, what: &str, tokens: &[u32]) -> Result<()> {
        let (want, vocab) = (self.batch() * self.seq(), self.config.vocab_size);
        ensure!(
            tokens.len() == want,
            "{what}: got {} token ids, the model was built for batch {} × seq {} = {want}",
            tokens.len(),
            self.batch(),
            self.seq()
        );
        if let Some((i, &t)) = tokens
            .iter()
            .enumerate()
            .find(|(_, &t)| t as usize >= vocab)
        {
            bail!("{what}: token id {t} at position {i} is outside the vocabulary of {vocab}; was the data tokenized with another tokenizer?");
        }
        Ok(())
    }
}

/// The error of a gradient asked of a model without them.
fn only_forward() -> anyhow::Error {
    anyhow::anyhow!(
        "this model was built to run forward only (its activations planned without a backward): \
         it has no gradients"
    )
}

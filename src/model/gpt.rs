//! `Gpt`: the parameters, gradients and activations of a GPT-2, and its forward and backward
//! passes over a fixed (batch, seq).

use super::activations::{ActivationGrads, Activations};
use super::backward::{backward, Saved};
use super::config::GptConfig;
use super::forward::forward;
use super::params::ParamLayout;
use crate::backend::{Backend, Buffer, DType, MatShape, Ref};
use anyhow::{bail, ensure, Context, Result};

/// A GPT-2 on a backend: f32 master parameters, their compute-dtype copy, f32 gradients with the
/// same layout, and activations planned for (batch, seq).
pub struct Gpt<B: Backend> {
    config: GptConfig,
    layout: ParamLayout,
    params: B::Buf,
    /// The weights in the compute dtype (bf16 on CUDA); None when that is f32 and `params` serves.
    compute_copy: Option<B::Buf>,
    grads: B::Buf,
    acts: Activations<B>,
    dacts: ActivationGrads<B>,
    /// The last forward's token ids, for the embedding backward.
    inputs: Vec<u32>,
    /// Set by a forward with targets, cleared by the backward that consumes its dlogits.
    has_loss_gradient: bool,
}

/// The buffers one optimiser step updates, borrowed together.
pub struct OptimizerBuffers<'a, B: Backend> {
    pub params: &'a mut B::Buf,
    pub grads: &'a B::Buf,
    /// Where the step writes the compute-dtype weights (None on a backend computing in f32).
    pub compute_copy: Option<&'a mut B::Buf>,
}

impl<B: Backend> Gpt<B> {
    /// A freshly initialised model (GPT-2 init, deterministic by `seed`) for batches of
    /// `batch` sequences of `seq` tokens.
    pub fn new(
        backend: &B,
        config: GptConfig,
        batch: usize,
        seq: usize,
        seed: u64,
    ) -> Result<Self> {
        config.validate()?;
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
        let layout = ParamLayout::new(&config);
        let mut params = backend
            .alloc(DType::F32, layout.len())
            .context("allocating the parameters")?;
        backend.upload(&layout.init_values(seed), params.all_mut())?;
        let compute_copy = match backend.compute_dtype() {
            DType::F32 => None,
            dtype => Some(
                backend
                    .alloc(dtype, layout.len())
                    .context("allocating the compute copy of the weights")?,
            ),
        };
        let grads = backend
            .alloc(DType::F32, layout.len())
            .context("allocating the gradients")?;
        let acts =
            Activations::new(backend, &config, batch, seq).context("allocating the activations")?;
        let dacts = ActivationGrads::new(backend, acts.shape)
            .context("allocating the activation gradients")?;
        let mut gpt = Gpt {
            config,
            layout,
            params,
            compute_copy,
            grads,
            acts,
            dacts,
            inputs: Vec::new(),
            has_loss_gradient: false,
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
        self.check_tokens("inputs", inputs)?;
        if let Some(t) = targets {
            self.check_tokens("targets", t)?;
        }
        self.has_loss_gradient = false;
        self.inputs.clear();
        self.inputs.extend_from_slice(inputs);
        let w = self.compute_copy.as_ref().unwrap_or(&self.params);
        forward(b, &self.layout, w, &mut self.acts, inputs)?;
        let Some(targets) = targets else {
            return Ok(None);
        };
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
        Ok(Some(
            (losses.iter().map(|&x| x as f64).sum::<f64>() / tokens as f64) as f32,
        ))
    }

    /// Adds the gradient of `loss_scale` · (the last forward's mean loss) to `grads()`: call
    /// `zero_grads` before the first micro-batch of a step, and pass 1/steps to accumulate.
    pub fn backward(&mut self, b: &B, loss_scale: f32) -> Result<()> {
        if !self.has_loss_gradient {
            bail!("backward needs a forward with targets first (each backward consumes one forward's loss gradient)");
        }
        self.has_loss_gradient = false;
        let w = self.compute_copy.as_ref().unwrap_or(&self.params);
        let saved = Saved {
            layout: &self.layout,
            w,
            a: &self.acts,
            inputs: &self.inputs,
        };
        backward(b, &saved, &mut self.grads, &mut self.dacts, loss_scale)
    }

    pub fn zero_grads(&mut self, b: &B) -> Result<()> {
        b.fill(self.grads.all_mut(), 0.0)
    }

    /// Copies the master weights into the compute dtype: call after changing `params_mut()`
    /// (an optimiser step given `compute_copy` does it itself).
    pub fn refresh_compute_copy(&mut self, b: &B) -> Result<()> {
        match &mut self.compute_copy {
            Some(copy) => b.cast(self.params.all(), copy.all_mut()),
            None => Ok(()),
        }
    }

    /// Logits (batch·seq × padded_vocab) of the last forward without targets; columns from
    /// vocab_size on are padding. After a forward with targets this holds the loss gradient.
    pub fn logits(&self) -> Ref<'_, B::Buf> {
        self.acts.logits.all()
    }

    /// The f32 master parameters, laid out as `layout()`.
    pub fn params(&self) -> &B::Buf {
        &self.params
    }
    pub fn params_mut(&mut self) -> &mut B::Buf {
        &mut self.params
    }
    /// The f32 gradients, laid out as `layout()`.
    pub fn grads(&self) -> &B::Buf {
        &self.grads
    }
    pub fn grads_mut(&mut self) -> &mut B::Buf {
        &mut self.grads
    }
    /// Parameters, gradients and compute copy together, for an optimiser step.
    pub fn optimizer_buffers(&mut self) -> OptimizerBuffers<'_, B> {
        OptimizerBuffers {
            params: &mut self.params,
            grads: &self.grads,
            compute_copy: self.compute_copy.as_mut(),
        }
    }
    pub fn layout(&self) -> &ParamLayout {
        &self.layout
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
    /// Trainable parameters (without embedding padding).
    pub fn num_params(&self) -> usize {
        self.config.num_params()
    }
    /// Training FLOPs (forward + backward) per token at this model's sequence length.
    pub fn training_flops_per_token(&self) -> f64 {
        self.config.training_flops_per_token(self.seq())
    }
    /// Bytes of activations and activation gradients.
    pub fn activation_bytes(&self) -> usize {
        self.acts.bytes() + self.dacts.bytes()
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

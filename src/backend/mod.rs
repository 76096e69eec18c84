//! The Backend trait: the instruction set of a training step.
//!
//! Model, low-rank methods, optimisers and the training loop are written once against it. Ops take
//! buffer windows plus explicit shapes and never synchronise unless they copy to or from host
//! memory or return a host value.
//! `cpu` is the f32 reference (and the test oracle); `cuda` computes in bf16 with fp32 master weights.

mod buffer;
pub mod cpu;
pub mod cuda;
mod dense_grads;
mod shapes;
mod update;

pub use buffer::{Buffer, DType, Mut, Ref};
pub use dense_grads::{weight_grad_gemm, DenseGrads};
pub use shapes::{AttentionSaved, Gemm, MatShape, RowStrides, SeqShape};
pub(crate) use update::check_update;
pub use update::{AdamW, HeavyBall};
mod lowrank;

pub use lowrank::{LowRankGrads, LowRankShape, LowRankWeights, SCRATCH_ROW_ALIGN};

use anyhow::{ensure, Result};

/// Values a device backend's copy of a bf16 window stages on the host at a time (8 MB), converted
/// from or to the caller's f32 there.
pub const HOST_STAGE: usize = 1 << 22;

/// What a linear layer's forward does to its output y besides storing it. A backend may apply it
/// in the epilogue of the GEMM that writes y, a pass over y fewer; [`epilogue_pass`] is the pass.
pub enum LinearEpilogue<'a, T> {
    /// y alone.
    None,
    /// GPT-2's GELU of y written here too (y's dtype and length): the MLP's fc layer, whose y the
    /// backward keeps.
    Gelu(Mut<'a, T>),
    /// y += this matrix (y's dtype and length): a block's projection and the residual connection
    /// after it. Added before y's one rounding (as cuBLASLt's epilogue adds it to a dense layer's
    /// y); the pass, `add` after y's rounding, can differ from it in the last bit.
    Residual(Ref<'a, T>),
}

/// The instruction set of a training step. Grows issue by issue; each op has a CPU reference in
/// `cpu` and a CUDA twin compared with it by `lowrank selftest`.
pub trait Backend {
    type Buf: Buffer;

    /// "cpu" or "cuda:N (device name)".
    fn name(&self) -> String;
    /// The dtype activations and weight copies are computed in (f32 on CPU, bf16 on CUDA).
    fn compute_dtype(&self) -> DType;

    /// A zero-filled buffer.
    fn alloc(&self, dtype: DType, len: usize) -> Result<Self::Buf>;
    /// Copies host values into a window, rounding to the window's dtype.
    fn upload(&self, src: &[f32], dst: Mut<Self::Buf>) -> Result<()>;
    /// Fills a window with the values `fill` writes into a host slice of its length: a staging
    /// vector, then uploaded; a host backend hands over the window itself, so that a checkpoint
    /// is read straight into the weights.
    fn upload_with(
        &self,
        dst: Mut<Self::Buf>,
        fill: &mut dyn FnMut(&mut [f32]) -> Result<()>,
    ) -> Result<()> {
        let mut staged = vec![0.0; dst.len];
        fill(&mut staged)?;
        self.upload(&staged, dst)
    }
    /// Copies a window to the host as f32 (waits for pending work).
    fn download(&self, src: Ref<Self::Buf>) -> Result<Vec<f32>> {
        let mut values = vec![0.0; src.len];
        self.download_into(src, &mut values)?;
        Ok(values)
    }
    /// Copies a window into host memory of its length as f32 (waits for pending work): memory
    /// kept from an earlier copy is not faulted in again (a checkpoint's snapshot, every time).
    fn download_into(&self, src: Ref<Self::Buf>, dst: &mut [f32]) -> Result<()>;
    /// Sets every element of a window to `value` (NaN poisons outputs in tests).
    fn fill(&self, dst: Mut<Self::Buf>, value: f32) -> Result<()>;
    /// Copies a window into another of the same length, converting dtype (f32 → bf16 rounds to nearest even).
    fn cast(&self, src: Ref<Self::Buf>, dst: Mut<Self::Buf>) -> Result<()>;

    /// See [`Gemm`]. Operands share a dtype; C may be f32 or bf16; accumulation is f32.
    fn gemm(&self, g: &Gemm, a: Ref<Self::Buf>, b: Ref<Self::Buf>, c: Mut<Self::Buf>)
        -> Result<()>;

    /// `gemm`, then c[r,:] += bias (a linear layer's forward): a backend may fuse the bias into
    /// the GEMM's epilogue, saving a pass over C (CUDA: cuBLASLt's bias epilogue).
    fn gemm_bias(
        &self,
        g: &Gemm,
        a: Ref<Self::Buf>,
        b: Ref<Self::Buf>,
        bias: Ref<Self::Buf>,
        mut c: Mut<Self::Buf>,
    ) -> Result<()> {
        ensure!(
            g.batch == 1,
            "gemm_bias takes one GEMM, not a batch of {}",
            g.batch
        );
        self.gemm(g, a, b, c.reborrow())?;
        self.add_bias(c, bias, MatShape::new(g.m, g.n))
    }

    /// `gemm_bias` into `c`, then GELU(c) into `gelu` (GPT-2's fc layer; c keeps the pre-activation
    /// for the backward). CUDA runs both in cuBLASLt's epilogue (GELU_AUX_BIAS).
    fn gemm_bias_gelu(
        &self,
        g: &Gemm,
        a: Ref<Self::Buf>,
        b: Ref<Self::Buf>,
        bias: Ref<Self::Buf>,
        c: Mut<Self::Buf>,
        gelu: Mut<Self::Buf>,
    ) -> Result<()> {
        gemm_bias_then_gelu(self, g, a, b, bias, c, gelu)
    }

    /// c = a·b + bias + `residual` (c's dtype and length), rounded once: a block's projection and
    /// the residual connection after it. CUDA adds it in cuBLASLt's epilogue (β = 1 with the
    /// residual as C); the default is two passes, `gemm_bias` then `add`, which round twice.
    fn gemm_bias_residual(
        &self,
        g: &Gemm,
        a: Ref<Self::Buf>,
        b: Ref<Self::Buf>,
        bias: Ref<Self::Buf>,
        residual: Ref<Self::Buf>,
        c: Mut<Self::Buf>,
    ) -> Result<()> {
        gemm_bias_then_residual(self, g, a, b, bias, residual, c)
    }

    /// A dense linear layer's parameter gradients: dW += xᵀ·dy and db += Σ_rows dy (f32), for x
    /// (rows × n_in) and dy (rows × n_out) of one dtype. CUDA forms db in the epilogue of dW's GEMM
    /// (cuBLASLt's BGRADA) where it fits, instead of reading dy once more.
    fn linear_param_grads(
        &self,
        x: Ref<Self::Buf>,
        dy: Ref<Self::Buf>,
        (n_in, n_out): (usize, usize),
        grads: DenseGrads<'_, Self::Buf>,
    ) -> Result<()> {
        linear_param_grads_in_passes(self, x, dy, (n_in, n_out), grads)
    }

    /// `gemm` into `c`, then c ⊙= GELU′(u) (the MLP projection's dx and GELU's backward, u the
    /// fc layer's output). CUDA runs both in cuBLASLt's epilogue (DGELU).
    fn gemm_gelu_backward(
        &self,
        g: &Gemm,
        a: Ref<Self::Buf>,
        b: Ref<Self::Buf>,
        u: Ref<Self::Buf>,
        c: Mut<Self::Buf>,
    ) -> Result<()> {
        gemm_then_gelu_backward(self, g, a, b, u, c)
    }

    /// One fused AdamW step over f32 master `params`, f32 `grads` and moments `m`, `v`; when given,
    /// `compute_copy` receives the updated parameters in its own dtype (the bf16 copy on CUDA).
    fn adamw(
        &self,
        hp: &AdamW,
        params: Mut<Self::Buf>,
        grads: Ref<Self::Buf>,
        m: Mut<Self::Buf>,
        v: Mut<Self::Buf>,
        compute_copy: Option<Mut<Self::Buf>>,
    ) -> Result<()>;

    /// One fused heavy-ball step over f32 master `params`, f32 `grads` and `velocity` (z); when
    /// given, `compute_copy` receives the updated parameters in its own dtype.
    fn heavy_ball(
        &self,
        hp: &HeavyBall,
        params: Mut<Self::Buf>,
        grads: Ref<Self::Buf>,
        velocity: Mut<Self::Buf>,
        compute_copy: Option<Mut<Self::Buf>>,
    ) -> Result<()>;

    /// Σ x² over every window of `xs` together, accumulated in at least f32 per element and f64
    /// across blocks and windows, in a fixed order. Several windows make one call (on a GPU one
    /// wait for the result), so a gradient norm can skip what no backward writes: LoRA's frozen
    /// base, a frozen W0.
    fn sum_squares(&self, xs: &[Ref<Self::Buf>]) -> Result<f64>;

    // ---- Model ops (GPT-2). Token ids and targets are host slices; the backend stages them. ----

    /// out[b,t,:] = wte[tokens[b,t],:] + wpe[t,:]. `wte` holds whole rows of `channels`; `wpe` at
    /// least `seq` rows.
    fn embedding_forward(
        &self,
        out: Mut<Self::Buf>,
        tokens: &[u32],
        wte: Ref<Self::Buf>,
        wpe: Ref<Self::Buf>,
        shape: SeqShape,
    ) -> Result<()>;
    /// dwte[tokens[i],:] += dout[i,:] (scatter-add over B·T rows of `channels`). The position
    /// table's gradient is a column sum: `add_column_sums(dwpe, dout, (B, T·C))`.
    fn embedding_backward(
        &self,
        dwte: Mut<Self::Buf>,
        dout: Ref<Self::Buf>,
        tokens: &[u32],
        channels: usize,
    ) -> Result<()>;

    /// LayerNorm over the `cols` of each row (eps 1e-5, biased variance): out = (x − mean)·rstd·w + b.
    /// `weight_bias` is w then b (2·cols, as the parameter layout stores them); mean and rstd are
    /// saved per row for the backward pass.
    fn layernorm_forward(
        &self,
        out: Mut<Self::Buf>,
        mean: Mut<Self::Buf>,
        rstd: Mut<Self::Buf>,
        inp: Ref<Self::Buf>,
        weight_bias: Ref<Self::Buf>,
        shape: MatShape,
    ) -> Result<()>;
    /// LayerNorm backward. ACCUMULATES: dinp += ∂/∂x (into the residual gradient) and
    /// dweight_bias += (∂/∂w then ∂/∂b). `dweight_bias` None: the weight and bias are frozen
    /// (LoRA), and their gradient is not formed.
    #[allow(clippy::too_many_arguments)] // one operand per kernel argument, as the launcher takes them
    fn layernorm_backward(
        &self,
        dinp: Mut<Self::Buf>,
        dweight_bias: Option<Mut<Self::Buf>>,
        dout: Ref<Self::Buf>,
        inp: Ref<Self::Buf>,
        weight_bias: Ref<Self::Buf>,
        mean: Ref<Self::Buf>,
        rstd: Ref<Self::Buf>,
        shape: MatShape,
    ) -> Result<()>;

    /// out[r,:] += bias (the bias of a linear layer after its GEMM).
    fn add_bias(&self, out: Mut<Self::Buf>, bias: Ref<Self::Buf>, shape: MatShape) -> Result<()>;
    /// dst += Σ_r src[r,:] (a bias gradient; also the position-embedding gradient).
    fn add_column_sums(
        &self,
        dst: Mut<Self::Buf>,
        src: Ref<Self::Buf>,
        shape: MatShape,
    ) -> Result<()>;
    /// out += x, elementwise (the residual connection).
    fn add(&self, out: Mut<Self::Buf>, x: Ref<Self::Buf>) -> Result<()>;

    /// GPT-2's tanh GELU: out = ½x(1 + tanh(√(2/π)(x + 0.044715x³))).
    fn gelu_forward(&self, out: Mut<Self::Buf>, inp: Ref<Self::Buf>) -> Result<()>;
    /// In place: d ← d · GELU′(inp), turning the output gradient into the input gradient.
    fn gelu_backward(&self, d: Mut<Self::Buf>, inp: Ref<Self::Buf>) -> Result<()>;

    /// out −= x, elementwise (an output minus its target, in the function-aware init's loss).
    fn sub(&self, out: Mut<Self::Buf>, x: Ref<Self::Buf>) -> Result<()>;
    /// out = max(inp, 0).
    fn relu_forward(&self, out: Mut<Self::Buf>, inp: Ref<Self::Buf>) -> Result<()>;
    /// In place: d ← d · [inp > 0] (the subgradient 0 at inp = 0, as PyTorch takes it).
    fn relu_backward(&self, d: Mut<Self::Buf>, inp: Ref<Self::Buf>) -> Result<()>;

    /// What `attention_forward` keeps in `att` for the backward pass, for activations of `act`
    /// dtype and heads of `head_size`: the probabilities unless the backend says otherwise.
    fn attention_saved(&self, head_size: usize, act: DType) -> AttentionSaved {
        let _ = (head_size, act);
        AttentionSaved::Probabilities
    }
    /// Causal multi-head self-attention from the fused qkv (B,T,3C: q, k, v each C = heads·hs wide)
    /// to out (B,T,C), scores scaled by 1/√hs. Saves in att what `attention_saved` names: the
    /// softmax probabilities (B,heads,T,T), zero above the diagonal, or each row's log-sum-exp of
    /// its scaled scores, base 2, in f32 (B,heads,T: `AttentionSaved::LogSumExp`).
    fn attention_forward(
        &self,
        out: Mut<Self::Buf>,
        att: Mut<Self::Buf>,
        qkv: Ref<Self::Buf>,
        shape: SeqShape,
        heads: usize,
    ) -> Result<()>;
    /// Attention backward: WRITES dqkv (B,T,3C) from dout (B,T,C) and the forward's qkv, out and
    /// att (flash attention's backward needs the output; the materialised one does not read it).
    #[allow(clippy::too_many_arguments)] // one operand per kernel argument, as the launcher takes them
    fn attention_backward(
        &self,
        dqkv: Mut<Self::Buf>,
        dout: Ref<Self::Buf>,
        qkv: Ref<Self::Buf>,
        out: Ref<Self::Buf>,
        att: Ref<Self::Buf>,
        shape: SeqShape,
        heads: usize,
    ) -> Result<()>;

    /// Causal attention of rows `start`.. of one sequence whose earlier rows are already in
    /// `qkv`: decoding, a token (or a prompt) at a time, with the earlier tokens' k and v as the
    /// cache. qkv holds rows 0..start + n (3C each, laid out as `attention_forward`'s), out the n
    /// new rows (`new`: n × C); row i attends to rows 0..=i, scores scaled by 1/√hs. Saves
    /// nothing: no backward follows a decoding step.
    fn attention_cached(
        &self,
        out: Mut<Self::Buf>,
        qkv: Ref<Self::Buf>,
        start: usize,
        new: MatShape,
        heads: usize,
    ) -> Result<()>;

    /// The fused classifier over rows of `shape.cols` (padded vocab) logits, of which the first
    /// `vocab` are real: losses[r] = −log softmax(logits[r,..vocab])[targets[r]] (f32), and in
    /// place of the logits dlogits = (softmax − onehot(target))·dloss, zero in the padding columns.
    fn fused_classifier(
        &self,
        logits: Mut<Self::Buf>,
        losses: Mut<Self::Buf>,
        targets: &[u32],
        shape: MatShape,
        vocab: usize,
        dloss: f32,
    ) -> Result<()>;

    /// Waits for all queued work.
    fn synchronize(&self) -> Result<()>;

    /// The device's dense peak in TFLOP/s at the compute dtype, for MFU; None where unknown (the CPU).
    fn peak_tflops(&self) -> Option<f64> {
        None
    }

    /// Bytes a buffer of `len` elements of `dtype` takes (the CPU keeps bf16 values in f32).
    fn stored_bytes(&self, dtype: DType, len: usize) -> usize {
        len * dtype.size_bytes()
    }
    /// Bytes the device has free for new buffers; None where buffers live in the host's memory.
    fn device_memory_free(&self) -> Result<Option<usize>> {
        Ok(None)
    }
    /// The most one `attention_forward` or `attention_backward` at (B, T, C) with `heads` heads
    /// allocates beside its operands (and frees on return), for a run's memory plan.
    fn attention_scratch_bytes(&self, shape: SeqShape, heads: usize) -> usize;
    /// What `gemm` of `g` allocates beside its operands and keeps for later calls (the CPU's
    /// transposed copies), for a run's memory plan; none where the backend needs no copies or
    /// holds its workspace from the start (cuBLASLt's).
    fn gemm_scratch_bytes(&self, g: &Gemm) -> usize {
        let _ = g;
        0
    }

    /// The settings that change how the backend computes (name, effective value), for the record
    /// of a run or a benchmark: CUDA's LOWRANK_* variables (`lowrank doctor` shows the same); none
    /// on the CPU.
    fn settings(&self) -> Vec<(&'static str, String)> {
        Vec::new()
    }

    /// Starts (`true`) or stops the profiler's capture (Nsight's `--capture-range=cudaProfilerApi`);
    /// nothing to capture on the CPU.
    fn profiler_capture(&self, _on: bool) -> Result<()> {
        Ok(())
    }

    // ---- Low-rank linear layer (issue 5). See [`LowRankShape`] for the layout of the factors. ----

    /// y = x·W0 + t·Vt[:k] + b with t = x·Ut[:k]ᵀ, k = `sh.rank`; W0 and b are optional.
    ///
    /// x (n × n_in), W0, Ut, Vt, b and t share one operand dtype (CUDA requires bf16; the CPU takes
    /// f32, or bf16 to see exactly what the GPU sees); y may be f32 or bf16 and is overwritten (one rounding, after f32 accumulation). t is saved for the
    /// backward: n rows of stride `sh.scratch_stride()` (`sh.scratch_len()` elements), whose columns
    /// ≥ k are written as zeros. Then `epi` (the CUDA kernels apply it in their epilogue instead of
    /// a pass over y): GELU from y as stored, exactly what `gelu_forward` on y gives; a residual
    /// before y's one rounding.
    #[allow(clippy::too_many_arguments)]
    fn lowrank_linear_forward(
        &self,
        sh: &LowRankShape,
        x: Ref<Self::Buf>,
        w: LowRankWeights<'_, Self::Buf>,
        bias: Option<Ref<Self::Buf>>,
        t: Mut<Self::Buf>,
        y: Mut<Self::Buf>,
        epi: LinearEpilogue<'_, Self::Buf>,
    ) -> Result<()>;

    /// The backward of [`Backend::lowrank_linear_forward`] given dy (n × n_out) and the forward's t:
    /// s = dy·Vt[:k]ᵀ (written to `s`, same layout as t); dx = dy·W0ᵀ + s·Ut[:k] (overwritten, f32 or
    /// bf16); dUt[:k] += sᵀ·x, dVt[:k] += tᵀ·dy and db += Σ_rows dy (accumulated, f32). Rows ≥ k of
    /// dUt and dVt are untouched; W0 gets no gradient. t and s are each computed once. With
    /// `gelu_input` u (dx's dtype, n × n_in), the layer's input was x = GELU(u) and dx is scaled by
    /// GELU′(u), exactly what `gelu_backward` on dx gives (in the CUDA kernels' epilogue).
    #[allow(clippy::too_many_arguments)]
    fn lowrank_linear_backward(
        &self,
        sh: &LowRankShape,
        x: Ref<Self::Buf>,
        w: LowRankWeights<'_, Self::Buf>,
        t: Ref<Self::Buf>,
        dy: Ref<Self::Buf>,
        s: Mut<Self::Buf>,
        dx: Mut<Self::Buf>,
        gelu_input: Option<Ref<Self::Buf>>,
        grads: LowRankGrads<'_, Self::Buf>,
    ) -> Result<()>;
}

/// `Backend::gemm_bias_gelu` as two passes: the reference, and CUDA's path where the epilogue
/// does not fit.
pub(crate) fn gemm_bias_then_gelu<B: Backend + ?Sized>(
    b: &B,
    g: &Gemm,
    a: Ref<B::Buf>,
    w: Ref<B::Buf>,
    bias: Ref<B::Buf>,
    mut c: Mut<B::Buf>,
    gelu: Mut<B::Buf>,
) -> Result<()> {
    b.gemm_bias(g, a, w, bias, c.reborrow())?;
    b.gelu_forward(gelu, c.as_ref())
}

/// `Backend::gemm_bias_residual` as two passes (CUDA's path where the epilogue does not fit; y is
/// rounded before the residual joins it).
pub(crate) fn gemm_bias_then_residual<B: Backend + ?Sized>(
    b: &B,
    g: &Gemm,
    a: Ref<B::Buf>,
    w: Ref<B::Buf>,
    bias: Ref<B::Buf>,
    residual: Ref<B::Buf>,
    mut c: Mut<B::Buf>,
) -> Result<()> {
    b.gemm_bias(g, a, w, bias, c.reborrow())?;
    b.add(c, residual)
}

/// `Backend::linear_param_grads` as the weight gradient's GEMM, then a pass summing dy's columns.
pub fn linear_param_grads_in_passes<B: Backend + ?Sized>(
    b: &B,
    x: Ref<B::Buf>,
    dy: Ref<B::Buf>,
    (n_in, n_out): (usize, usize),
    mut grads: DenseGrads<B::Buf>,
) -> Result<()> {
    let rows = grads.check(&x, &dy, n_in, n_out)?;
    let g = weight_grad_gemm(rows, n_in, n_out);
    b.gemm(&g, x, dy, grads.dw(n_in, n_out))?;
    b.add_column_sums(grads.db(n_out), dy, MatShape::new(rows, n_out))
}

/// `epi` as a pass over the linear layer's output y: GELU(y) into its window, or y += the
/// residual (each window cut to y's length).
pub(crate) fn epilogue_pass<B: Backend + ?Sized>(
    b: &B,
    y: Mut<B::Buf>,
    epi: LinearEpilogue<B::Buf>,
) -> Result<()> {
    let len = y.len;
    match epi {
        LinearEpilogue::None => Ok(()),
        LinearEpilogue::Gelu(g) => b.gelu_forward(Mut { len, ..g }, y.as_ref()),
        LinearEpilogue::Residual(r) => b.add(y, Ref { len, ..r }),
    }
}

/// `Backend::gemm_gelu_backward` as two passes (see `gemm_bias_then_gelu`).
pub(crate) fn gemm_then_gelu_backward<B: Backend + ?Sized>(
    b: &B,
    g: &Gemm,
    a: Ref<B::Buf>,
    w: Ref<B::Buf>,
    u: Ref<B::Buf>,
    mut c: Mut<B::Buf>,
) -> Result<()> {
    b.gemm(g, a, w, c.reborrow())?;
    b.gelu_backward(c, u)
}

/// Checks that two windows have the same length, naming the op.
pub(crate) fn same_len(op: &str, a: usize, b: usize) -> Result<()> {
    ensure!(a == b, "{op}: window lengths differ ({a} vs {b})");
    Ok(())
}

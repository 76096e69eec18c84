//! The CUDA backend: bf16 compute, fp32 master weights and optimiser state, one stream.
//! One file per op family, mirroring kernels/ (launchers live here, kernels there).

mod attention;
mod attention_cached;
mod classifier;
mod dense;
mod device;
mod elementwise;
mod embedding;
mod flash_attention;
mod gemm;
mod launch;
mod layernorm;
mod lowrank_linear;
mod modules;
mod ops;
mod settings;
mod transfer;

pub use device::{device_count, driver_present, driver_version, DeviceInfo};
pub use lowrank_linear::{merge_base_from_env, multicast_clusters, product_tile, LowRankImpl};
pub use settings::{settings, AttentionImpl};

use super::shapes::{
    check_attention, check_attention_cached, check_classifier, check_embedding,
    check_embedding_backward, check_layernorm, check_layernorm_backward, check_matrix_and_row,
    window_len,
};
use super::{
    same_len, AdamW, AttentionSaved, Backend, Buffer, DType, DenseGrads, Gemm, HeavyBall,
    LinearEpilogue, LowRankGrads, LowRankShape, LowRankWeights, MatShape, Mut, Ref, SeqShape,
};
use anyhow::{ensure, Context, Result};
use cudarc::driver::{CudaContext, CudaSlice, CudaStream, DevicePtr};
use std::sync::Arc;

/// A device buffer: raw bytes plus the dtype and element count they hold.
pub struct CudaBuf {
    dtype: DType,
    len: usize,
    ptr: u64,
    mem: CudaSlice<u8>,
}

impl Buffer for CudaBuf {
    fn dtype(&self) -> DType {
        self.dtype
    }
    fn len(&self) -> usize {
        self.len
    }
}

/// Device address of a slice's first byte (event tracking is off, so nothing waits on the guard).
fn slice_ptr<T>(s: &CudaSlice<T>, stream: &CudaStream) -> u64 {
    s.device_ptr(stream).0
}

impl Ref<'_, CudaBuf> {
    /// Device address of the window's first element.
    pub fn ptr(&self) -> u64 {
        self.buf.ptr + (self.off * self.buf.dtype.size_bytes()) as u64
    }
}

impl Mut<'_, CudaBuf> {
    pub fn ptr(&self) -> u64 {
        self.as_ref().ptr()
    }
}

/// A context on the selected GPU (LOWRANK_DEVICE, default 0), its stream, kernels and cuBLASLt.
pub struct Cuda {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    modules: modules::Modules,
    lt: gemm::Lt,
    info: DeviceInfo,
    lowrank_impl: LowRankImpl,
    /// Whether the fused low-rank layer multiplies by the merged weight W0 + Utᵀ·Vt where that is
    /// fewer FLOPs (lowrank_linear/merged.rs; off unless LOWRANK_MERGE_BASE=1).
    merge_base: bool,
    attention_impl: AttentionImpl,
    /// Whether linear layers add their bias in cuBLASLt's epilogue (LOWRANK_BIAS_EPILOGUE).
    bias_epilogue: bool,
    /// Whether the MLP's GELU runs in the epilogue of the GEMM beside it (LOWRANK_GELU_EPILOGUE).
    gelu_epilogue: bool,
    /// Whether a block's projections add the residual in their epilogue
    /// (LOWRANK_RESIDUAL_EPILOGUE).
    residual_epilogue: bool,
    /// Whether dense layers' bias gradients come from their weight gradient's epilogue
    /// (LOWRANK_BIAS_GRAD_EPILOGUE).
    bias_grad_epilogue: bool,
}

impl Cuda {
    /// Opens the selected device, or says in one sentence why there is none.
    pub fn new() -> Result<Self> {
        let ctx = device::open_context()?;
        let info = device::info(&ctx)?;
        let stream = ctx.default_stream();
        let lt = gemm::Lt::new(&stream)?;
        let modules = modules::Modules::new(ctx.clone());
        let lowrank_impl = LowRankImpl::from_env()?;
        let merge_base = lowrank_linear::merge_base_from_env()?;
        let attention_impl = AttentionImpl::from_env()?;
        let bias_epilogue = gemm::bias_epilogue_from_env()?;
        let gelu_epilogue = gemm::gelu_epilogue_from_env()?;
        let residual_epilogue = gemm::residual_epilogue_from_env()?;
        let bias_grad_epilogue = gemm::bias_grad_epilogue_from_env()?;
        Ok(Cuda {
            ctx,
            stream,
            modules,
            lt,
            info,
            lowrank_impl,
            merge_base,
            attention_impl,
            bias_epilogue,
            gelu_epilogue,
            residual_epilogue,
            bias_grad_epilogue,
        })
    }

    /// Picks the attention implementation (LOWRANK_ATTENTION sets it at start-up). Buffers saved by
    /// one implementation's forward are not the other's: switch between steps, not inside one.
    pub fn set_attention_impl(&mut self, imp: AttentionImpl) {
        self.attention_impl = imp;
    }

    /// Picks the low-rank linear implementation (LOWRANK_LOWRANK_IMPL sets it at start-up).
    pub fn set_lowrank_impl(&mut self, imp: LowRankImpl) {
        self.lowrank_impl = imp;
    }

    /// Turns the fused layer's merged-weight products on or off (LOWRANK_MERGE_BASE at start-up).
    pub fn set_merge_base(&mut self, on: bool) {
        self.merge_base = on;
    }

    /// The kernels of ours launched since the last call (cuBLASLt's own excepted), by name.
    pub fn kernels_used(&self) -> Vec<String> {
        self.modules.take_used()
    }

    pub fn info(&self) -> &DeviceInfo {
        &self.info
    }

    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }
}

impl Backend for Cuda {
    type Buf = CudaBuf;

    fn name(&self) -> String {
        format!("cuda:{} ({})", self.info.ordinal, self.info.name)
    }
    fn settings(&self) -> Vec<(&'static str, String)> {
        settings()
            .into_iter()
            .map(|(name, v)| (name, v.unwrap_or_else(|e| format!("INVALID: {e}"))))
            .collect()
    }
    fn compute_dtype(&self) -> DType {
        DType::BF16
    }
    fn peak_tflops(&self) -> Option<f64> {
        self.info.bf16_peak_tflops()
    }

    fn alloc(&self, dtype: DType, len: usize) -> Result<CudaBuf> {
        self.buffer(dtype, len, true)
    }

    fn upload(&self, src: &[f32], dst: Mut<CudaBuf>) -> Result<()> {
        transfer::upload(self, src, dst)
    }

    fn download_into(&self, src: Ref<CudaBuf>, dst: &mut [f32]) -> Result<()> {
        transfer::download_into(self, src, dst)
    }

    fn fill(&self, dst: Mut<CudaBuf>, value: f32) -> Result<()> {
        ops::fill(self, dst, value)
    }

    fn cast(&self, src: Ref<CudaBuf>, dst: Mut<CudaBuf>) -> Result<()> {
        same_len("cast", src.len, dst.len)?;
        ops::cast(self, src, dst)
    }

    fn gemm(&self, g: &Gemm, a: Ref<CudaBuf>, b: Ref<CudaBuf>, c: Mut<CudaBuf>) -> Result<()> {
        g.check(&a, &b, &c)?;
        if g.m == 0 || g.n == 0 {
            return Ok(());
        }
        ensure!(
            g.k > 0,
            "gemm with k = 0 is not supported on CUDA (cuBLASLt rejects it)"
        );
        self.lt.gemm(
            &self.stream,
            g,
            a.dtype(),
            c.dtype(),
            a.ptr(),
            b.ptr(),
            c.ptr(),
        )
    }

    fn gemm_bias(
        &self,
        g: &Gemm,
        a: Ref<CudaBuf>,
        b: Ref<CudaBuf>,
        bias: Ref<CudaBuf>,
        c: Mut<CudaBuf>,
    ) -> Result<()> {
        dense::gemm_bias(self, g, a, b, bias, c)
    }

    fn gemm_bias_gelu(
        &self,
        g: &Gemm,
        a: Ref<CudaBuf>,
        b: Ref<CudaBuf>,
        bias: Ref<CudaBuf>,
        c: Mut<CudaBuf>,
        gelu: Mut<CudaBuf>,
    ) -> Result<()> {
        dense::gemm_bias_gelu(self, g, a, b, bias, c, gelu)
    }

    fn gemm_bias_residual(
        &self,
        g: &Gemm,
        a: Ref<CudaBuf>,
        b: Ref<CudaBuf>,
        bias: Ref<CudaBuf>,
        residual: Ref<CudaBuf>,
        c: Mut<CudaBuf>,
    ) -> Result<()> {
        dense::gemm_bias_residual(self, g, a, b, bias, residual, c)
    }

    fn linear_param_grads(
        &self,
        x: Ref<CudaBuf>,
        dy: Ref<CudaBuf>,
        (n_in, n_out): (usize, usize),
        grads: DenseGrads<CudaBuf>,
    ) -> Result<()> {
        dense::linear_param_grads(self, x, dy, (n_in, n_out), grads)
    }

    fn gemm_gelu_backward(
        &self,
        g: &Gemm,
        a: Ref<CudaBuf>,
        b: Ref<CudaBuf>,
        u: Ref<CudaBuf>,
        c: Mut<CudaBuf>,
    ) -> Result<()> {
        dense::gemm_gelu_backward(self, g, a, b, u, c)
    }

    fn adamw(
        &self,
        hp: &AdamW,
        params: Mut<CudaBuf>,
        grads: Ref<CudaBuf>,
        m: Mut<CudaBuf>,
        v: Mut<CudaBuf>,
        compute_copy: Option<Mut<CudaBuf>>,
    ) -> Result<()> {
        let state = [("m", &m), ("v", &v)];
        super::check_update("adamw", &params, &grads, &state, &compute_copy)?;
        ops::adamw(self, hp, params, grads, m, v, compute_copy)
    }

    fn heavy_ball(
        &self,
        hp: &HeavyBall,
        params: Mut<CudaBuf>,
        grads: Ref<CudaBuf>,
        velocity: Mut<CudaBuf>,
        compute_copy: Option<Mut<CudaBuf>>,
    ) -> Result<()> {
        let state = [("velocity", &velocity)];
        super::check_update("heavy_ball", &params, &grads, &state, &compute_copy)?;
        ops::heavy_ball(self, hp, params, grads, velocity, compute_copy)
    }

    fn sum_squares(&self, xs: &[Ref<CudaBuf>]) -> Result<f64> {
        ops::sum_squares(self, xs)
    }

    fn synchronize(&self) -> Result<()> {
        self.stream.synchronize()?;
        Ok(())
    }

    fn profiler_capture(&self, on: bool) -> Result<()> {
        self.ctx.bind_to_thread()?;
        // SAFETY: plain driver calls on the bound context.
        let rc = unsafe {
            if on {
                cudarc::driver::sys::cuProfilerStart()
            } else {
                cudarc::driver::sys::cuProfilerStop()
            }
        };
        rc.result()
            .with_context(|| format!("cuProfiler{} failed", if on { "Start" } else { "Stop" }))
    }

    fn embedding_forward(
        &self,
        out: Mut<CudaBuf>,
        tokens: &[u32],
        wte: Ref<CudaBuf>,
        wpe: Ref<CudaBuf>,
        shape: SeqShape,
    ) -> Result<()> {
        check_embedding(&out, tokens, &wte, &wpe, shape)?;
        embedding::forward(self, out, tokens, wte, wpe, shape.seq, shape.channels)
    }
    fn embedding_backward(
        &self,
        dwte: Mut<CudaBuf>,
        dout: Ref<CudaBuf>,
        tokens: &[u32],
        channels: usize,
    ) -> Result<()> {
        check_embedding_backward(dwte.len, dout.len, tokens, channels)?;
        embedding::backward(self, dwte, dout, tokens, channels)
    }
    fn layernorm_forward(
        &self,
        out: Mut<CudaBuf>,
        mean: Mut<CudaBuf>,
        rstd: Mut<CudaBuf>,
        inp: Ref<CudaBuf>,
        weight_bias: Ref<CudaBuf>,
        shape: MatShape,
    ) -> Result<()> {
        check_layernorm(
            "layernorm_forward",
            inp.len,
            weight_bias.len,
            mean.len,
            rstd.len,
            shape,
        )?;
        window_len("layernorm_forward", "out", out.len, shape.len())?;
        layernorm::forward(
            self,
            out,
            mean,
            rstd,
            inp,
            weight_bias,
            shape.rows,
            shape.cols,
        )
    }
    fn layernorm_backward(
        &self,
        dinp: Mut<CudaBuf>,
        dweight_bias: Option<Mut<CudaBuf>>,
        dout: Ref<CudaBuf>,
        inp: Ref<CudaBuf>,
        weight_bias: Ref<CudaBuf>,
        mean: Ref<CudaBuf>,
        rstd: Ref<CudaBuf>,
        shape: MatShape,
    ) -> Result<()> {
        check_layernorm(
            "layernorm_backward",
            inp.len,
            weight_bias.len,
            mean.len,
            rstd.len,
            shape,
        )?;
        let dw_len = dweight_bias.as_ref().map(|d| d.len);
        check_layernorm_backward(dinp.len, dout.len, dw_len, shape)?;
        layernorm::backward(
            self,
            dinp,
            dweight_bias,
            dout,
            inp,
            weight_bias,
            mean,
            rstd,
            shape.rows,
            shape.cols,
        )
    }
    fn add_bias(&self, out: Mut<CudaBuf>, bias: Ref<CudaBuf>, shape: MatShape) -> Result<()> {
        check_matrix_and_row("add_bias", ("out", out.len), ("bias", bias.len), shape)?;
        elementwise::add_bias(self, out, bias, shape.rows, shape.cols)
    }
    fn add_column_sums(&self, dst: Mut<CudaBuf>, src: Ref<CudaBuf>, shape: MatShape) -> Result<()> {
        check_matrix_and_row("add_column_sums", ("src", src.len), ("dst", dst.len), shape)?;
        ops::add_column_sums(self, dst, src, shape.rows, shape.cols)
    }
    fn add(&self, out: Mut<CudaBuf>, x: Ref<CudaBuf>) -> Result<()> {
        same_len("add", out.len, x.len)?;
        elementwise::add(self, out, x)
    }
    fn gelu_forward(&self, out: Mut<CudaBuf>, inp: Ref<CudaBuf>) -> Result<()> {
        same_len("gelu_forward", out.len, inp.len)?;
        elementwise::gelu_forward(self, out, inp)
    }
    fn gelu_backward(&self, d: Mut<CudaBuf>, inp: Ref<CudaBuf>) -> Result<()> {
        same_len("gelu_backward", d.len, inp.len)?;
        elementwise::gelu_backward(self, d, inp)
    }
    fn sub(&self, out: Mut<CudaBuf>, x: Ref<CudaBuf>) -> Result<()> {
        same_len("sub", out.len, x.len)?;
        elementwise::sub(self, out, x)
    }
    fn relu_forward(&self, out: Mut<CudaBuf>, inp: Ref<CudaBuf>) -> Result<()> {
        same_len("relu_forward", out.len, inp.len)?;
        elementwise::relu_forward(self, out, inp)
    }
    fn relu_backward(&self, d: Mut<CudaBuf>, inp: Ref<CudaBuf>) -> Result<()> {
        same_len("relu_backward", d.len, inp.len)?;
        elementwise::relu_backward(self, d, inp)
    }
    fn device_memory_free(&self) -> Result<Option<usize>> {
        let (free, _) = (self.ctx.mem_get_info())
            .with_context(|| format!("cannot read GPU {}'s free memory", self.info.ordinal))?;
        Ok(Some(free))
    }
    fn attention_scratch_bytes(&self, s: SeqShape, heads: usize) -> usize {
        let act = self.compute_dtype();
        match self.attention_saved(s.channels / heads.max(1), act) {
            // The backward's per-row dot products of dout and out, f32.
            AttentionSaved::LogSumExp => 4 * s.tokens() * heads,
            // The backward's q, k, v and dout by head, their gradients, and the B·heads·T² score
            // gradients.
            AttentionSaved::Probabilities => {
                act.size_bytes() * (7 * s.len() + heads * s.batch * s.seq * s.seq)
            }
        }
    }
    fn attention_saved(&self, head_size: usize, act: DType) -> AttentionSaved {
        let flash = self.attention_impl == AttentionImpl::Flash
            && act == DType::BF16
            && flash_attention::supports(head_size);
        match flash {
            true => AttentionSaved::LogSumExp,
            false => AttentionSaved::Probabilities,
        }
    }
    fn attention_forward(
        &self,
        out: Mut<CudaBuf>,
        att: Mut<CudaBuf>,
        qkv: Ref<CudaBuf>,
        shape: SeqShape,
        heads: usize,
    ) -> Result<()> {
        let saved = self.attention_saved(shape.channels / heads.max(1), qkv.dtype());
        let ops = (qkv, out.as_ref(), att.as_ref());
        check_attention("attention_forward", ops, saved, shape, heads)?;
        let (b, t, c) = (shape.batch, shape.seq, shape.channels);
        match saved {
            AttentionSaved::LogSumExp => {
                flash_attention::forward(self, out, att, qkv, b, t, c, heads)
            }
            AttentionSaved::Probabilities => {
                attention::forward(self, out, att, qkv, b, t, c, heads)
            }
        }
    }
    fn attention_cached(
        &self,
        out: Mut<CudaBuf>,
        qkv: Ref<CudaBuf>,
        start: usize,
        new: MatShape,
        heads: usize,
    ) -> Result<()> {
        check_attention_cached(&out.as_ref(), &qkv, start, new, heads)?;
        attention_cached::forward(self, out, qkv, start, new, heads)
    }
    fn attention_backward(
        &self,
        dqkv: Mut<CudaBuf>,
        dout: Ref<CudaBuf>,
        qkv: Ref<CudaBuf>,
        out: Ref<CudaBuf>,
        att: Ref<CudaBuf>,
        shape: SeqShape,
        heads: usize,
    ) -> Result<()> {
        let saved = self.attention_saved(shape.channels / heads.max(1), qkv.dtype());
        check_attention("attention_backward", (qkv, dout, att), saved, shape, heads)?;
        window_len("attention_backward", "out", out.len, dout.len)?;
        window_len("attention_backward", "dqkv", dqkv.len, qkv.len)?;
        let (b, t, c) = (shape.batch, shape.seq, shape.channels);
        match saved {
            AttentionSaved::LogSumExp => {
                flash_attention::backward(self, dqkv, dout, qkv, out, att, b, t, c, heads)
            }
            AttentionSaved::Probabilities => {
                attention::backward(self, dqkv, dout, qkv, att, b, t, c, heads)
            }
        }
    }
    fn fused_classifier(
        &self,
        logits: Mut<CudaBuf>,
        losses: Mut<CudaBuf>,
        targets: &[u32],
        shape: MatShape,
        vocab: usize,
        dloss: f32,
    ) -> Result<()> {
        check_classifier(logits.len, losses.len, targets, shape, vocab)?;
        classifier::fused(self, logits, losses, targets, shape.cols, vocab, dloss)
    }

    fn lowrank_linear_forward(
        &self,
        sh: &LowRankShape,
        x: Ref<CudaBuf>,
        w: LowRankWeights<CudaBuf>,
        bias: Option<Ref<CudaBuf>>,
        t: Mut<CudaBuf>,
        y: Mut<CudaBuf>,
        epi: LinearEpilogue<CudaBuf>,
    ) -> Result<()> {
        lowrank_linear::forward(self, sh, x, w, bias, t, y, epi)
    }

    fn lowrank_linear_backward(
        &self,
        sh: &LowRankShape,
        x: Ref<CudaBuf>,
        w: LowRankWeights<CudaBuf>,
        t: Ref<CudaBuf>,
        dy: Ref<CudaBuf>,
        s: Mut<CudaBuf>,
        dx: Mut<CudaBuf>,
        gelu_input: Option<Ref<CudaBuf>>,
        grads: LowRankGrads<CudaBuf>,
    ) -> Result<()> {
        lowrank_linear::backward(self, sh, x, w, t, dy, s, dx, gelu_input, grads)
    }
}

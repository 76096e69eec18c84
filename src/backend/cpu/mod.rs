//! The f32 reference backend: plain, readable, multi-threaded where it matters (gemm crate, rayon).
//! Every CUDA kernel has its twin here, one file per op family, mirroring kernels/.

mod adamw;
mod attention;
mod cast;
mod classifier;
mod elementwise;
mod embedding;
mod exp;
mod gelu;
mod gemm;
mod layernorm;
mod lowrank_linear;
mod pages;
mod reduce;
mod simd;
#[cfg(test)]
mod test_util;

/// The host side of a device's bf16 copies.
pub(crate) use cast::{from_bf16, to_bf16};

use super::shapes::{
    check_attention, check_attention_cached, check_classifier, check_embedding,
    check_embedding_backward, check_layernorm, check_layernorm_backward, check_matrix_and_row,
    window_len,
};
use super::{
    check_update, same_len, AdamW, Backend, Buffer, DType, Gemm, HeavyBall, LinearEpilogue,
    LowRankGrads, LowRankShape, LowRankWeights, MatShape, Mut, Ref, SeqShape,
};
use anyhow::Result;

/// A host buffer. BF16 buffers hold f32 values already rounded to bf16.
#[derive(Clone, Debug)]
pub struct CpuBuf {
    dtype: DType,
    data: Vec<f32>,
}

impl CpuBuf {
    pub fn as_slice(&self) -> &[f32] {
        &self.data
    }
    pub fn into_vec(self) -> Vec<f32> {
        self.data
    }
}

impl Buffer for CpuBuf {
    fn dtype(&self) -> DType {
        self.dtype
    }
    fn len(&self) -> usize {
        self.data.len()
    }
}

impl<'a> Ref<'a, CpuBuf> {
    /// The window as a host slice.
    pub fn slice(&self) -> &'a [f32] {
        &self.buf.data[self.off..self.off + self.len]
    }
}

impl Mut<'_, CpuBuf> {
    pub fn slice_mut(&mut self) -> &mut [f32] {
        &mut self.buf.data[self.off..self.off + self.len]
    }
    /// Rounds the window to its buffer's dtype after an op wrote f32 values into it.
    fn round_to_dtype(&mut self) {
        if self.dtype() == DType::BF16 {
            cast::round_bf16(self.slice_mut());
        }
    }
}

/// The CPU backend, computing in f32 (`Cpu`) or, as the CUDA backend does, with bf16 weights and
/// activations around f32 master weights (of the trained tensors), gradients and optimiser state
/// (`CpuBf16`: every op
/// rounds its bf16 outputs once, as the kernels do, so a run previews the GPU's numerics and
/// exercises the model's compute-copy paths without a GPU). Stateless: threads come from rayon's
/// global pool.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuAt<const BF16: bool>;

/// The f32 reference backend (a unit value as well as a type).
pub type Cpu = CpuAt<false>;
#[allow(non_upper_case_globals)]
pub const Cpu: Cpu = CpuAt;

/// The CPU backend in the CUDA backend's precision.
pub type CpuBf16 = CpuAt<true>;
#[allow(non_upper_case_globals)]
pub const CpuBf16: CpuBf16 = CpuAt;

/// C = A·B + bias in f32, not yet rounded to C's dtype (the window's storage is f32).
fn gemm_bias_unrounded(
    g: &Gemm,
    a: Ref<CpuBuf>,
    b: Ref<CpuBuf>,
    bias: Ref<CpuBuf>,
    c: &mut Mut<CpuBuf>,
) -> Result<()> {
    anyhow::ensure!(
        g.batch == 1,
        "gemm_bias takes one GEMM, not a batch of {}",
        g.batch
    );
    g.check(&a, &b, c)?;
    let shape = MatShape::new(g.m, g.n);
    check_matrix_and_row("gemm_bias", ("c", c.len), ("bias", bias.len), shape)?;
    gemm::gemm(g, a.slice(), b.slice(), c.slice_mut());
    elementwise::add_bias(c.slice_mut(), bias.slice(), shape);
    Ok(())
}

impl<const BF16: bool> Backend for CpuAt<BF16> {
    type Buf = CpuBuf;

    fn name(&self) -> String {
        let precision = if BF16 { "-bf16" } else { "" };
        format!("cpu{precision} ({} threads)", rayon::current_num_threads())
    }
    fn compute_dtype(&self) -> DType {
        if BF16 {
            DType::BF16
        } else {
            DType::F32
        }
    }

    fn stored_bytes(&self, _dtype: DType, len: usize) -> usize {
        len * 4
    }
    fn attention_scratch_bytes(&self, shape: SeqShape, heads: usize) -> usize {
        attention::scratch_bytes(shape, heads)
    }
    fn gemm_scratch_bytes(&self, g: &Gemm) -> usize {
        gemm::scratch_bytes(g)
    }
    fn alloc(&self, dtype: DType, len: usize) -> Result<CpuBuf> {
        Ok(CpuBuf {
            dtype,
            data: pages::zeroed(len),
        })
    }
    fn upload(&self, src: &[f32], mut dst: Mut<CpuBuf>) -> Result<()> {
        same_len("upload", src.len(), dst.len)?;
        dst.slice_mut().copy_from_slice(src);
        dst.round_to_dtype();
        Ok(())
    }
    fn upload_with(
        &self,
        mut dst: Mut<CpuBuf>,
        fill: &mut dyn FnMut(&mut [f32]) -> Result<()>,
    ) -> Result<()> {
        fill(dst.slice_mut())?;
        dst.round_to_dtype();
        Ok(())
    }
    fn download_into(&self, src: Ref<CpuBuf>, dst: &mut [f32]) -> Result<()> {
        same_len("download_into", dst.len(), src.len)?;
        dst.copy_from_slice(src.slice());
        Ok(())
    }
    fn fill(&self, mut dst: Mut<CpuBuf>, value: f32) -> Result<()> {
        elementwise::fill(dst.slice_mut(), value);
        dst.round_to_dtype();
        Ok(())
    }
    fn cast(&self, src: Ref<CpuBuf>, mut dst: Mut<CpuBuf>) -> Result<()> {
        same_len("cast", src.len, dst.len)?;
        dst.slice_mut().copy_from_slice(src.slice());
        dst.round_to_dtype();
        Ok(())
    }

    fn gemm(&self, g: &Gemm, a: Ref<CpuBuf>, b: Ref<CpuBuf>, mut c: Mut<CpuBuf>) -> Result<()> {
        g.check(&a, &b, &c)?;
        gemm::gemm(g, a.slice(), b.slice(), c.slice_mut());
        c.round_to_dtype();
        Ok(())
    }
    /// One rounding of C, after the bias, as CUDA's fused epilogue does.
    fn gemm_bias(
        &self,
        g: &Gemm,
        a: Ref<CpuBuf>,
        b: Ref<CpuBuf>,
        bias: Ref<CpuBuf>,
        mut c: Mut<CpuBuf>,
    ) -> Result<()> {
        gemm_bias_unrounded(g, a, b, bias, &mut c)?;
        c.round_to_dtype();
        Ok(())
    }

    /// The residual joins the sum before C's one rounding, as in cuBLASLt's epilogue.
    fn gemm_bias_residual(
        &self,
        g: &Gemm,
        a: Ref<CpuBuf>,
        b: Ref<CpuBuf>,
        bias: Ref<CpuBuf>,
        residual: Ref<CpuBuf>,
        mut c: Mut<CpuBuf>,
    ) -> Result<()> {
        same_len("gemm_bias_residual", residual.len, c.len)?;
        gemm_bias_unrounded(g, a, b, bias, &mut c)?;
        elementwise::add(c.slice_mut(), residual.slice());
        c.round_to_dtype();
        Ok(())
    }

    fn adamw(
        &self,
        hp: &AdamW,
        mut params: Mut<CpuBuf>,
        grads: Ref<CpuBuf>,
        mut m: Mut<CpuBuf>,
        mut v: Mut<CpuBuf>,
        compute_copy: Option<Mut<CpuBuf>>,
    ) -> Result<()> {
        check_update(
            "adamw",
            &params,
            &grads,
            &[("m", &m), ("v", &v)],
            &compute_copy,
        )?;
        adamw::adamw(
            hp,
            params.slice_mut(),
            grads.slice(),
            m.slice_mut(),
            v.slice_mut(),
        );
        write_copy(&mut params, compute_copy);
        Ok(())
    }

    fn heavy_ball(
        &self,
        hp: &HeavyBall,
        mut params: Mut<CpuBuf>,
        grads: Ref<CpuBuf>,
        mut velocity: Mut<CpuBuf>,
        compute_copy: Option<Mut<CpuBuf>>,
    ) -> Result<()> {
        let state = [("velocity", &velocity)];
        check_update("heavy_ball", &params, &grads, &state, &compute_copy)?;
        adamw::heavy_ball(hp, params.slice_mut(), grads.slice(), velocity.slice_mut());
        write_copy(&mut params, compute_copy);
        Ok(())
    }

    fn sum_squares(&self, xs: &[Ref<CpuBuf>]) -> Result<f64> {
        Ok(xs.iter().map(|x| reduce::sum_squares(x.slice())).sum())
    }

    fn synchronize(&self) -> Result<()> {
        Ok(())
    }

    fn embedding_forward(
        &self,
        mut out: Mut<CpuBuf>,
        tokens: &[u32],
        wte: Ref<CpuBuf>,
        wpe: Ref<CpuBuf>,
        shape: SeqShape,
    ) -> Result<()> {
        check_embedding(&out, tokens, &wte, &wpe, shape)?;
        embedding::forward(out.slice_mut(), tokens, wte.slice(), wpe.slice(), shape);
        out.round_to_dtype();
        Ok(())
    }
    fn embedding_backward(
        &self,
        mut dwte: Mut<CpuBuf>,
        dout: Ref<CpuBuf>,
        tokens: &[u32],
        channels: usize,
    ) -> Result<()> {
        check_embedding_backward(dwte.len, dout.len, tokens, channels)?;
        embedding::backward(dwte.slice_mut(), dout.slice(), tokens, channels);
        dwte.round_to_dtype();
        Ok(())
    }

    fn layernorm_forward(
        &self,
        mut out: Mut<CpuBuf>,
        mut mean: Mut<CpuBuf>,
        mut rstd: Mut<CpuBuf>,
        inp: Ref<CpuBuf>,
        weight_bias: Ref<CpuBuf>,
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
            out.slice_mut(),
            mean.slice_mut(),
            rstd.slice_mut(),
            inp.slice(),
            weight_bias.slice(),
            shape,
        );
        out.round_to_dtype();
        Ok(())
    }
    fn layernorm_backward(
        &self,
        mut dinp: Mut<CpuBuf>,
        mut dweight_bias: Option<Mut<CpuBuf>>,
        dout: Ref<CpuBuf>,
        inp: Ref<CpuBuf>,
        weight_bias: Ref<CpuBuf>,
        mean: Ref<CpuBuf>,
        rstd: Ref<CpuBuf>,
        shape: MatShape,
    ) -> Result<()> {
        let op = "layernorm_backward";
        check_layernorm(op, inp.len, weight_bias.len, mean.len, rstd.len, shape)?;
        let dw_len = dweight_bias.as_ref().map(|d| d.len);
        check_layernorm_backward(dinp.len, dout.len, dw_len, shape)?;
        layernorm::backward(
            dinp.slice_mut(),
            dweight_bias.as_mut().map(|d| d.slice_mut()),
            dout.slice(),
            inp.slice(),
            weight_bias.slice(),
            mean.slice(),
            rstd.slice(),
            shape,
        );
        dinp.round_to_dtype();
        if let Some(d) = &mut dweight_bias {
            d.round_to_dtype();
        }
        Ok(())
    }

    fn add_bias(&self, mut out: Mut<CpuBuf>, bias: Ref<CpuBuf>, shape: MatShape) -> Result<()> {
        check_matrix_and_row("add_bias", ("out", out.len), ("bias", bias.len), shape)?;
        elementwise::add_bias(out.slice_mut(), bias.slice(), shape);
        out.round_to_dtype();
        Ok(())
    }
    fn add_column_sums(
        &self,
        mut dst: Mut<CpuBuf>,
        src: Ref<CpuBuf>,
        shape: MatShape,
    ) -> Result<()> {
        check_matrix_and_row("add_column_sums", ("src", src.len), ("dst", dst.len), shape)?;
        elementwise::add_column_sums(dst.slice_mut(), src.slice(), shape);
        dst.round_to_dtype();
        Ok(())
    }
    fn add(&self, mut out: Mut<CpuBuf>, x: Ref<CpuBuf>) -> Result<()> {
        same_len("add", out.len, x.len)?;
        elementwise::add(out.slice_mut(), x.slice());
        out.round_to_dtype();
        Ok(())
    }

    fn gelu_forward(&self, mut out: Mut<CpuBuf>, inp: Ref<CpuBuf>) -> Result<()> {
        same_len("gelu_forward", out.len, inp.len)?;
        gelu::forward(out.slice_mut(), inp.slice());
        out.round_to_dtype();
        Ok(())
    }
    fn gelu_backward(&self, mut d: Mut<CpuBuf>, inp: Ref<CpuBuf>) -> Result<()> {
        same_len("gelu_backward", d.len, inp.len)?;
        gelu::backward_inplace(d.slice_mut(), inp.slice());
        d.round_to_dtype();
        Ok(())
    }
    fn sub(&self, mut out: Mut<CpuBuf>, x: Ref<CpuBuf>) -> Result<()> {
        same_len("sub", out.len, x.len)?;
        elementwise::sub(out.slice_mut(), x.slice());
        out.round_to_dtype();
        Ok(())
    }
    fn relu_forward(&self, mut out: Mut<CpuBuf>, inp: Ref<CpuBuf>) -> Result<()> {
        same_len("relu_forward", out.len, inp.len)?;
        elementwise::relu_forward(out.slice_mut(), inp.slice());
        out.round_to_dtype();
        Ok(())
    }
    fn relu_backward(&self, mut d: Mut<CpuBuf>, inp: Ref<CpuBuf>) -> Result<()> {
        same_len("relu_backward", d.len, inp.len)?;
        elementwise::relu_backward_inplace(d.slice_mut(), inp.slice());
        d.round_to_dtype();
        Ok(())
    }

    fn attention_forward(
        &self,
        mut out: Mut<CpuBuf>,
        mut att: Mut<CpuBuf>,
        qkv: Ref<CpuBuf>,
        shape: SeqShape,
        heads: usize,
    ) -> Result<()> {
        let saved = self.attention_saved(shape.channels / heads.max(1), qkv.dtype());
        let ops = (qkv, out.as_ref(), att.as_ref());
        check_attention("attention_forward", ops, saved, shape, heads)?;
        attention::forward(out.slice_mut(), att.slice_mut(), qkv.slice(), shape, heads);
        out.round_to_dtype();
        att.round_to_dtype();
        Ok(())
    }
    fn attention_cached(
        &self,
        mut out: Mut<CpuBuf>,
        qkv: Ref<CpuBuf>,
        start: usize,
        new: MatShape,
        heads: usize,
    ) -> Result<()> {
        check_attention_cached(&out.as_ref(), &qkv, start, new, heads)?;
        attention::cached(out.slice_mut(), qkv.slice(), start, new.cols, heads);
        out.round_to_dtype();
        Ok(())
    }
    fn attention_backward(
        &self,
        mut dqkv: Mut<CpuBuf>,
        dout: Ref<CpuBuf>,
        qkv: Ref<CpuBuf>,
        out: Ref<CpuBuf>,
        att: Ref<CpuBuf>,
        shape: SeqShape,
        heads: usize,
    ) -> Result<()> {
        let saved = self.attention_saved(shape.channels / heads.max(1), qkv.dtype());
        check_attention("attention_backward", (qkv, dout, att), saved, shape, heads)?;
        window_len("attention_backward", "out", out.len, dout.len)?;
        window_len("attention_backward", "dqkv", dqkv.len, qkv.len)?;
        attention::backward(
            dqkv.slice_mut(),
            dout.slice(),
            qkv.slice(),
            att.slice(),
            shape,
            heads,
        );
        dqkv.round_to_dtype();
        Ok(())
    }

    fn fused_classifier(
        &self,
        mut logits: Mut<CpuBuf>,
        mut losses: Mut<CpuBuf>,
        targets: &[u32],
        shape: MatShape,
        vocab: usize,
        dloss: f32,
    ) -> Result<()> {
        check_classifier(logits.len, losses.len, targets, shape, vocab)?;
        classifier::fused(
            logits.slice_mut(),
            losses.slice_mut(),
            targets,
            shape,
            vocab,
            dloss,
        );
        logits.round_to_dtype();
        losses.round_to_dtype();
        Ok(())
    }

    fn lowrank_linear_forward(
        &self,
        sh: &LowRankShape,
        x: Ref<CpuBuf>,
        w: LowRankWeights<CpuBuf>,
        bias: Option<Ref<CpuBuf>>,
        t: Mut<CpuBuf>,
        y: Mut<CpuBuf>,
        epi: LinearEpilogue<CpuBuf>,
    ) -> Result<()> {
        lowrank_linear::forward(&Cpu, sh, x, w, bias, t, y, epi)
    }

    fn lowrank_linear_backward(
        &self,
        sh: &LowRankShape,
        x: Ref<CpuBuf>,
        w: LowRankWeights<CpuBuf>,
        t: Ref<CpuBuf>,
        dy: Ref<CpuBuf>,
        s: Mut<CpuBuf>,
        dx: Mut<CpuBuf>,
        gelu_input: Option<Ref<CpuBuf>>,
        grads: LowRankGrads<CpuBuf>,
    ) -> Result<()> {
        lowrank_linear::backward(&Cpu, sh, x, w, t, dy, s, dx, gelu_input, grads)
    }
}

/// Copies updated master parameters into the compute copy, rounded to its dtype.
fn write_copy(params: &mut Mut<CpuBuf>, compute_copy: Option<Mut<CpuBuf>>) {
    if let Some(mut copy) = compute_copy {
        copy.slice_mut().copy_from_slice(params.slice_mut());
        copy.round_to_dtype();
    }
}

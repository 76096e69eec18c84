//! The f32 reference backend: plain, readable, multi-threaded where it matters (gemm crate, rayon).
//! Every CUDA kernel has its twin here, one file per op family, mirroring kernels/.

mod adamw;
mod cast;
mod gemm;
mod lowrank_linear;
mod reduce;

use super::{
    check_adamw, same_len, AdamW, Backend, Buffer, DType, Gemm, LowRankGrads, LowRankShape,
    LowRankWeights, Mut, Ref,
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

/// The CPU backend. Stateless: threads come from rayon's global pool.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cpu;

impl Backend for Cpu {
    type Buf = CpuBuf;

    fn name(&self) -> String {
        format!("cpu ({} threads)", rayon::current_num_threads())
    }
    fn compute_dtype(&self) -> DType {
        DType::F32
    }

    fn alloc(&self, dtype: DType, len: usize) -> Result<CpuBuf> {
        Ok(CpuBuf {
            dtype,
            data: vec![0.0; len],
        })
    }
    fn upload(&self, src: &[f32], mut dst: Mut<CpuBuf>) -> Result<()> {
        same_len("upload", src.len(), dst.len)?;
        dst.slice_mut().copy_from_slice(src);
        dst.round_to_dtype();
        Ok(())
    }
    fn download(&self, src: Ref<CpuBuf>) -> Result<Vec<f32>> {
        Ok(src.slice().to_vec())
    }
    fn fill(&self, mut dst: Mut<CpuBuf>, value: f32) -> Result<()> {
        dst.slice_mut().fill(value);
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

    fn adamw(
        &self,
        hp: &AdamW,
        mut params: Mut<CpuBuf>,
        grads: Ref<CpuBuf>,
        mut m: Mut<CpuBuf>,
        mut v: Mut<CpuBuf>,
        compute_copy: Option<Mut<CpuBuf>>,
    ) -> Result<()> {
        check_adamw(&params, &grads, &m, &v, &compute_copy)?;
        adamw::adamw(
            hp,
            params.slice_mut(),
            grads.slice(),
            m.slice_mut(),
            v.slice_mut(),
        );
        if let Some(mut copy) = compute_copy {
            copy.slice_mut().copy_from_slice(params.slice_mut());
            copy.round_to_dtype();
        }
        Ok(())
    }

    fn sum_squares(&self, x: Ref<CpuBuf>) -> Result<f64> {
        Ok(reduce::sum_squares(x.slice()))
    }

    fn synchronize(&self) -> Result<()> {
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
    ) -> Result<()> {
        lowrank_linear::forward(self, sh, x, w, bias, t, y)
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
        grads: LowRankGrads<CpuBuf>,
    ) -> Result<()> {
        lowrank_linear::backward(self, sh, x, w, t, dy, s, dx, grads)
    }
}

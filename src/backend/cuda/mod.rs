//! The CUDA backend: bf16 compute, fp32 master weights and optimiser state, one stream.
//! One file per op family, mirroring kernels/ (launchers live here, kernels there).

mod device;
mod gemm;
mod lowrank_linear;
mod modules;
mod ops;

pub use device::{device_count, driver_present, driver_version, DeviceInfo};
pub use lowrank_linear::LowRankImpl;

use super::{
    same_len, AdamW, Backend, Buffer, DType, Gemm, LowRankGrads, LowRankShape, LowRankWeights, Mut,
    Ref,
};
use anyhow::{ensure, Context, Result};
use cudarc::driver::{CudaContext, CudaSlice, CudaStream, DevicePtr};
use half::bf16;
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
        Ok(Cuda {
            ctx,
            stream,
            modules,
            lt,
            info,
            lowrank_impl,
        })
    }

    /// Picks the low-rank linear implementation (LOWRANK_LOWRANK_IMPL sets it at start-up).
    pub fn set_lowrank_impl(&mut self, imp: LowRankImpl) {
        self.lowrank_impl = imp;
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

    fn byte_range(r: &Ref<CudaBuf>) -> std::ops::Range<usize> {
        let s = r.buf.dtype.size_bytes();
        r.off * s..(r.off + r.len) * s
    }
}

impl Backend for Cuda {
    type Buf = CudaBuf;

    fn name(&self) -> String {
        format!("cuda:{} ({})", self.info.ordinal, self.info.name)
    }
    fn compute_dtype(&self) -> DType {
        DType::BF16
    }

    fn alloc(&self, dtype: DType, len: usize) -> Result<CudaBuf> {
        let bytes = (len * dtype.size_bytes()).max(1);
        let mem = self
            .stream
            .alloc_zeros::<u8>(bytes)
            .with_context(|| format!("cannot allocate {} MiB on {}", bytes >> 20, self.name()))?;
        let ptr = slice_ptr(&mem, &self.stream);
        Ok(CudaBuf {
            dtype,
            len,
            ptr,
            mem,
        })
    }

    fn upload(&self, src: &[f32], dst: Mut<CudaBuf>) -> Result<()> {
        same_len("upload", src.len(), dst.len)?;
        let range = Self::byte_range(&dst.as_ref());
        let converted: Vec<bf16>;
        let bytes: &[u8] = match dst.dtype() {
            DType::F32 => bytemuck::cast_slice(src),
            DType::BF16 => {
                converted = src.iter().map(|&x| bf16::from_f32(x)).collect();
                bytemuck::cast_slice(&converted)
            }
        };
        self.stream
            .memcpy_htod(bytes, &mut dst.buf.mem.slice_mut(range))?;
        Ok(())
    }

    fn download(&self, src: Ref<CudaBuf>) -> Result<Vec<f32>> {
        let bytes: Vec<u8> = self
            .stream
            .clone_dtoh(&src.buf.mem.slice(Self::byte_range(&src)))?;
        Ok(match src.dtype() {
            DType::F32 => bytemuck::pod_collect_to_vec(&bytes),
            DType::BF16 => bytemuck::pod_collect_to_vec::<u8, bf16>(&bytes)
                .into_iter()
                .map(f32::from)
                .collect(),
        })
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

    fn adamw(
        &self,
        hp: &AdamW,
        params: Mut<CudaBuf>,
        grads: Ref<CudaBuf>,
        m: Mut<CudaBuf>,
        v: Mut<CudaBuf>,
        compute_copy: Option<Mut<CudaBuf>>,
    ) -> Result<()> {
        super::check_adamw(&params, &grads, &m, &v, &compute_copy)?;
        ops::adamw(self, hp, params, grads, m, v, compute_copy)
    }

    fn sum_squares(&self, x: Ref<CudaBuf>) -> Result<f64> {
        ops::sum_squares(self, x)
    }

    fn synchronize(&self) -> Result<()> {
        self.stream.synchronize()?;
        Ok(())
    }

    fn lowrank_linear_forward(
        &self,
        sh: &LowRankShape,
        x: Ref<CudaBuf>,
        w: LowRankWeights<CudaBuf>,
        bias: Option<Ref<CudaBuf>>,
        t: Mut<CudaBuf>,
        y: Mut<CudaBuf>,
    ) -> Result<()> {
        lowrank_linear::forward(self, sh, x, w, bias, t, y)
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
        grads: LowRankGrads<CudaBuf>,
    ) -> Result<()> {
        lowrank_linear::backward(self, sh, x, w, t, dy, s, dx, grads)
    }
}

//! The unfused low-rank layer through cuBLASLt: the baseline the fused kernels are measured
//! against, and their fallback for shapes they do not take.

use super::super::launch::grid_for;
use super::super::{Cuda, CudaBuf};
use crate::backend::{Backend, DType, Gemm, LowRankShape, LowRankWeights, Mut, Ref, RowStrides};
use anyhow::Result;
use cudarc::driver::PushKernelArg;

/// The unfused forward: t = x·Utᵀ, y = b, y += x·W0, y += t·Vt, each through cuBLASLt.
pub(super) fn forward_cublas(
    cuda: &Cuda,
    sh: &LowRankShape,
    x: Ref<CudaBuf>,
    w: LowRankWeights<CudaBuf>,
    bias: Option<Ref<CudaBuf>>,
    mut t: Mut<CudaBuf>,
    y: Mut<CudaBuf>,
) -> Result<()> {
    let LowRankShape {
        n,
        n_in,
        n_out,
        rank: k,
    } = *sh;
    let stride = sh.scratch_stride();
    zero_padding(cuda, sh, t.reborrow())?;
    let (bf, yd) = (DType::BF16, y.dtype());
    let lt = |g: &Gemm, ld: RowStrides, a: u64, b: u64, c: u64, c_dtype: DType| {
        cuda.lt
            .gemm_strided(&cuda.stream, g, ld, bf, c_dtype, a, b, c)
    };
    let project = Gemm::new(n, k, n_in).trans_b();
    lt(
        &project,
        RowStrides::new(n_in, n_in, stride),
        x.ptr(),
        w.ut.ptr(),
        t.ptr(),
        bf,
    )?;
    if let Some(b) = bias {
        bias_rows(cuda, b, &y, n, n_out)?;
    }
    let mut beta = if bias.is_some() { 1.0 } else { 0.0 };
    if let Some(w0) = w.w0 {
        let g = Gemm::new(n, n_out, n_in).beta(beta);
        lt(&g, RowStrides::packed(&g), x.ptr(), w0.ptr(), y.ptr(), yd)?;
        beta = 1.0;
    }
    let g = Gemm::new(n, n_out, k).beta(beta);
    lt(
        &g,
        RowStrides::new(stride, n_out, n_out),
        t.ptr(),
        w.vt.ptr(),
        y.ptr(),
        yd,
    )
}

/// The scratch's padding columns are read as zeros by the fused kernels: when the cuBLASLt path
/// writes the scratch, it zeroes it first (only needed when rank is not a multiple of 8).
fn zero_padding(cuda: &Cuda, sh: &LowRankShape, scratch: Mut<CudaBuf>) -> Result<()> {
    if sh.scratch_stride() != sh.rank {
        let n = sh.scratch_len();
        cuda.fill(Mut { len: n, ..scratch }, 0.0)?;
    }
    Ok(())
}

fn bias_rows(
    cuda: &Cuda,
    bias: Ref<CudaBuf>,
    y: &Mut<CudaBuf>,
    rows: usize,
    cols: usize,
) -> Result<()> {
    let name = match y.dtype() {
        DType::BF16 => "bias_rows_bf16",
        DType::F32 => "bias_rows_f32",
    };
    let f = cuda.modules.function("lowrank_linear", name)?;
    let (b, yp, cols_i) = (bias.ptr(), y.ptr(), cols as i32);
    let total = rows * cols;
    let cfg = grid_for(total);
    // SAFETY: check_forward verified bias holds `cols` and y `rows · cols` elements.
    unsafe {
        cuda.stream
            .launch_builder(&f)
            .arg(&b)
            .arg(&yp)
            .arg(&rows)
            .arg(&cols_i)
            .launch(cfg)?
    };
    Ok(())
}

/// The unfused s and dx: s = dy·Vtᵀ, dx = dy·W0ᵀ, dx += s·Ut, each through cuBLASLt.
pub(super) fn dx_cublas(
    cuda: &Cuda,
    sh: &LowRankShape,
    dy: Ref<CudaBuf>,
    w: LowRankWeights<CudaBuf>,
    mut s: Mut<CudaBuf>,
    dx: &Mut<CudaBuf>,
) -> Result<()> {
    let LowRankShape {
        n,
        n_in,
        n_out,
        rank: k,
    } = *sh;
    let stride = sh.scratch_stride();
    zero_padding(cuda, sh, s.reborrow())?;
    let (bf, dxd) = (DType::BF16, dx.dtype());
    let g = Gemm::new(n, k, n_out).trans_b();
    cuda.lt.gemm_strided(
        &cuda.stream,
        &g,
        RowStrides::new(n_out, n_out, stride),
        bf,
        bf,
        dy.ptr(),
        w.vt.ptr(),
        s.ptr(),
    )?;
    let mut beta = 0.0;
    if let Some(w0) = w.w0 {
        let g = Gemm::new(n, n_in, n_out).trans_b();
        cuda.lt
            .gemm(&cuda.stream, &g, bf, dxd, dy.ptr(), w0.ptr(), dx.ptr())?;
        beta = 1.0;
    }
    let g = Gemm::new(n, n_in, k).beta(beta);
    cuda.lt.gemm_strided(
        &cuda.stream,
        &g,
        RowStrides::new(stride, n_in, n_in),
        bf,
        dxd,
        s.ptr(),
        w.ut.ptr(),
        dx.ptr(),
    )
}

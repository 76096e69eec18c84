//! Launchers of the low-rank linear layer (kernels/lowrank_linear.cu) and of its unfused cuBLASLt
//! path, which is both the baseline the fused kernels are measured against and the fallback for
//! shapes they do not take (a dimension not a multiple of 8, or a window not 16-byte aligned).
//!
//! The segmented GEMM has three mainloops behind one contract, picked per call by `pick_tile`:
//! mma.sync (kernels/lowrank_linear.cu, every GPU), and on Hopper wgmma fed by the copy engine with
//! specialised warpgroups (kernels/lowrank_tma.cu) or by every thread's cp.async
//! (kernels/lowrank_wgmma.cu).
//!
//! Fused forward: t = x·Ut[:k]ᵀ (skinny kernel), then y = [x | t]·[W0 ; Vt[:k]] + b (one kernel),
//! or, with LOWRANK_MERGE_BASE=1, a base and more rows than n_in, y = x·(W0 + Ut[:k]ᵀ·Vt[:k]) + b
//! (merged.rs; dx alike).
//! Fused backward: s = dy·Vt[:k]ᵀ (skinny, also summing dy's columns per row block for db),
//! dx = [dy | s]·[W0ᵀ ; Ut[:k]] (one kernel), then dUt[:k] += sᵀ·x and dVt[:k] += tᵀ·dy through
//! cuBLASLt (reductions over n, which cuBLASLt splits over K well) and db += the row blocks' sums.

mod column_sums;
mod cublas;
mod merged;
mod seg_gemm;
mod split_k;
mod tiles;
mod tma;

use super::{Cuda, CudaBuf};
use crate::backend::{
    epilogue_pass, Backend, Buffer, DType, Gemm, LinearEpilogue, LowRankGrads, LowRankShape,
    LowRankWeights, Mut, Ref, RowStrides, SCRATCH_ROW_ALIGN,
};
use anyhow::{bail, ensure, Result};
use column_sums::{add_column_sums, finish_column_sums, RowBlockSums};
use cublas::{dx_cublas, forward_cublas};
pub use merged::merge_base_from_env;
use seg_gemm::{launch_seg_gemm, Act, Output, Segment};
pub(crate) use tiles::{forced_tma_width, wgmma_nmajor_offsets};
use tiles::{pick_tile, Role, Tile, NARROW};

/// Which implementation runs the low-rank layer on CUDA.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum LowRankImpl {
    /// The fused tensor-core kernels, on Hopper with the TMA-fed, warp-specialised wgmma mainloop
    /// where the grid fills the GPU (falling back to `Cublas` for shapes they do not take).
    Fused,
    /// The fused kernels with the wgmma mainloop whose every thread loads by cp.async: on Hopper,
    /// the comparison that shows what the copy engine and warp specialisation buy (elsewhere the
    /// same as `Fused`).
    Wgmma,
    /// The fused kernels with the TMA mainloop's ping-pong schedule (consumers on alternate
    /// 128 × 128 tiles, one's epilogue under the other's mainloop) wherever `Fused` takes the TMA
    /// kernel: on Hopper, the comparison that shows whether hiding the epilogue pays for the
    /// narrower tile (elsewhere the same as `Fused`).
    Pingpong,
    /// The fused kernels with the TMA mainloop in clusters of two blocks that share their B tile
    /// (each loads half and multicasts it to both) wherever `Fused` takes the TMA kernel: on
    /// Hopper, the comparison that shows whether halving B's reads from L2 pays for the cluster's
    /// coupling (elsewhere the same as `Fused`).
    Multicast,
    /// The fused kernels with the mma.sync mainloop only: on Hopper, the comparison that shows
    /// what wgmma buys (elsewhere the same as `Fused`).
    Mma,
    /// Unfused: three cuBLASLt GEMMs per direction plus a bias broadcast.
    Cublas,
}

impl LowRankImpl {
    /// The choice in LOWRANK_LOWRANK_IMPL (`fused`, the default, `pingpong`, `multicast`, `wgmma`,
    /// `mma` or `cublas`).
    pub fn from_env() -> Result<Self> {
        match std::env::var("LOWRANK_LOWRANK_IMPL") {
            Err(_) => Ok(LowRankImpl::Fused),
            Ok(v) => match v.trim() {
                "fused" | "" => Ok(LowRankImpl::Fused),
                "wgmma" => Ok(LowRankImpl::Wgmma),
                "pingpong" => Ok(LowRankImpl::Pingpong),
                "multicast" => Ok(LowRankImpl::Multicast),
                "mma" => Ok(LowRankImpl::Mma),
                "cublas" => Ok(LowRankImpl::Cublas),
                other => bail!("LOWRANK_LOWRANK_IMPL={other:?} is not an implementation; use `fused`, `pingpong`, `multicast`, `wgmma`, `mma` or `cublas`"),
            },
        }
    }
}

/// The tile (`tiles::Tile::name`: tma256, tma128, pingpong, mc256, mc128, wgmma, wide or narrow)
/// that the y (forward) or dx (backward) product of this shape runs on under the current
/// settings, for reports; None where the layer goes to cuBLASLt (the `cublas` implementation, or
/// dimensions the kernels do not take).
pub fn product_tile(cuda: &Cuda, sh: &LowRankShape, forward: bool) -> Result<Option<&'static str>> {
    if cuda.lowrank_impl == LowRankImpl::Cublas || !dims_fit(sh) {
        return Ok(None);
    }
    let (role, n) = if forward {
        (Role::Y, sh.n_out)
    } else {
        (Role::Dx, sh.n_in)
    };
    Ok(Some(pick_tile(cuda, role, sh.n, n)?.name))
}

/// How many clusters of two blocks the `multicast` kernels fit on this GPU at once (None off
/// Hopper): the persistent grid's size in clusters, which an H100's GPCs may hold fewer of than
/// half its SMs. For reports.
pub fn multicast_clusters(cuda: &Cuda) -> Result<Option<usize>> {
    if cuda.info.compute_capability.0 != 9 {
        return Ok(None);
    }
    clusters_that_fit(cuda, tiles::MC256).map(Some)
}

/// How many clusters of the clustered `tile`'s kernel fit on this GPU at once, asked of its y
/// kernel with a bf16 output (its other kernels have the same threads and shared memory, which
/// bound them to a block per SM).
fn clusters_that_fit(cuda: &Cuda, tile: Tile) -> Result<usize> {
    let name = tiles::kernel_name(Role::Y, tile, DType::BF16)?;
    tma::max_active_clusters(cuda, name, tile, || {
        seg_gemm::kernel_with_smem(cuda, tile, name)
    })
}

/// Whether the fused kernels take this call: bf16 operands, n_in and n_out multiples of 8 (16-byte
/// rows), 16-byte aligned operand windows, outputs aligned for paired stores, sizes within i32.
fn fused_fits(sh: &LowRankShape, operands: &[u64], outputs: &[(u64, DType)]) -> bool {
    let small = [sh.n, sh.n_in, sh.n_out, sh.scratch_stride()]
        .iter()
        .all(|&d| d < i32::MAX as usize);
    let aligned = operands.iter().all(|p| p.is_multiple_of(16))
        && outputs.iter().all(|&(p, d)| pair_aligned(p, d));
    dims_fit(sh) && small && aligned
}

/// Whether the epilogue can store (or load) two adjacent elements of dtype `d` at `ptr` at once.
fn pair_aligned(ptr: u64, d: DType) -> bool {
    ptr.is_multiple_of(2 * d.size_bytes() as u64)
}

/// n_in and n_out multiples of 8: every row of the layer's operands ends on a 16-byte chunk.
fn dims_fit(sh: &LowRankShape) -> bool {
    sh.n_in.is_multiple_of(SCRATCH_ROW_ALIGN) && sh.n_out.is_multiple_of(SCRATCH_ROW_ALIGN)
}

fn ensure_bf16(x: &Ref<CudaBuf>) -> Result<()> {
    ensure!(
        x.dtype() == DType::BF16,
        "CUDA low-rank linear computes in bf16: pass bf16 operands (x is {:?})",
        x.dtype()
    );
    Ok(())
}

#[allow(clippy::too_many_arguments)]
pub fn forward(
    cuda: &Cuda,
    sh: &LowRankShape,
    x: Ref<CudaBuf>,
    w: LowRankWeights<CudaBuf>,
    bias: Option<Ref<CudaBuf>>,
    t: Mut<CudaBuf>,
    mut y: Mut<CudaBuf>,
    epi: LinearEpilogue<CudaBuf>,
) -> Result<()> {
    sh.check_forward(&x, &w, &bias, &t, &y, &epi)?;
    ensure_bf16(&x)?;
    let mut operands = vec![x.ptr(), w.ut.ptr(), w.vt.ptr(), t.ptr()];
    operands.extend(w.w0.map(|r| r.ptr()));
    let fused = cuda.lowrank_impl != LowRankImpl::Cublas
        && fused_fits(sh, &operands, &[(y.ptr(), y.dtype())]);
    // The GELU or the residual rides on the y kernel's epilogue, which reads and writes its window
    // in pairs of y's dtype; elsewhere it is a pass of its own.
    let len = sh.n * sh.n_out;
    let (act, pass) = match epi {
        LinearEpilogue::Gelu(g)
            if fused && cuda.gelu_epilogue && pair_aligned(g.ptr(), g.dtype()) =>
        {
            (Act::Gelu(g.ptr()), LinearEpilogue::None)
        }
        LinearEpilogue::Residual(r)
            if fused && cuda.residual_epilogue && pair_aligned(r.ptr(), r.dtype()) =>
        {
            (Act::Residual(r.ptr()), LinearEpilogue::None)
        }
        other => (Act::None, other),
    };
    if fused {
        forward_fused(cuda, sh, x, w, bias, t, &y, act)?;
    } else {
        forward_cublas(cuda, sh, x, w, bias, t, y.reborrow())?;
    }
    epilogue_pass(cuda, Mut { len, ..y }, pass)
}

/// t = x·Ut[:k]ᵀ, then y = [x | t]·[W0 ; Vt[:k]] + b (or x·merged + b) with `act` in its epilogue.
#[allow(clippy::too_many_arguments)]
fn forward_fused(
    cuda: &Cuda,
    sh: &LowRankShape,
    x: Ref<CudaBuf>,
    w: LowRankWeights<CudaBuf>,
    bias: Option<Ref<CudaBuf>>,
    t: Mut<CudaBuf>,
    y: &Mut<CudaBuf>,
    act: Act,
) -> Result<()> {
    let (k, stride) = (sh.rank, sh.scratch_stride());
    let w0 = w.w0.map(|r| r.ptr());
    let bias_ptr = bias.map_or(0, |b| b.ptr());
    let project = Segment {
        a: x.ptr(),
        lda: sh.n_in,
        b: w.ut.ptr(),
        ldb: sh.n_in,
        k: sh.n_in,
    };
    let t_out = Output {
        ptr: t.ptr(),
        dtype: DType::BF16,
        m: sh.n,
        n_valid: k,
        n_store: stride,
        ldc: stride,
        act: Act::None,
    };
    launch_seg_gemm(cuda, Role::Project, [Some(project), None], 0, &t_out, None)?;
    let y_out = Output {
        ptr: y.ptr(),
        dtype: y.dtype(),
        m: sh.n,
        n_valid: sh.n_out,
        n_store: sh.n_out,
        ldc: sh.n_out,
        act,
    };
    if let (Some(w0), true) = (w.w0, merged::pays(cuda, sh, sh.n_in)) {
        let merged = merged::merged_weight(cuda, sh, w0, w.ut, w.vt)?;
        let seg = Segment {
            a: x.ptr(),
            lda: sh.n_in,
            b: merged.all().ptr(),
            ldb: sh.n_out,
            k: sh.n_in,
        };
        return launch_seg_gemm(cuda, Role::Y, [Some(seg), None], bias_ptr, &y_out, None);
    }
    let base = w0.map(|b| Segment {
        a: x.ptr(),
        lda: sh.n_in,
        b,
        ldb: sh.n_out,
        k: sh.n_in,
    });
    let low = Segment {
        a: t.ptr(),
        lda: stride,
        b: w.vt.ptr(),
        ldb: sh.n_out,
        k,
    };
    launch_seg_gemm(cuda, Role::Y, [base, Some(low)], bias_ptr, &y_out, None)
}

#[allow(clippy::too_many_arguments)]
pub fn backward(
    cuda: &Cuda,
    sh: &LowRankShape,
    x: Ref<CudaBuf>,
    w: LowRankWeights<CudaBuf>,
    t: Ref<CudaBuf>,
    dy: Ref<CudaBuf>,
    mut s: Mut<CudaBuf>,
    dx: Mut<CudaBuf>,
    gelu_input: Option<Ref<CudaBuf>>,
    g: LowRankGrads<CudaBuf>,
) -> Result<()> {
    sh.check_backward(&x, &w, &t, &dy, &s, &dx, &gelu_input, &g)?;
    ensure_bf16(&x)?;
    let mut operands = vec![x.ptr(), w.ut.ptr(), w.vt.ptr(), dy.ptr(), s.ptr()];
    operands.extend(w.w0.map(|r| r.ptr()));
    let fused = cuda.lowrank_impl != LowRankImpl::Cublas
        && fused_fits(sh, &operands, &[(dx.ptr(), dx.dtype())]);
    // GELU's backward rides on the dx kernel's epilogue, which reads u in pairs of dx's dtype;
    // elsewhere it is a pass of its own.
    let (act, gelu_pass) = match gelu_input {
        Some(u) if fused && cuda.gelu_epilogue && pair_aligned(u.ptr(), u.dtype()) => {
            (Act::GeluGrad(u.ptr()), None)
        }
        other => (Act::None, other),
    };
    let dy_sums = if fused {
        dx_fused(cuda, sh, dy, w, s.reborrow(), &dx, act, g.dbias.is_some())?
    } else {
        dx_cublas(cuda, sh, dy, w, s.reborrow(), &dx)?;
        None
    };
    if let Some(u) = gelu_pass {
        let len = sh.n * sh.n_in;
        cuda.gelu_backward(Mut { len, ..dx }, Ref { len, ..u })?;
    }
    factor_grads(cuda, sh, x, t, dy, s.as_ref(), g, dy_sums)
}

/// s = dy·Vt[:k]ᵀ (skinny kernel; with `want_dy_sums`, also dy's column sums per row block), then
/// dx = [dy | s]·[W0ᵀ ; Ut[:k]] in one kernel, whose epilogue applies `act`.
#[allow(clippy::too_many_arguments)]
fn dx_fused(
    cuda: &Cuda,
    sh: &LowRankShape,
    dy: Ref<CudaBuf>,
    w: LowRankWeights<CudaBuf>,
    s: Mut<CudaBuf>,
    dx: &Mut<CudaBuf>,
    act: Act,
    want_dy_sums: bool,
) -> Result<Option<RowBlockSums>> {
    let stride = sh.scratch_stride();
    let project = Segment {
        a: dy.ptr(),
        lda: sh.n_out,
        b: w.vt.ptr(),
        ldb: sh.n_out,
        k: sh.n_out,
    };
    let s_out = Output {
        ptr: s.ptr(),
        dtype: DType::BF16,
        m: sh.n,
        n_valid: sh.rank,
        n_store: stride,
        ldc: stride,
        act: Act::None,
    };
    let dy_sums = if want_dy_sums {
        let blocks = sh.n.div_ceil(NARROW.bm);
        // Freed stream-ordered (cuMemFreeAsync) when dropped, after the kernels that read it.
        let (partials, ptr) = cuda.scratch_f32(blocks * sh.n_out)?;
        Some(RowBlockSums {
            _partials: partials,
            ptr,
            blocks,
        })
    } else {
        None
    };
    let partials_ptr = dy_sums.as_ref().map(|d| d.ptr);
    launch_seg_gemm(
        cuda,
        Role::Project,
        [Some(project), None],
        0,
        &s_out,
        partials_ptr,
    )?;
    let dx_out = Output {
        ptr: dx.ptr(),
        dtype: dx.dtype(),
        m: sh.n,
        n_valid: sh.n_in,
        n_store: sh.n_in,
        ldc: sh.n_in,
        act,
    };
    // W0 and the merged weight are both n_in × n_out, read transposed (NT) in slot 0.
    let base = |b: u64| Segment {
        a: dy.ptr(),
        lda: sh.n_out,
        b,
        ldb: sh.n_out,
        k: sh.n_out,
    };
    if let (Some(w0), true) = (w.w0, merged::pays(cuda, sh, sh.n_out)) {
        let merged = merged::merged_weight(cuda, sh, w0, w.ut, w.vt)?;
        let seg = base(merged.all().ptr());
        launch_seg_gemm(cuda, Role::Dx, [Some(seg), None], 0, &dx_out, None)?;
        return Ok(dy_sums);
    }
    let low = Segment {
        a: s.ptr(),
        lda: stride,
        b: w.ut.ptr(),
        ldb: sh.n_in,
        k: sh.rank,
    };
    let segs = [w.w0.map(|w0| base(w0.ptr())), Some(low)];
    launch_seg_gemm(cuda, Role::Dx, segs, 0, &dx_out, None)?;
    Ok(dy_sums)
}

/// dUt[:k] += sᵀ·x, dVt[:k] += tᵀ·dy (cuBLASLt, f32 accumulation into f32) and db += Σ_rows dy,
/// from the projection's row-block sums when it left them, else by reading dy again.
#[allow(clippy::too_many_arguments)]
fn factor_grads(
    cuda: &Cuda,
    sh: &LowRankShape,
    x: Ref<CudaBuf>,
    t: Ref<CudaBuf>,
    dy: Ref<CudaBuf>,
    s: Ref<CudaBuf>,
    mut g: LowRankGrads<CudaBuf>,
    dy_sums: Option<RowBlockSums>,
) -> Result<()> {
    let LowRankShape {
        n,
        n_in,
        n_out,
        rank: k,
    } = *sh;
    let stride = sh.scratch_stride();
    let (bf, f32) = (DType::BF16, DType::F32);
    let du = Gemm::new(k, n_in, n).trans_a().beta(1.0);
    cuda.lt.gemm_strided(
        &cuda.stream,
        &du,
        RowStrides::new(stride, n_in, n_in),
        bf,
        f32,
        s.ptr(),
        x.ptr(),
        g.dut(sh).ptr(),
    )?;
    let dv = Gemm::new(k, n_out, n).trans_a().beta(1.0);
    cuda.lt.gemm_strided(
        &cuda.stream,
        &dv,
        RowStrides::new(stride, n_out, n_out),
        bf,
        f32,
        t.ptr(),
        dy.ptr(),
        g.dvt(sh).ptr(),
    )?;
    match (g.dbias(sh), dy_sums) {
        (Some(db), Some(sums)) => finish_column_sums(cuda, sums.ptr, sums.blocks, n_out, db),
        (Some(db), None) => add_column_sums(cuda, dy, n, n_out, db),
        (None, _) => Ok(()),
    }
}

//! The fused layer's base products by the merged weight W = W0 + Ut[:k]ᵀ·Vt[:k] (n_in × n_out,
//! bf16, one cuBLASLt GEMM onto a copy of W0): y = x·W + b and dx = dy·Wᵀ, each one single-segment
//! GEMM of the fused kernels, instead of [x | t]·[W0 ; Vt] and [dy | s]·[W0ᵀ ; Ut].
//!
//! Why: the segmented product's low-rank segment costs 2·n·k·n_out (y) or 2·n·k·n_in (dx) FLOPs
//! on top of the dense ones; merging costs 2·n_in·n_out·k once, which is less whenever the call
//! has more rows than the merged side has (n > n_in for y, n > n_out for dx), i.e. at every
//! training shape (n = B·T in the thousands against d ≤ 4096). t is still projected (the backward's
//! dVt = tᵀ·dy needs it), s too (dUt = sᵀ·x). At GPT-2 medium's 1024→4096, n = 16384, k = 128, the
//! forward's big GEMM loses k / n_in = 12.5 % of its FLOPs for a 1.1 GFLOP merge.
//! Numerics, and why it is off by default: W is rounded to bf16, so the low-rank update reaches
//! y only on W0's bf16 grid (a relative spacing of 2^-8): LoRA's and InRank's updates start at zero
//! and grow by small steps, and while they are smaller than half a step of W0's entries they do
//! not change the forward at all, where the segmented path adds x·W0 and t·Vt in f32. On the
//! selftest's random factors (updates as large as W0) the merged y is 2–3e-3 from the CPU
//! reference against 1e-7 segmented, inside the 1e-2 bf16 bound. `bench` times it beside the
//! segmented path (`merged` rows), so a GPU run says what the FLOPs it saves are worth.

use super::super::{Backend, Cuda, CudaBuf};
use crate::backend::RowStrides;
use crate::backend::{Buffer, DType, Gemm, LowRankShape, Ref};
use anyhow::{bail, Result};

/// LOWRANK_MERGE_BASE: `0` (the default: the segmented products everywhere) or `1` (the merged
/// weight wherever it saves FLOPs).
pub fn merge_base_from_env() -> Result<bool> {
    match std::env::var("LOWRANK_MERGE_BASE").as_deref() {
        Err(_) | Ok("") | Ok("0") => Ok(false),
        Ok("1") => Ok(true),
        Ok(other) => bail!("LOWRANK_MERGE_BASE={other:?}: use `0` (the default) or `1`"),
    }
}

/// Whether a product whose K side is `merged_side` (n_in for y, n_out for dx) runs on the merged
/// weight: asked for, and fewer FLOPs than the segmented product.
pub(super) fn pays(cuda: &Cuda, sh: &LowRankShape, merged_side: usize) -> bool {
    cuda.merge_base && sh.n > merged_side
}

/// W0 + Ut[:k]ᵀ·Vt[:k] in a fresh bf16 buffer (freed stream-ordered when dropped, after the
/// kernels that read it).
pub(super) fn merged_weight(
    cuda: &Cuda,
    sh: &LowRankShape,
    w0: Ref<CudaBuf>,
    ut: Ref<CudaBuf>,
    vt: Ref<CudaBuf>,
) -> Result<CudaBuf> {
    let (n_in, n_out) = (sh.n_in, sh.n_out);
    let mut w = cuda.scratch(DType::BF16, n_in * n_out)?;
    cuda.cast(w0, w.all_mut())?;
    let g = Gemm::new(n_in, n_out, sh.rank).trans_a().beta(1.0);
    let out = w.all().ptr();
    cuda.lt.gemm_strided(
        &cuda.stream,
        &g,
        RowStrides::new(n_in, n_out, n_out),
        DType::BF16,
        DType::BF16,
        ut.ptr(),
        vt.ptr(),
        out,
    )?;
    Ok(w)
}

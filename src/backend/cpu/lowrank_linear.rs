//! The low-rank linear layer y = x·W0 + (x·U)·Vᵀ + b, forward and backward (CPU twin of
//! kernels/lowrank_linear.cu), composed from the `gemm` op: plain and obviously correct.
//! Sums accumulate in each output's f32 storage and are rounded to its dtype once, as the fused
//! kernels do.

use super::{elementwise, gemm, Cpu, CpuBuf};
use crate::backend::{
    epilogue_pass, Backend, Buffer, Gemm, LinearEpilogue, LowRankGrads, LowRankShape,
    LowRankWeights, Mut, Ref,
};
use anyhow::Result;

#[allow(clippy::too_many_arguments)]
pub fn forward(
    cpu: &Cpu,
    sh: &LowRankShape,
    x: Ref<CpuBuf>,
    w: LowRankWeights<CpuBuf>,
    bias: Option<Ref<CpuBuf>>,
    mut t: Mut<CpuBuf>,
    y: Mut<CpuBuf>,
    epi: LinearEpilogue<CpuBuf>,
) -> Result<()> {
    sh.check_forward(&x, &w, &bias, &t, &y, &epi)?;
    let LowRankShape {
        n,
        n_in,
        n_out,
        rank: k,
    } = *sh;
    // t = x·Ut[:k]ᵀ, rounded to the operand dtype as the GPU stores it, then laid out padded.
    let mut t_live = cpu.alloc(x.dtype(), n * k)?;
    cpu.gemm(&Gemm::new(n, k, n_in).trans_b(), x, w.ut, t_live.all_mut())?;
    scatter_padded(t_live.as_slice(), k, sh.scratch_stride(), t.slice_mut());

    // The sums go straight into y's storage (f32 on the CPU whatever its dtype), rounded to y's
    // dtype once at the end: no temporary to allocate and copy. Shapes were checked above.
    let mut y = Mut {
        len: n * n_out,
        ..y
    };
    let acc = y.slice_mut();
    if let Some(b) = bias {
        for row in acc.chunks_mut(n_out) {
            row.copy_from_slice(&b.slice()[..n_out]);
        }
    }
    let beta = if bias.is_some() { 1.0 } else { 0.0 };
    if let Some(w0) = w.w0 {
        let base = Gemm::new(n, n_out, n_in).beta(beta);
        gemm::gemm(&base, x.slice(), w0.slice(), acc);
    }
    let beta = if bias.is_some() || w.w0.is_some() {
        1.0
    } else {
        0.0
    };
    let low_rank = Gemm::new(n, n_out, k).beta(beta);
    gemm::gemm(&low_rank, t_live.as_slice(), w.vt.slice(), acc);
    // A residual joins the sum before y's one rounding; the GELU reads y as stored (the CUDA
    // epilogue's order for both).
    let epi = match epi {
        LinearEpilogue::Residual(r) => {
            elementwise::add(acc, &r.slice()[..n * n_out]);
            LinearEpilogue::None
        }
        other => other,
    };
    y.round_to_dtype();
    epilogue_pass(cpu, y, epi)
}

#[allow(clippy::too_many_arguments)]
pub fn backward(
    cpu: &Cpu,
    sh: &LowRankShape,
    x: Ref<CpuBuf>,
    w: LowRankWeights<CpuBuf>,
    t: Ref<CpuBuf>,
    dy: Ref<CpuBuf>,
    mut s: Mut<CpuBuf>,
    dx: Mut<CpuBuf>,
    gelu_input: Option<Ref<CpuBuf>>,
    mut g: LowRankGrads<CpuBuf>,
) -> Result<()> {
    sh.check_backward(&x, &w, &t, &dy, &s, &dx, &gelu_input, &g)?;
    let LowRankShape {
        n,
        n_in,
        n_out,
        rank: k,
    } = *sh;
    let stride = sh.scratch_stride();
    // s = dy·Vt[:k]ᵀ, stored like t.
    let mut s_live = cpu.alloc(x.dtype(), n * k)?;
    cpu.gemm(
        &Gemm::new(n, k, n_out).trans_b(),
        dy,
        w.vt,
        s_live.all_mut(),
    )?;
    scatter_padded(s_live.as_slice(), k, stride, s.slice_mut());

    // dx = dy·W0ᵀ + s·Ut[:k], accumulated in dx's f32 storage and rounded once.
    let mut dx = Mut {
        len: n * n_in,
        ..dx
    };
    if let Some(w0) = w.w0 {
        let base = Gemm::new(n, n_in, n_out).trans_b();
        gemm::gemm(&base, dy.slice(), w0.slice(), dx.slice_mut());
    }
    let beta = if w.w0.is_some() { 1.0 } else { 0.0 };
    let low_rank = Gemm::new(n, n_in, k).beta(beta);
    gemm::gemm(&low_rank, s_live.as_slice(), w.ut.slice(), dx.slice_mut());
    dx.round_to_dtype();
    if let Some(u) = gelu_input {
        cpu.gelu_backward(dx, Ref { len: n * n_in, ..u })?;
    }

    // dUt[:k] += sᵀ·x and dVt[:k] += tᵀ·dy: only the first k rows of each window are written.
    let mut t_live = cpu.alloc(t.dtype(), n * k)?;
    gather_live(t.slice(), k, stride, &mut t_live.data);
    let du = Gemm::new(k, n_in, n).trans_a().beta(1.0);
    cpu.gemm(&du, s_live.all(), x, g.dut(sh))?;
    let dv = Gemm::new(k, n_out, n).trans_a().beta(1.0);
    cpu.gemm(&dv, t_live.all(), dy, g.dvt(sh))?;
    if let Some(mut db) = g.dbias(sh) {
        add_column_sums(
            &dy.slice()[..n * n_out],
            n_out,
            &mut db.slice_mut()[..n_out],
        );
    }
    Ok(())
}

/// Writes rows of `cols` values into rows of `stride` (≥ cols), zeroing the padding.
fn scatter_padded(live: &[f32], cols: usize, stride: usize, dst: &mut [f32]) {
    for (src, row) in live.chunks(cols).zip(dst.chunks_mut(stride)) {
        row[..cols].copy_from_slice(src);
        row[cols..].fill(0.0);
    }
}

/// The inverse of `scatter_padded`: the first `cols` values of each row of `stride`.
fn gather_live(padded: &[f32], cols: usize, stride: usize, dst: &mut [f32]) {
    for (row, out) in padded.chunks(stride).zip(dst.chunks_mut(cols)) {
        out.copy_from_slice(&row[..cols]);
    }
}

/// out[j] += Σ_i m[i][j] for a row-major matrix with `cols` columns, summed in f64.
fn add_column_sums(m: &[f32], cols: usize, out: &mut [f32]) {
    let mut sums = vec![0.0f64; cols];
    for row in m.chunks(cols) {
        for (s, &v) in sums.iter_mut().zip(row) {
            *s += v as f64;
        }
    }
    for (o, s) in out.iter_mut().zip(sums) {
        *o = (*o as f64 + s) as f32;
    }
}

#[cfg(test)]
#[path = "lowrank_linear_tests.rs"]
mod tests;

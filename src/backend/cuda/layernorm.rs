//! Launchers for kernels/layernorm.cu (the weight/bias gradients finish with reduce.cu's
//! `sum_partials_f32`).

use super::launch::{act_suffix, ensure_f32};
use super::{ops, Cuda, CudaBuf};
use crate::backend::{Mut, Ref};
use anyhow::Result;
use cudarc::driver::{LaunchConfig, PushKernelArg};

/// Must match LN_ROWS_PER_BLOCK in kernels/layernorm.cu: one warp per row.
const ROWS_PER_BLOCK: u32 = 8;

fn row_grid(rows: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: ((rows as u32).div_ceil(ROWS_PER_BLOCK).max(1), 1, 1),
        block_dim: (32 * ROWS_PER_BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

#[allow(clippy::too_many_arguments)]
pub fn forward(
    cuda: &Cuda,
    out: Mut<CudaBuf>,
    mean: Mut<CudaBuf>,
    rstd: Mut<CudaBuf>,
    inp: Ref<CudaBuf>,
    weight_bias: Ref<CudaBuf>,
    rows: usize,
    cols: usize,
) -> Result<()> {
    let op = "layernorm_forward";
    ensure_f32(op, "mean", mean.dtype())?;
    ensure_f32(op, "rstd", rstd.dtype())?;
    let sfx = act_suffix(op, &[out.dtype(), inp.dtype(), weight_bias.dtype()])?;
    let f = cuda
        .modules
        .function("layernorm", &format!("layernorm_forward_{sfx}"))?;
    let (o, m, r, x, wb, nr, nc) = (
        out.ptr(),
        mean.ptr(),
        rstd.ptr(),
        inp.ptr(),
        weight_bias.ptr(),
        rows as i32,
        cols as i32,
    );
    // SAFETY: the trait's shape checks guarantee every window's size.
    unsafe {
        cuda.stream
            .launch_builder(&f)
            .arg(&o)
            .arg(&m)
            .arg(&r)
            .arg(&x)
            .arg(&wb)
            .arg(&nr)
            .arg(&nc)
            .launch(row_grid(rows))?
    };
    Ok(())
}

#[allow(clippy::too_many_arguments)]
pub fn backward(
    cuda: &Cuda,
    dinp: Mut<CudaBuf>,
    dweight_bias: Option<Mut<CudaBuf>>,
    dout: Ref<CudaBuf>,
    inp: Ref<CudaBuf>,
    weight_bias: Ref<CudaBuf>,
    mean: Ref<CudaBuf>,
    rstd: Ref<CudaBuf>,
    rows: usize,
    cols: usize,
) -> Result<()> {
    let op = "layernorm_backward";
    for (name, d) in [("mean", mean.dtype()), ("rstd", rstd.dtype())] {
        ensure_f32(op, name, d)?;
    }
    if let Some(dwb) = &dweight_bias {
        ensure_f32(op, "dweight_bias", dwb.dtype())?;
    }
    let sfx = act_suffix(
        op,
        &[dinp.dtype(), dout.dtype(), inp.dtype(), weight_bias.dtype()],
    )?;
    let (di, d, x, wb, m, r) = (
        dinp.ptr(),
        dout.ptr(),
        inp.ptr(),
        weight_bias.ptr(),
        mean.ptr(),
        rstd.ptr(),
    );
    let (nr, nc) = (rows as i32, cols as i32);
    let f = cuda
        .modules
        .function("layernorm", &format!("layernorm_backward_input_{sfx}"))?;
    // SAFETY: the trait's shape checks guarantee every window's size.
    unsafe {
        cuda.stream
            .launch_builder(&f)
            .arg(&di)
            .arg(&d)
            .arg(&x)
            .arg(&wb)
            .arg(&m)
            .arg(&r)
            .arg(&nr)
            .arg(&nc)
            .launch(row_grid(rows))?
    };
    // Frozen weights (LoRA): no partials pass, no sums.
    let Some(dweight_bias) = dweight_bias else {
        return Ok(());
    };
    let dwb = dweight_bias.ptr();
    let chunks = ops::column_chunks(rows);
    let (_pw, pw) = cuda.scratch_f32(chunks * cols)?;
    let (_pb, pb) = cuda.scratch_f32(chunks * cols)?;
    let f = cuda
        .modules
        .function("layernorm", &format!("layernorm_param_partials_{sfx}"))?;
    // SAFETY: partials hold chunks·cols floats each.
    unsafe {
        cuda.stream
            .launch_builder(&f)
            .arg(&pw)
            .arg(&pb)
            .arg(&d)
            .arg(&x)
            .arg(&m)
            .arg(&r)
            .arg(&nr)
            .arg(&nc)
            .launch(ops::column_grid(rows, cols))?
    };
    ops::sum_partials(cuda, dwb, pw, chunks, cols)?;
    ops::sum_partials(cuda, dwb + (cols * 4) as u64, pb, chunks, cols)
}

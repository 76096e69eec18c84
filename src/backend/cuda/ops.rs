//! Launchers for the elementwise and reduction kernels (kernels/cast.cu, adamw.cu, reduce.cu).

use super::launch::{grid_for, BLOCK};
use super::{Cuda, CudaBuf};
use crate::backend::{AdamW, DType, HeavyBall, Mut, Ref};
use anyhow::Result;
use cudarc::driver::{LaunchConfig, PushKernelArg};

/// Blocks of the sum-of-squares kernel: ~8 per SM on a 132-SM H100, so every SM is busy and the
/// host adds at most this many partials.
const REDUCE_BLOCKS: u32 = 1024;

pub fn fill(cuda: &Cuda, dst: Mut<CudaBuf>, value: f32) -> Result<()> {
    if dst.len == 0 {
        return Ok(());
    }
    let name = match dst.dtype() {
        DType::F32 => "fill_f32",
        DType::BF16 => "fill_bf16",
    };
    let f = cuda.modules.function("cast", name)?;
    let (ptr, n) = (dst.ptr(), dst.len);
    // SAFETY: the window holds n elements of the kernel's type.
    unsafe {
        cuda.stream
            .launch_builder(&f)
            .arg(&ptr)
            .arg(&value)
            .arg(&n)
            .launch(grid_for(n))?
    };
    Ok(())
}

pub fn cast(cuda: &Cuda, src: Ref<CudaBuf>, dst: Mut<CudaBuf>) -> Result<()> {
    if dst.len == 0 {
        return Ok(());
    }
    let name = match (src.dtype(), dst.dtype()) {
        (DType::F32, DType::BF16) => "cast_f32_bf16",
        (DType::BF16, DType::F32) => "cast_bf16_f32",
        (DType::F32, DType::F32) => "cast_f32_f32",
        (DType::BF16, DType::BF16) => "cast_bf16_bf16",
    };
    let f = cuda.modules.function("cast", name)?;
    let (s, d, n) = (src.ptr(), dst.ptr(), dst.len);
    // SAFETY: both windows hold n elements of the kernel's types.
    unsafe {
        cuda.stream
            .launch_builder(&f)
            .arg(&s)
            .arg(&d)
            .arg(&n)
            .launch(grid_for(n))?
    };
    Ok(())
}

pub fn adamw(
    cuda: &Cuda,
    hp: &AdamW,
    params: Mut<CudaBuf>,
    grads: Ref<CudaBuf>,
    m: Mut<CudaBuf>,
    v: Mut<CudaBuf>,
    copy: Option<Mut<CudaBuf>>,
) -> Result<()> {
    let n = params.len;
    if n == 0 {
        return Ok(());
    }
    let (copy_bf16, copy_f32) = copy_pointers(&copy);
    let (bc1, bc2) = hp.bias_corrections();
    let f = cuda.modules.function("adamw", "adamw_f32")?;
    let (p, g, mp, vp) = (params.ptr(), grads.ptr(), m.ptr(), v.ptr());
    // SAFETY: check_update verified lengths and dtypes; null copy pointers are skipped by the kernel.
    unsafe {
        cuda.stream
            .launch_builder(&f)
            .arg(&p)
            .arg(&copy_bf16)
            .arg(&copy_f32)
            .arg(&g)
            .arg(&mp)
            .arg(&vp)
            .arg(&n)
            .arg(&hp.lr)
            .arg(&hp.beta1)
            .arg(&hp.beta2)
            .arg(&bc1)
            .arg(&bc2)
            .arg(&hp.eps)
            .arg(&hp.weight_decay)
            .arg(&hp.grad_scale)
            .launch(grid_for(n))?
    };
    Ok(())
}

/// The compute copy's pointer as the update kernels take it: (bf16, f32), null where absent.
fn copy_pointers(copy: &Option<Mut<CudaBuf>>) -> (u64, u64) {
    match copy {
        Some(c) if c.dtype() == DType::BF16 => (c.ptr(), 0),
        Some(c) => (0, c.ptr()),
        None => (0, 0),
    }
}

pub fn heavy_ball(
    cuda: &Cuda,
    hp: &HeavyBall,
    params: Mut<CudaBuf>,
    grads: Ref<CudaBuf>,
    velocity: Mut<CudaBuf>,
    copy: Option<Mut<CudaBuf>>,
) -> Result<()> {
    let n = params.len;
    if n == 0 {
        return Ok(());
    }
    let (copy_bf16, copy_f32) = copy_pointers(&copy);
    let f = cuda.modules.function("adamw", "heavy_ball_f32")?;
    let (p, g, z) = (params.ptr(), grads.ptr(), velocity.ptr());
    // SAFETY: check_update verified lengths and dtypes; null copy pointers are skipped by the kernel.
    unsafe {
        cuda.stream
            .launch_builder(&f)
            .arg(&p)
            .arg(&copy_bf16)
            .arg(&copy_f32)
            .arg(&g)
            .arg(&z)
            .arg(&n)
            .arg(&hp.h)
            .arg(&hp.friction)
            .arg(&hp.weight_decay)
            .arg(&hp.grad_scale)
            .launch(grid_for(n))?
    };
    Ok(())
}

/// One launch per window, each writing its blocks' partial sums into its own part of one
/// partials buffer, and one download of them all: a norm over many windows waits once.
pub fn sum_squares(cuda: &Cuda, xs: &[Ref<CudaBuf>]) -> Result<f64> {
    let blocks_of = |n: usize| (REDUCE_BLOCKS as usize).min(n.div_ceil(BLOCK as usize));
    let total: usize = xs.iter().map(|x| blocks_of(x.len)).sum();
    if total == 0 {
        return Ok(0.0);
    }
    let partials = cuda.stream.alloc_zeros::<f32>(total)?;
    let base = super::slice_ptr(&partials, &cuda.stream);
    let mut first = 0;
    for x in xs.iter().filter(|x| x.len > 0) {
        let (n, blocks) = (x.len, blocks_of(x.len));
        let f = cuda.modules.function(
            "reduce",
            if x.dtype() == DType::F32 {
                "sum_squares_f32"
            } else {
                "sum_squares_bf16"
            },
        )?;
        let (xp, pp) = (x.ptr(), base + (first * size_of::<f32>()) as u64);
        let cfg = LaunchConfig {
            grid_dim: (blocks as u32, 1, 1),
            block_dim: (BLOCK, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: x holds n elements; partials[first..first + blocks] is this window's, one f32
        // per block, inside the `total` allocated.
        unsafe {
            cuda.stream
                .launch_builder(&f)
                .arg(&xp)
                .arg(&pp)
                .arg(&n)
                .launch(cfg)?
        };
        first += blocks;
    }
    let host = cuda.stream.clone_dtoh(&partials)?;
    Ok(host.iter().map(|&p| p as f64).sum())
}

/// Must match COLUMN_CHUNK_ROWS in kernels/common.cuh.
const COLUMN_CHUNK_ROWS: usize = 64;
/// Columns per block of the column-reduction kernels.
const COLUMN_BLOCK: u32 = 256;

/// Number of row chunks stage 1 of a column reduction writes partials for.
pub fn column_chunks(rows: usize) -> usize {
    rows.div_ceil(COLUMN_CHUNK_ROWS).max(1)
}

/// Stage 1 grid: column blocks × row chunks.
pub fn column_grid(rows: usize, cols: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (
            (cols as u32).div_ceil(COLUMN_BLOCK).max(1),
            column_chunks(rows) as u32,
            1,
        ),
        block_dim: (COLUMN_BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Stage 2: dst[c] += Σ partials[chunk, c] (dst and partials are f32 device addresses).
pub fn sum_partials(
    cuda: &Cuda,
    dst: u64,
    partials: u64,
    chunks: usize,
    cols: usize,
) -> Result<()> {
    let f = cuda.modules.function("reduce", "sum_partials_f32")?;
    let (nch, nc) = (chunks as i32, cols as i32);
    let cfg = LaunchConfig {
        grid_dim: ((cols as u32).div_ceil(COLUMN_BLOCK).max(1), 1, 1),
        block_dim: (COLUMN_BLOCK, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: the caller passes a dst of cols floats and partials of chunks·cols floats.
    unsafe {
        cuda.stream
            .launch_builder(&f)
            .arg(&dst)
            .arg(&partials)
            .arg(&nch)
            .arg(&nc)
            .launch(cfg)?
    };
    Ok(())
}

/// dst (f32) += column sums of src (rows × cols).
pub fn add_column_sums(
    cuda: &Cuda,
    dst: Mut<CudaBuf>,
    src: Ref<CudaBuf>,
    rows: usize,
    cols: usize,
) -> Result<()> {
    super::launch::ensure_f32("add_column_sums", "dst", dst.dtype())?;
    let sfx = super::launch::act_suffix("add_column_sums", &[src.dtype()])?;
    let chunks = column_chunks(rows);
    let (_p, p) = cuda.scratch_f32(chunks * cols)?;
    let f = cuda
        .modules
        .function("reduce", &format!("column_partials_{sfx}"))?;
    let (s, nr, nc) = (src.ptr(), rows as i32, cols as i32);
    // SAFETY: src holds rows·cols elements (checked by the trait), partials chunks·cols floats.
    unsafe {
        cuda.stream
            .launch_builder(&f)
            .arg(&p)
            .arg(&s)
            .arg(&nr)
            .arg(&nc)
            .launch(column_grid(rows, cols))?
    };
    sum_partials(cuda, dst.ptr(), p, chunks, cols)
}

//! Launcher of kernels/attention_cached.cu: a decoding step's attention against the earlier rows'
//! k and v, one block per (head, new row).

use super::launch::act_suffix;
use super::{Cuda, CudaBuf};
use crate::backend::{MatShape, Mut, Ref};
use anyhow::{ensure, Result};
use cudarc::driver::{LaunchConfig, PushKernelArg};

/// The kernel's warps (CACHED_WARPS) and the head size its lanes hold (32 · CACHED_LANE_VALUES).
const THREADS: u32 = 32 * 4;
const MAX_HEAD_SIZE: usize = 32 * 8;
/// Scores of the earlier rows, one f32 each, in the shared memory a block gets without opting in:
/// 40 KiB of them beside the kernel's 4.2 KiB of static arrays, within 48 KiB (GPT-2's context is
/// 1024). It also keeps the grid's new rows (its y dimension) far below CUDA's 65535.
const MAX_ROWS: usize = 10 * 1024;

pub fn forward(
    cuda: &Cuda,
    out: Mut<CudaBuf>,
    qkv: Ref<CudaBuf>,
    start: usize,
    new: MatShape,
    heads: usize,
) -> Result<()> {
    let op = "attention_cached";
    let sfx = act_suffix(op, &[out.dtype(), qkv.dtype()])?;
    let (rows, hs) = (start + new.rows, new.cols / heads);
    ensure!(
        hs <= MAX_HEAD_SIZE,
        "{op}: head size {hs} is larger than the kernel's {MAX_HEAD_SIZE}"
    );
    ensure!(
        rows <= MAX_ROWS,
        "{op}: {rows} rows of context are more than the kernel's {MAX_ROWS} (its scores sit in shared memory)"
    );
    if new.rows == 0 {
        return Ok(());
    }
    let f = cuda
        .modules
        .function("attention_cached", &format!("attention_cached_{sfx}"))?;
    let cfg = LaunchConfig {
        grid_dim: (heads as u32, new.rows as u32, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: (rows * 4) as u32,
    };
    let (o, q) = (out.ptr(), qkv.ptr());
    let (start, c, hs_i) = (start as i32, new.cols as i32, hs as i32);
    let scale = 1.0 / (hs as f32).sqrt();
    // SAFETY: the trait's checks give qkv (start + n) rows of 3C and out n rows of C; the shared
    // memory holds a score for each of the start + n rows.
    unsafe {
        cuda.stream
            .launch_builder(&f)
            .arg(&o)
            .arg(&q)
            .arg(&start)
            .arg(&c)
            .arg(&hs_i)
            .arg(&scale)
            .launch(cfg)?
    };
    Ok(())
}

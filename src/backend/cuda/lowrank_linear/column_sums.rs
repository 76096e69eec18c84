//! The bias gradient's column sums db += Σ_rows dy, deterministic (no atomics): partial sums per
//! chunk of rows, then `column_sum_finish` adds the chunks in order. The fused backward gets its
//! partials from the projection s = dy·Vtᵀ, which already streams dy; the cuBLASLt path reads dy
//! again with `column_sum_partials_bf16`.

use super::super::launch::grid_for;
use super::super::{Cuda, CudaBuf};
use crate::backend::{Mut, Ref};
use anyhow::Result;
use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};

/// Rows summed per column-sum block (kernels/lowrank_linear.cu COLSUM_ROWS) and its 32 columns.
const COLSUM_ROWS: u32 = 16;
const COLSUM_COLS: usize = 32;

/// Column sums of dy per row block, left by the fused projection for db: `blocks` × n_out f32 at
/// `ptr`, freed stream-ordered with `_partials`.
pub(super) struct RowBlockSums {
    pub _partials: CudaSlice<f32>,
    pub ptr: u64,
    pub blocks: usize,
}

/// out[j] += Σ_i m[i][j] for a bf16 row-major rows × cols matrix, deterministically (two passes).
pub(super) fn add_column_sums(
    cuda: &Cuda,
    m: Ref<CudaBuf>,
    rows: usize,
    cols: usize,
    out: Mut<CudaBuf>,
) -> Result<()> {
    // Enough row chunks for ~4 blocks per SM, each chunk at least 64 rows.
    let col_blocks = cols.div_ceil(COLSUM_COLS);
    let want_chunks = (4 * cuda.info.sms.max(1) as usize).div_ceil(col_blocks);
    let rows_per_chunk = rows.div_ceil(want_chunks.clamp(1, rows.div_ceil(64).max(1)));
    let chunks = rows.div_ceil(rows_per_chunk);
    // Freed stream-ordered (cuMemFreeAsync) when dropped, after the kernels below have read it.
    let (_partials, pp) = cuda.scratch_f32(chunks * cols)?;
    let mp = m.ptr();
    let (rows_i, cols_i, rpc_i) = (rows as i32, cols as i32, rows_per_chunk as i32);
    let f = cuda
        .modules
        .function("lowrank_linear", "column_sum_partials_bf16")?;
    let cfg = LaunchConfig {
        grid_dim: (col_blocks as u32, chunks as u32, 1),
        block_dim: (COLSUM_COLS as u32, COLSUM_ROWS, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: m holds rows · cols elements (check_backward); partials holds chunks · cols.
    unsafe {
        cuda.stream
            .launch_builder(&f)
            .arg(&mp)
            .arg(&pp)
            .arg(&rows_i)
            .arg(&cols_i)
            .arg(&rpc_i)
            .launch(cfg)?
    };
    finish_column_sums(cuda, pp, chunks, cols, out)
}

/// out[j] += Σ_c partials[c][j] over `chunks` rows of partials, in order (deterministic).
pub(super) fn finish_column_sums(
    cuda: &Cuda,
    partials: u64,
    chunks: usize,
    cols: usize,
    out: Mut<CudaBuf>,
) -> Result<()> {
    let (op, chunks_i, cols_i) = (out.ptr(), chunks as i32, cols as i32);
    let f = cuda
        .modules
        .function("lowrank_linear", "column_sum_finish")?;
    let cfg = grid_for(cols);
    // SAFETY: out holds cols f32 values (check_backward); partials, chunks · cols.
    unsafe {
        cuda.stream
            .launch_builder(&f)
            .arg(&partials)
            .arg(&op)
            .arg(&chunks_i)
            .arg(&cols_i)
            .launch(cfg)?
    };
    Ok(())
}

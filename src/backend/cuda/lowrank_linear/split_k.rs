//! Split K for the skinny projections t = x·Utᵀ and s = dy·Vtᵀ when their (m, n) grid leaves most
//! SMs idle: each z-slice of the grid multiplies its own range of k-tiles into an f32 workspace
//! (`SegGemmParams::split_tiles`), and `split_sum_bf16` adds the slices in order and rounds once.

use super::super::launch::grid_for;
use super::super::Cuda;
use super::seg_gemm::Output;
use anyhow::Result;
use cudarc::driver::PushKernelArg;

/// K-tiles of the mma.sync kernels (`TileConfig::BK`).
pub(super) const BK: usize = 32;
/// Fewest k-tiles one split of a split-K projection runs: fewer would spend more on the
/// workspace's writes and the pipeline's fill than the split gains.
const MIN_SPLIT_TILES: usize = 8;

/// How many K ranges a projection's grid of `blocks` is split into: enough to give each of `sms`
/// SMs a block when the (m, n) grid alone leaves most idle (few rows: t = x·Utᵀ at n = 1024 has 8
/// row blocks), never below MIN_SPLIT_TILES k-tiles each.
pub(super) fn split_count(sms: usize, blocks: usize, k_tiles: usize) -> usize {
    (sms / blocks.max(1)).min(k_tiles / MIN_SPLIT_TILES).max(1)
}

/// out = Σ_z workspace[z] in order (deterministic), rounded once to bf16.
pub(super) fn split_sum(cuda: &Cuda, ws: u64, splits: usize, out: &Output) -> Result<()> {
    let f = cuda.modules.function("lowrank_linear", "split_sum_bf16")?;
    let total = out.m * out.n_store;
    let (wp, op) = (ws, out.ptr);
    let (z, m, n, ldc, stride) = (
        splits as i32,
        out.m as i32,
        out.n_store as i32,
        out.ldc as i32,
        total as i64,
    );
    let cfg = grid_for(total);
    // SAFETY: ws holds `splits` m × n_store partials; out is m rows of stride ldc ≥ n_store.
    unsafe {
        cuda.stream
            .launch_builder(&f)
            .arg(&wp)
            .arg(&op)
            .arg(&z)
            .arg(&m)
            .arg(&n)
            .arg(&ldc)
            .arg(&stride)
            .launch(cfg)?
    };
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::split_count;

    #[test]
    fn projections_split_k_only_when_their_grid_leaves_sms_idle() {
        // H100 (132 SMs), n = 1024 rows, rank 16: 8 blocks; K = 4096 is 128 k-tiles.
        assert_eq!(split_count(132, 8, 128), 16);
        // K = 768 (24 k-tiles): at least 8 k-tiles per split caps it at 3.
        assert_eq!(split_count(132, 8, 24), 3);
        // A grid that already fills the GPU, or too little K to share: no split.
        assert_eq!(split_count(132, 256, 128), 1);
        assert_eq!(split_count(132, 8, 7), 1);
        assert_eq!(split_count(132, 100, 128), 1);
    }
}

//! The tensor maps of kernels/lowrank_tma.cu: one per operand of the segmented GEMM, encoded on
//! the host (cuTensorMapEncodeTiled, a few microseconds each) and passed inside the kernel's
//! parameter, so the copy engine reads tiles with the 128-byte swizzle wgmma wants and zero-fills
//! what lies outside each tensor (a segment's last K tile, the grid's last rows and columns).

use super::super::Cuda;
use super::seg_gemm::{SegGemmParams, Segment};
use super::tiles::Tile;
use anyhow::{bail, ensure, Context, Result};
use cudarc::driver::sys::{
    self, CUlaunchAttribute, CUlaunchAttributeID, CUlaunchAttributeValue_union__bindgen_ty_1,
    CUlaunchConfig, CUtensorMap, CUtensorMapDataType, CUtensorMapFloatOOBfill,
    CUtensorMapInterleave, CUtensorMapL2promotion, CUtensorMapSwizzle,
};
use cudarc::driver::{CudaFunction, DeviceRepr, LaunchConfig};
use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

/// Mirrors `TmaGemmParams` in kernels/lowrank_tma.cu: A_0, A_1, B_0, B_1, then the contract the
/// other mainloops read. CUtensorMap is 128-byte aligned, so `p` starts at byte 512 on both sides.
#[repr(C)]
#[derive(Clone, Copy)]
pub(super) struct TmaGemmParams {
    a: [CUtensorMap; 2],
    b: [CUtensorMap; 2],
    p: SegGemmParams,
}

// SAFETY: plain old data with the C layout the kernel reads.
unsafe impl DeviceRepr for TmaGemmParams {}

/// K extent of a tile (WG_BK in kernels/wgmma.cuh): 64 bf16, one 128-byte swizzled row.
const BOX_K: u32 = 64;
/// Rows of A per tile (TmaTile::BM).
const BOX_M: u32 = 128;

/// A row-major bf16 matrix of `rows` × `cols` with row stride `ld` elements at `ptr`, read in
/// boxes of `box_cols` × `box_rows` (columns innermost).
fn encode(
    ptr: u64,
    rows: usize,
    cols: usize,
    ld: usize,
    box_cols: u32,
    box_rows: u32,
) -> Result<CUtensorMap> {
    // The copy engine's rules (cuTensorMapEncodeTiled): a 16-byte aligned base, byte strides that
    // are multiples of 16; fused_fits already sent other operands to cuBLASLt.
    ensure!(
        ptr.is_multiple_of(16) && (ld * 2).is_multiple_of(16) && rows > 0 && cols > 0,
        "TMA operand at {ptr:#x}: {rows} × {cols}, row stride {ld}: needs a 16-byte aligned base and row stride"
    );
    let dims = [cols as u64, rows as u64];
    let strides = [(ld * 2) as u64];
    let boxes = [box_cols, box_rows];
    let element_strides = [1u32, 1];
    let mut map = CUtensorMap { opaque: [0; 16] };
    // SAFETY: every pointer refers to a live local array of the length the rank (2) implies; the
    // driver only writes the 128-byte map.
    let rc = unsafe {
        sys::cuTensorMapEncodeTiled(
            &mut map,
            CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_BFLOAT16,
            2,
            ptr as *mut std::ffi::c_void,
            dims.as_ptr(),
            strides.as_ptr(),
            boxes.as_ptr(),
            element_strides.as_ptr(),
            CUtensorMapInterleave::CU_TENSOR_MAP_INTERLEAVE_NONE,
            CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_128B,
            CUtensorMapL2promotion::CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
            CUtensorMapFloatOOBfill::CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
        )
    };
    if rc != sys::CUresult::CUDA_SUCCESS {
        bail!(
            "cuTensorMapEncodeTiled refused a {rows} × {cols} bf16 operand (row stride {ld}, box {box_cols} × {box_rows}): {rc:?}"
        );
    }
    Ok(map)
}

/// The kernel parameter for `p` (filled as for the other mainloops) and its segments: A_s is
/// m × k_s; B_s is k_s × n_valid ("NN", read in 64 × 64 boxes, N innermost) or, when `nt[s]`,
/// n_valid × k_s (one 64 × bn box, K innermost; in a cluster, one 64 × bn / cluster box per block). An absent segment borrows the other's maps: the
/// kernel issues no copy for a segment with k = 0. Every column it stores must have a B column (no
/// zero padding past n_valid): the NN boxes past n_valid are never loaded, so what the tile holds
/// there is stale.
pub(super) fn params(
    p: SegGemmParams,
    segs: [Option<Segment>; 2],
    nt: [bool; 2],
    tile: Tile,
) -> Result<TmaGemmParams> {
    let nt_box_rows = (tile.bn / tile.cluster as usize) as u32;
    ensure!(
        p.n_store == p.n_valid,
        "the TMA kernel stores only columns it has B for: n_store {} ≠ n_valid {}",
        p.n_store,
        p.n_valid
    );
    let (m, n) = (p.m as usize, p.n_valid as usize);
    let mut maps = [None, None];
    for (i, seg) in segs.iter().enumerate() {
        if let Some(s) = seg {
            let a = encode(s.a, m, s.k, s.lda, BOX_K, BOX_M)?;
            let b = if nt[i] {
                encode(s.b, n, s.k, s.ldb, BOX_K, nt_box_rows)?
            } else {
                encode(s.b, s.k, n, s.ldb, 64, BOX_K)?
            };
            maps[i] = Some((a, b));
        }
    }
    let (Some(first), Some(second)) = (maps[0].or(maps[1]), maps[1].or(maps[0])) else {
        bail!("segmented GEMM with no segment");
    };
    Ok(TmaGemmParams {
        a: [first.0, second.0],
        b: [first.1, second.1],
        p,
    })
}

/// The launch configuration of `cfg` on the backend's stream, in clusters of `cluster` blocks
/// along x (`attr` holds the attribute the configuration points to).
fn cluster_config(
    cuda: &Cuda,
    cfg: LaunchConfig,
    cluster: u32,
    attr: &mut CUlaunchAttribute,
) -> CUlaunchConfig {
    attr.id = CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION;
    attr.value.clusterDim = CUlaunchAttributeValue_union__bindgen_ty_1 {
        x: cluster,
        y: 1,
        z: 1,
    };
    CUlaunchConfig {
        gridDimX: cfg.grid_dim.0,
        gridDimY: cfg.grid_dim.1,
        gridDimZ: cfg.grid_dim.2,
        blockDimX: cfg.block_dim.0,
        blockDimY: cfg.block_dim.1,
        blockDimZ: cfg.block_dim.2,
        sharedMemBytes: cfg.shared_mem_bytes,
        hStream: cuda.stream.cu_stream(),
        attrs: attr,
        numAttrs: 1,
    }
}

fn zeroed_attribute() -> CUlaunchAttribute {
    // SAFETY: CUlaunchAttribute is plain old data (an enum whose 0 is a valid id, padding and a
    // union of integers), for which all-zero bytes are a valid value.
    unsafe { std::mem::zeroed() }
}

/// How many clusters of the clustered `tile`'s kernel `name` fit on the GPU at once
/// (cuOccupancyMaxActiveClusters; asked once per device and kernel): a persistent grid of more
/// would run its last clusters after the others, doubling the time. A cluster's blocks share a GPC, so an H100
/// whose GPCs have odd SM counts fits fewer than SMs / 2 clusters of two.
/// `f` gives the kernel's function, asked for only when the count is not cached yet.
pub(super) fn max_active_clusters(
    cuda: &Cuda,
    name: &'static str,
    tile: Tile,
    f: impl FnOnce() -> Result<CudaFunction>,
) -> Result<usize> {
    static CACHE: OnceLock<Mutex<HashMap<(usize, &'static str), usize>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let key = (cuda.info.ordinal, name);
    if let Some(&n) = cache.lock().expect("not poisoned").get(&key) {
        return Ok(n);
    }
    let f = f()?;
    let cfg = LaunchConfig {
        grid_dim: (
            cuda.info.sms.max(1) as u32 / tile.cluster * tile.cluster,
            1,
            1,
        ),
        block_dim: (tile.threads, 1, 1),
        shared_mem_bytes: tile.smem_bytes,
    };
    let mut attr = zeroed_attribute();
    let config = cluster_config(cuda, cfg, tile.cluster, &mut attr);
    let mut n = 0;
    // SAFETY: `config` and the attribute it points to live across the call; `f` is a live function.
    unsafe { sys::cuOccupancyMaxActiveClusters(&mut n, f.cu_function(), &config) }
        .result()
        .with_context(|| format!("{name}: cuOccupancyMaxActiveClusters"))?;
    ensure!(
        n > 0,
        "{name}: not one cluster of {} blocks with {} bytes of shared memory fits this GPU",
        tile.cluster,
        tile.smem_bytes
    );
    cache.lock().expect("not poisoned").insert(key, n as usize);
    Ok(n as usize)
}

/// Launches the TMA kernel `f` on `q` in clusters of `cluster` blocks (cuLaunchKernelEx with a
/// cluster dimension: the `mc` kernels take their cluster size from the launch).
///
/// # Safety
/// As for any launch: `q`'s tensor maps and pointers describe live device memory of the sizes the
/// kernel reads and writes.
pub(super) unsafe fn launch_clustered(
    cuda: &Cuda,
    f: &CudaFunction,
    cfg: LaunchConfig,
    cluster: u32,
    q: &TmaGemmParams,
) -> Result<()> {
    cuda.stream.context().bind_to_thread()?;
    let mut attr = zeroed_attribute();
    let config = cluster_config(cuda, cfg, cluster, &mut attr);
    let mut args = [q as *const TmaGemmParams as *mut std::ffi::c_void];
    // SAFETY: the caller's contract; `config`, its attribute and the one parameter outlive the
    // call, which copies them.
    unsafe {
        sys::cuLaunchKernelEx(
            &config,
            f.cu_function(),
            args.as_mut_ptr(),
            std::ptr::null_mut(),
        )
    }
    .result()?;
    Ok(())
}

//! One launch of the segmented GEMM C = [A0 | A1]·[B0 ; B1] (+ bias, GELU) on whichever mainloop
//! `pick_tile` chose: the parameter block the kernels read and the launch itself.

use super::super::Cuda;
use super::split_k::{split_count, split_sum, BK};
use super::tiles::{kernel_name, pick_tile, wgmma_nmajor_offsets, Role, Tile, NARROW, TMA256};
use super::tma;
use crate::backend::DType;
use anyhow::{ensure, Context, Result};
use cudarc::driver::sys::CUfunction_attribute;
use cudarc::driver::{CudaFunction, DeviceRepr, LaunchConfig, PushKernelArg};

/// Mirrors `SegGemmParams` in kernels/lowrank_linear.cu field for field.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct SegGemmParams {
    pub(super) a: [u64; 2],
    pub(super) b: [u64; 2],
    pub(super) bias: u64,
    pub(super) c: u64,
    pub(super) lda: [i32; 2],
    pub(super) ldb: [i32; 2],
    pub(super) k: [i32; 2],
    pub(super) m: i32,
    pub(super) n_valid: i32,
    pub(super) n_store: i32,
    pub(super) ldc: i32,
    pub(super) split_tiles: i32,
    pub(super) split_stride: i64,
    pub(super) nmajor_lbo: i32,
    pub(super) nmajor_sbo: i32,
    pub(super) act: u64,
    pub(super) act_kind: i32,
}

// SAFETY: plain old data with the C layout the kernel reads.
unsafe impl DeviceRepr for SegGemmParams {}

/// One operand pair A (m × k, row stride lda) · B (row stride ldb) of a segmented GEMM.
#[derive(Clone, Copy)]
pub(super) struct Segment {
    pub(super) a: u64,
    pub(super) lda: usize,
    pub(super) b: u64,
    pub(super) ldb: usize,
    pub(super) k: usize,
}

/// Extra dynamic shared memory of the projection that also sums A's columns (`ColumnSums::BYTES`
/// of the narrow tile: 2 buffers × 8 row groups × 32 columns of f32).
pub(super) const COLSUM_SMEM: u32 = 2 * 8 * 32 * 4;

/// The output of a segmented GEMM: m × n_store at `ptr` with row stride ldc; B has n_valid columns.
pub(super) struct Output {
    pub(super) ptr: u64,
    pub(super) dtype: DType,
    pub(super) m: usize,
    pub(super) n_valid: usize,
    pub(super) n_store: usize,
    pub(super) ldc: usize,
    pub(super) act: Act,
}

/// What an output's epilogue applies (`act_kind` in kernels/seg_gemm.cuh), with its second window:
/// the same dtype, shape and row stride as the output.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Act {
    None,
    /// GELU of the output written at this address too.
    Gelu(u64),
    /// The output scaled by GELU′ of the pre-activation at this address.
    GeluGrad(u64),
    /// The output plus the residual at this address.
    Residual(u64),
}

impl Act {
    /// (act, act_kind) of SegGemmParams.
    fn params(self) -> (u64, i32) {
        match self {
            Act::None => (0, 0),
            Act::Gelu(p) => (p, 1),
            Act::GeluGrad(p) => (p, 2),
            Act::Residual(p) => (p, 3),
        }
    }
}

/// The kernel `name` of `tile`'s file, allowed `tile.smem_bytes` of dynamic shared memory: above
/// 48 KB it must be opted into per function; setting it is a host-side attribute write, cheap next
/// to the launch.
pub(super) fn kernel_with_smem(cuda: &Cuda, tile: Tile, name: &str) -> Result<CudaFunction> {
    let f = cuda.modules.function(tile.file, name)?;
    f.set_attribute(
        CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
        tile.smem_bytes as i32,
    )
    .with_context(|| {
        format!(
            "{name}: the GPU refused {} bytes of shared memory",
            tile.smem_bytes
        )
    })?;
    Ok(f)
}

/// One segmented GEMM. `colsum` (projections only): also write A's column sums per row block of
/// the tile, `partials[m.div_ceil(bm)][k]`, for the bias gradient.
pub(super) fn launch_seg_gemm(
    cuda: &Cuda,
    role: Role,
    segs: [Option<Segment>; 2],
    bias: u64,
    out: &Output,
    colsum: Option<u64>,
) -> Result<()> {
    // y and dx read a B segment N-major ("NN"), whose 16-byte chunks are predicated by where they
    // start: a row must end on a chunk boundary (fused_fits sends other widths to cuBLASLt).
    ensure!(
        role == Role::Project || out.n_valid.is_multiple_of(8),
        "fused low-rank {role:?}: {} output columns are not a multiple of 8",
        out.n_valid
    );
    let mut tile = pick_tile(cuda, role, out.m, out.n_store)?;
    let k_tiles: usize = segs.iter().flatten().map(|s| s.k.div_ceil(BK)).sum();
    // Every mainloop releases the stage of its last K tile: with none, the TMA kernel would
    // arrive on a barrier before its own (rank ≥ 1 and n_in, n_out ≥ 8 keep this unreachable).
    ensure!(k_tiles > 0, "fused low-rank {role:?}: a product with no K");
    let splits = if role == Role::Project {
        let blocks = out.m.div_ceil(tile.bm) * out.n_store.div_ceil(tile.bn);
        split_count(cuda.info.sms.max(1) as usize, blocks, k_tiles)
    } else {
        1
    };
    ensure!(
        splits == 1 || out.act == Act::None,
        "fused low-rank {role:?}: the GELU and residual epilogues do not run with split K"
    );
    // Split K writes f32 partial products to a workspace, summed into `out` afterwards.
    let out_dtype = if splits > 1 { DType::F32 } else { out.dtype };
    let mut name = kernel_name(role, tile, out_dtype)?;
    if colsum.is_some() {
        ensure!(
            role == Role::Project && tile.name == NARROW.name,
            "column sums ride only on the projection"
        );
        name = if splits > 1 {
            "lowrank_project_colsum_narrow_f32"
        } else {
            "lowrank_project_colsum_narrow_bf16"
        };
        tile.smem_bytes += COLSUM_SMEM;
    }
    let f = kernel_with_smem(cuda, tile, name)?;
    let (nmajor_lbo, nmajor_sbo) = wgmma_nmajor_offsets()?;
    let (act, act_kind) = out.act.params();
    let mut p = SegGemmParams {
        nmajor_lbo,
        nmajor_sbo,
        act,
        act_kind,
        bias,
        c: out.ptr,
        m: out.m as i32,
        n_valid: out.n_valid as i32,
        n_store: out.n_store as i32,
        ldc: out.ldc as i32,
        ..Default::default()
    };
    let present = segs.iter().flatten().next().copied();
    for (i, seg) in segs.iter().enumerate() {
        // An absent segment has k = 0 (no tiles) and borrows the other's valid pointers.
        let s = seg.or(present).context("segmented GEMM with no segment")?;
        p.a[i] = s.a;
        p.b[i] = s.b;
        p.lda[i] = s.lda as i32;
        p.ldb[i] = s.ldb as i32;
        p.k[i] = if seg.is_some() { s.k as i32 } else { 0 };
    }
    // Freed stream-ordered (cuMemFreeAsync) when dropped, after split_sum has read it.
    let mut workspace = None;
    let mut z = 1;
    if splits > 1 {
        ensure!(out.dtype == DType::BF16, "split K sums into a bf16 output");
        let split_tiles = k_tiles.div_ceil(splits);
        z = k_tiles.div_ceil(split_tiles);
        let stride = out.m * out.n_store;
        let (ws, ptr) = cuda.scratch_f32(z * stride)?;
        p.c = ptr;
        p.ldc = out.n_store as i32;
        p.split_tiles = split_tiles as i32;
        p.split_stride = stride as i64;
        workspace = Some((ws, ptr));
    }
    let (n_tiles, m_tiles) = (out.n_store.div_ceil(tile.bn), out.m.div_ceil(tile.bm));
    // The TMA kernel's blocks are persistent: one per SM at most, each walking output tiles (in
    // clusters, units of `cluster` tiles one above the other, and at most the clusters that fit).
    let grid_dim = if tile.file == TMA256.file {
        let cluster = tile.cluster as usize;
        let slots = if cluster > 1 {
            tma::max_active_clusters(cuda, name, tile, || Ok(f.clone()))?
        } else {
            cuda.info.sms.max(1) as usize
        };
        (
            ((n_tiles * m_tiles.div_ceil(cluster)).min(slots) * cluster) as u32,
            1,
            1,
        )
    } else {
        (n_tiles as u32, m_tiles as u32, z as u32)
    };
    let cfg = LaunchConfig {
        grid_dim,
        block_dim: (tile.threads, 1, 1),
        shared_mem_bytes: tile.smem_bytes,
    };
    // The TMA kernel reads the same contract behind its operands' tensor maps; dx's W0 segment is
    // its one NT operand.
    let tma_params = if tile.file == TMA256.file {
        Some(tma::params(p, segs, [role == Role::Dx, false], tile)?)
    } else {
        None
    };
    // SAFETY (both launches): `fused_fits` checked sizes, strides and alignment against the
    // kernel's requirements; the caller sized `partials` for the grid's row blocks, and the
    // workspace holds z partials.
    if tile.cluster > 1 {
        let q = tma_params
            .as_ref()
            .context("a clustered tile is a TMA tile")?;
        unsafe { tma::launch_clustered(cuda, &f, cfg, tile.cluster, q)? };
    } else {
        let mut launch = cuda.stream.launch_builder(&f);
        match &tma_params {
            Some(q) => launch.arg(q),
            None => launch.arg(&p),
        };
        if let Some(partials) = &colsum {
            launch.arg(partials);
        }
        unsafe { launch.launch(cfg)? };
    }
    match workspace {
        Some(ws) => split_sum(cuda, ws.1, z, out),
        None => Ok(()),
    }
}

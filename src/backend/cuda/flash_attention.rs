//! Launchers of kernels/flash_attention.cu: causal attention that never holds the (T × T) scores,
//! for bf16 activations and head sizes 32 and 64. The forward saves each row's log-sum-exp (f32,
//! base 2) where the materialised path saves the probabilities; the backward recomputes them.

use super::{Cuda, CudaBuf};
use crate::backend::{DType, Mut, Ref};
use anyhow::{ensure, Context, Result};
use cudarc::driver::sys::CUfunction_attribute;
use cudarc::driver::{LaunchConfig, PushKernelArg};

/// Query rows per block and keys per tile (FA_ROWS), threads per block (FA_THREADS).
const ROWS: usize = 64;
const THREADS: u32 = 128;

/// Head sizes with a kernel instantiation (FLASH_KERNELS in the .cu file).
pub fn supports(head_size: usize) -> bool {
    matches!(head_size, 32 | 64)
}

/// A padded (64 × hs) bf16 tile in shared memory, FaTile::BYTES (the kernels' dynamic shared
/// memory is counted in these: 5 for the forward, 6 for dq, 6 and the tile's lse and delta for dk/dv).
fn tile_bytes(hs: usize) -> usize {
    ROWS * (hs + 8) * 2
}

/// The geometry of one call.
#[derive(Clone, Copy)]
struct Call {
    batch: usize,
    seq: usize,
    heads: usize,
    hs: usize,
}

impl Call {
    fn new(batch: usize, seq: usize, channels: usize, heads: usize) -> Result<Self> {
        let hs = channels / heads;
        ensure!(
            supports(hs),
            "flash attention has kernels for head sizes 32 and 64, not {hs}"
        );
        // One block column per 64-token tile: the grid's y extent.
        ensure!(
            seq.div_ceil(ROWS) <= 65_535,
            "flash attention takes sequences of at most {} tokens, not {seq} \
             (use LOWRANK_ATTENTION=materialized)",
            65_535 * ROWS
        );
        Ok(Call {
            batch,
            seq,
            heads,
            hs,
        })
    }
    /// (sequence, head) along x, tiles along y: blocks go out x fastest, so the kernels (which
    /// take the longest tiles at the lowest y) start every head's longest tiles first.
    fn grid(&self, smem: usize) -> LaunchConfig {
        LaunchConfig {
            grid_dim: (
                (self.batch * self.heads) as u32,
                self.seq.div_ceil(ROWS) as u32,
                1,
            ),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: smem as u32,
        }
    }
    /// 1/√hs, and the same times log2(e) (the kernels' exponentials are base 2).
    fn scales(&self) -> (f32, f32) {
        let scale = 1.0 / (self.hs as f32).sqrt();
        (scale, scale * std::f32::consts::LOG2_E)
    }
}

/// The kernel `name`_hsN with its dynamic shared memory allowed (above 48 KB it must be asked for).
fn function(cuda: &Cuda, name: &str, c: Call, smem: usize) -> Result<cudarc::driver::CudaFunction> {
    let name = format!("{name}_hs{}", c.hs);
    let f = cuda.modules.function("flash_attention", &name)?;
    f.set_attribute(
        CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
        smem as i32,
    )
    .with_context(|| format!("{name}: the GPU refused {smem} bytes of shared memory"))?;
    Ok(f)
}

/// The kernels load 16-byte chunks of rows and store pairs of bf16.
fn aligned(what: &str, ptr: u64, bytes: u64) -> Result<()> {
    ensure!(
        ptr.is_multiple_of(bytes),
        "flash attention: {what} starts at {ptr:#x}, not on a {bytes}-byte boundary \
         (set LOWRANK_ATTENTION=materialized to run without it)"
    );
    Ok(())
}

fn bf16_operands(op: &str, bufs: &[DType]) -> Result<()> {
    ensure!(
        bufs.iter().all(|&d| d == DType::BF16),
        "{op}: flash attention takes bf16 activations, got {bufs:?}"
    );
    Ok(())
}

#[allow(clippy::too_many_arguments)]
pub fn forward(
    cuda: &Cuda,
    out: Mut<CudaBuf>,
    lse: Mut<CudaBuf>,
    qkv: Ref<CudaBuf>,
    batch: usize,
    seq: usize,
    channels: usize,
    heads: usize,
) -> Result<()> {
    bf16_operands("attention_forward", &[out.dtype(), qkv.dtype()])?;
    let c = Call::new(batch, seq, channels, heads)?;
    if batch * seq == 0 {
        return Ok(());
    }
    let (qkv_p, out_p, lse_p) = (qkv.ptr(), out.ptr(), lse.ptr());
    aligned("qkv", qkv_p, 16)?;
    aligned("out", out_p, 4)?;
    let smem = 5 * tile_bytes(c.hs);
    let f = function(cuda, "flash_forward", c, smem)?;
    let (t, nh, (_, scale_log2)) = (seq as i32, heads as i32, c.scales());
    // SAFETY: qkv holds B·T·3C and out B·T·C bf16 elements, lse B·NH·T f32 (checked by the trait);
    // the kernel reads and writes rows < T only.
    unsafe {
        cuda.stream
            .launch_builder(&f)
            .arg(&qkv_p)
            .arg(&out_p)
            .arg(&lse_p)
            .arg(&t)
            .arg(&nh)
            .arg(&scale_log2)
            .launch(c.grid(smem))?
    };
    Ok(())
}

#[allow(clippy::too_many_arguments)]
pub fn backward(
    cuda: &Cuda,
    dqkv: Mut<CudaBuf>,
    dout: Ref<CudaBuf>,
    qkv: Ref<CudaBuf>,
    out: Ref<CudaBuf>,
    lse: Ref<CudaBuf>,
    batch: usize,
    seq: usize,
    channels: usize,
    heads: usize,
) -> Result<()> {
    let dtypes = [dqkv.dtype(), dout.dtype(), qkv.dtype(), out.dtype()];
    bf16_operands("attention_backward", &dtypes)?;
    let c = Call::new(batch, seq, channels, heads)?;
    if batch * seq == 0 {
        return Ok(());
    }
    let (dqkv_p, dout_p, qkv_p, out_p, lse_p) =
        (dqkv.ptr(), dout.ptr(), qkv.ptr(), out.ptr(), lse.ptr());
    aligned("qkv", qkv_p, 16)?;
    aligned("dout", dout_p, 16)?;
    aligned("dqkv", dqkv_p, 4)?;
    let (b, t, nh, hs) = (batch as i32, seq as i32, heads as i32, c.hs as i32);
    let (scale, scale_log2) = c.scales();

    // delta = rowsum(dout ∘ out) per (b, h, t), one warp each.
    let (delta, delta_p) = cuda.scratch_f32(batch * heads * seq)?;
    let rows = batch * seq * heads;
    let dot = cuda
        .modules
        .function("flash_attention", "flash_backward_dot")?;
    let warps_per_block = 8;
    let cfg = LaunchConfig {
        grid_dim: (rows.div_ceil(warps_per_block) as u32, 1, 1),
        block_dim: (32 * warps_per_block as u32, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: dout and out hold B·T·C elements, delta B·NH·T (allocated above).
    unsafe {
        cuda.stream
            .launch_builder(&dot)
            .arg(&delta_p)
            .arg(&dout_p)
            .arg(&out_p)
            .arg(&b)
            .arg(&t)
            .arg(&nh)
            .arg(&hs)
            .launch(cfg)?
    };

    // dq (per query tile), then dk and dv (per key tile): disjoint thirds of dqkv.
    let tile = tile_bytes(c.hs);
    for (name, smem) in [
        ("flash_backward_dq", 6 * tile),
        ("flash_backward_dkdv", 6 * tile + 2 * 2 * ROWS * 4),
    ] {
        let f = function(cuda, name, c, smem)?;
        // SAFETY: dqkv and qkv hold B·T·3C elements, dout B·T·C, lse and delta B·NH·T.
        unsafe {
            cuda.stream
                .launch_builder(&f)
                .arg(&dqkv_p)
                .arg(&qkv_p)
                .arg(&dout_p)
                .arg(&lse_p)
                .arg(&delta_p)
                .arg(&t)
                .arg(&nh)
                .arg(&scale_log2)
                .arg(&scale)
                .launch(c.grid(smem))?
        };
    }
    drop(delta); // stream-ordered: freed after the kernels that read it
    Ok(())
}

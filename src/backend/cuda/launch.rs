//! What every launcher needs: grid sizes, the kernel-name suffix for an activation dtype, dtype
//! checks that name the op, and host-to-device staging of small integer arrays (token ids).

use super::{slice_ptr, Cuda};
use crate::backend::DType;
use anyhow::{ensure, Result};
use cudarc::driver::{CudaSlice, LaunchConfig};

/// Threads per block for elementwise kernels: a multiple of the warp size that keeps several
/// blocks resident per SM, as llm.c uses.
pub const BLOCK: u32 = 512;

/// One thread per element, `BLOCK` per block. The block count is taken before narrowing to u32:
/// GPT-2's logits at B = 64 are 3.3e9 elements, and 2³¹ − 1 blocks (the grid's x limit) cover
/// 1.1e12; the kernels index in 64 bits.
pub fn grid_for(n: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (n.div_ceil(BLOCK as usize).max(1) as u32, 1, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// The suffix of a kernel instantiated per activation type (`FOR_EACH_ACT` in common.cuh), after
/// checking that every activation operand of `op` has that dtype.
pub fn act_suffix(op: &str, dtypes: &[DType]) -> Result<&'static str> {
    let first = dtypes[0];
    ensure!(
        dtypes.iter().all(|&d| d == first),
        "{op}: activation operands mix dtypes {dtypes:?}"
    );
    Ok(match first {
        DType::F32 => "f32",
        DType::BF16 => "bf16",
    })
}

/// Gradients of parameters, LayerNorm statistics and losses are f32 on every backend.
pub fn ensure_f32(op: &str, operand: &str, dtype: DType) -> Result<()> {
    ensure!(
        dtype == DType::F32,
        "{op}: {operand} must be f32, is {dtype:?}"
    );
    Ok(())
}

impl Cuda {
    /// Copies host integers to a fresh device array (token ids, bucket tables), returning it and
    /// its address. The array must outlive the launches that read it.
    pub(crate) fn stage_i32(&self, host: &[i32]) -> Result<(CudaSlice<i32>, u64)> {
        let dev = if host.is_empty() {
            self.stream.alloc_zeros::<i32>(1)?
        } else {
            self.stream.clone_htod(host)?
        };
        let ptr = slice_ptr(&dev, &self.stream);
        Ok((dev, ptr))
    }

    /// A zeroed f32 scratch array and its address.
    pub(crate) fn scratch_f32(&self, n: usize) -> Result<(CudaSlice<f32>, u64)> {
        let dev = self.stream.alloc_zeros::<f32>(n.max(1))?;
        let ptr = slice_ptr(&dev, &self.stream);
        Ok((dev, ptr))
    }
}

//! What every launcher needs: grid sizes, the kernel-name suffix for an activation dtype, dtype
//! checks that name the op, and host-to-device staging of small integer arrays (token ids).

use super::{slice_ptr, Cuda, CudaBuf};
use crate::backend::DType;
use anyhow::{ensure, Context, Result};
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

    /// An f32 scratch array and its address, left unset: for partial sums and split-K slices that
    /// a kernel writes in full before anything reads them (a memset would be wasted bandwidth).
    pub(crate) fn scratch_f32(&self, n: usize) -> Result<(CudaSlice<f32>, u64)> {
        // SAFETY: every caller's first kernel writes each element before any is read.
        let dev = unsafe { self.stream.alloc::<f32>(n.max(1))? };
        let ptr = slice_ptr(&dev, &self.stream);
        Ok((dev, ptr))
    }

    /// A device buffer left unset, for an op's intermediates that its kernels and GEMMs (β = 0)
    /// write in full before reading: attention's per-head tensors and scores are hundreds of MB a
    /// layer at GPT-2's shapes, whose zeroing would cost as much bandwidth as a kernel.
    pub(crate) fn scratch(&self, dtype: DType, len: usize) -> Result<CudaBuf> {
        self.buffer(dtype, len, false)
    }

    /// A device buffer of `len` elements, zeroed or (for `scratch`) left unset.
    pub(crate) fn buffer(&self, dtype: DType, len: usize, zeroed: bool) -> Result<CudaBuf> {
        let bytes = (len * dtype.size_bytes()).max(1);
        let mem = match zeroed {
            true => self.stream.alloc_zeros::<u8>(bytes),
            // SAFETY: unset memory is only handed to callers that write before they read.
            false => unsafe { self.stream.alloc::<u8>(bytes) },
        };
        let mem = mem.with_context(|| {
            format!(
                "cannot allocate {} MiB on GPU {} ({})",
                bytes >> 20,
                self.info.ordinal,
                self.info.name
            )
        })?;
        let ptr = slice_ptr(&mem, &self.stream);
        Ok(CudaBuf {
            dtype,
            len,
            ptr,
            mem,
        })
    }
}

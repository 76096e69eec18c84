//! Copies between host f32 and device windows. A bf16 window's values pass through a host
//! staging buffer of at most `STAGE` values, converted on every core: GPT-2 medium's token
//! embedding (51 M values) is no longer converted on one thread, nor staged whole.
//!
//! Reusing the staging buffer at once is safe because the host side is pageable memory: CUDA
//! returns from a host-to-device copy out of pageable memory once it has taken the bytes into its
//! own staging, and from a device-to-pageable copy once the copy is done.

use super::{Cuda, CudaBuf};
use crate::backend::cpu::{from_bf16, to_bf16};
use crate::backend::{same_len, DType, Mut, Ref};
use anyhow::Result;
use half::bf16;

/// Values a bf16 copy stages on the host at a time (8 MB).
pub const STAGE: usize = 1 << 22;

/// The byte range of window elements `from..from + n` in the window's buffer.
fn bytes(dtype: DType, off: usize, from: usize, n: usize) -> std::ops::Range<usize> {
    let s = dtype.size_bytes();
    (off + from) * s..(off + from + n) * s
}

pub fn upload(cuda: &Cuda, src: &[f32], dst: Mut<CudaBuf>) -> Result<()> {
    same_len("upload", src.len(), dst.len)?;
    let (dtype, off) = (dst.dtype(), dst.off);
    let mem = &mut dst.buf.mem;
    match dtype {
        DType::F32 => {
            let mut view = mem.slice_mut(bytes(dtype, off, 0, src.len()));
            cuda.stream
                .memcpy_htod(bytemuck::cast_slice(src), &mut view)?
        }
        DType::BF16 => {
            let mut stage = vec![bf16::ZERO; src.len().min(STAGE)];
            for (i, part) in src.chunks(STAGE).enumerate() {
                let stage = &mut stage[..part.len()];
                to_bf16(part, stage);
                let mut view = mem.slice_mut(bytes(dtype, off, i * STAGE, part.len()));
                let staged: &[u8] = bytemuck::cast_slice(stage);
                cuda.stream.memcpy_htod(staged, &mut view)?;
            }
        }
    }
    Ok(())
}

pub fn download_into(cuda: &Cuda, src: Ref<CudaBuf>, dst: &mut [f32]) -> Result<()> {
    same_len("download_into", dst.len(), src.len)?;
    let (dtype, off, mem) = (src.dtype(), src.off, &src.buf.mem);
    match dtype {
        // Straight into the caller's memory, no staging: a checkpoint's copy off the device
        // pauses training, and GPT-2 medium's weights and moments are 4.3 GB. Into pageable
        // memory the copy is done when the call returns; pinned, it would not be.
        DType::F32 => {
            let view = mem.slice(bytes(dtype, off, 0, dst.len()));
            cuda.stream
                .memcpy_dtoh(&view, bytemuck::cast_slice_mut(dst))?
        }
        DType::BF16 => {
            let mut stage = vec![bf16::ZERO; dst.len().min(STAGE)];
            for (i, part) in dst.chunks_mut(STAGE).enumerate() {
                let stage = &mut stage[..part.len()];
                let view = mem.slice(bytes(dtype, off, i * STAGE, part.len()));
                cuda.stream
                    .memcpy_dtoh(&view, bytemuck::cast_slice_mut::<bf16, u8>(stage))?;
                from_bf16(stage, part);
            }
        }
    }
    Ok(())
}

//! Copies between host f32 and device windows. A bf16 window's values pass through a host
//! staging buffer of at most `HOST_STAGE` values, converted on every core: GPT-2 medium's token
//! embedding (51 M values) is neither converted on one thread nor staged whole.
//!
//! Every copy waits for its stream before the host memory is reused, read or handed back. CUDA
//! promises no more than "might be synchronous" for an asynchronous copy between the device and
//! pageable memory, and cudarc adds no wait for a plain slice. In practice such a copy returns
//! once the host side is done with, so the wait costs nothing measurable
//! (benches/results/cpu-transfer-2026-12-07-staged.md).

use super::{Cuda, CudaBuf};
use crate::backend::cpu::{from_bf16, to_bf16};
use crate::backend::{same_len, DType, Mut, Ref, HOST_STAGE};
use anyhow::Result;
use half::bf16;

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
                .memcpy_htod(bytemuck::cast_slice(src), &mut view)?;
            cuda.stream.synchronize()?;
        }
        DType::BF16 => {
            let mut stage = vec![bf16::ZERO; src.len().min(HOST_STAGE)];
            for (i, part) in src.chunks(HOST_STAGE).enumerate() {
                let stage = &mut stage[..part.len()];
                to_bf16(part, stage);
                let mut view = mem.slice_mut(bytes(dtype, off, i * HOST_STAGE, part.len()));
                let staged: &[u8] = bytemuck::cast_slice(stage);
                cuda.stream.memcpy_htod(staged, &mut view)?;
                cuda.stream.synchronize()?;
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
        // pauses training, and GPT-2 medium's weights and moments are 4.3 GB.
        DType::F32 => {
            let view = mem.slice(bytes(dtype, off, 0, dst.len()));
            cuda.stream
                .memcpy_dtoh(&view, bytemuck::cast_slice_mut(dst))?;
            cuda.stream.synchronize()?;
        }
        DType::BF16 => {
            let mut stage = vec![bf16::ZERO; dst.len().min(HOST_STAGE)];
            for (i, part) in dst.chunks_mut(HOST_STAGE).enumerate() {
                let stage = &mut stage[..part.len()];
                let view = mem.slice(bytes(dtype, off, i * HOST_STAGE, part.len()));
                cuda.stream
                    .memcpy_dtoh(&view, bytemuck::cast_slice_mut::<bf16, u8>(stage))?;
                cuda.stream.synchronize()?;
                from_bf16(stage, part);
            }
        }
    }
    Ok(())
}

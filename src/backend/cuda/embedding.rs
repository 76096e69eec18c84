//! Launchers for kernels/embedding.cu.

use super::launch::{act_suffix, ensure_f32, grid_for};
use super::{Cuda, CudaBuf};
use crate::backend::{Mut, Ref};
use anyhow::Result;
use cudarc::driver::{LaunchConfig, PushKernelArg};

/// Channels per block of the backward kernel (a multiple of the warp size covering GPT-2's widths
/// in 3–5 blocks per token).
const BACKWARD_BLOCK: u32 = 256;

pub fn forward(
    cuda: &Cuda,
    out: Mut<CudaBuf>,
    tokens: &[u32],
    wte: Ref<CudaBuf>,
    wpe: Ref<CudaBuf>,
    seq: usize,
    channels: usize,
) -> Result<()> {
    let sfx = act_suffix(
        "embedding_forward",
        &[out.dtype(), wte.dtype(), wpe.dtype()],
    )?;
    let f = cuda
        .modules
        .function("embedding", &format!("embedding_forward_{sfx}"))?;
    let ids: Vec<i32> = tokens.iter().map(|&t| t as i32).collect();
    let (_ids_dev, ids_ptr) = cuda.stage_i32(&ids)?;
    let (o, w, p) = (out.ptr(), wte.ptr(), wpe.ptr());
    let (rows, seq, ch) = (tokens.len() as i32, seq as i32, channels as i32);
    // SAFETY: the trait's shape checks guarantee out holds rows·channels and every id indexes wte.
    unsafe {
        cuda.stream
            .launch_builder(&f)
            .arg(&o)
            .arg(&ids_ptr)
            .arg(&w)
            .arg(&p)
            .arg(&rows)
            .arg(&seq)
            .arg(&ch)
            .launch(grid_for(tokens.len() * channels))?
    };
    Ok(())
}

/// Rows grouped by token id, ascending: (distinct ids, bucket starts with a final end, row indices).
/// The kernel sums each bucket in this order, so the gradient does not depend on thread timing.
pub fn buckets(tokens: &[u32]) -> (Vec<i32>, Vec<i32>, Vec<i32>) {
    let mut rows: Vec<i32> = (0..tokens.len() as i32).collect();
    rows.sort_by_key(|&r| (tokens[r as usize], r));
    let (mut unique, mut starts) = (Vec::new(), Vec::new());
    for (i, &r) in rows.iter().enumerate() {
        let t = tokens[r as usize] as i32;
        if unique.last() != Some(&t) {
            unique.push(t);
            starts.push(i as i32);
        }
    }
    starts.push(rows.len() as i32);
    (unique, starts, rows)
}

pub fn backward(
    cuda: &Cuda,
    dwte: Mut<CudaBuf>,
    dout: Ref<CudaBuf>,
    tokens: &[u32],
    channels: usize,
) -> Result<()> {
    ensure_f32("embedding_backward", "dwte", dwte.dtype())?;
    let sfx = act_suffix("embedding_backward", &[dout.dtype()])?;
    let f = cuda
        .modules
        .function("embedding", &format!("embedding_backward_{sfx}"))?;
    let (unique, starts, rows) = buckets(tokens);
    if unique.is_empty() {
        return Ok(());
    }
    let ((_u, u), (_s, s), (_r, r)) = (
        cuda.stage_i32(&unique)?,
        cuda.stage_i32(&starts)?,
        cuda.stage_i32(&rows)?,
    );
    let (dw, d, ch) = (dwte.ptr(), dout.ptr(), channels as i32);
    let cfg = LaunchConfig {
        grid_dim: (
            unique.len() as u32,
            (channels as u32).div_ceil(BACKWARD_BLOCK),
            1,
        ),
        block_dim: (BACKWARD_BLOCK, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: bucket tables index rows < tokens.len() and ids < the table's rows (checked by the trait).
    unsafe {
        cuda.stream
            .launch_builder(&f)
            .arg(&dw)
            .arg(&d)
            .arg(&u)
            .arg(&s)
            .arg(&r)
            .arg(&ch)
            .launch(cfg)?
    };
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn buckets_group_rows_by_token_in_order() {
        let (u, s, r) = super::buckets(&[5, 2, 5, 9, 2, 5]);
        assert_eq!(u, vec![2, 5, 9]);
        assert_eq!(s, vec![0, 2, 5, 6]);
        assert_eq!(r, vec![1, 4, 0, 2, 5, 3]);
    }
}

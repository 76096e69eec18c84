//! Launcher for kernels/classifier.cu.

use super::launch::{act_suffix, ensure_f32};
use super::{Cuda, CudaBuf};
use crate::backend::Mut;
use anyhow::Result;
use cudarc::driver::{LaunchConfig, PushKernelArg};

/// Must match CLASSIFIER_BLOCK in kernels/classifier.cu.
const BLOCK: u32 = 512;

pub fn fused(
    cuda: &Cuda,
    logits: Mut<CudaBuf>,
    losses: Mut<CudaBuf>,
    targets: &[u32],
    cols: usize,
    vocab: usize,
    dloss: f32,
) -> Result<()> {
    ensure_f32("fused_classifier", "losses", losses.dtype())?;
    let sfx = act_suffix("fused_classifier", &[logits.dtype()])?;
    if targets.is_empty() {
        return Ok(());
    }
    let f = cuda
        .modules
        .function("classifier", &format!("fused_classifier_{sfx}"))?;
    let ids: Vec<i32> = targets.iter().map(|&t| t as i32).collect();
    let (_t, t) = cuda.stage_i32(&ids)?;
    let (l, lo, nc, nv) = (logits.ptr(), losses.ptr(), cols as i32, vocab as i32);
    let cfg = LaunchConfig {
        grid_dim: (targets.len() as u32, 1, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: logits hold rows·cols elements, losses rows, and every target < vocab ≤ cols (checked by the trait).
    unsafe {
        cuda.stream
            .launch_builder(&f)
            .arg(&l)
            .arg(&lo)
            .arg(&t)
            .arg(&nc)
            .arg(&nv)
            .arg(&dloss)
            .launch(cfg)?
    };
    Ok(())
}

//! `lowrank bench attention`: causal attention at GPT-2's shapes, forward and backward, with flash
//! attention (kernels/flash_attention.cu) and with the materialised path (scores in memory around
//! cuBLASLt), side by side. `scripts/peer-bench.py` times PyTorch's scaled_dot_product_attention
//! on the same shapes. Rates count the causal half of the matmuls, as FlashAttention's papers do:
//! 2·B·T²·C FLOPs forward (q·kᵀ and p·v) and 2.5 times that backward (five matmuls).

use super::{rotation, time_median, Row, Timing, PEAK_TFLOPS};
use crate::backend::cuda::{AttentionImpl, Cuda};
use crate::backend::{Backend, Buffer, DType, SeqShape};
use anyhow::Result;

/// (batch, seq, channels, heads): GPT-2 small and medium at their full context.
pub type Shape = (usize, usize, usize, usize);
pub const FULL: &[Shape] = &[(8, 1024, 768, 12), (8, 1024, 1024, 16)];
/// Ragged against the 64-row tiles, both head sizes.
pub const SMOKE: &[Shape] = &[(2, 100, 128, 2), (1, 70, 96, 3)];

pub fn run(gpu: &mut Cuda, shapes: &[Shape], timing: &Timing) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for &(batch, seq, channels, heads) in shapes {
        for (imp, name) in [
            (AttentionImpl::Flash, "flash"),
            (AttentionImpl::Materialized, "materialized"),
        ] {
            gpu.set_attention_impl(imp);
            let shape = format!("B{batch} T{seq} C{channels} h{heads}");
            let timing = timing.labelled(format!("attention {name} {shape}"));
            let s = SeqShape::new(batch, seq, channels);
            let [fwd, bwd] = time_shape(gpu, s, heads, &timing)?;
            let causal_flops = 2.0 * (batch * seq * seq * channels) as f64;
            for (pass, ms, flops) in [("fwd", fwd, causal_flops), ("bwd", bwd, 2.5 * causal_flops)]
            {
                let tflops = flops / (ms * 1e-3) / 1e12;
                rows.push(Row {
                    op: format!("attention_{pass}_{name}"),
                    shape: shape.clone(),
                    median_ms: ms,
                    achieved: tflops,
                    unit: "TF/s",
                    frac_of_peak: tflops / PEAK_TFLOPS,
                    frac_of_measured: None,
                });
            }
        }
    }
    gpu.set_attention_impl(AttentionImpl::from_env()?);
    Ok(rows)
}

/// Median ms of the forward and of the backward (each on the forward's own saved state).
fn time_shape(gpu: &Cuda, s: SeqShape, heads: usize, timing: &Timing) -> Result<[f64; 2]> {
    let act = DType::BF16;
    let saved = gpu.attention_saved(s.channels / heads, act);
    let sets = rotation(gpu, 3 * s.len() * 2);
    let qkv = super::random_bufs(gpu, act, 3 * s.len(), sets)?;
    let dout = super::random_bufs(gpu, act, s.len(), 1)?;
    let mut out = (0..sets)
        .map(|_| gpu.alloc(act, s.len()))
        .collect::<Result<Vec<_>>>()?;
    let mut att = (0..sets)
        .map(|_| gpu.alloc(saved.dtype(act), saved.len(s, heads)))
        .collect::<Result<Vec<_>>>()?;
    let mut dqkv = gpu.alloc(act, 3 * s.len())?;
    let fwd = time_median(gpu, timing, "fwd", |i| {
        let k = i % sets;
        gpu.attention_forward(out[k].all_mut(), att[k].all_mut(), qkv[k].all(), s, heads)
    })?;
    let bwd = time_median(gpu, timing, "bwd", |i| {
        let k = i % sets;
        let (q, o, a) = (qkv[k].all(), out[k].all(), att[k].all());
        gpu.attention_backward(dqkv.all_mut(), dout[0].all(), q, o, a, s, heads)
    })?;
    Ok([fwd, bwd])
}

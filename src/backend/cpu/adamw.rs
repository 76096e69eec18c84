//! Fused AdamW (CPU twin of kernels/adamw.cu).

use crate::backend::AdamW;
use rayon::prelude::*;

/// One AdamW step in place: decoupled weight decay, bias-corrected moments.
pub fn adamw(hp: &AdamW, params: &mut [f32], grads: &[f32], m: &mut [f32], v: &mut [f32]) {
    let (bc1, bc2) = hp.bias_corrections();
    const CHUNK: usize = 1 << 14;
    params
        .par_chunks_mut(CHUNK)
        .zip(grads.par_chunks(CHUNK))
        .zip(m.par_chunks_mut(CHUNK).zip(v.par_chunks_mut(CHUNK)))
        .for_each(|((p, g), (m, v))| {
            for i in 0..p.len() {
                let grad = g[i] * hp.grad_scale;
                m[i] = hp.beta1 * m[i] + (1.0 - hp.beta1) * grad;
                v[i] = hp.beta2 * v[i] + (1.0 - hp.beta2) * grad * grad;
                let m_hat = m[i] / bc1;
                let v_hat = v[i] / bc2;
                p[i] -= hp.lr * (m_hat / (v_hat.sqrt() + hp.eps) + hp.weight_decay * p[i]);
            }
        });
}

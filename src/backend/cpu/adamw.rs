//! Fused optimiser updates, AdamW and heavy ball (CPU twins of kernels/adamw.cu).

use super::simd::vectorized;
use crate::backend::{AdamW, HeavyBall};
use rayon::prelude::*;

/// One AdamW step in place: decoupled weight decay, bias-corrected moments.
pub fn adamw(hp: &AdamW, params: &mut [f32], grads: &[f32], m: &mut [f32], v: &mut [f32]) {
    let bc = hp.bias_corrections();
    const CHUNK: usize = 1 << 14;
    params
        .par_chunks_mut(CHUNK)
        .zip(grads.par_chunks(CHUNK))
        .zip(m.par_chunks_mut(CHUNK).zip(v.par_chunks_mut(CHUNK)))
        .for_each(|((p, g), (m, v))| vectorized!(adamw_chunk(hp, bc, p, g, m, v)));
}

#[inline(always)]
fn adamw_chunk(
    hp: &AdamW,
    (bc1, bc2): (f32, f32),
    p: &mut [f32],
    g: &[f32],
    m: &mut [f32],
    v: &mut [f32],
) {
    for i in 0..p.len() {
        let grad = g[i] * hp.grad_scale;
        m[i] = hp.beta1 * m[i] + (1.0 - hp.beta1) * grad;
        v[i] = hp.beta2 * v[i] + (1.0 - hp.beta2) * grad * grad;
        let m_hat = m[i] / bc1;
        let v_hat = v[i] / bc2;
        p[i] -= hp.lr * (m_hat / (v_hat.sqrt() + hp.eps) + hp.weight_decay * p[i]);
    }
}

/// One heavy-ball step in place (friction form, decoupled weight decay).
pub fn heavy_ball(hp: &HeavyBall, params: &mut [f32], grads: &[f32], z: &mut [f32]) {
    const CHUNK: usize = 1 << 14;
    params
        .par_chunks_mut(CHUNK)
        .zip(grads.par_chunks(CHUNK))
        .zip(z.par_chunks_mut(CHUNK))
        .for_each(|((p, g), z)| vectorized!(heavy_ball_chunk(hp, p, g, z)));
}

#[inline(always)]
fn heavy_ball_chunk(hp: &HeavyBall, p: &mut [f32], g: &[f32], z: &mut [f32]) {
    for i in 0..p.len() {
        z[i] = (1.0 - hp.friction) * z[i] - hp.h * g[i] * hp.grad_scale;
        p[i] += hp.h * (z[i] - hp.weight_decay * p[i]);
    }
}

#[cfg(test)]
mod tests {
    use crate::backend::{cpu::Cpu, AdamW, Backend, Buffer, DType, HeavyBall};

    #[test]
    fn heavy_ball_matches_hand_computation() {
        // p = 1, g = 4 scaled by 0.5 → 2, h = 0.1, γ = 0.25, wd 0.5.
        // Step 1: z = −0.1·2 = −0.2; p = 1 + 0.1·(−0.2 − 0.5·1) = 0.93.
        // Step 2: z = 0.75·(−0.2) − 0.2 = −0.35; p = 0.93 + 0.1·(−0.35 − 0.465) = 0.8485.
        let hp = HeavyBall {
            h: 0.1,
            friction: 0.25,
            weight_decay: 0.5,
            grad_scale: 0.5,
        };
        let mut p = Cpu.alloc(DType::F32, 1).unwrap();
        Cpu.upload(&[1.0], p.all_mut()).unwrap();
        let mut g = Cpu.alloc(DType::F32, 1).unwrap();
        Cpu.upload(&[4.0], g.all_mut()).unwrap();
        let mut z = Cpu.alloc(DType::F32, 1).unwrap();
        let mut copy = Cpu.alloc(DType::BF16, 1).unwrap();
        Cpu.heavy_ball(&hp, p.all_mut(), g.all(), z.all_mut(), Some(copy.all_mut()))
            .unwrap();
        assert!((p.as_slice()[0] - 0.93).abs() < 1e-6, "{:?}", p.as_slice());
        assert_eq!(copy.as_slice()[0], half::bf16::from_f32(0.93).to_f32());
        Cpu.heavy_ball(&hp, p.all_mut(), g.all(), z.all_mut(), None)
            .unwrap();
        assert!((z.as_slice()[0] + 0.35).abs() < 1e-6, "{:?}", z.as_slice());
        assert!(
            (p.as_slice()[0] - 0.8485).abs() < 1e-6,
            "{:?}",
            p.as_slice()
        );
        let mut short = Cpu.alloc(DType::F32, 2).unwrap();
        let e = Cpu
            .heavy_ball(&hp, p.all_mut(), g.all(), short.all_mut(), None)
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("heavy_ball: velocity has 2 elements"),
            "{e}"
        );
    }

    #[test]
    fn two_steps_match_hand_computation() {
        // One parameter p=1, gradient g=2 (scaled by 0.5 → 1), lr 0.1, β1 0.9, β2 0.99, wd 0.1, eps 0.
        // Step 1: m = 0.1, v = 0.01, m̂ = 0.1/0.1 = 1, v̂ = 0.01/0.01 = 1 → p = 1 − 0.1·(1 + 0.1·1) = 0.89.
        // Step 2 (same gradient): m = 0.09 + 0.1 = 0.19, v = 0.0099 + 0.01 = 0.0199,
        //   m̂ = 0.19/0.19 = 1, v̂ = 0.0199/0.0199 = 1 → p = 0.89 − 0.1·(1 + 0.089) = 0.7811.
        let mut hp = AdamW {
            lr: 0.1,
            beta1: 0.9,
            beta2: 0.99,
            eps: 0.0,
            weight_decay: 0.1,
            step: 1,
            grad_scale: 0.5,
        };
        let mut p = Cpu.alloc(DType::F32, 1).unwrap();
        Cpu.upload(&[1.0], p.all_mut()).unwrap();
        let mut g = Cpu.alloc(DType::F32, 1).unwrap();
        Cpu.upload(&[2.0], g.all_mut()).unwrap();
        let (mut m, mut v) = (
            Cpu.alloc(DType::F32, 1).unwrap(),
            Cpu.alloc(DType::F32, 1).unwrap(),
        );
        let mut copy = Cpu.alloc(DType::BF16, 1).unwrap();
        Cpu.adamw(
            &hp,
            p.all_mut(),
            g.all(),
            m.all_mut(),
            v.all_mut(),
            Some(copy.all_mut()),
        )
        .unwrap();
        assert!((p.as_slice()[0] - 0.89).abs() < 1e-6, "{:?}", p.as_slice());
        assert_eq!(copy.as_slice()[0], half::bf16::from_f32(0.89).to_f32());
        hp.step = 2;
        Cpu.adamw(&hp, p.all_mut(), g.all(), m.all_mut(), v.all_mut(), None)
            .unwrap();
        assert!((m.as_slice()[0] - 0.19).abs() < 1e-6 && (v.as_slice()[0] - 0.0199).abs() < 1e-6);
        assert!(
            (p.as_slice()[0] - 0.7811).abs() < 1e-6,
            "{:?}",
            p.as_slice()
        );
    }

    #[test]
    fn rejects_mismatched_state() {
        let hp = AdamW {
            lr: 0.1,
            beta1: 0.9,
            beta2: 0.99,
            eps: 1e-8,
            weight_decay: 0.0,
            step: 1,
            grad_scale: 1.0,
        };
        let mut p = Cpu.alloc(DType::F32, 3).unwrap();
        let g = Cpu.alloc(DType::F32, 2).unwrap();
        let (mut m, mut v) = (
            Cpu.alloc(DType::F32, 3).unwrap(),
            Cpu.alloc(DType::BF16, 3).unwrap(),
        );
        let err = Cpu
            .adamw(&hp, p.all_mut(), g.all(), m.all_mut(), v.all_mut(), None)
            .unwrap_err();
        assert!(err.to_string().contains("grads has 2 elements"), "{err}");
        let g = Cpu.alloc(DType::F32, 3).unwrap();
        let err = Cpu
            .adamw(&hp, p.all_mut(), g.all(), m.all_mut(), v.all_mut(), None)
            .unwrap_err();
        assert!(err.to_string().contains("v must be f32"), "{err}");
    }
}

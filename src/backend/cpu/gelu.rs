//! GPT-2's tanh-approximated GELU, forward and in-place backward (CPU twin of kernels/gelu.cu).

use super::exp::exp;
use super::simd::vectorized;
use rayon::prelude::*;

/// √(2/π).
const SQRT_2_OVER_PI: f32 = 0.797_884_6;
const CHUNK: usize = 1 << 14;

/// σ(2u) with u = √(2/π)(x + 0.044715x³): since 1 + tanh(u) = 2σ(2u), GELU(x) = x·σ(2u).
/// Through exp rather than tanh: libm's tanhf is about six times slower than its expf (GELU was
/// an eighth of a GPT-2 small CPU training step), and 1 + tanh(u) cancels where x is negative;
/// our `exp`, not libm's, so that the loops over it vectorise.
#[inline(always)]
fn sigmoid_2u(x: f32) -> f32 {
    let u = SQRT_2_OVER_PI * (x + 0.044715 * x * x * x);
    1.0 / (1.0 + exp(-2.0 * u))
}

/// out = ½x(1 + tanh(√(2/π)(x + 0.044715x³))).
pub fn forward(out: &mut [f32], inp: &[f32]) {
    out.par_chunks_mut(CHUNK)
        .zip(inp.par_chunks(CHUNK))
        .for_each(|(o, x)| vectorized!(forward_chunk(o, x)));
}

#[inline(always)]
fn forward_chunk(out: &mut [f32], inp: &[f32]) {
    for (o, &x) in out.iter_mut().zip(inp) {
        *o = x * sigmoid_2u(x);
    }
}

/// d ← d · GELU′(inp), GELU′ = σ(2u) + 2x·σ(2u)(1 − σ(2u))·du/dx.
pub fn backward_inplace(d: &mut [f32], inp: &[f32]) {
    d.par_chunks_mut(CHUNK)
        .zip(inp.par_chunks(CHUNK))
        .for_each(|(d, x)| vectorized!(backward_chunk(d, x)));
}

#[inline(always)]
fn backward_chunk(d: &mut [f32], inp: &[f32]) {
    for (d, &x) in d.iter_mut().zip(inp) {
        let sg = sigmoid_2u(x);
        let du = SQRT_2_OVER_PI * (1.0 + 3.0 * 0.044715 * x * x);
        *d *= sg + 2.0 * x * sg * (1.0 - sg) * du;
    }
}

#[cfg(test)]
mod tests {
    use crate::backend::cpu::test_util::{assert_close, random, upload};
    use crate::backend::cpu::Cpu;
    use crate::backend::{Backend, Buffer};

    fn gelu64(x: f64) -> f64 {
        0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x.powi(3))).tanh())
    }

    #[test]
    fn gelu_forward_and_backward_match_f64_and_finite_differences() {
        let cpu = Cpu;
        // More than one chunk, ragged, and the far tails, where exp(−2u) overflows f32 (x below
        // about −10).
        let tails = [-60.0, -20.0, -9.0, -6.0, -3.0, 0.0, 3.0, 9.0, 20.0, 60.0];
        let x: Vec<f32> = random(20_001, 1)
            .iter()
            .map(|v| 3.0 * v)
            .chain(tails)
            .collect();
        let n = x.len();
        let dy = random(n, 2);
        let xb = upload(&cpu, &x);
        let mut out = upload(&cpu, &vec![f32::NAN; n]);
        cpu.gelu_forward(out.all_mut(), xb.all()).unwrap();
        let want: Vec<f64> = x.iter().map(|&v| gelu64(v as f64)).collect();
        assert_close("gelu_forward", out.as_slice(), &want, 1e-6);

        let mut d = upload(&cpu, &dy);
        cpu.gelu_backward(d.all_mut(), xb.all()).unwrap();
        let h = 1e-6;
        let want: Vec<f64> = x
            .iter()
            .zip(&dy)
            .map(|(&v, &g)| g as f64 * (gelu64(v as f64 + h) - gelu64(v as f64 - h)) / (2.0 * h))
            .collect();
        assert_close("gelu_backward", d.as_slice(), &want, 1e-5);
    }

    #[test]
    fn gelu_rejects_mismatched_windows() {
        let cpu = Cpu;
        let (x, mut out) = (upload(&cpu, &[1.0; 5]), upload(&cpu, &[0.0; 4]));
        let err = cpu.gelu_forward(out.all_mut(), x.all()).unwrap_err();
        assert!(err.to_string().contains("gelu_forward"), "{err}");
    }
}

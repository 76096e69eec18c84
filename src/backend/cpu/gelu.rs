//! GPT-2's tanh-approximated GELU, forward and in-place backward (CPU twin of kernels/gelu.cu).

use rayon::prelude::*;

/// √(2/π).
const SQRT_2_OVER_PI: f32 = 0.797_884_6;
const CHUNK: usize = 1 << 14;

/// out = ½x(1 + tanh(√(2/π)(x + 0.044715x³))).
pub fn forward(out: &mut [f32], inp: &[f32]) {
    out.par_chunks_mut(CHUNK)
        .zip(inp.par_chunks(CHUNK))
        .for_each(|(o, x)| {
            for (o, &x) in o.iter_mut().zip(x) {
                let u = SQRT_2_OVER_PI * (x + 0.044715 * x * x * x);
                *o = 0.5 * x * (1.0 + u.tanh());
            }
        });
}

/// d ← d · GELU′(inp).
pub fn backward_inplace(d: &mut [f32], inp: &[f32]) {
    d.par_chunks_mut(CHUNK)
        .zip(inp.par_chunks(CHUNK))
        .for_each(|(d, x)| {
            for (d, &x) in d.iter_mut().zip(x) {
                let u = SQRT_2_OVER_PI * (x + 0.044715 * x * x * x);
                let th = u.tanh();
                let sech2 = 1.0 - th * th;
                let grad = 0.5 * (1.0 + th)
                    + 0.5 * x * sech2 * SQRT_2_OVER_PI * (1.0 + 3.0 * 0.044715 * x * x);
                *d *= grad;
            }
        });
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
        let n = 20_011; // more than one chunk, ragged
        let x: Vec<f32> = random(n, 1).iter().map(|v| 3.0 * v).collect();
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
